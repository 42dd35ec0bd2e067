"""Drawing a report per lesion type, and placing it.

With ``report-bbox`` installed, reports and boxes come from ``report_bbox.sample_report_and_bbox``
and the target point is the box centre. Without it (or for a type name report-bbox
does not know), an equivalent report in the LesionDiffusion template's wording is drawn from the
type's allowed categories (``_rules.LESION_TYPE_RULES``), and the target is a random organ voxel.
Either way the synthesizer only sees the report's text values, parsed by ``spec_from_report``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ._rules import LESION_TYPE_RULES, SynthError

log = logging.getLogger(__name__)

_SHAPE_TEXT = {
    "round": "round-like", "irregular": "irregular", "punctate": "punctate", "cystic": "cystic",
    "wall_thickening": "irregular wall thickening", "protrusion": "protrusion into the lumen",
    "narrowing": "luminal narrowing",
}
_DENSITY_TEXT = {
    "hypo": "hypodense lesion", "iso": "isodense lesion", "hyper": "hyperdense lesion",
    "mixed": "mixed-density lesion", "fluid": "hypoattenuating fluid-like lesion", "stone": "hyperdense lesion",
    "soft_tissue": "isodense soft tissue mass", "ground_glass": "low-density ground-glass opacity",
}
_LOCATION_TEXT = {
    "within": "within the parenchymal organ", "protruding": "protruding from the parenchymal organ",
    "lumen": "within the lumen of a hollow organ", "wall": "wall thickening",
}
_FEATURE_TEXT = {
    "calcified_foci": "presence of increased density areas", "low_density_foci": "presence of decreased density areas",
    "spiculated": "spiculated margins",
}


def _report_bbox() -> Any | None:
    try:
        import report_bbox
    except ImportError:
        return None
    return report_bbox if hasattr(report_bbox, "sample_report") else None


def fallback_report(rng: np.random.Generator, lesion_type: str) -> dict[str, str]:
    """A LesionDiffusion-template report for ``lesion_type`` drawn from its allowed categories."""
    if lesion_type not in LESION_TYPE_RULES:
        raise SynthError(f"unknown lesion type {lesion_type!r}")
    t = LESION_TYPE_RULES[lesion_type]
    shape = str(rng.choice(t.shapes))
    density = str(rng.choice(t.densities))
    location = str(rng.choice(t.locations))
    variation = "heterogeneous" if density == "mixed" else str(rng.choice(t.variations))
    margin = str(rng.choice(t.margins))
    feats = [f for f in t.features if rng.random() < 0.4]
    if density == "stone":
        feats = []
    lo, hi = t.size_mm
    if shape == "punctate":
        hi = min(hi, 8.0)
        lo = min(lo, hi)
    d = rng.uniform(lo, hi)
    size = [d * rng.uniform(0.8, 1.0) for _ in range(3)]
    feature_text = ", ".join(_FEATURE_TEXT[f] for f in feats)
    if density == "stone":
        feature_text = "stone"
    return {
        "lesion type": lesion_type.replace("_", " "),
        "organ": t.organ.replace("_", " "),
        "shape": _SHAPE_TEXT[shape],
        "lesion location": _LOCATION_TEXT[location],
        "size": "x".join(f"{s:.0f}" for s in size) + "mm",
        "relationship with surrounding organs": "no close relationship with surrounding organs",
        "surface characteristics": "well-defined margin" if margin == "well_defined" else "ill-defined margin",
        "specific features": feature_text,
        "enhancement status": str(rng.choice(["enhanced ct", "non-contrast ct"])),
        "density": _DENSITY_TEXT[density],
        "density variations": variation,
    }


def draw_report_and_target(
    rng: np.random.Generator, lesion_type: str, organ: np.ndarray, organs: np.ndarray,
    spacing: tuple[float, float, float],
) -> tuple[dict[str, Any], np.ndarray]:
    """Draw a report for ``lesion_type`` and the preferred lesion centre (voxels).

    With report-bbox: ``sample_report_and_bbox`` (reports that do not fit this organ are redrawn)
    and the box centre. Otherwise :func:`fallback_report` and a random organ voxel.

    Raises:
        SynthError: report-bbox could not place any report of this type here.
    """
    rb = _report_bbox()
    if rb is not None and lesion_type in getattr(rb, "LESION_TYPES", ()):
        try:
            report, box = rb.sample_report_and_bbox(rng, organs, spacing, lesion_type=lesion_type)
        except ValueError as exc:  # BBoxError / ReportError
            raise SynthError(f"report-bbox could not place {lesion_type}: {exc}") from exc
        out = dict(report.to_dict())
        out["text"] = report.text()
        return out, np.asarray(box.center, dtype=np.float64)
    pts = np.argwhere(organ)
    report = fallback_report(rng, lesion_type)
    report["text"] = "; ".join(f"{k}: {v}" for k, v in report.items() if v)
    return report, pts[rng.integers(len(pts))].astype(np.float64)
