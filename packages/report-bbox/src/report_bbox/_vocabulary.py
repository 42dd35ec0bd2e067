"""Closed vocabulary of the LesionDiffusion structured report: canonical values and synonyms.

The 11 attributes of the LesionDiffusion template (Lei et al., MICCAI 2025, Fig. 1) and their
allowed values follow the authors' ``description.json``; every inner synonym group there maps to
one canonical value here. Matching ignores case, underscores, hyphens, commas and repeated spaces,
so the authors' strings with trailing commas (``"low density lesion,"``) are accepted.

========================  ======  ==================================================================
attribute                 set     canonical values (synonyms in :data:`VOCABULARY`)
========================  ======  ==================================================================
shape                     mask    round-like, irregular, irregular wall thickening, punctate,
                                  cystic, luminal narrowing, protrusion into the lumen
organ_type                mask    hollow organ, parenchymal organ (follows from the organ)
lesion_location           mask    within the lumen of a hollow organ, wall thickening (hollow);
                                  within the parenchymal organ, protruding from the parenchymal
                                  organ (parenchymal)
organ                     both    an organ of :data:`~report_bbox.ORGANS` (hollow or parenchymal)
size                      both    millimetres, three axes (x, y, z of the organ map)
relationship_with_...     both    no close relationship with surrounding organs, close relationship
                                  with adjacent organs
surface_characteristics   both    well-defined margin, ill-defined margin, clear serosal surface,
                                  serosal surface irregularity, clear / unclear boundary with the
                                  renal parenchyma, poorly defined boundary with normal oesophageal
                                  tissue
specific_features         both    decreased-density areas, increased-density areas, increased- and
                                  decreased-density areas, spiculated margins, retention of
                                  pancreatic fluid, stone, none
enhancement_status        image   enhanced CT, non-contrast CT
density                   image   hypodense, isodense, hyperdense, mixed density, fluid-like
                                  hypodense, isodense soft-tissue mass, soft-tissue mass with
                                  peripheral ground-glass opacity, ground-glass opacity, ring
                                  enhancement
density_variations        image   homogeneous, heterogeneous
========================  ======  ==================================================================
"""

from __future__ import annotations

import difflib
import re

from .exceptions import ReportError

__all__ = [
    "ATTRIBUTES",
    "CATEGORICAL_ATTRIBUTES",
    "IMAGE_ATTRIBUTES",
    "LOCATIONS_BY_ORGAN_TYPE",
    "MASK_ATTRIBUTES",
    "VOCABULARY",
    "canonical_value",
]

ATTRIBUTES: tuple[str, ...] = (
    "shape",
    "organ_type",
    "lesion_location",
    "organ",
    "size",
    "relationship_with_surrounding_organs",
    "surface_characteristics",
    "specific_features",
    "enhancement_status",
    "density",
    "density_variations",
)
"""The 11 template attributes, in the template's order."""

MASK_ATTRIBUTES: tuple[str, ...] = ATTRIBUTES[:8]
"""Attributes conditioning the mask generator (LMNet): rows 1-8 of the template."""

IMAGE_ATTRIBUTES: tuple[str, ...] = ATTRIBUTES[3:]
"""Attributes conditioning the image inpainter (LINet): rows 4-11 of the template."""

VOCABULARY: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "round-like": ("round", "rounded", "round like", "oval"),
        "irregular": ("irregular shape",),
        "irregular wall thickening": ("irregular,wall thickening", "irregular, wall thickening"),
        "punctate": ("nodular", "punctate (nodular)", "nodule", "dot-like"),
        "cystic": ("cyst-like",),
        "luminal narrowing": ("narrowing of the lumen", "lumen narrowing"),
        "protrusion into the lumen": ("protruding into the lumen", "intraluminal protrusion"),
    },
    "organ_type": {
        "hollow organ": ("hollow",),
        "parenchymal organ": ("parenchymal", "solid organ"),
    },
    "lesion_location": {
        "within the lumen of a hollow organ": ("within the lumen", "in the lumen", "lumen"),
        "wall thickening": ("in the wall", "wall"),
        "within the parenchymal organ": ("within the organ", "inside organ", "inside the organ"),
        "protruding from the parenchymal organ": (
            "protruding from the organ",
            "organ margin",
            "protruding",
            "exophytic",
        ),
    },
    "relationship_with_surrounding_organs": {
        "no close relationship with surrounding organs": (
            "no close relationship with adjacent organs",
            "no close relationship",
        ),
        "close relationship with adjacent organs": (
            "close relationship with surrounding organs",
            "close relationship",
        ),
    },
    "surface_characteristics": {
        "well-defined margin": ("well defined margin", "clear margin", "well-circumscribed"),
        "ill-defined margin": ("poorly defined margin", "unclear margin", "blurred margin"),
        "clear serosal surface": ("smooth serosal surface",),
        "serosal surface irregularity": ("irregular serosal surface",),
        "clear boundary with the renal parenchyma": ("clear boundary with renal parenchyma",),
        "unclear boundary with the renal parenchyma": ("unclear boundary with renal parenchyma",),
        "poorly defined boundary with normal oesophageal tissue": (
            "poorly defined boundary with normal esophageal tissue",
        ),
    },
    "specific_features": {
        "decreased-density areas": (
            "presence of decreased density areas",
            "presence of decreased attenuation areas",
            "decreased attenuation areas",
            "low-density areas",
        ),
        "increased-density areas": (
            "presence of increased density areas",
            "presence of increased attenuation areas",
            "increased attenuation areas",
            "high-density areas",
        ),
        "increased- and decreased-density areas": (
            "presence of increased attenuation areas, presence of decreased attenuation areas",
            "presence of increased density areas, presence of decreased density areas",
            "presence of decreased density areas, presence of increased density areas",
            "both increased and decreased density areas",
            "both",
        ),
        "spiculated margins": ("spiculation", "spiculated margin"),
        "retention of pancreatic fluid": ("pancreatic fluid retention",),
        "stone": ("calculus", "calculi", "stones"),
        "none": ("", "no specific features", "no specific feature", "nothing special"),
    },
    "enhancement_status": {
        "enhanced CT": ("enhanced", "contrast-enhanced CT", "contrast enhanced", "CECT"),
        "non-contrast CT": ("non-contrast", "non-enhanced CT", "unenhanced CT", "plain CT", "NCCT"),
    },
    "density": {
        "hypodense": (
            "hypodense lesion",
            "low density",
            "low density lesion",
            "hypoattenuating",
            "hypoattenuating lesion",
            "low attenuation",
            "low attenuation lesion",
        ),
        "isodense": ("isodense lesion", "isoattenuating", "isoattenuating lesion"),
        "hyperdense": (
            "hyperdense lesion",
            "high density",
            "high density lesion",
            "hyperattenuating",
            "hyperattenuating lesion",
            "high attenuation",
            "high attenuation lesion",
        ),
        "mixed density": (
            "mixed-density lesion",
            "mixed density lesion",
            "mixed attenuation",
            "mixed attenuation lesion",
        ),
        "fluid-like hypodense": (
            "hypoattenuating fluid-like lesion",
            "hypodense fluid-like lesion",
            "fluid-like",
            "fluid density",
        ),
        "isodense soft-tissue mass": ("isodense soft tissue mass", "soft-tissue mass"),
        "soft-tissue mass with peripheral ground-glass opacity": (
            "isodense soft tissue mass with peripheral low-density ground-glass opacity",
            "soft tissue mass with peripheral ground glass opacity",
        ),
        "ground-glass opacity": ("low-density ground-glass opacity", "GGO"),
        "ring enhancement": ("rim enhancement", "ring-enhancing lesion"),
    },
    "density_variations": {
        "homogeneous": ("uniform",),
        "heterogeneous": ("inhomogeneous", "non-uniform"),
    },
}
"""Attribute -> canonical value -> synonyms. ``organ`` and ``size`` are not listed: organs come
from :data:`~report_bbox.ORGANS`, sizes are numbers in mm."""

CATEGORICAL_ATTRIBUTES: tuple[str, ...] = tuple(VOCABULARY)
"""Attributes with a closed vocabulary (all but ``organ`` and ``size``)."""

LOCATIONS_BY_ORGAN_TYPE: dict[str, tuple[str, ...]] = {
    "hollow organ": ("within the lumen of a hollow organ", "wall thickening"),
    "parenchymal organ": ("within the parenchymal organ", "protruding from the parenchymal organ"),
}
"""Which lesion locations an organ type allows."""


def _key(text: str) -> str:
    return re.sub(r"[\s,_\-()]+", " ", text.lower()).strip()


_LOOKUP: dict[str, dict[str, str]] = {}
for _attr, _groups in VOCABULARY.items():
    _table: dict[str, str] = {}
    for _canonical, _synonyms in _groups.items():
        for _s in (_canonical, *_synonyms):
            _k = _key(_s)
            if _table.get(_k, _canonical) != _canonical:  # pragma: no cover - vocabulary bug
                raise RuntimeError(f"synonym {_s!r} of {_attr} maps to two canonical values")
            _table[_k] = _canonical
    _LOOKUP[_attr] = _table


def canonical_value(attribute: str, value: object) -> str:
    """Map a value or synonym to the canonical value of a categorical attribute.

    Args:
        attribute: One of :data:`CATEGORICAL_ATTRIBUTES` (underscore form).
        value: The value as written (any case; trailing commas and hyphens ignored).

    Returns:
        The canonical value.

    Raises:
        ReportError: Unknown attribute, non-string value, or a value outside the vocabulary; the
            error names the field, the value, the allowed canonical values and the closest one.
    """
    if attribute not in _LOOKUP:
        raise ReportError(
            f"{attribute!r} is not a categorical attribute; categorical attributes are "
            f"{list(CATEGORICAL_ATTRIBUTES)}",
            field=attribute,
            value=value,
        )
    allowed = tuple(VOCABULARY[attribute])
    if value is None and attribute == "specific_features":
        return "none"
    if not isinstance(value, str):
        raise ReportError(
            f"{attribute}: expected a string, got {type(value).__name__} {value!r}; allowed: "
            f"{list(allowed)}",
            field=attribute,
            value=value,
            allowed=allowed,
        )
    table = _LOOKUP[attribute]
    key = _key(value)
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.0)
    suggestion = table[close[0]] if close else allowed[0]
    raise ReportError(
        f"{attribute}: {value!r} is not in the vocabulary; did you mean {suggestion!r}? "
        f"Allowed: {list(allowed)}",
        field=attribute,
        value=value,
        allowed=allowed,
        suggestion=suggestion,
    )
