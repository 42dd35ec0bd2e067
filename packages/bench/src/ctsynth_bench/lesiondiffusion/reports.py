"""Derive structured reports from lesion masks: ``bench data reports``.

For a lesion dataset with masks but no reports (MSD, KiTS, nnU-Net raw with a TotalSegmentator
organ map, or our own layout), each case's lesion is measured with the measurements that
``bench data lesions --stats`` uses (``measure_case``: sphericity, solidity, lesion-minus-organ HU,
robust HU spread over the CT noise, edge sharpness, volume) plus its extent and its position in the
organ map, and the attributes that these decide are written in the report vocabulary:

=======================  ================================================================
attribute                rule (boundaries chosen between the rule table's renderings)
=======================  ================================================================
organ                    most common organ id under the lesion and one voxel around it
organ_type               hollow / parenchymal, from the organ
lesion_location          share of the voxels just outside the lesion that are outside the
                         organ: hollow organs, wall when >= 0.1, else within the lumen;
                         parenchymal, within when < 0.1, protruding when >= 0.5, left out
                         in between (a thin organ makes a lesion inside it look protruding)
size                     extent in mm along x, y, z
shape                    needs >= 30 voxels (else left out; stones <= 0.35 ml: punctate);
                         hollow-organ wall: protrusion into the lumen when sphericity >= 0.78
                         and solidity >= 0.85, else irregular wall thickening (luminal
                         narrowing is not told apart); otherwise round-like when sphericity
                         >= 0.80 and solidity >= 0.85, irregular when sphericity < 0.80 or
                         solidity < 0.80, left out in between (cystic is not told apart)
density                  stone (median >= 180 HU): hyperdense; lung: ground-glass opacity
                         (<= -250 HU) or isodense soft-tissue mass; parenchymal organs,
                         homogeneous with median -8..28 HU: fluid-like hypodense; robust
                         spread >= 4 x noise with lesion-minus-organ -55..15 HU: mixed
                         density; else hypo/iso/hyperdense by lesion-minus-organ HU (< -10,
                         -10..10, > 10; hollow organs against the 40 HU wall reference)
density_variations       heterogeneous when the robust HU spread is >= 1.6 x the CT noise
surface_characteristics  well-/ill-defined margin from the edge sharpness (>= 0.6 well
                         defined), only where measurable (parenchymal, contrast > 2.5 x noise)
=======================  ================================================================

Enhancement status, relationship with surrounding organs and specific features are not decided by
these measurements and are left out. Every derived report says ``"derived": true``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import report_bbox
from scipy import ndimage

from ..exceptions import BenchError
from ._io import atomic_json

__all__ = [
    "DerivedReport",
    "ReportsError",
    "derive_report",
    "derive_reports",
    "measure_lesion",
]

log = logging.getLogger(__name__)

#: thresholds (see the module docstring); kept equal to the rule table's boundaries
WALL_SHELL_FRACTION = 0.1
WITHIN_SHELL_FRACTION, PROTRUDING_SHELL_FRACTION = 0.1, 0.5
PUNCTATE_ML = 0.35
ROUND_SPHERICITY, ROUND_SOLIDITY, IRREGULAR_SOLIDITY = 0.80, 0.85, 0.80
PROTRUSION_SPHERICITY, PROTRUSION_SOLIDITY = 0.78, 0.85
MIXED_STD_RATIO, MIXED_DELTA_HU = 4.0, (-55.0, 15.0)
STONE_HU = 180.0
GROUND_GLASS_HU = -250.0
FLUID_HU = (-8.0, 28.0)
DENSITY_DELTA_HU = 10.0
HETEROGENEOUS_STD_RATIO = 1.6
WELL_DEFINED_EDGE = 0.6
_CROP_MARGIN = 16


class ReportsError(BenchError):
    """A dataset or option that ``bench data reports`` cannot use."""


def _group(organ: str) -> str | None:
    """The rule table's organ group containing ``organ`` (``kidney_left`` -> ``kidney``)."""
    from ..rulesynth._rules import ORGAN_IDS

    ids = set(report_bbox.organ_ids(organ))
    for name, group_ids in ORGAN_IDS.items():
        if ids <= set(group_ids):
            return name
    return None


def measure_lesion(
    ct: np.ndarray,
    lesion: np.ndarray,
    organs: np.ndarray,
    spacing: Sequence[float],
    *,
    organ: str,
    location: Literal["within", "protruding", "lumen", "wall"] = "within",
) -> dict[str, Any]:
    """Measure one lesion as ``bench data lesions --stats`` does, plus its extent and HU spread.

    Args:
        ct: float HU (X, Y, Z), RAS.
        lesion: lesion mask, same shape (nonzero = lesion).
        organs: TotalSegmentator v2 ids, same shape.
        spacing: mm per voxel (x, y, z).
        organ: the organ the lesion belongs to (report-bbox name).
        location: location class (the edge is measured only for parenchymal ``within``/``protruding``).

    Returns:
        ``volume_ml``, ``extent_mm`` (3), ``sphericity``, ``solidity``, ``mean_hu``, ``delta_hu``
        (lesion-minus-organ), ``hu_std`` (robust std in the lesion core), ``std_ratio``, ``edge``,
        ``hot_fraction``, ``cold_fraction``; ``None`` where undefined (e.g. shape under 30 voxels).
    """
    from ..rulesynth._rules import LESION_TYPES, LesionSpec, organ_of
    from ..rulesynth._stats import measure_case

    m = lesion > 0
    if not m.any():
        raise ReportsError("the lesion mask is empty")
    idx = np.argwhere(m)
    lo = np.maximum(idx.min(0) - _CROP_MARGIN, 0)
    hi = np.minimum(idx.max(0) + _CROP_MARGIN + 1, m.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    ct_c, m_c, org_c = np.asarray(ct[sl], np.float32), m[sl], np.asarray(organs[sl])
    sp = tuple(float(s) for s in spacing)
    extent = (idx.max(0) - idx.min(0) + 1) * np.asarray(sp)
    out: dict[str, Any] = {"extent_mm": [round(float(e), 2) for e in extent]}
    group = _group(organ)
    if group is None:  # an organ outside the rule table: the organ-free measurements only
        from shape_metrics import sphericity

        vals = ct_c[m_c].astype(np.float64)
        out.update(
            volume_ml=float(m.sum()) * float(np.prod(sp)) / 1000.0,
            sphericity=float(sphericity(m_c, sp)) if m.sum() >= 30 else None,
            mean_hu=float(np.median(vals)),
            delta_hu=None,
        )
    else:
        # measure_case reads only the spec's organ and location; the other categories are unused.
        ltype = next(t for t in LESION_TYPES if organ_of(t) == group)
        probe = LesionSpec(
            lesion_type=ltype,
            organ=group,
            shape="round",
            density="iso",  # type: ignore[arg-type]
            variation="homogeneous",
            margin="well_defined",
            enhancement="non_contrast",
            location=location,
            features=(),
            size_mm=tuple(extent),
        )  # type: ignore[arg-type]
        out.update(measure_case(ct_c, m_c.astype(np.uint8), org_c, sp, probe).values)
    din = ndimage.distance_transform_edt(m_c)
    core = m_c & (din >= 2)
    core = core if core.sum() >= 4 else m_c
    vals = ct_c[core].astype(np.float64)
    out["hu_std"] = (
        float(1.4826 * np.median(np.abs(vals - np.median(vals)))) if vals.size >= 4 else None
    )
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in out.items()}


# ------------------------------------------------------------------------------ derivation


@dataclass
class DerivedReport:
    """Attributes derived from one lesion mask (report vocabulary) and what they came from.

    Attributes:
        attributes: attribute -> value (report-bbox vocabulary); only those measured.
        categories: the rule table's canonical categories of the same (organ, location, shape,
            density, variation, margin), for comparison with rule-based reports.
        measured: the measurements (see :func:`measure_lesion`).
        left_out: attributes not derived, each with the reason.
        components: connected lesion components in the mask (the largest is described).
    """

    attributes: dict[str, Any]
    categories: dict[str, str]
    measured: dict[str, Any]
    left_out: dict[str, str] = field(default_factory=dict)
    components: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "derived": True,
            "report": dict(self.attributes),
            "categories": dict(self.categories),
            "measured": dict(self.measured),
            "left_out": dict(self.left_out),
            "components": self.components,
        }


def _organ_of(lesion: np.ndarray, organs: np.ndarray) -> str | None:
    around = ndimage.binary_dilation(lesion, iterations=1)
    ids = organs[around].astype(np.int64)
    ids = ids[ids > 0]
    if ids.size == 0:
        return None
    top = int(np.bincount(ids).argmax())
    name = report_bbox.TOTALSEG_V2.get(top)
    if name is None:
        return None
    for (
        group,
        members,
    ) in report_bbox.ORGAN_GROUPS.items():  # lobes -> lung, sides kept as report organs
        if name in members and group in ("lung",):
            return group
    return name if name in report_bbox.LESION_ORGANS else None


def _location(lesion: np.ndarray, organs: np.ndarray, organ: str) -> str | None:
    ids = np.asarray(report_bbox.organ_ids(organ))
    organ_mask = np.isin(organs, ids)
    shell = ndimage.binary_dilation(lesion, iterations=1) & ~lesion
    outside = float((~organ_mask[shell]).mean()) if shell.any() else 0.0
    if report_bbox.is_hollow(organ):
        return "wall" if outside >= WALL_SHELL_FRACTION else "lumen"
    if outside < WITHIN_SHELL_FRACTION:
        return "within"
    return "protruding" if outside >= PROTRUDING_SHELL_FRACTION else None


_LOCATION_TEXT = {
    "within": "within the parenchymal organ",
    "protruding": "protruding from the parenchymal organ",
    "lumen": "within the lumen of a hollow organ",
    "wall": "wall thickening",
}


def derive_report(
    ct: np.ndarray, lesion: np.ndarray, organs: np.ndarray, spacing: Sequence[float]
) -> DerivedReport:
    """Derive the measurable report attributes of the largest lesion component (RAS arrays).

    Raises:
        ReportsError: empty mask, or the lesion lies in no organ of the map.
    """
    m = lesion > 0
    if not m.any():
        raise ReportsError("the lesion mask is empty")
    labels, count = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    if count > 1:
        m = labels == int(np.bincount(labels.ravel())[1:].argmax() + 1)
    idx = np.argwhere(m)
    lo = np.maximum(idx.min(0) - _CROP_MARGIN, 0)
    hi = np.minimum(idx.max(0) + _CROP_MARGIN + 1, m.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    m_c, org_c, ct_c = m[sl], np.asarray(organs[sl]), np.asarray(ct[sl], np.float32)
    organ = _organ_of(m_c, org_c)
    if organ is None:
        raise ReportsError("the lesion touches no organ of the organ map that reports can name")
    sp = tuple(float(s) for s in spacing)
    hollow = report_bbox.is_hollow(organ)
    loc = _location(m_c, org_c, organ)
    meas = measure_lesion(ct_c, m_c, org_c, sp, organ=organ, location=loc or "within")  # type: ignore[arg-type]
    attrs: dict[str, Any] = {
        "organ": organ,
        "organ_type": "hollow organ" if hollow else "parenchymal organ",
        "size": meas["extent_mm"],
    }
    group = _group(organ) or organ
    cats: dict[str, str] = {"organ": group}
    left: dict[str, str] = {}
    if loc is None:
        left["lesion_location"] = "the lesion borders the organ surface but not clearly across it"
    else:
        attrs["lesion_location"], cats["location"] = _LOCATION_TEXT[loc], loc
    left |= {
        "enhancement_status": "the contrast phase is not measurable from one image and a mask",
        "relationship_with_surrounding_organs": "not measured",
        "specific_features": "not measured reliably (foci and texture overlap)",
    }
    # shape
    vol, sph, sol = meas.get("volume_ml"), meas.get("sphericity"), meas.get("solidity")
    mean_hu, delta, ratio = meas.get("mean_hu"), meas.get("delta_hu"), meas.get("std_ratio")
    stone = mean_hu is not None and mean_hu >= STONE_HU
    shape: tuple[str, str] | None = None
    if sph is None:
        if stone and vol is not None and vol <= PUNCTATE_ML:
            shape = ("punctate", "punctate")
        else:
            left["shape"] = "too few voxels for shape descriptors"
    elif hollow and loc == "wall":
        protrusion = sph >= PROTRUSION_SPHERICITY and (sol is None or sol >= PROTRUSION_SOLIDITY)
        shape = (
            ("protrusion into the lumen", "protrusion")
            if protrusion
            else ("irregular wall thickening", "wall_thickening")
        )
    elif sph >= ROUND_SPHERICITY and (sol is None or sol >= ROUND_SOLIDITY):
        shape = ("round-like", "round")
    elif sph < ROUND_SPHERICITY or (sol is not None and sol < IRREGULAR_SOLIDITY):
        shape = ("irregular", "irregular")
    else:
        left["shape"] = (
            f"sphericity {sph:.2f}, solidity {sol:.2f}: between round-like and irregular"
        )
    if shape:
        attrs["shape"], cats["shape"] = shape
    # density
    density: tuple[str, str] | None = None
    homogeneous = ratio is None or ratio < HETEROGENEOUS_STD_RATIO
    if stone:
        density = ("hyperdense", "stone")
    elif group == "lung" and mean_hu is not None:
        density = (
            ("ground-glass opacity", "ground_glass")
            if mean_hu <= GROUND_GLASS_HU
            else ("isodense soft-tissue mass", "soft_tissue")
        )
    elif delta is None:
        left["density"] = "no organ reference HU"
    elif (
        not hollow and homogeneous and mean_hu is not None and FLUID_HU[0] <= mean_hu <= FLUID_HU[1]
    ):
        density = ("fluid-like hypodense", "fluid")
    elif (
        ratio is not None
        and ratio >= MIXED_STD_RATIO
        and MIXED_DELTA_HU[0] <= delta <= MIXED_DELTA_HU[1]
    ):
        density = ("mixed density", "mixed")
    elif delta < -DENSITY_DELTA_HU:
        density = ("hypodense", "hypo")
    elif delta > DENSITY_DELTA_HU:
        density = ("hyperdense", "hyper")
    else:
        density = ("isodense", "iso")
    if density:
        attrs["density"], cats["density"] = density
    if ratio is not None:
        var = "heterogeneous" if ratio >= HETEROGENEOUS_STD_RATIO else "homogeneous"
        attrs["density_variations"], cats["variation"] = var, var
    else:
        left["density_variations"] = "too few lesion voxels for the HU spread"
    edge = meas.get("edge")
    if edge is not None:
        well = edge >= WELL_DEFINED_EDGE
        attrs["surface_characteristics"] = "well-defined margin" if well else "ill-defined margin"
        cats["margin"] = "well_defined" if well else "ill_defined"
    else:
        left["surface_characteristics"] = (
            "edge contrast not measurable (hollow organ or low contrast)"
        )
    return DerivedReport(
        attributes=attrs, categories=cats, measured=meas, left_out=left, components=int(count)
    )


# ------------------------------------------------------------------------------- datasets


@dataclass
class DeriveSummary:
    """What :func:`derive_reports` did."""

    out: Path
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def derive_reports(
    root: str | os.PathLike[str],
    *,
    layout: Literal["ours", "nnunet"] = "ours",
    organs: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> DeriveSummary:
    """Derive a report for every case of a lesion dataset and write ``<out>/<case>.json``.

    Args:
        root: dataset folder.
        layout: ``"ours"`` (``imagesTr``, ``labelsTr``, ``organs``) or ``"nnunet"`` (nnU-Net raw / MSD;
            ``organs`` is then the folder of TotalSegmentator maps named like the cases).
        organs: organ-map folder (required for ``nnunet``).
        out: output folder; default ``root/derived_reports`` for ours (the set's own reports are
            kept) and ``root/reports`` for nnunet.
        progress: tqdm bar.

    Raises:
        ReportsError: a missing folder or organs folder, a bad layout, or no case.
    """
    from tqdm.auto import tqdm

    from .. import data

    root = Path(root)
    if layout not in ("ours", "nnunet"):
        raise ReportsError(f"layout must be 'ours' or 'nnunet', got {layout!r}")
    if not root.is_dir():
        raise ReportsError(f"dataset folder {root} does not exist")
    if layout == "nnunet" and organs is None:
        raise ReportsError(
            "--layout nnunet needs --organs DIR (TotalSegmentator maps named like the cases)"
        )
    if organs is not None and not Path(organs).is_dir():
        raise ReportsError(f"organs folder {organs} does not exist")
    cases = (
        data.load_lesion_dataset(root)
        if layout == "ours"
        else data.load_nnunet_dataset(root, organs=organs)
    )
    if not cases:
        raise ReportsError(f"{root} holds no case in the {layout} layout")
    dest = (
        Path(out)
        if out is not None
        else root / ("derived_reports" if layout == "ours" else "reports")
    )
    summary = DeriveSummary(out=dest)
    for case in tqdm(cases, desc="deriving", disable=not progress):
        loaded = case.load() if hasattr(case, "load") else case
        name = case.case_id
        try:
            if loaded.organs is None or loaded.lesion is None:
                raise ReportsError("needs a lesion mask and an organ map")
            rep = derive_report(
                np.asarray(loaded.ct, np.float32),
                np.asarray(loaded.lesion),
                np.asarray(loaded.organs),
                loaded.spacing,
            )
        except (ReportsError, ValueError) as exc:
            summary.failed[name] = str(exc)
            log.warning("case %s: no report (%s)", name, exc)
            continue
        doc = {
            "case": name,
            **rep.to_dict(),
            "method": "measured from the mask, CT and organ map (ctsynth_bench.lesiondiffusion.reports)",
        }
        atomic_json(dest / f"{name}.json", doc)
        summary.written.append(name)
    return summary


#: Categories the derivation does not tell apart, compared as one (see the module docstring).
COARSE: dict[str, dict[str, str]] = {
    "shape": {"cystic": "round", "narrowing": "wall_thickening"},
    "density": {"fluid": "hypo"},
}


def _coarse(key: str, value: str, organ: str | None) -> str:
    if key == "density" and value == "soft_tissue" and organ != "lung":
        return "iso"  # "isodense soft-tissue mass" outside the lung
    return COARSE.get(key, {}).get(value, value)


def agreement(
    derived: Mapping[str, Mapping[str, str]], generating: Mapping[str, Mapping[str, str]]
) -> dict[str, tuple[int, int]]:
    """Per category: ``(agreeing, compared)`` over cases present in both (only derived categories count)."""
    out: dict[str, list[int]] = {}
    for case, cats in derived.items():
        truth = generating.get(case)
        if truth is None:
            continue
        for key, value in cats.items():
            if key not in truth:
                continue
            row = out.setdefault(key, [0, 0])
            row[0] += int(
                _coarse(key, value, cats.get("organ"))
                == _coarse(key, truth[key], truth.get("organ"))
            )
            row[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def generating_categories(report: Mapping[str, Any], lesion_type: str) -> dict[str, str]:
    """The rule-based synthesizer's canonical categories of a generating report (for :func:`agreement`)."""
    from ..rulesynth._rules import spec_from_report

    rep = (
        report
        if isinstance(report, report_bbox.Report)
        else report_bbox.Report.from_dict({k: v for k, v in report.items() if k != "text"})
    )
    spec = spec_from_report(rep, lesion_type=lesion_type)
    cats = {
        "organ": spec.organ,
        "location": spec.location,
        "shape": spec.shape,
        "density": spec.density,
        "variation": spec.variation,
        "margin": spec.margin,
    }
    if spec.density == "stone":  # rendered homogeneous with a sharp edge whatever the report says
        cats["variation"], cats["margin"] = "homogeneous", "well_defined"
    if spec.features and spec.variation == "homogeneous":
        cats.pop("variation")  # foci make a lesion heterogeneous on purpose (rule precedence)
    if "spiculated" in spec.features:
        cats.pop("shape")
    return cats
