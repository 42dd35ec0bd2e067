"""The rule table of the lesion synthesizer: report attribute value -> measurable effect.

Every rule the synthesizer follows is written down here once, in :data:`RULES`, and the same table
is what ``bench data lesions --stats`` checks the generated images against. A validated
:class:`report_bbox.Report` is first reduced to a :class:`LesionSpec` (one rendering category per
attribute, read from the report's canonical vocabulary values through the tables below), and the
spec drives the mask generator (``_shapes``) and the HU renderer (``_render``).

Lesion types, their organs, sizes and locations are report-bbox's (``report_bbox.LESION_TYPES``);
this module holds only what the synthesizer adds: how each value is rendered and measured.

Measured quantities (computed by ``_stats`` on the written image, lesion mask and organ map):

- ``sphericity``: pi^(1/3) (6V)^(2/3) / A, surface from marching cubes (shape-metrics).
- ``solidity``: V / V(convex hull).
- ``delta_hu``: median HU of the lesion core minus the median HU of the surrounding organ (organ
  voxels at least one voxel from the organ surface, within 4 voxels of the lesion); hollow organs
  use the 40 HU wall reference.
- ``mean_hu``: median HU of the lesion core (voxels >= 2 voxels deep, else the whole lesion);
  absolute, used for fluid, stone, soft tissue, ground glass.
- ``std_ratio``: robust HU standard deviation (1.4826 MAD) in the lesion core divided by the CT
  noise measured in the template's parenchyma (1 = as smooth as the template's own noise).
- ``edge``: edge sharpness, ``1 - (out1 - organ) / (core - organ)`` with ``out1`` the mean HU of
  the organ voxels face-adjacent to the lesion and ``organ`` the median 3-5 voxels away: about 1
  for a step edge, 0.1-0.4 for the halo of an ill-defined margin. Measured for lesions in
  parenchymal organs where the contrast is over 2.5 times the noise and the lesion's own spread.
- ``volume_ml``: lesion volume in millilitres.
- ``hot_fraction`` / ``cold_fraction``: fraction of lesion voxels more than 80 HU above / 25 HU
  below the lesion's median (calcified / low-density foci).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import report_bbox

from ..exceptions import BenchError

Shape = Literal["round", "irregular", "punctate", "cystic", "wall_thickening", "protrusion", "narrowing"]
Density = Literal["hypo", "iso", "hyper", "fluid", "stone", "mixed", "soft_tissue", "ground_glass"]
Variation = Literal["homogeneous", "heterogeneous"]
Margin = Literal["well_defined", "ill_defined"]
Feature = Literal["calcified_foci", "low_density_foci", "spiculated"]
Enhancement = Literal["enhanced", "non_contrast"]
Location = Literal["within", "protruding", "lumen", "wall"]

SHAPES: tuple[str, ...] = ("round", "irregular", "punctate", "cystic", "wall_thickening", "protrusion", "narrowing")
DENSITIES: tuple[str, ...] = ("hypo", "iso", "hyper", "fluid", "stone", "mixed", "soft_tissue", "ground_glass")
FEATURES: tuple[str, ...] = ("calcified_foci", "low_density_foci", "spiculated")


class SynthError(BenchError):
    """A report, template or option the lesion synthesizer cannot honour."""


#: Organ groups the lesion types live in -> TotalSegmentator v2 ids (from report-bbox's table).
_ORGANS: tuple[str, ...] = (
    "lung", "liver", "gallbladder", "colon", "urinary_bladder", "esophagus", "stomach", "kidney",
    "pancreas",
)
ORGAN_IDS: dict[str, tuple[int, ...]] = {name: report_bbox.organ_ids(name) for name in _ORGANS}
HOLLOW: frozenset[str] = frozenset(name for name in _ORGANS if report_bbox.is_hollow(name))


@dataclass(frozen=True)
class LesionSpec:
    """Canonical categories of one report, what the synthesizer acts on.

    Attributes:
        lesion_type: a key of ``report_bbox.LESION_TYPES`` (e.g. ``"liver_cyst"``).
        organ: organ group name (key of :data:`ORGAN_IDS`).
        shape, density, variation, margin, enhancement, location: canonical categories.
        features: specific features present (may be empty).
        size_mm: the three lesion diameters in mm, each > 0.
    """

    lesion_type: str
    organ: str
    shape: Shape
    density: Density
    variation: Variation
    margin: Margin
    enhancement: Enhancement
    location: Location
    features: tuple[Feature, ...]
    size_mm: tuple[float, float, float]


#: The 14 LesionDiffusion lesion types (Fig. 1 of the paper), in report-bbox's order.
LESION_TYPES: tuple[str, ...] = tuple(report_bbox.LESION_TYPES)


def organ_of(lesion_type: str) -> str:
    """Organ group (key of :data:`ORGAN_IDS`) of a lesion type, from report-bbox's table.

    Raises:
        SynthError: unknown lesion type (with the closest name).
    """
    if lesion_type not in report_bbox.LESION_TYPES:
        raise SynthError(_unknown_type(lesion_type))
    return report_bbox.LESION_TYPES[lesion_type].organ


@dataclass(frozen=True)
class Rule:
    """The measurable effect of one attribute value; ``None`` bounds are not constrained.

    Each field is an inclusive ``(low, high)`` range that the measured quantity of every lesion with
    this value must fall in (``_stats`` reports the fraction that does).
    """

    attribute: str
    value: str
    effect: str
    sphericity: tuple[float, float] | None = None
    solidity: tuple[float, float] | None = None
    delta_hu: tuple[float, float] | None = None
    mean_hu: tuple[float, float] | None = None
    std_ratio: tuple[float, float] | None = None
    edge: tuple[float, float] | None = None
    volume_ml: tuple[float, float] | None = None
    hot_fraction: tuple[float, float] | None = None
    cold_fraction: tuple[float, float] | None = None
    measures: tuple[str, ...] = field(default=())


def _rule(attribute: str, value: str, effect: str, **ranges: tuple[float, float]) -> Rule:
    return Rule(attribute, value, effect, measures=tuple(ranges), **ranges)


#: attribute value -> measurable effect. The renderer's parameters (comments) sit inside these ranges.
RULES: tuple[Rule, ...] = (
    # shape (mask attributes) ------------------------------------------------------------------
    _rule("shape", "round", "ellipsoid, axes = report size, random orientation",
          sphericity=(0.70, 1.0), solidity=(0.80, 1.0)),
    _rule("shape", "irregular", "ellipsoid whose radius is modulated by smooth noise (std 30-45 %)",
          sphericity=(0.35, 0.90), solidity=(0.55, 0.99)),
    _rule("shape", "punctate", "small compact focus, diameter 2-8 mm",
          volume_ml=(0.0, 0.35)),
    _rule("shape", "cystic", "smooth near-spherical ellipsoid (axis ratio <= 1.25)",
          sphericity=(0.72, 1.0), solidity=(0.82, 1.0)),
    _rule("shape", "wall_thickening", "a patch of a hollow organ's wall thickened inward by 4-12 mm",
          sphericity=(0.15, 0.85)),
    _rule("shape", "protrusion", "half-ellipsoid growing from the wall into the lumen",
          sphericity=(0.45, 1.0), solidity=(0.65, 1.0)),
    _rule("shape", "narrowing", "circumferential thickening of a stretch of a tubular organ",
          sphericity=(0.15, 0.85)),
    # density (image attributes), relative to the organ's measured HU ---------------------------
    _rule("density", "hypo", "organ HU - 30..60 (non-contrast), +12 if enhanced", delta_hu=(-90.0, -10.0)),
    _rule("density", "iso", "organ HU +- 6", delta_hu=(-14.0, 14.0)),
    _rule("density", "hyper", "organ HU + 18..40 (non-contrast), +12 if enhanced", delta_hu=(10.0, 70.0)),
    _rule("density", "mixed", "organ HU - 35..0 with coarse heterogeneous texture",
          delta_hu=(-55.0, 15.0), std_ratio=(1.6, 20.0)),
    _rule("density", "fluid", "absolute 0-20 HU", mean_hu=(-8.0, 28.0)),
    _rule("density", "stone", "absolute 300-900 HU", mean_hu=(180.0, 1200.0)),
    _rule("density", "soft_tissue", "absolute 20-50 HU (lung mass)", mean_hu=(-60.0, 70.0)),
    _rule("density", "ground_glass", "absolute -650..-350 HU (lung)", mean_hu=(-750.0, -250.0)),
    # density variations ------------------------------------------------------------------------
    _rule("variation", "homogeneous", "no texture: lesion noise = template noise", std_ratio=(0.5, 1.6)),
    _rule("variation", "heterogeneous", "smooth random texture, std 2-4x the template noise",
          std_ratio=(1.6, 20.0)),
    # margin -----------------------------------------------------------------------------------
    _rule("margin", "well_defined", "step edge (no blur)", edge=(0.6, 1.4)),
    _rule("margin", "ill_defined", "halo exp(-d^2/2s^2) outside the mask, s 1.0-1.6 voxels", edge=(-0.2, 0.6)),
    # specific features ---------------------------------------------------------------------------
    _rule("feature", "calcified_foci", "1-3 foci 150-400 HU above the lesion", hot_fraction=(0.002, 0.5)),
    _rule("feature", "low_density_foci", "1-3 foci 40-80 HU below the lesion", cold_fraction=(0.02, 0.7)),
    _rule("feature", "spiculated", "6-10 thin radial spikes, 1.8-2.6 radii long", solidity=(0.3, 0.92)),
    # enhancement: checked as a difference of group means (see _stats) --------------------------
    _rule("enhancement", "enhanced", "solid hypo/hyper lesions +12 HU vs non-contrast"),
    _rule("enhancement", "non_contrast", "no shift"),
)

#: Renderer constants (kept next to the rules they must satisfy).
ENHANCEMENT_SHIFT_HU = 12.0
DELTA_SAMPLING: dict[str, tuple[float, float]] = {
    "hypo": (-60.0, -30.0), "iso": (-6.0, 6.0), "hyper": (18.0, 40.0), "mixed": (-35.0, 0.0),
}
ABSOLUTE_SAMPLING: dict[str, tuple[float, float]] = {
    "fluid": (0.0, 20.0), "stone": (300.0, 900.0), "soft_tissue": (20.0, 50.0), "ground_glass": (-650.0, -350.0),
}


def rule_for(attribute: str, value: str) -> Rule:
    """Return the rule of ``attribute=value``; raise :class:`SynthError` naming the allowed values."""
    for rule in RULES:
        if rule.attribute == attribute and rule.value == value:
            return rule
    allowed = sorted(r.value for r in RULES if r.attribute == attribute)
    raise SynthError(f"no rule for {attribute}={value!r}; allowed values: {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------
# Report -> LesionSpec: canonical vocabulary value -> rendering category (one table per attribute)
# ---------------------------------------------------------------------------------------------

#: ``Report.shape`` -> mask shape.
SHAPE_OF: dict[str, str] = {
    "round-like": "round", "irregular": "irregular", "irregular wall thickening": "wall_thickening",
    "punctate": "punctate", "cystic": "cystic", "luminal narrowing": "narrowing",
    "protrusion into the lumen": "protrusion",
}
#: ``Report.density`` -> rendered density (a ``"stone"`` feature overrides it with ``stone``).
DENSITY_OF: dict[str, str] = {
    "hypodense": "hypo", "isodense": "iso", "hyperdense": "hyper", "mixed density": "mixed",
    "fluid-like hypodense": "fluid", "isodense soft-tissue mass": "soft_tissue",
    "soft-tissue mass with peripheral ground-glass opacity": "soft_tissue",
    "ground-glass opacity": "ground_glass", "ring enhancement": "mixed",
}
#: ``Report.surface_characteristics`` -> margin.
MARGIN_OF: dict[str, str] = {
    "well-defined margin": "well_defined", "ill-defined margin": "ill_defined",
    "clear serosal surface": "well_defined", "serosal surface irregularity": "ill_defined",
    "clear boundary with the renal parenchyma": "well_defined",
    "unclear boundary with the renal parenchyma": "ill_defined",
    "poorly defined boundary with normal oesophageal tissue": "ill_defined",
}
#: ``Report.specific_features`` -> rendered features (``"stone"`` acts on the density instead).
FEATURES_OF: dict[str, tuple[str, ...]] = {
    "decreased-density areas": ("low_density_foci",), "increased-density areas": ("calcified_foci",),
    "increased- and decreased-density areas": ("calcified_foci", "low_density_foci"),
    "spiculated margins": ("spiculated",), "retention of pancreatic fluid": (), "stone": (), "none": (),
}
#: ``Report.enhancement_status`` -> enhancement.
ENHANCEMENT_OF: dict[str, str] = {"enhanced CT": "enhanced", "non-contrast CT": "non_contrast"}
_WALL_SHAPES = ("wall_thickening", "protrusion", "narrowing")


def _check_tables() -> None:
    """Every canonical value of report-bbox's vocabulary has a rendering category (import-time check)."""
    from report_bbox import VOCABULARY

    for attribute, table in (("shape", SHAPE_OF), ("density", DENSITY_OF),
                             ("surface_characteristics", MARGIN_OF), ("specific_features", FEATURES_OF),
                             ("enhancement_status", ENHANCEMENT_OF)):
        missing = set(VOCABULARY[attribute]) ^ set(table)
        if missing:  # pragma: no cover - a vocabulary change in report-bbox
            raise RuntimeError(f"rulesynth has no rendering rule for {attribute} values {sorted(missing)}")


_check_tables()


def spec_from_report(report: report_bbox.Report, *, lesion_type: str | None = None) -> LesionSpec:
    """Reduce a validated report to the :class:`LesionSpec` the synthesizer renders.

    Every attribute is read from the report's canonical value through the tables above
    (:data:`SHAPE_OF`, :data:`DENSITY_OF`, :data:`MARGIN_OF`, :data:`FEATURES_OF`,
    :data:`ENHANCEMENT_OF`); the organ group and its kind (hollow or parenchymal) come from
    report-bbox's lesion type table. Two adjustments keep the categories drawable: a lesion of a
    hollow organ that is not a stone grows from the wall (a mass "in the lumen" protrudes into it,
    any other shape thickens the wall), and a stone's density is ``stone``.

    Args:
        report: a validated :class:`report_bbox.Report` (``Report.from_dict`` reads a dict).
        lesion_type: a key of ``report_bbox.LESION_TYPES``; defaults to ``report.lesion_type``.

    Raises:
        SynthError: not a Report, no or unknown lesion type.
    """
    if not isinstance(report, report_bbox.Report):
        raise SynthError(
            f"spec_from_report takes a report_bbox.Report, got {type(report).__name__}; "
            "build one with report_bbox.Report.from_dict(...)"
        )
    lesion_type = lesion_type if lesion_type is not None else report.lesion_type
    if lesion_type is None:
        raise SynthError("spec_from_report needs a lesion type: the report has none and none was given")
    organ = organ_of(lesion_type)
    shape = SHAPE_OF[report.shape]
    density = "stone" if report.specific_features == "stone" else DENSITY_OF[report.density]
    variation = "heterogeneous" if report.density_variations == "heterogeneous" or density == "mixed" else "homogeneous"
    in_lumen = report.lesion_location == "within the lumen of a hollow organ"
    if in_lumen and density == "stone":
        location = "lumen"
    elif report.lesion_location == "protruding from the parenchymal organ":
        location = "protruding"
    elif organ in HOLLOW:
        location = "lumen" if density == "stone" else "wall"
    else:
        location = "within"
    if location == "wall" and shape not in _WALL_SHAPES:
        shape = "protrusion" if in_lumen else "wall_thickening"
    return LesionSpec(
        lesion_type=lesion_type, organ=organ, shape=shape, density=density,  # type: ignore[arg-type]
        variation=variation, margin=MARGIN_OF[report.surface_characteristics],  # type: ignore[arg-type]
        enhancement=ENHANCEMENT_OF[report.enhancement_status], location=location,  # type: ignore[arg-type]
        features=FEATURES_OF[report.specific_features], size_mm=tuple(float(v) for v in report.size),  # type: ignore[arg-type]
    )


def _unknown_type(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, LESION_TYPES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown lesion type {name!r}; allowed: {', '.join(LESION_TYPES)}{hint}"


def check_types(types: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate a list of lesion type names (``None`` = all 14)."""
    if not types:
        return LESION_TYPES
    for name in types:
        if name not in report_bbox.LESION_TYPES:
            raise SynthError(_unknown_type(name))
    return tuple(types)
