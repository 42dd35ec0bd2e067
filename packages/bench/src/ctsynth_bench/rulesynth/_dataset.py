"""Writing a synthetic lesion dataset (nnU-Net raw layout of DESIGN.md), resumably.

Layout under ``out``::

    imagesTr/<case>_0000.nii.gz   CT, int16 HU, the template's affine
    labelsTr/<case>.nii.gz        lesion mask, uint8 0/1
    organs/<case>.nii.gz          organ map (TotalSegmentator v2 ids) after deformation
    template_lesions/<case>.nii.gz  only where the template has a real lesion of its own (the
                                  bundled chest's tumour): its mask, deformed with the case; it is
                                  not in labelsTr (which matches the report), so add it to the label
                                  when training a segmenter
    reports/<case>.json           {"case", "lesion_type", "template", "text" (the report as one
                                  sentence: the figure caption of 'bench data show'), "report"
                                  (Report.to_dict()), "synthesis" (categories and drawn parameters)}
    dataset.json                  nnU-Net description plus per-type counts
    synth.json                    the settings (seed, types, templates); a resumed run must match

Case ``i`` is generated from ``numpy.random.default_rng([seed, i])`` alone, so a killed run that
is started again skips the finished cases (those with a report, which is written last) and
produces exactly the cases it would have produced without the interruption. Every file is
written to a temporary name and renamed, so a half-written case is never taken as finished.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report_bbox
from scipy import ndimage

from .._checks import check_dataset_folder, check_dataset_options
from ..data import check_ct_and_organs, save_nifti
from ..exceptions import BenchError, DataError
from ._deform import augment
from ._draw import draw_report_and_target
from ._render import estimate_noise, reference_hu, render_lesion
from ._rules import ORGAN_IDS, SynthError, check_types, organ_of, spec_from_report
from ._shapes import lesion_mask

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ATTEMPTS = 6
_OWN_LESION_ID = 32000  # reserved id (TotalSegmentator v2 ends at 117) for a template's own lesion


@dataclass(frozen=True)
class Template:
    """A real CT with its organ map that lesions are placed in.

    Attributes:
        name: template name (e.g. ``"abdomen"``).
        ct: float32 (X, Y, Z) HU, RAS.
        organs: integer (X, Y, Z) TotalSegmentator v2 ids.
        affine: 4x4 voxel-to-RAS affine.
        spacing: voxel size in mm.
        lesion: optional uint8 (X, Y, Z) mask of a real lesion already in the CT; no new lesion
            overlaps it, and it is written to ``template_lesions/``.
    """

    name: str
    ct: np.ndarray
    organs: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    lesion: np.ndarray | None = None

    def __post_init__(self) -> None:
        # The one validation every CT + organ map passes before a lesion is placed in it (the
        # file loaders apply the same checks): 3D, same shape, finite plausible HU, integer
        # organ ids of TotalSegmentator v2; and a usable geometry.
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise SynthError(f"a template name must be a non-empty string without '/', got {self.name!r}")
        where = f"template {self.name!r}"
        organs = check_ct_and_organs(self.ct, self.organs, where=where)
        affine = np.asarray(self.affine, dtype=np.float64)
        if (
            affine.shape != (4, 4)
            or not np.all(np.isfinite(affine))
            or abs(np.linalg.det(affine[:3, :3])) < 1e-12
        ):
            raise SynthError(f"{where}: the affine must be a finite, invertible 4x4 matrix")
        spacing = tuple(float(v) for v in np.asarray(self.spacing, dtype=np.float64).ravel())
        if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
            raise SynthError(f"{where}: spacing must be three positive mm values, got {self.spacing}")
        columns = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        if not np.allclose(columns, spacing, rtol=1e-3):
            raise SynthError(
                f"{where}: spacing {spacing} does not match the affine's voxel size "
                f"{tuple(round(float(c), 4) for c in columns)}"
            )
        if self.lesion is not None and np.shape(self.lesion) != np.shape(self.ct):
            raise SynthError(
                f"{where}: lesion shape {np.shape(self.lesion)} differs from the CT {np.shape(self.ct)}"
            )
        object.__setattr__(self, "ct", np.asarray(self.ct, dtype=np.float32))
        object.__setattr__(self, "organs", organs)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "spacing", spacing)

    def has_organ(self, organ: str, *, min_voxels: int = 20) -> bool:
        """Whether the organ group has at least ``min_voxels`` voxels here."""
        return int(np.isin(self.organs, ORGAN_IDS[organ]).sum()) >= min_voxels


def load_templates(names: Sequence[str] | None = None, *, cache_dir: str | Path | None = None) -> list[Template]:
    """Load templates through ``ctsynth_bench.data``: the given names, or every available case with organs."""
    from .. import data

    explicit = names is not None
    if names is None:
        names = [i.name for i in data.list_cases(cache_dir)]
    else:
        names = list(names)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SynthError(f"templates {twice} are listed more than once; list each case once")
    out: list[Template] = []
    for name in names:
        try:
            case = data.load_case(name, cache_dir)
        except ValueError as exc:
            if explicit:  # a case the user named must load; only the defaults may be skipped
                raise
            log.warning("template %s skipped: %s", name, exc)
            continue
        if case.organs is None:
            if explicit:
                raise SynthError(f"case {name!r} has no organ map, so it cannot be a template")
            log.info("template %s skipped: no organ map", name)
            continue
        ct = np.asarray(case.ct, dtype=np.float32)
        organs = np.asarray(case.organs).astype(np.int16)
        own = None
        if case.lesion is not None and np.any(case.lesion):
            own = (np.asarray(case.lesion) > 0).astype(np.uint8)
        out.append(Template(name=case.name, ct=ct, organs=organs, affine=np.asarray(case.affine, dtype=np.float64),
                            spacing=tuple(float(s) for s in case.spacing), lesion=own))  # type: ignore[arg-type]
    if not out:
        raise SynthError("no template with an organ map could be loaded; run 'bench data list' to see the cases")
    return out


def _umask_mode() -> int:
    """The mode a plainly created file gets (``0o666`` minus the umask); mkstemp uses 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class SynthCase:
    """One synthesized case in memory."""

    case: str
    lesion_type: str
    template: str
    ct: np.ndarray
    lesion: np.ndarray
    organs: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    report: dict[str, Any]
    synthesis: dict[str, Any]
    template_lesion: np.ndarray | None = None


def synthesize_case(
    template: Template, lesion_type: str, rng: np.random.Generator, *, case: str = "case", deform: bool = True
) -> SynthCase:
    """Make one lesion of ``lesion_type`` in (a deformed copy of) ``template``.

    Raises:
        SynthError: the template lacks the organ, or no placement worked in a few attempts.
    """
    organ_name = organ_of(lesion_type)
    if not template.has_organ(organ_name):
        raise SynthError(f"template {template.name!r} has no {organ_name}; cannot place {lesion_type}")
    organs_in = template.organs
    if template.lesion is not None:
        # Carry the template's own lesion through the deformation as a reserved label id.
        organs_in = organs_in.copy()
        organs_in[template.lesion > 0] = _OWN_LESION_ID
    if deform:
        ct, organs, aug = augment(template.ct, organs_in, template.spacing, template.affine, rng)
    else:
        ct, organs, aug = template.ct.copy(), organs_in.copy(), {"amplitude_mm": 0.0, "flipped": False}
    own = organs == _OWN_LESION_ID
    if own.any():  # the organ map keeps the organ the real lesion sits in
        near = ndimage.binary_dilation(own, iterations=2) & ~own
        ids = organs[near]
        organs[own] = int(np.bincount(ids[ids > 0]).argmax()) if (ids > 0).any() else 0
    organ = np.isin(organs, ORGAN_IDS[organ_name]) & ~own
    if organ.sum() < 20:
        raise SynthError(f"{template.name}: the {organ_name} vanished after deformation")
    last: Exception | None = None
    for _ in range(_ATTEMPTS):
        try:
            report, target = draw_report_and_target(rng, lesion_type, organs, template.spacing)
            spec = spec_from_report(report, lesion_type=lesion_type)
            mask = lesion_mask(spec, organ, (organs == 0) & ~own, template.spacing, target, rng)
        except SynthError as exc:
            last = exc
            continue
        break
    else:
        raise SynthError(f"{template.name}: could not place {lesion_type} in {_ATTEMPTS} attempts ({last})")
    requested_size = list(report.size)
    realised = _report_with_realised_size(report, mask, template.spacing)
    parench = np.isin(organs, (5, 1, 2, 3))
    if parench.sum() < 200:
        parench = (ct > -150) & (ct < 150)
    noise = estimate_noise(ct, parench)
    organ_hu = reference_hu(ct, organ, organ_name)
    params = render_lesion(ct, mask, spec, organ_hu=organ_hu, noise_std=noise, rng=rng)
    # Organ map consistency: lesion voxels outside the organ (protruding) become that organ.
    outside = mask & ~organ
    if outside.any():
        ids = organs[ndimage.binary_dilation(mask, iterations=2) & organ]
        organs[outside] = int(np.bincount(ids).argmax()) if ids.size else ORGAN_IDS[organ_name][0]
    synthesis = {"spec": asdict(spec), "params": params, "augment": aug, "voxels": int(mask.sum()),
                 "requested_size_mm": requested_size}
    report_dict: dict[str, Any] = dict(realised.to_dict())
    report_dict["text"] = realised.text()
    return SynthCase(case=case, lesion_type=lesion_type, template=template.name, ct=ct, lesion=mask.astype(np.uint8),
                     organs=organs, affine=template.affine, spacing=template.spacing, report=report_dict,
                     synthesis=synthesis,
                     template_lesion=own.astype(np.uint8) if own.any() else None)


def _report_with_realised_size(
    report: report_bbox.Report, mask: np.ndarray, spacing: tuple[float, float, float]
) -> report_bbox.Report:
    """The report with ``size`` set to the written mask's extent (mm, x y z).

    Shapes are perturbed, rotated and capped to fit the organ, so the realised lesion can differ
    from the size that was drawn; a training pair must describe the mask it holds. The drawn size
    is recorded in the case's ``synthesis`` block.
    """
    idx = np.argwhere(mask)
    extent = (idx.max(axis=0) - idx.min(axis=0) + 1) * np.asarray(spacing, dtype=np.float64)
    fields = report.to_dict()
    fields["size"] = [round(float(e), 1) for e in extent]
    try:
        return report_bbox.Report.from_dict(fields)
    except report_bbox.ReportError as exc:  # e.g. a realised size the vocabulary refuses
        raise SynthError(f"the realised lesion does not make a valid report: {exc}") from exc


def write_case(root: Path, sc: SynthCase) -> None:
    """Write one case atomically (the report last, it marks the case as finished)."""
    save_nifti(root / "imagesTr" / f"{sc.case}_0000.nii.gz", np.round(np.clip(sc.ct, -1024, 3071)),
               sc.affine, dtype=np.int16)
    save_nifti(root / "labelsTr" / f"{sc.case}.nii.gz", sc.lesion, sc.affine, dtype=np.uint8)
    save_nifti(root / "organs" / f"{sc.case}.nii.gz", sc.organs, sc.affine,
               dtype=np.uint8 if int(sc.organs.max()) < 256 else np.int16)
    if sc.template_lesion is not None:
        save_nifti(root / "template_lesions" / f"{sc.case}.nii.gz", sc.template_lesion, sc.affine, dtype=np.uint8)
    meta = {"case": sc.case, "lesion_type": sc.lesion_type, "template": sc.template,
            "text": sc.report.get("text", ""), "report": {k: v for k, v in sc.report.items() if k != "text"},
            "synthesis": sc.synthesis}
    _atomic_bytes(root / "reports" / f"{sc.case}.json", json.dumps(meta, indent=1, default=float).encode())


@dataclass
class DatasetSummary:
    """What a :func:`synthesize_dataset` run did."""

    root: Path
    written: int = 0
    skipped_existing: int = 0
    failed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    unavailable_types: tuple[str, ...] = ()
    #: finished cases whose index is ``n`` or more (left in place, never deleted)
    beyond_n: int = 0


def synthesize_dataset(
    out: str | Path,
    *,
    n: int,
    templates: Sequence[Template],
    types: Sequence[str] | None = None,
    seed: int = 0,
    deform: bool = True,
    prefix: str = "synth_",
    progress: bool = False,
) -> DatasetSummary:
    """Write ``n`` synthetic lesion cases to ``out`` (resumable; see the module docstring).

    Types are cycled (case ``i`` gets the ``i``-th of the usable types, modulo), so every type is
    equally represented; each case uses a random template that contains the type's organ.

    Args:
        out: dataset root (created).
        n: number of cases (>= 1).
        templates: real CTs with organ maps.
        types: lesion types (default all 14); types whose organ no template has are skipped with
            a warning when ``types`` is ``None`` and are an error when asked for explicitly.
        seed: base seed.
        deform: apply the anatomy augmentation (deformation, jitter, allowed flips).
        prefix: case id prefix.
        progress: show a tqdm bar.

    Raises:
        SynthError: bad ``n``, unknown type, no template for a requested type, or ``out`` holds a
            set made with other settings.
    """
    from tqdm.auto import tqdm

    try:
        check_dataset_options(n=n, seed=seed, types=types, prefix=prefix)
    except BenchError as exc:
        raise SynthError(str(exc)) from None
    if not templates:
        raise SynthError("at least one template is needed")
    for t in templates:
        if not isinstance(t, Template):
            raise SynthError(
                f"templates must be Template objects (load_templates, template_from_files), "
                f"got {type(t).__name__}"
            )
    names = [t.name for t in templates]
    twice = sorted({x for x in names if names.count(x) > 1})
    if twice:
        raise SynthError(f"templates named {twice} are given more than once; each counts once")
    wanted = check_types(types)
    usable = tuple(t for t in wanted if any(tp.has_organ(organ_of(t)) for tp in templates))
    missing = tuple(t for t in wanted if t not in usable)
    if missing and types:
        raise SynthError(f"no template contains the organ of {', '.join(missing)} "
                         f"(templates: {', '.join(t.name for t in templates)})")
    if missing:
        log.warning("no template has the organ of %s; those types are skipped", ", ".join(missing))
    if not usable:
        raise SynthError("none of the requested lesion types fits any template")
    root = check_dataset_folder(out)
    settings = {"format": FORMAT_VERSION, "seed": int(seed), "types": list(usable), "deform": bool(deform),
                "templates": sorted(t.name for t in templates), "prefix": prefix}
    manifest = root / "synth.json"
    if manifest.exists():
        old = _read_json(manifest, dict)
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise SynthError(f"{root} holds a set made with other settings {diff}; "
                             "use the same options to resume or another --out")
    counts = _finished_counts(root)  # reads every report: a corrupt one is named before any write
    finished = {int(c[len(prefix):]) for c in counts.cases if c[len(prefix):].isdigit()}
    beyond = sum(1 for i in finished if i >= n)
    summary = DatasetSummary(root=root, unavailable_types=missing, beyond_n=beyond)
    if beyond and all(i in finished for i in range(n)):
        # Nothing to do: every wanted case exists; say so, delete nothing.
        summary.skipped_existing = n
        summary.counts = dict(counts.by_type)
        return summary
    root.mkdir(parents=True, exist_ok=True)
    if not manifest.exists():
        _atomic_bytes(manifest, json.dumps(settings, indent=1).encode())
    for sub in ("imagesTr", "labelsTr", "organs", "reports", "template_lesions"):  # temp files of a killed run
        for stale in (root / sub).glob(".*") if (root / sub).is_dir() else ():
            if stale.is_file() and (stale.name.endswith(".tmp") or stale.name.endswith(".nii.gz")):
                stale.unlink()
    # The layout is valid (and loadable) while the run is in progress; dataset.json is rewritten
    # after every case, so an interrupted run leaves it current.
    _write_dataset_json(root, counts.by_type)
    for i in tqdm(range(n), desc="lesions", disable=not progress):
        case = f"{prefix}{i:05d}"
        if case in counts.cases:
            summary.skipped_existing += 1
            continue
        rng = np.random.default_rng([int(seed), i])
        lesion_type = usable[i % len(usable)]
        choices = [t for t in templates if t.has_organ(organ_of(lesion_type))]
        template = choices[int(rng.integers(len(choices)))]
        try:
            sc = synthesize_case(template, lesion_type, rng, case=case, deform=deform)
        except SynthError as exc:
            log.warning("case %s (%s) failed: %s", case, lesion_type, exc)
            summary.failed += 1
            continue
        write_case(root, sc)
        counts.cases.add(case)
        counts.by_type[lesion_type] += 1
        summary.written += 1
        _write_dataset_json(root, counts.by_type)
    summary.counts = dict(counts.by_type)
    return summary


def _read_json(path: Path, kind: type) -> Any:
    """Parse a JSON file; errors name the file."""
    try:
        value = json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise SynthError(f"{path}: not a JSON text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SynthError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise SynthError(f"{path}: the JSON must be an {kind.__name__}, found {type(value).__name__}")
    return value


@dataclass
class _Finished:
    cases: set[str]
    by_type: Counter


def _finished_counts(root: Path) -> _Finished:
    """The finished cases (those with a report) and their lesion types."""
    out = _Finished(cases=set(), by_type=Counter())
    for path in sorted((root / "reports").glob("*.json")) if (root / "reports").is_dir() else ():
        meta = _read_json(path, dict)
        if "lesion_type" not in meta:
            raise SynthError(f"{path}: the report has no 'lesion_type'")
        out.cases.add(path.stem)
        out.by_type[str(meta["lesion_type"])] += 1
    return out


def write_dataset_json(root: Path) -> dict[str, Any]:
    """(Re)write ``dataset.json`` from the finished cases (their reports)."""
    return _write_dataset_json(Path(root), _finished_counts(Path(root)).by_type)


def _write_dataset_json(root: Path, counts: Counter) -> dict[str, Any]:
    desc = {
        "name": "ctsynth rule-based lesions",
        "description": "Rule-based synthetic lesions on real CT templates (ctsynth-bench).",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": sum(counts.values()),
        "file_ending": ".nii.gz",
        "lesion_types": dict(sorted(counts.items())),
        "extra_folders": {"organs": "TotalSegmentator v2 organ map", "reports": "structured report JSON",
                          "template_lesions": "real lesion of the template CT (not in labelsTr), where present"},
    }
    _atomic_bytes(root / "dataset.json", json.dumps(desc, indent=1).encode())
    return desc


def template_from_files(ct_path: str | Path, organs_path: str | Path, *, name: str | None = None) -> Template:
    """A template from a CT file and its TotalSegmentator v2 organ map (reoriented to RAS).

    The pair goes through the validation of every loader (:func:`ctsynth_bench.data.load_volume_set`:
    readable 3D files, same shape and affine within tolerance, finite plausible HU, integer organ
    ids in range) and then :class:`Template`'s.

    Raises:
        DataError: a file is missing, unreadable or fails a check (the message names it).
    """
    from .. import data

    ct_path, organs_path = Path(ct_path), Path(organs_path)
    stem = ct_path.name
    for ext in (".nii.gz", ".nii", ".nrrd"):
        stem = stem.removesuffix(ext)
    case = data.load_volume_set(name or stem, ct=ct_path, organs=organs_path)
    assert case.organs is not None  # asked for above
    try:
        return Template(name=case.name, ct=case.ct, organs=case.organs.astype(np.int16),
                        affine=case.affine, spacing=case.spacing)
    except BenchError as exc:  # name the files, not only the template
        raise DataError(f"{ct_path} with {organs_path.name}: {exc}") from None
