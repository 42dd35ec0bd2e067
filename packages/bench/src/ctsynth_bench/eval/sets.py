"""Lesion crops for evaluation: one fixed grid for generated, rule-based and real lesions.

Every evaluation that compares lesions across sources (image quality, downstream segmentation)
works on :class:`LesionCropSet`: cubes of ``size`` voxels at one isotropic ``spacing`` (mm) cut
around each lesion, with the CT in HU, the lesion mask, the organ map and the lesion's report.
One grid for all sources keeps the comparison about the lesions, not about resampling.

* :func:`crops_from_folder` reads a lesion set in our layout (``bench synth lesiondiffusion``,
  ``bench data lesions``): ``imagesTr``, ``labelsTr``, ``organs``, ``reports``.
* :func:`real_lesion_crops` cuts the real lesions of cases that have a lesion mask (``lung1``,
  ``lung2``/``chest``, ``rider`` after ``bench data fetch``).

The crop centre is the lesion's centre of mass plus a seeded offset of at most ``jitter`` of the
crop edge per axis (0 for image-quality crops, so lesions are centred; > 0 for segmentation, so a
segmenter cannot learn "the lesion is in the middle"). Several crops per lesion (``per_lesion``)
give differently offset and therefore different crops of one lesion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..exceptions import DataError

__all__ = [
    "CROP_SIZE",
    "CROP_SPACING",
    "REAL_LESION_CASES",
    "LesionCropSet",
    "crops_from_folder",
    "load_crop_set",
    "real_lesion_crops",
    "save_crop_set",
]

#: Default crop edge in voxels and its isotropic spacing in mm (a 72 mm field of view).
CROP_SIZE = 48
CROP_SPACING = 1.5

#: Cases with a real lesion mask (``bench data list``, column "lesion"): the bundled ``chest`` is
#: ``lung2`` resampled, so only one of the two should be used at a time.
REAL_LESION_CASES = ("lung1", "lung2", "rider", "chest")

#: The lesion type of the real cases (all are primary lung tumours).
REAL_LESION_TYPE = "lung_cancer"


@dataclass(frozen=True)
class LesionCropSet:
    """N lesion crops on one isotropic grid.

    Attributes:
        ct: (N, S, S, S) float32 HU (trilinear; -1024 outside the scan).
        lesion: (N, S, S, S) bool lesion mask (trilinear, >= 0.5).
        organs: (N, S, S, S) int16 TotalSegmentator v2 ids (nearest; 0 where unknown).
        spacing: the crop spacing in mm (isotropic).
        lesion_type: per crop, a key of ``report_bbox.LESION_TYPES``.
        reports: per crop, the structured report dict (``{}`` for real lesions).
        case: per crop, the source case id (crops of one lesion share it).
        source: ``"generated"``, ``"rule"`` or ``"real"`` (what made the lesion).
    """

    ct: np.ndarray
    lesion: np.ndarray
    organs: np.ndarray
    spacing: float
    lesion_type: list[str]
    reports: list[dict[str, Any]]
    case: list[str]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ct)
        for name in ("lesion", "organs", "lesion_type", "reports", "case"):
            if len(getattr(self, name)) != n:
                raise DataError(
                    f"LesionCropSet.{name} has {len(getattr(self, name))} items, ct has {n}"
                )
        if self.ct.ndim != 4 or self.ct.shape[1:] != self.lesion.shape[1:]:
            raise DataError(
                f"LesionCropSet: ct {self.ct.shape} and lesion {self.lesion.shape} differ"
            )

    def __len__(self) -> int:
        return len(self.ct)

    @property
    def size(self) -> int:
        """Crop edge in voxels."""
        return int(self.ct.shape[1])

    def select(self, index: Sequence[int] | np.ndarray) -> LesionCropSet:
        """The crops at ``index`` (a list of positions or a boolean mask)."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, int)
        return LesionCropSet(
            ct=self.ct[idx],
            lesion=self.lesion[idx],
            organs=self.organs[idx],
            spacing=self.spacing,
            lesion_type=[self.lesion_type[i] for i in idx],
            reports=[self.reports[i] for i in idx],
            case=[self.case[i] for i in idx],
            source=self.source,
            meta=dict(self.meta),
        )

    def of_type(self, lesion_type: str) -> LesionCropSet:
        """The crops of one lesion type."""
        return self.select(np.array([t == lesion_type for t in self.lesion_type], bool))

    def types(self) -> list[str]:
        """Lesion types present, in first-seen order."""
        return list(dict.fromkeys(self.lesion_type))

    @staticmethod
    def concat(sets: Sequence[LesionCropSet]) -> LesionCropSet:
        """One set from several of the same grid (the source of the first)."""
        if not sets:
            raise DataError("LesionCropSet.concat needs at least one set")
        sp = {s.spacing for s in sets}
        if len(sp) != 1 or len({s.size for s in sets}) != 1:
            raise DataError("LesionCropSet.concat: the sets have different grids")
        return LesionCropSet(
            ct=np.concatenate([s.ct for s in sets]),
            lesion=np.concatenate([s.lesion for s in sets]),
            organs=np.concatenate([s.organs for s in sets]),
            spacing=sets[0].spacing,
            lesion_type=[t for s in sets for t in s.lesion_type],
            reports=[r for s in sets for r in s.reports],
            case=[c for s in sets for c in s.case],
            source=sets[0].source,
        )


def _cut(
    volume: np.ndarray,
    spacing: Sequence[float],
    centre: np.ndarray,
    step: float,
    size: int,
    *,
    order: int,
    cval: float,
) -> np.ndarray:
    half = (size - 1) / 2.0
    axes = [centre[a] + (np.arange(size) - half) * step / float(spacing[a]) for a in range(3)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    src = volume.astype(np.float32) if order == 1 else volume
    return ndimage.map_coordinates(
        src, coords, order=order, mode="constant", cval=cval, prefilter=False
    )


def _crops_of_lesion(
    ct: np.ndarray,
    lesion: np.ndarray,
    organs: np.ndarray | None,
    spacing: Sequence[float],
    *,
    size: int,
    step: float,
    jitter: float,
    per_lesion: int,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    com = np.array(ndimage.center_of_mass(lesion > 0), np.float64)
    out = []
    for _ in range(per_lesion):
        shift_mm = rng.uniform(-jitter, jitter, 3) * size * step
        centre = com + shift_mm / np.asarray(spacing, np.float64)
        c = _cut(ct, spacing, centre, step, size, order=1, cval=-1024.0)
        m = _cut(lesion.astype(np.float32), spacing, centre, step, size, order=1, cval=0.0) >= 0.5
        o = (
            _cut(organs.astype(np.int16), spacing, centre, step, size, order=0, cval=0)
            if organs is not None
            else np.zeros((size,) * 3, np.int16)
        )
        out.append((c.astype(np.float32), m, o.astype(np.int16)))
    return out


def _stack(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    types: list[str],
    reports: list[dict[str, Any]],
    cases: list[str],
    *,
    size: int,
    step: float,
    source: str,
    meta: dict[str, Any],
) -> LesionCropSet:
    if not rows:
        empty = np.zeros((0, size, size, size), np.float32)
        return LesionCropSet(
            ct=empty,
            lesion=empty.astype(bool),
            organs=empty.astype(np.int16),
            spacing=step,
            lesion_type=[],
            reports=[],
            case=[],
            source=source,
            meta=meta,
        )
    return LesionCropSet(
        ct=np.stack([r[0] for r in rows]),
        lesion=np.stack([r[1] for r in rows]),
        organs=np.stack([r[2] for r in rows]),
        spacing=step,
        lesion_type=types,
        reports=reports,
        case=cases,
        source=source,
        meta=meta,
    )


def crops_from_folder(
    folder: str | os.PathLike[str],
    *,
    source: str,
    size: int = CROP_SIZE,
    spacing: float = CROP_SPACING,
    jitter: float = 0.0,
    per_lesion: int = 1,
    types: Sequence[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> LesionCropSet:
    """Crops around the lesions of a lesion set in our layout.

    Args:
        folder: a set with ``imagesTr``, ``labelsTr``, ``organs`` and ``reports`` (each report names
            its ``lesion_type``).
        source: ``"generated"`` or ``"rule"`` (stored on the set).
        size / spacing: the crop grid.
        jitter: centre offset, a fraction of the crop edge per axis.
        per_lesion: crops per lesion.
        types: keep these lesion types only.
        seed: seed of the offsets (case ``i`` draws from ``(seed, i)``).
        limit: at most this many cases (sorted by name).

    Raises:
        DataError: the folder is not a lesion set, or a case's lesion mask is empty.
    """
    from ..data import load_lesion_dataset

    cases = load_lesion_dataset(folder)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    out_types: list[str] = []
    out_reports: list[dict[str, Any]] = []
    out_cases: list[str] = []
    used = 0
    for i, dc in enumerate(sorted(cases, key=lambda c: c.case_id)):
        rep_path = Path(folder) / "reports" / f"{dc.case_id}.json"
        meta = json.loads(rep_path.read_text()) if rep_path.is_file() else {}
        lt = meta.get("lesion_type") or meta.get("report", {}).get("lesion_type")
        if not lt:
            raise DataError(f"{rep_path}: no lesion_type (needed to group lesions by type)")
        if types is not None and lt not in types:
            continue
        if limit is not None and used >= limit:
            break
        case = dc.load()
        if case.lesion is None or not case.lesion.any():
            raise DataError(f"{dc.case_id}: empty lesion mask in {folder}")
        rng = np.random.default_rng([seed, i])
        got = _crops_of_lesion(
            case.ct,
            case.lesion,
            case.organs,
            case.spacing,
            size=size,
            step=spacing,
            jitter=jitter,
            per_lesion=per_lesion,
            rng=rng,
        )
        rows += got
        out_types += [lt] * len(got)
        out_reports += [dict(meta.get("report", {}))] * len(got)
        out_cases += [dc.case_id] * len(got)
        used += 1
    return _stack(
        rows,
        out_types,
        out_reports,
        out_cases,
        size=size,
        step=spacing,
        source=source,
        meta={"folder": str(folder), "jitter": jitter, "per_lesion": per_lesion, "seed": seed},
    )


def real_lesion_crops(
    names: Sequence[str],
    *,
    size: int = CROP_SIZE,
    spacing: float = CROP_SPACING,
    jitter: float = 0.0,
    per_lesion: int = 1,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LesionCropSet:
    """Crops around the real lesions of cases ``names`` (see :data:`REAL_LESION_CASES`).

    Raises:
        DataError: a case is not available (the message says to run ``bench data fetch``) or has no
            lesion mask.
    """
    from ..data import load_case

    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    cases: list[str] = []
    for i, name in enumerate(names):
        try:
            c = load_case(name, cache_dir)
        except Exception as exc:  # the loader's own error names the case
            raise DataError(
                f"real lesion case {name!r} is not available ({exc}); run `bench data fetch`"
            ) from exc
        if c.lesion is None or not c.lesion.any():
            raise DataError(
                f"case {name!r} has no lesion mask; real lesions: {', '.join(REAL_LESION_CASES)}"
            )
        rng = np.random.default_rng([seed, 1_000 + i])
        got = _crops_of_lesion(
            c.ct,
            c.lesion,
            c.organs,
            c.spacing,
            size=size,
            step=spacing,
            jitter=jitter,
            per_lesion=per_lesion,
            rng=rng,
        )
        rows += got
        cases += [name] * len(got)
    return _stack(
        rows,
        [REAL_LESION_TYPE] * len(rows),
        [{} for _ in rows],
        cases,
        size=size,
        step=spacing,
        source="real",
        meta={"cases": list(names), "jitter": jitter, "per_lesion": per_lesion},
    )


def save_crop_set(s: LesionCropSet, path: str | os.PathLike[str]) -> None:
    """Write a crop set to one ``.npz`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    side = {
        "spacing": s.spacing,
        "lesion_type": s.lesion_type,
        "reports": s.reports,
        "case": s.case,
        "source": s.source,
        "meta": s.meta,
    }
    np.savez_compressed(
        tmp,
        ct=s.ct.astype(np.float32),
        lesion=s.lesion,
        organs=s.organs,
        side=np.frombuffer(json.dumps(side, default=str).encode(), np.uint8),
    )
    os.replace(tmp, path)


def load_crop_set(path: str | os.PathLike[str]) -> LesionCropSet:
    """Read a crop set written by :func:`save_crop_set`."""
    with np.load(path) as z:
        side = json.loads(bytes(z["side"]).decode())
        return LesionCropSet(
            ct=z["ct"],
            lesion=z["lesion"].astype(bool),
            organs=z["organs"],
            spacing=float(side["spacing"]),
            lesion_type=side["lesion_type"],
            reports=side["reports"],
            case=side["case"],
            source=side["source"],
            meta=side["meta"],
        )
