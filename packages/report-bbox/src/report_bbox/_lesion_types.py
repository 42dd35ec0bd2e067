"""The 14 LesionDiffusion lesion types and which report values go with each (a data table).

This table is the medical knowledge behind :func:`report_bbox.sample_report`, and what the
rule-based lesion synthesizer and the evaluation read: for each lesion type the organs it occurs in,
the allowed value of every categorical attribute, the size range in mm and the location.

======================  ===============  =====================================  ===============
lesion type             organ(s)         location                               size (mm)
======================  ===============  =====================================  ===============
gallstone               gallbladder      lumen                                  3 - 25
kidney_stone            kidney           within the parenchymal organ           2 - 15
liver_cyst              liver            within / protruding                    5 - 60
pancreas_cyst           pancreas         within / protruding                    5 - 40
kidney_cyst             kidney           within / protruding                    5 - 50
esophageal_cancer       esophagus        wall thickening                        15 - 60
gallbladder_cancer      gallbladder      wall thickening / lumen                10 - 45
lung_cancer             lung             within / protruding                    5 - 60
liver_cancer            liver            within / protruding                    10 - 100
pancreas_cancer         pancreas         within / protruding                    10 - 60
kidney_cancer           kidney           within / protruding                    10 - 90
stomach_cancer          stomach          wall thickening / lumen                15 - 80
colon_cancer            colon            wall thickening / lumen                15 - 70
bladder_cancer          urinary_bladder  wall thickening / lumen                10 - 60
======================  ===============  =====================================  ===============

Kidney stones sit in the collecting system; the organ table counts the kidney as parenchymal, so
their location is "within the parenchymal organ". Sizes give the largest diameter; the other two
axes are drawn between ``aspect_range`` times it (see :func:`report_bbox.sample_report`).

:data:`RULES` adds co-occurrence constraints that hold across lesion types (e.g. luminal
narrowing implies wall thickening; fluid-like density implies homogeneous).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from ._organs import ORGANS, resolve_organ
from .exceptions import ReportError

__all__ = ["LESION_TYPES", "RULES", "LesionTypeSpec", "Rule", "lesion_type_name", "rule_violations"]

_WITHIN = "within the parenchymal organ"
_PROTRUDING = "protruding from the parenchymal organ"
_LUMEN = "within the lumen of a hollow organ"
_WALL = "wall thickening"
_BOTH_REL = (
    "no close relationship with surrounding organs",
    "close relationship with adjacent organs",
)
_NO_REL = ("no close relationship with surrounding organs",)
_ENH = ("enhanced CT", "non-contrast CT")


@dataclass(frozen=True)
class LesionTypeSpec:
    """Allowed report values for one lesion type. Every tuple lists canonical vocabulary values.

    Attributes:
        name: Lesion type name (a key of :data:`LESION_TYPES`).
        organ: The default organ (canonical name; a group such as ``"kidney"`` where it applies).
        organs: Every organ name a report of this type may give.
        lesion_location: Allowed locations (all fit the organ type).
        shape: Allowed shapes.
        density: Allowed densities.
        density_variations: Allowed density variations.
        surface_characteristics: Allowed surfaces.
        relationship_with_surrounding_organs: Allowed relationships.
        specific_features: Allowed specific features.
        enhancement_status: Allowed enhancement statuses.
        size_mm: ``(min, max)`` of the largest lesion diameter in mm.
        aspect_range: ``(min, max)`` of each other axis divided by the largest diameter.
    """

    name: str
    organ: str
    organs: tuple[str, ...]
    lesion_location: tuple[str, ...]
    shape: tuple[str, ...]
    density: tuple[str, ...]
    density_variations: tuple[str, ...]
    surface_characteristics: tuple[str, ...]
    relationship_with_surrounding_organs: tuple[str, ...]
    specific_features: tuple[str, ...]
    enhancement_status: tuple[str, ...] = _ENH
    size_mm: tuple[float, float] = (10.0, 50.0)
    aspect_range: tuple[float, float] = (0.6, 1.0)

    def allowed(self, attribute: str) -> tuple[str, ...]:
        """Allowed canonical values of a categorical attribute (``organ`` gives :attr:`organs`)."""
        if attribute == "organ":
            return self.organs
        if attribute == "organ_type":
            return tuple(sorted({f"{ORGANS[o].kind} organ" for o in self.organs}))
        return getattr(self, attribute)


_KIDNEYS = ("kidney", "kidney_left", "kidney_right")
_LUNGS = (
    "lung",
    "lung_left",
    "lung_right",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
)
_HOLLOW_CANCER = dict(
    density=("isodense soft-tissue mass", "isodense", "mixed density"),
    density_variations=("heterogeneous", "homogeneous"),
    relationship_with_surrounding_organs=_BOTH_REL,
    specific_features=("none", "decreased-density areas"),
    aspect_range=(0.4, 1.0),
)

LESION_TYPES: dict[str, LesionTypeSpec] = {
    s.name: s
    for s in (
        LesionTypeSpec(
            name="gallstone",
            organ="gallbladder",
            organs=("gallbladder",),
            lesion_location=(_LUMEN,),
            shape=("punctate", "round-like"),
            density=("hyperdense",),
            density_variations=("homogeneous",),
            surface_characteristics=("well-defined margin",),
            relationship_with_surrounding_organs=_NO_REL,
            specific_features=("stone",),
            size_mm=(3.0, 25.0),
            aspect_range=(0.7, 1.0),
        ),
        LesionTypeSpec(
            name="kidney_stone",
            organ="kidney",
            organs=_KIDNEYS,
            lesion_location=(_WITHIN,),
            shape=("punctate",),
            density=("hyperdense",),
            density_variations=("homogeneous",),
            surface_characteristics=("well-defined margin",),
            relationship_with_surrounding_organs=_NO_REL,
            specific_features=("stone",),
            size_mm=(2.0, 15.0),
            aspect_range=(0.6, 1.0),
        ),
        LesionTypeSpec(
            name="liver_cyst",
            organ="liver",
            organs=("liver",),
            lesion_location=(_WITHIN, _PROTRUDING),
            shape=("round-like", "cystic"),
            density=("fluid-like hypodense", "hypodense"),
            density_variations=("homogeneous",),
            surface_characteristics=("well-defined margin",),
            relationship_with_surrounding_organs=_NO_REL,
            specific_features=("none",),
            size_mm=(5.0, 60.0),
            aspect_range=(0.8, 1.0),
        ),
        LesionTypeSpec(
            name="pancreas_cyst",
            organ="pancreas",
            organs=("pancreas",),
            lesion_location=(_WITHIN, _PROTRUDING),
            shape=("round-like", "cystic"),
            density=("fluid-like hypodense", "hypodense"),
            density_variations=("homogeneous",),
            surface_characteristics=("well-defined margin",),
            relationship_with_surrounding_organs=_NO_REL,
            specific_features=("none", "retention of pancreatic fluid"),
            size_mm=(5.0, 40.0),
            aspect_range=(0.7, 1.0),
        ),
        LesionTypeSpec(
            name="kidney_cyst",
            organ="kidney",
            organs=_KIDNEYS,
            lesion_location=(_WITHIN, _PROTRUDING),
            shape=("round-like", "cystic"),
            density=("fluid-like hypodense", "hypodense"),
            density_variations=("homogeneous",),
            surface_characteristics=(
                "well-defined margin",
                "clear boundary with the renal parenchyma",
            ),
            relationship_with_surrounding_organs=_NO_REL,
            specific_features=("none",),
            size_mm=(5.0, 50.0),
            aspect_range=(0.8, 1.0),
        ),
        LesionTypeSpec(
            name="esophageal_cancer",
            organ="esophagus",
            organs=("esophagus",),
            lesion_location=(_WALL,),
            shape=("irregular wall thickening", "luminal narrowing"),
            surface_characteristics=(
                "poorly defined boundary with normal oesophageal tissue",
                "ill-defined margin",
            ),
            size_mm=(15.0, 60.0),
            **_HOLLOW_CANCER,  # type: ignore[arg-type]
        ),
        LesionTypeSpec(
            name="gallbladder_cancer",
            organ="gallbladder",
            organs=("gallbladder",),
            lesion_location=(_WALL, _LUMEN),
            shape=("irregular wall thickening", "protrusion into the lumen", "irregular"),
            density=("isodense soft-tissue mass", "mixed density", "hypodense"),
            density_variations=("heterogeneous",),
            surface_characteristics=("ill-defined margin", "serosal surface irregularity"),
            relationship_with_surrounding_organs=_BOTH_REL,
            specific_features=("none", "decreased-density areas", "increased-density areas"),
            size_mm=(10.0, 45.0),
            aspect_range=(0.5, 1.0),
        ),
        LesionTypeSpec(
            name="lung_cancer",
            organ="lung",
            organs=_LUNGS,
            lesion_location=(_WITHIN, _PROTRUDING),
            shape=("irregular", "round-like", "punctate"),
            density=(
                "isodense soft-tissue mass",
                "soft-tissue mass with peripheral ground-glass opacity",
                "ground-glass opacity",
            ),
            density_variations=("homogeneous", "heterogeneous"),
            surface_characteristics=("ill-defined margin", "well-defined margin"),
            relationship_with_surrounding_organs=_BOTH_REL,
            specific_features=("spiculated margins", "none", "decreased-density areas"),
            size_mm=(5.0, 60.0),
            aspect_range=(0.6, 1.0),
        ),
        LesionTypeSpec(
            name="liver_cancer",
            organ="liver",
            organs=("liver",),
            lesion_location=(_WITHIN, _PROTRUDING),
            shape=("irregular", "round-like"),
            density=("hypodense", "mixed density", "ring enhancement", "hyperdense", "isodense"),
            density_variations=("heterogeneous", "homogeneous"),
            surface_characteristics=("ill-defined margin", "well-defined margin"),
            relationship_with_surrounding_organs=_BOTH_REL,
            specific_features=(
                "decreased-density areas",
                "increased-density areas",
                "increased- and decreased-density areas",
                "none",
            ),
            size_mm=(10.0, 100.0),
            aspect_range=(0.6, 1.0),
        ),
        LesionTypeSpec(
            name="pancreas_cancer",
            organ="pancreas",
            organs=("pancreas",),
            lesion_location=(_WITHIN, _PROTRUDING),
            shape=("irregular", "round-like"),
            density=("hypodense", "isodense", "mixed density"),
            density_variations=("heterogeneous", "homogeneous"),
            surface_characteristics=("ill-defined margin",),
            relationship_with_surrounding_organs=_BOTH_REL,
            specific_features=("decreased-density areas", "retention of pancreatic fluid", "none"),
            size_mm=(10.0, 60.0),
            aspect_range=(0.6, 1.0),
        ),
        LesionTypeSpec(
            name="kidney_cancer",
            organ="kidney",
            organs=_KIDNEYS,
            lesion_location=(_WITHIN, _PROTRUDING),
            shape=("round-like", "irregular"),
            density=("mixed density", "hypodense", "isodense", "hyperdense"),
            density_variations=("heterogeneous", "homogeneous"),
            surface_characteristics=(
                "clear boundary with the renal parenchyma",
                "unclear boundary with the renal parenchyma",
                "ill-defined margin",
                "well-defined margin",
            ),
            relationship_with_surrounding_organs=_BOTH_REL,
            specific_features=(
                "decreased-density areas",
                "increased-density areas",
                "increased- and decreased-density areas",
                "none",
            ),
            size_mm=(10.0, 90.0),
            aspect_range=(0.7, 1.0),
        ),
        LesionTypeSpec(
            name="stomach_cancer",
            organ="stomach",
            organs=("stomach",),
            lesion_location=(_WALL, _LUMEN),
            shape=("irregular wall thickening", "protrusion into the lumen", "luminal narrowing"),
            surface_characteristics=("serosal surface irregularity", "clear serosal surface"),
            size_mm=(15.0, 80.0),
            **_HOLLOW_CANCER,  # type: ignore[arg-type]
        ),
        LesionTypeSpec(
            name="colon_cancer",
            organ="colon",
            organs=("colon",),
            lesion_location=(_WALL, _LUMEN),
            shape=("irregular wall thickening", "luminal narrowing", "protrusion into the lumen"),
            surface_characteristics=("serosal surface irregularity", "clear serosal surface"),
            size_mm=(15.0, 70.0),
            **_HOLLOW_CANCER,  # type: ignore[arg-type]
        ),
        LesionTypeSpec(
            name="bladder_cancer",
            organ="urinary_bladder",
            organs=("urinary_bladder",),
            lesion_location=(_WALL, _LUMEN),
            shape=("irregular wall thickening", "protrusion into the lumen", "irregular"),
            density=("isodense soft-tissue mass", "isodense"),
            density_variations=("homogeneous", "heterogeneous"),
            surface_characteristics=(
                "clear serosal surface",
                "serosal surface irregularity",
                "ill-defined margin",
            ),
            relationship_with_surrounding_organs=_BOTH_REL,
            specific_features=("none",),
            size_mm=(10.0, 60.0),
            aspect_range=(0.5, 1.0),
        ),
    )
}
"""Lesion type name -> :class:`LesionTypeSpec` (the 14 LesionDiffusion lesion types)."""


@dataclass(frozen=True)
class Rule:
    """``if <when_attribute> == <when_value> then <then_attribute> in <then_values>``."""

    when_attribute: str
    when_value: str
    then_attribute: str
    then_values: tuple[str, ...]
    reason: str


RULES: tuple[Rule, ...] = (
    Rule(
        "shape",
        "luminal narrowing",
        "lesion_location",
        (_WALL,),
        "luminal narrowing is a wall lesion",
    ),
    Rule(
        "shape",
        "irregular wall thickening",
        "lesion_location",
        (_WALL,),
        "wall thickening is a wall lesion",
    ),
    Rule(
        "shape",
        "protrusion into the lumen",
        "lesion_location",
        (_LUMEN,),
        "a protrusion into the lumen lies in the lumen",
    ),
    Rule(
        "lesion_location",
        _WALL,
        "shape",
        ("irregular wall thickening", "luminal narrowing", "irregular"),
        "a wall lesion thickens the wall",
    ),
    Rule(
        "density",
        "fluid-like hypodense",
        "density_variations",
        ("homogeneous",),
        "fluid is homogeneous",
    ),
    Rule(
        "density",
        "ring enhancement",
        "enhancement_status",
        ("enhanced CT",),
        "ring enhancement needs contrast",
    ),
    Rule("specific_features", "stone", "density", ("hyperdense",), "a stone is hyperdense"),
    Rule(
        "specific_features",
        "stone",
        "density_variations",
        ("homogeneous",),
        "a stone is homogeneous",
    ),
    Rule(
        "shape",
        "cystic",
        "density",
        ("fluid-like hypodense", "hypodense", "mixed density"),
        "a cystic lesion holds fluid",
    ),
)
"""Co-occurrence constraints applied to every sampled report, whatever its lesion type."""


def rule_violations(values: dict[str, str]) -> list[str]:
    """Reasons why a (partial) assignment of canonical values breaks :data:`RULES`."""
    out = []
    for rule in RULES:
        if values.get(rule.when_attribute) == rule.when_value:
            got = values.get(rule.then_attribute)
            if got is not None and got not in rule.then_values:
                out.append(
                    f"{rule.when_attribute}={rule.when_value!r} requires {rule.then_attribute} in "
                    f"{list(rule.then_values)}, got {got!r} ({rule.reason})"
                )
    return out


_TYPE_ALIASES = {
    "oesophageal_cancer": "esophageal_cancer",
    "esophagus_cancer": "esophageal_cancer",
    "gallbladder_stone": "gallstone",
    "gall_stone": "gallstone",
    "renal_stone": "kidney_stone",
    "renal_cyst": "kidney_cyst",
    "renal_cancer": "kidney_cancer",
    "hepatic_cyst": "liver_cyst",
    "pancreatic_cyst": "pancreas_cyst",
    "pancreatic_cancer": "pancreas_cancer",
    "gastric_cancer": "stomach_cancer",
    "urinary_bladder_cancer": "bladder_cancer",
    "colorectal_cancer": "colon_cancer",
    "lung_tumor": "lung_cancer",
    "lung_tumour": "lung_cancer",
}


def lesion_type_name(name: str) -> str:
    """Canonical lesion type name for a name or alias (``"oesophageal cancer"``, ``"Gallstone"``).

    Raises:
        ReportError: Unknown name, with the closest known one.
    """
    if not isinstance(name, str):
        raise ReportError(
            f"lesion_type must be a string, got {name!r}", field="lesion_type", value=name
        )
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    key = _TYPE_ALIASES.get(key, key)
    if key in LESION_TYPES:
        return key
    close = difflib.get_close_matches(key, [*LESION_TYPES, *_TYPE_ALIASES], n=1, cutoff=0.0)
    suggestion = _TYPE_ALIASES.get(close[0], close[0]) if close else None
    raise ReportError(
        f"unknown lesion type {name!r}; did you mean {suggestion!r}? Known: {list(LESION_TYPES)}",
        field="lesion_type",
        value=name,
        allowed=tuple(LESION_TYPES),
        suggestion=suggestion,
    )


def _check_table() -> None:
    from ._vocabulary import LOCATIONS_BY_ORGAN_TYPE, VOCABULARY

    for spec in LESION_TYPES.values():
        for organ in spec.organs:
            if resolve_organ(organ) != organ:  # pragma: no cover - table bug
                raise RuntimeError(f"{spec.name}: organ {organ!r} is not canonical")
        kinds = {ORGANS[o].kind for o in spec.organs}
        for attr in VOCABULARY:
            if attr == "organ_type":
                continue
            for v in spec.allowed(attr):
                if v not in VOCABULARY[attr]:  # pragma: no cover - table bug
                    raise RuntimeError(f"{spec.name}: {attr} value {v!r} not in the vocabulary")
        for loc in spec.lesion_location:
            if not any(
                loc in LOCATIONS_BY_ORGAN_TYPE[f"{k} organ"] for k in kinds
            ):  # pragma: no cover
                raise RuntimeError(f"{spec.name}: location {loc!r} does not fit {kinds}")


_check_table()
