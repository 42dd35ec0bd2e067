"""The rule table of the lesion synthesizer: report attribute value -> measurable effect.

Every rule the synthesizer follows is written down here once, in :data:`RULES`, and the same table
is what ``bench data lesions --stats`` checks the generated images against. A report is first
reduced to a :class:`LesionSpec` (canonical category per attribute, parsed from the free-text
values of the LesionDiffusion template by keywords, so it works for any spelling or synonym of the
closed vocabulary), and the spec drives the mask generator (``_shapes``) and the HU renderer
(``_render``).

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

import math
import re
from collections.abc import Mapping
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
        lesion_type: one of :data:`LESION_TYPE_RULES` (e.g. ``"liver_cyst"``).
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


@dataclass(frozen=True)
class TypeRule:
    """How one lesion type is drawn when report-bbox is not available, and which categories it may take."""

    organ: str
    shapes: tuple[str, ...]
    densities: tuple[str, ...]
    locations: tuple[str, ...]
    size_mm: tuple[float, float]
    variations: tuple[str, ...] = ("homogeneous", "heterogeneous")
    margins: tuple[str, ...] = ("well_defined", "ill_defined")
    features: tuple[str, ...] = ()


#: The 14 LesionDiffusion lesion types in 8 organ systems (Fig. 1 of the paper).
LESION_TYPE_RULES: dict[str, TypeRule] = {
    "lung_cancer": TypeRule("lung", ("round", "irregular"), ("soft_tissue", "ground_glass"), ("within",), (10, 40),
                            features=("spiculated",)),
    "liver_cancer": TypeRule("liver", ("round", "irregular"), ("hypo", "hyper", "mixed"), ("within", "protruding"),
                             (15, 60), features=("low_density_foci", "calcified_foci")),
    "liver_cyst": TypeRule("liver", ("cystic", "round"), ("fluid",), ("within",), (8, 40),
                           variations=("homogeneous",), margins=("well_defined",)),
    "gallbladder_cancer": TypeRule("gallbladder", ("wall_thickening", "protrusion"), ("iso", "hyper"), ("wall",),
                                   (10, 25)),
    "gallstone": TypeRule("gallbladder", ("round", "punctate"), ("stone",), ("lumen",), (4, 15),
                          variations=("homogeneous",), margins=("well_defined",)),
    "colon_cancer": TypeRule("colon", ("wall_thickening", "narrowing", "protrusion"), ("iso", "hypo"), ("wall",),
                             (15, 40)),
    "bladder_cancer": TypeRule("urinary_bladder", ("protrusion", "wall_thickening"), ("iso", "hyper"), ("wall",),
                               (10, 35)),
    "esophageal_cancer": TypeRule("esophagus", ("wall_thickening", "narrowing"), ("iso", "hypo"), ("wall",),
                                  (15, 40)),
    "stomach_cancer": TypeRule("stomach", ("wall_thickening", "protrusion"), ("iso", "hypo"), ("wall",), (15, 45)),
    "kidney_cancer": TypeRule("kidney", ("round", "irregular"), ("hypo", "iso", "mixed"), ("within", "protruding"),
                             (15, 50), features=("low_density_foci", "calcified_foci")),
    "kidney_cyst": TypeRule("kidney", ("cystic", "round"), ("fluid",), ("within", "protruding"), (8, 35),
                            variations=("homogeneous",), margins=("well_defined",)),
    "kidney_stone": TypeRule("kidney", ("punctate", "round"), ("stone",), ("within",), (3, 12),
                             variations=("homogeneous",), margins=("well_defined",)),
    "pancreas_cancer": TypeRule("pancreas", ("irregular", "round"), ("hypo", "iso"), ("within",), (12, 35),
                                 features=("low_density_foci",)),
    "pancreas_cyst": TypeRule("pancreas", ("cystic", "round"), ("fluid",), ("within",), (8, 30),
                                variations=("homogeneous",), margins=("well_defined",)),
}
LESION_TYPES: tuple[str, ...] = tuple(LESION_TYPE_RULES)


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
# Report -> LesionSpec (keyword parsing of the LesionDiffusion template's free-text values)
# ---------------------------------------------------------------------------------------------

_SHAPE_KEYS: tuple[tuple[str, str], ...] = (
    ("wall thickening", "wall_thickening"), ("narrowing", "narrowing"), ("protrusion", "protrusion"),
    ("protruding into", "protrusion"), ("punctate", "punctate"), ("nodular", "punctate"),
    ("cystic", "cystic"), ("irregular", "irregular"), ("round", "round"), ("oval", "round"),
)
_DENSITY_KEYS: tuple[tuple[str, str], ...] = (
    ("fluid", "fluid"), ("stone", "stone"), ("calculus", "stone"), ("soft tissue", "soft_tissue"),
    ("soft-tissue", "soft_tissue"), ("ground-glass", "ground_glass"), ("ground glass", "ground_glass"), ("mixed", "mixed"),
    ("ring enhancement", "mixed"), ("hypo", "hypo"), ("low density", "hypo"), ("low attenuation", "hypo"),
    ("hyper", "hyper"), ("high density", "hyper"), ("high attenuation", "hyper"), ("iso", "iso"),
)
_ILL = ("ill-defined", "ill defined", "irregularity", "unclear", "poorly defined", "blurred", "indistinct")


def _flatten(report: Mapping[str, object]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in report.items():
        norm = re.sub(r"[^a-z]+", "_", str(key).lower()).strip("_")
        if isinstance(value, Mapping):
            for k2, v2 in _flatten(value).items():
                out[f"{norm}_{k2}"] = v2
        elif isinstance(value, (list, tuple)):
            out[norm] = ", ".join(str(v) for v in value)
        elif value is not None:
            out[norm] = str(value)
    return out


def _find(flat: Mapping[str, str], *names: str) -> str:
    for key, value in flat.items():
        if any(name in key for name in names):
            return value.lower()
    return ""


def _match(text: str, keys: tuple[tuple[str, str], ...]) -> str | None:
    for needle, category in keys:
        if needle in text:
            return category
    return None


def parse_size_mm(value: object) -> tuple[float, float, float]:
    """Parse a size such as ``"8x12x14mm"``, ``"20 mm"`` or ``[8, 12, 14]`` into three diameters in mm."""
    if isinstance(value, (list, tuple)):
        nums = [float(v) for v in value]
    else:
        nums = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", str(value))]
    if not nums or any(not math.isfinite(v) or v <= 0 for v in nums):
        raise SynthError(f"cannot read a lesion size from {value!r}; expected e.g. '8x12x14mm' or [8, 12, 14]")
    if len(nums) == 1:
        nums = nums * 3
    elif len(nums) == 2:
        nums = [nums[0], nums[1], (nums[0] + nums[1]) / 2]
    return (nums[0], nums[1], nums[2])


def spec_from_report(report: Mapping[str, object], *, lesion_type: str) -> LesionSpec:
    """Reduce a report (``Report.to_dict()`` or a LesionDiffusion-style dict) to a :class:`LesionSpec`.

    Values are matched by keyword, so synonyms of the closed vocabulary map to the same category.
    Categories a report does not state fall back to the type's first allowed value.

    Raises:
        SynthError: unknown lesion type.
    """
    if lesion_type not in LESION_TYPE_RULES:
        raise SynthError(_unknown_type(lesion_type))
    trule = LESION_TYPE_RULES[lesion_type]
    flat = _flatten(report)
    shape_text = _find(flat, "shape")
    density_value = next((v.lower() for k, v in flat.items() if k.endswith("density") or k == "density"), "")
    variation_text = _find(flat, "variation")
    surface_text = _find(flat, "surface", "margin", "boundary")
    feature_text = _find(flat, "specific", "feature")
    enh_text = _find(flat, "enhancement")
    location_text = " ".join(v.lower() for k, v in flat.items() if "location" in k or "cavity" in k or "organ_type" in k)
    shape = _match(shape_text, _SHAPE_KEYS) or trule.shapes[0]
    density = _match(density_value, _DENSITY_KEYS) or trule.densities[0]
    if "stone" in feature_text or "calculus" in feature_text:
        density = "stone"
    variation = "heterogeneous" if "hetero" in variation_text or density == "mixed" else "homogeneous"
    margin = "ill_defined" if any(k in surface_text for k in _ILL) else "well_defined"
    features: list[str] = []
    if "increased" in feature_text or "calcif" in feature_text:
        features.append("calcified_foci")
    if "decreased" in feature_text or "low-density area" in feature_text or "low density area" in feature_text:
        features.append("low_density_foci")
    if "spicul" in feature_text:
        features.append("spiculated")
    enhancement = "non_contrast" if ("non" in enh_text or not enh_text) else "enhanced"
    if "lumen" in location_text and density == "stone":
        location = "lumen"
    elif "protrud" in location_text:
        location = "protruding"
    elif trule.organ in HOLLOW:
        location = "lumen" if density == "stone" else "wall"
    else:
        location = "within"
    if location == "wall" and shape not in ("wall_thickening", "protrusion", "narrowing"):
        # A solid lesion of a hollow organ grows from its wall: a mass "in the lumen" protrudes
        # into it, anything else thickens the wall.
        shape = "protrusion" if "lumen" in location_text else "wall_thickening"
    if location == "lumen" and density != "stone":
        location = "wall"
    size_text = next((v for k, v in flat.items() if "size" in k), "")
    size = parse_size_mm(size_text) if size_text else (float(trule.size_mm[0]),) * 3
    return LesionSpec(
        lesion_type=lesion_type, organ=trule.organ, shape=shape, density=density,  # type: ignore[arg-type]
        variation=variation, margin=margin, enhancement=enhancement, location=location,  # type: ignore[arg-type]
        features=tuple(features), size_mm=size,  # type: ignore[arg-type]
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
        if name not in LESION_TYPE_RULES:
            raise SynthError(_unknown_type(name))
    return tuple(types)
