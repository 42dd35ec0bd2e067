"""Training crops of LesionDiffusion in model space, and the torch dataset over them.

A crop is a cube of ``preset.crop_size`` voxels at the isotropic spacing
``preset.model_spacing(box extent)`` centred on the lesion box, holding:

- ``ct``: HU (trilinear resampling of the CT);
- ``organs``: TotalSegmentator v2 ids (nearest neighbour);
- ``target``: the organ the lesion belongs to;
- ``bbox``: the lesion's bounding box on the model grid;
- ``mask``: the lesion mask (trilinear, > 0.5);
- the report's attributes, split into the mask attributes (LMNet) and the image attributes (LINet),
  as ``{attribute: value}`` strings (``report_bbox.MASK_ATTRIBUTES`` / ``IMAGE_ATTRIBUTES``).

Three sources, mixed into one :class:`CropSet`:

1. :func:`crops_from_dataset`: any lesion set in our nnU-Net layout with reports (the rule-based set
   of ``bench data lesions``).
2. :func:`independent_crops`: lesions drawn straight into crops of real templates with **shape,
   density, density variation, margin and enhancement drawn independently of each other and of the
   lesion type** (liver, kidney, pancreas: every relative density is medically possible there) and
   rendered by the rule-based renderer. In the rule-based set "hyperdense" is mostly stones and
   shape follows the lesion type; these crops break both confounds.
3. :func:`template_lesion_crops`: real lesions of the templates (the bundled chest CT's lung
   tumour). They have no report, so they train the unconditional (null-context) branch only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import report_bbox
import torch
from scipy import ndimage

from ..exceptions import DataError
from .presets import LesionDiffusionPreset

__all__ = [
    "CropSet",
    "LesionCropDataset",
    "attribute_split",
    "crop_around",
    "crops_from_dataset",
    "independent_crops",
    "load_crops",
    "save_crops",
    "template_lesion_crops",
]

log = logging.getLogger(__name__)

#: Organs whose lesions take every relative density (hypo/iso/hyper) in :func:`independent_crops`.
INDEPENDENT_ORGANS: tuple[str, ...] = ("liver", "kidney", "pancreas")
_DENSITY_WORDS = {"hypo": "hypodense", "iso": "isodense", "hyper": "hyperdense"}
_SHAPE_WORDS = {"round": "round-like", "irregular": "irregular"}


def attribute_split(report: report_bbox.Report) -> tuple[dict[str, str], dict[str, str]]:
    """The report's mask attributes and image attributes as ``{name: value}`` strings.

    Returns:
        ``(mask_attrs, image_attrs)`` in template order (8 each).
    """
    return (
        report.attribute_texts("mask", with_names=False),
        report.attribute_texts("image", with_names=False),
    )


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------


def _grid(
    center_vox: np.ndarray, spacing: Sequence[float], step_mm: float, size: int
) -> np.ndarray:
    offs = (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * step_mm
    axes = [center_vox[i] + offs / float(spacing[i]) for i in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def crop_around(
    volume: np.ndarray,
    spacing: Sequence[float],
    center_vox: np.ndarray,
    step_mm: float,
    size: int,
    *,
    order: int,
    cval: float,
) -> np.ndarray:
    """Resample a cube of ``size`` voxels at ``step_mm`` around ``center_vox``.

    Args:
        volume: (X, Y, Z) array.
        spacing: its voxel size in mm.
        center_vox: (3,) centre in the volume's voxel coordinates.
        step_mm: isotropic model spacing.
        size: cube edge.
        order: 1 (linear, CT and masks) or 0 (nearest, label maps).
        cval: value outside the volume.

    Returns:
        (size, size, size) array (float32 for order 1, the input dtype for order 0).
    """
    coords = _grid(np.asarray(center_vox, np.float64), spacing, step_mm, size)
    src = volume.astype(np.float32) if order == 1 else volume
    return ndimage.map_coordinates(
        src, coords, order=order, mode="constant", cval=cval, prefilter=False
    )


def _box_of(mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    box = np.zeros(mask.shape, dtype=bool)
    lo, hi = idx.min(0), idx.max(0) + 1
    box[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return box


# ---------------------------------------------------------------------------------------------
# The crop set
# ---------------------------------------------------------------------------------------------


@dataclass
class CropSet:
    """Model-space training crops (numpy, stacked).

    Attributes:
        ct: float32 (N, S, S, S) HU.
        organs: int16 (N, S, S, S) TotalSegmentator v2 ids.
        target: bool (N, S, S, S) target organ.
        bbox: bool (N, S, S, S) lesion box.
        mask: bool (N, S, S, S) lesion.
        spacing: float32 (N,) model spacing in mm.
        mask_attrs: per crop ``{attribute: value}`` (empty: no report, null context only).
        image_attrs: per crop ``{attribute: value}`` (empty: no report).
        source: per crop ``"dataset"``, ``"independent"`` or ``"template_lesion"``.
        meta: per crop extra facts (case, lesion type, drawn categories).
    """

    ct: np.ndarray
    organs: np.ndarray
    target: np.ndarray
    bbox: np.ndarray
    mask: np.ndarray
    spacing: np.ndarray
    mask_attrs: list[dict[str, str]]
    image_attrs: list[dict[str, str]]
    source: list[str]
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return int(self.ct.shape[0])

    @classmethod
    def stack(cls, items: Iterable[dict[str, Any]]) -> CropSet:
        """Stack per-crop dicts (as made by :func:`_make_item`)."""
        items = list(items)
        if not items:
            raise DataError("no crops to stack: every source was empty")
        return cls(
            ct=np.stack([i["ct"] for i in items]).astype(np.float32),
            organs=np.stack([i["organs"] for i in items]).astype(np.int16),
            target=np.stack([i["target"] for i in items]).astype(bool),
            bbox=np.stack([i["bbox"] for i in items]).astype(bool),
            mask=np.stack([i["mask"] for i in items]).astype(bool),
            spacing=np.asarray([i["spacing"] for i in items], np.float32),
            mask_attrs=[i["mask_attrs"] for i in items],
            image_attrs=[i["image_attrs"] for i in items],
            source=[i["source"] for i in items],
            meta=[i["meta"] for i in items],
        )

    def concat(self, other: CropSet) -> CropSet:
        """Both sets in one."""
        return CropSet(
            ct=np.concatenate([self.ct, other.ct]),
            organs=np.concatenate([self.organs, other.organs]),
            target=np.concatenate([self.target, other.target]),
            bbox=np.concatenate([self.bbox, other.bbox]),
            mask=np.concatenate([self.mask, other.mask]),
            spacing=np.concatenate([self.spacing, other.spacing]),
            mask_attrs=self.mask_attrs + other.mask_attrs,
            image_attrs=self.image_attrs + other.image_attrs,
            source=self.source + other.source,
            meta=self.meta + other.meta,
        )

    def subset(self, idx: Sequence[int]) -> CropSet:
        """The crops at ``idx``."""
        ix = np.asarray(idx, dtype=np.int64)
        return CropSet(
            ct=self.ct[ix],
            organs=self.organs[ix],
            target=self.target[ix],
            bbox=self.bbox[ix],
            mask=self.mask[ix],
            spacing=self.spacing[ix],
            mask_attrs=[self.mask_attrs[i] for i in ix],
            image_attrs=[self.image_attrs[i] for i in ix],
            source=[self.source[i] for i in ix],
            meta=[self.meta[i] for i in ix],
        )


def save_crops(crops: CropSet, path: str | os.PathLike[str]) -> Path:
    """Write a :class:`CropSet` to ``path`` (``.npz`` arrays + ``.json`` attributes), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = {
        "mask_attrs": crops.mask_attrs,
        "image_attrs": crops.image_attrs,
        "source": crops.source,
        "meta": crops.meta,
        "crop_size": int(crops.ct.shape[1]) if len(crops) else 0,
    }
    for suffix, writer in (
        (
            ".npz",
            lambda fh: np.savez_compressed(
                fh,
                ct=crops.ct.astype(np.float16),
                organs=crops.organs,
                target=crops.target,
                bbox=crops.bbox,
                mask=crops.mask,
                spacing=crops.spacing,
            ),
        ),
        (".json", lambda fh: fh.write(json.dumps(side).encode())),
    ):
        final = path.with_suffix(suffix)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=final.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    return path.with_suffix(".npz")


def load_crops(path: str | os.PathLike[str]) -> CropSet:
    """Read a :class:`CropSet` written by :func:`save_crops`."""
    path = Path(path)
    npz, side = path.with_suffix(".npz"), path.with_suffix(".json")
    if not npz.is_file() or not side.is_file():
        raise DataError(f"crop set {path}: need both {npz.name} and {side.name}")
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    info = json.loads(side.read_text())
    return CropSet(
        ct=arrays["ct"].astype(np.float32),
        organs=arrays["organs"],
        target=arrays["target"],
        bbox=arrays["bbox"],
        mask=arrays["mask"],
        spacing=arrays["spacing"],
        mask_attrs=info["mask_attrs"],
        image_attrs=info["image_attrs"],
        source=info["source"],
        meta=info["meta"],
    )


def _make_item(
    ct: np.ndarray,
    organs: np.ndarray,
    lesion: np.ndarray,
    target_ids: Sequence[int],
    spacing: Sequence[float],
    preset: LesionDiffusionPreset,
    *,
    report: report_bbox.Report | None,
    source: str,
    meta: dict[str, Any],
) -> dict[str, Any] | None:
    """Crop one lesion (full-resolution arrays) onto the model grid; None if it vanishes there."""
    idx = np.argwhere(lesion)
    if len(idx) == 0:
        return None
    lo, hi = idx.min(0), idx.max(0)
    extent = (hi - lo + 1) * np.asarray(spacing, np.float64)
    step = preset.model_spacing(tuple(extent))
    centre = (lo + hi) / 2.0
    s = preset.crop_size
    m = crop_around(lesion.astype(np.float32), spacing, centre, step, s, order=1, cval=0.0) > 0.5
    if m.sum() < 2:
        return None
    c = crop_around(ct, spacing, centre, step, s, order=1, cval=-1000.0)
    o = crop_around(organs.astype(np.int16), spacing, centre, step, s, order=0, cval=0)
    tgt = np.isin(o, np.asarray(target_ids)) | m
    mask_attrs, image_attrs = attribute_split(report) if report is not None else ({}, {})
    return {
        "ct": c,
        "organs": o,
        "target": tgt,
        "bbox": _box_of(m),
        "mask": m,
        "spacing": step,
        "mask_attrs": mask_attrs,
        "image_attrs": image_attrs,
        "source": source,
        "meta": meta,
    }


def crops_from_dataset(
    root: str | os.PathLike[str], preset: LesionDiffusionPreset, *, limit: int | None = None
) -> CropSet:
    """Crops of every case of a lesion set in our layout (``imagesTr``, ``labelsTr``, ``organs``,
    ``reports``), e.g. the output of ``bench data lesions``.

    Raises:
        DataError: the folder is not such a set.
    """
    from ..data import read_nifti

    root = Path(root)
    reports = sorted((root / "reports").glob("*.json"))
    if not reports:
        raise DataError(
            f"{root}: no reports/*.json; expected a lesion set made by 'bench data lesions'"
        )
    items = []
    for rp in reports[:limit]:
        case = rp.stem
        info = json.loads(rp.read_text())
        report = report_bbox.Report.from_dict(info["report"])
        img, affine = read_nifti(root / "imagesTr" / f"{case}_0000.nii.gz")
        lab, _ = read_nifti(root / "labelsTr" / f"{case}.nii.gz")
        org, _ = read_nifti(root / "organs" / f"{case}.nii.gz")
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        ids = report_bbox.organ_ids(report.organ)
        item = _make_item(
            np.asarray(img, np.float32),
            np.asarray(org),
            np.asarray(lab) > 0,
            ids,
            spacing,
            preset,
            report=report,
            source="dataset",
            meta={
                "case": case,
                "lesion_type": info.get("lesion_type"),
                "template": info.get("template"),
            },
        )
        if item is not None:
            items.append(item)
    return CropSet.stack(items)


def template_lesion_crops(
    templates: Sequence[Any], preset: LesionDiffusionPreset
) -> list[dict[str, Any]]:
    """Crops of the templates' own real lesions (no report: null context), one per template lesion."""
    items = []
    for t in templates:
        if t.lesion is None or not np.any(t.lesion):
            continue
        lab, n = ndimage.label(t.lesion > 0)
        for k in range(1, n + 1):
            comp = lab == k
            if comp.sum() < 8:
                continue
            near = ndimage.binary_dilation(comp, iterations=2) & ~comp
            ids = t.organs[near]
            organ_id = int(np.bincount(ids[ids > 0]).argmax()) if (ids > 0).any() else 0
            item = _make_item(
                t.ct,
                t.organs,
                comp,
                [organ_id],
                t.spacing,
                preset,
                report=None,
                source="template_lesion",
                meta={"template": t.name, "component": k},
            )
            if item is not None:
                items.append(item)
    return items


def organ_depth(template: Any, organ: str) -> np.ndarray:
    """Distance (mm) of each voxel of an organ group to its surface (0 outside), cached per template."""
    from ..rulesynth._rules import ORGAN_IDS

    cache = _DEPTH_CACHE.setdefault(id(template), {})
    if organ not in cache:
        cache[organ] = ndimage.distance_transform_edt(
            np.isin(template.organs, ORGAN_IDS[organ]), sampling=template.spacing
        ).astype(np.float32)
    return cache[organ]


_DEPTH_CACHE: dict[int, dict[str, np.ndarray]] = {}


def independent_crops(
    templates: Sequence[Any],
    preset: LesionDiffusionPreset,
    n: int,
    *,
    seed: int,
    organs: Sequence[str] = INDEPENDENT_ORGANS,
    size_mm: tuple[float, float] = (10.0, 40.0),
) -> CropSet:
    """Lesions drawn straight into model-grid crops of real templates, attributes independent.

    For each crop: a template that has the organ, a random point deep enough in it, a size, and
    independently uniform shape (round-like / irregular), density (hypo- / iso- / hyperdense),
    density variation, margin and enhancement; the rule-based synthesizer's mask generator and HU
    renderer then make the lesion on the model grid itself. Crop ``i`` depends only on
    ``(seed, i)``.

    Args:
        templates: ``ctsynth_bench.rulesynth.Template`` objects.
        preset: the model grid.
        n: number of crops.
        seed: base seed.
        organs: organ groups to place lesions in.
        size_mm: range of the lesion diameter in mm.

    Returns:
        A :class:`CropSet` of ``n`` crops (source ``"independent"``).
    """
    from ..rulesynth._render import estimate_noise, reference_hu, render_lesion
    from ..rulesynth._rules import ORGAN_IDS, LesionSpec, SynthError
    from ..rulesynth._shapes import lesion_mask

    pools = [(t, o) for t in templates for o in organs if t.has_organ(o, min_voxels=400)]
    if not pools:
        raise DataError(f"no template has any of the organs {list(organs)}")
    depths = [organ_depth(t, o) for t, o in pools]
    s = preset.crop_size
    items: list[dict[str, Any]] = []
    i = 0
    while len(items) < n:
        rng = np.random.default_rng([seed, i])
        i += 1
        k = int(rng.integers(len(pools)))
        t, organ = pools[k]
        shape = ("round", "irregular")[int(rng.integers(2))]
        density = ("hypo", "iso", "hyper")[int(rng.integers(3))]
        variation = ("homogeneous", "heterogeneous")[int(rng.integers(2))]
        margin = ("well_defined", "ill_defined")[int(rng.integers(2))]
        enhancement = ("enhanced", "non_contrast")[int(rng.integers(2))]
        diam = rng.uniform(*size_mm, size=3) * rng.uniform(0.8, 1.0)
        depth = depths[k]
        cand = np.argwhere(depth >= 0.35 * diam.min())
        if len(cand) == 0:
            continue
        centre = cand[int(rng.integers(len(cand)))].astype(np.float64)
        step = preset.model_spacing(tuple(diam))
        ct = crop_around(t.ct, t.spacing, centre, step, s, order=1, cval=-1000.0).astype(np.float64)
        org = crop_around(t.organs.astype(np.int16), t.spacing, centre, step, s, order=0, cval=0)
        tgt = np.isin(org, ORGAN_IDS[organ])
        if tgt.sum() < 50:
            continue
        spec = LesionSpec(
            lesion_type=f"{organ}_lesion",
            organ=organ,
            shape=shape,
            density=density,  # type: ignore[arg-type]
            variation=variation,
            margin=margin,
            enhancement=enhancement,
            location="within",  # type: ignore[arg-type]
            features=(),
            size_mm=tuple(float(v) for v in diam),  # type: ignore[arg-type]
        )
        try:
            m = lesion_mask(
                spec, tgt, np.zeros_like(tgt), (step,) * 3, np.array([(s - 1) / 2.0] * 3), rng
            )
        except SynthError:
            continue
        if m.sum() < 8:
            continue
        parench = tgt & ~ndimage.binary_dilation(m, iterations=2)
        noise = estimate_noise(ct, parench if parench.sum() > 30 else tgt)
        organ_hu = reference_hu(ct, parench if parench.sum() > 30 else tgt, organ)
        params = render_lesion(ct, m, spec, organ_hu=organ_hu, noise_std=noise, rng=rng)
        ext = (np.ptp(np.argwhere(m), axis=0) + 1) * step
        report = report_bbox.Report(
            shape=_SHAPE_WORDS[shape],
            organ=organ,
            lesion_location="within the parenchymal organ",
            size=tuple(round(float(e), 1) for e in ext),
            relationship_with_surrounding_organs="no close relationship with surrounding organs",
            surface_characteristics="well-defined margin"
            if margin == "well_defined"
            else "ill-defined margin",
            specific_features="none",
            enhancement_status="enhanced CT" if enhancement == "enhanced" else "non-contrast CT",
            density=_DENSITY_WORDS[density],
            density_variations=variation,
        )
        mask_attrs, image_attrs = attribute_split(report)
        items.append(
            {
                "ct": ct.astype(np.float32),
                "organs": org,
                "target": tgt | m,
                "bbox": _box_of(m),
                "mask": m,
                "spacing": step,
                "mask_attrs": mask_attrs,
                "image_attrs": image_attrs,
                "source": "independent",
                "meta": {
                    "template": t.name,
                    "organ": organ,
                    "shape": shape,
                    "density": density,
                    "variation": variation,
                    "margin": margin,
                    "enhancement": enhancement,
                    "organ_hu": float(organ_hu),
                    "level_hu": float(params["level_hu"]),
                },
            }
        )
    return CropSet.stack(items)


# ---------------------------------------------------------------------------------------------
# Torch dataset
# ---------------------------------------------------------------------------------------------


class LesionCropDataset(torch.utils.data.Dataset):
    """Torch view of a :class:`CropSet` with random flips.

    Each item is a dict: ``ct`` (1, S, S, S) float32 HU, ``organs`` (1, S, S, S) int64,
    ``target``/``bbox``/``mask`` (1, S, S, S) float32 in {0, 1}, ``mask_attrs`` and
    ``image_attrs`` (``{name: value}``, empty for crops without a report), ``index`` (int).

    Args:
        crops: the crop set.
        flip: flip each axis with probability 1/2 (lesions have no handedness at this scale).
        seed: base seed of the flips (item ``i`` of epoch ``e`` uses ``(seed, e, i)``).
    """

    def __init__(self, crops: CropSet, *, flip: bool = True, seed: int = 0) -> None:
        self.crops = crops
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.crops
        arrays = [c.ct[i], c.organs[i].astype(np.int64), c.target[i], c.bbox[i], c.mask[i]]
        if self.flip:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            for ax in range(3):
                if rng.random() < 0.5:
                    arrays = [np.flip(a, axis=ax) for a in arrays]
        ct, org, tgt, box, m = (np.ascontiguousarray(a) for a in arrays)
        return {
            "ct": torch.from_numpy(ct.astype(np.float32))[None],
            "organs": torch.from_numpy(org)[None],
            "target": torch.from_numpy(tgt.astype(np.float32))[None],
            "bbox": torch.from_numpy(box.astype(np.float32))[None],
            "mask": torch.from_numpy(m.astype(np.float32))[None],
            "mask_attrs": c.mask_attrs[i],
            "image_attrs": c.image_attrs[i],
            "index": i,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep attribute dicts as lists."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out
