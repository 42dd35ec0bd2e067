"""Sample structured reports from the lesion-type table (`LESION_TYPES`).

``sample_report`` picks a lesion type (given, or drawn uniformly among the types compatible with
the requested organ and fixed values), then every categorical attribute from that type's allowed
values, subject to the co-occurrence `RULES` (a randomized
depth-first search, so a consistent report is found whenever one exists), then a size: the
largest diameter log-uniform in the type's ``size_mm`` range, the two other axes that diameter
times a uniform draw from ``aspect_range``, on a random axis order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._lesion_types import LESION_TYPES, LesionTypeSpec, lesion_type_name, rule_violations
from ._organs import ORGANS
from ._report import KEY_ALIASES, Report, norm_key, parse_size_mm, validate_organ
from ._vocabulary import ATTRIBUTES, VOCABULARY, canonical_value
from .exceptions import ReportError

__all__ = ["check_report_fits", "sample_report"]

# Sampling order: location and shape first, since most rules hang on them.
_ORDER = (
    "lesion_location",
    "shape",
    "specific_features",
    "density",
    "density_variations",
    "enhancement_status",
    "surface_characteristics",
    "relationship_with_surrounding_organs",
)


def normalize_fixed(fixed: dict[str, Any]) -> dict[str, Any]:
    """Canonical keys and values of a ``fixed`` attribute dict (shared with the LLM hook)."""
    out: dict[str, Any] = {}
    for raw, value in fixed.items():
        key = KEY_ALIASES.get(norm_key(raw), norm_key(raw))
        if key not in ATTRIBUTES:
            raise ReportError(
                f"cannot fix unknown attribute {raw!r}; attributes: {list(ATTRIBUTES)}",
                field=raw,
                value=value,
                allowed=ATTRIBUTES,
            )
        if key in VOCABULARY:
            out[key] = canonical_value(key, value)
        elif key == "organ":
            out[key] = validate_organ(value)
        else:
            out[key] = parse_size_mm(value)
    return out


def _incompatibilities(spec: LesionTypeSpec, fixed: dict[str, Any]) -> list[str]:
    reasons = []
    for key, value in fixed.items():
        if key == "size":
            lo, hi = spec.size_mm
            if not lo <= max(value) <= hi:
                reasons.append(
                    f"size {max(value):g} mm (largest axis) is outside the {spec.name} range "
                    f"{lo:g}-{hi:g} mm"
                )
        elif value not in spec.allowed(key):
            reasons.append(f"{spec.name} allows {key} in {list(spec.allowed(key))}, not {value!r}")
    return reasons


def _search(
    spec: LesionTypeSpec, fixed: dict[str, Any], rng: np.random.Generator
) -> dict[str, str] | None:
    values: dict[str, str] = {}

    def visit(i: int) -> bool:
        if i == len(_ORDER):
            return True
        attr = _ORDER[i]
        options = [fixed[attr]] if attr in fixed else list(spec.allowed(attr))
        for j in rng.permutation(len(options)):
            values[attr] = options[int(j)]
            if not rule_violations(values) and visit(i + 1):
                return True
        del values[attr]
        return False

    return dict(values) if visit(0) else None


def sample_report(
    rng: np.random.Generator,
    *,
    lesion_type: str | None = None,
    organ: str | None = None,
    **fixed: Any,
) -> Report:
    """Draw a medically consistent report.

    Args:
        rng: Source of randomness; the result is a deterministic function of its state.
        lesion_type: One of :data:`~report_bbox.LESION_TYPES` (aliases accepted); drawn uniformly
            among compatible types when omitted.
        organ: Organ name (aliases accepted); must be one of the lesion type's organs.
        **fixed: Attribute values to keep (any attribute name of the template, spaces or
            underscores; values may be synonyms; ``size`` in mm).

    Returns:
        A validated :class:`Report` with ``lesion_type`` set.

    Raises:
        ReportError: A fixed value outside the vocabulary, or not allowed for the lesion type /
            organ, or fixed values that contradict each other; the message gives the reason.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    fixed_n = normalize_fixed(fixed)
    if organ is not None:
        organ_name = validate_organ(organ)
        if "organ" in fixed_n and fixed_n["organ"] != organ_name:
            raise ReportError(
                f"organ given twice with different values: {organ_name!r} and {fixed_n['organ']!r}",
                field="organ",
                value=organ,
            )
        fixed_n["organ"] = organ_name
    if "organ_type" in fixed_n and "organ" in fixed_n:
        want = f"{ORGANS[fixed_n['organ']].kind} organ"
        if fixed_n["organ_type"] != want:
            raise ReportError(
                f"organ_type {fixed_n['organ_type']!r} contradicts organ {fixed_n['organ']!r} ({want})",
                field="organ_type",
                value=fixed_n["organ_type"],
                allowed=(want,),
                suggestion=want,
            )
    if lesion_type is not None:
        candidates = [LESION_TYPES[lesion_type_name(lesion_type)]]
    else:
        candidates = list(LESION_TYPES.values())
    reasons: dict[str, list[str]] = {s.name: _incompatibilities(s, fixed_n) for s in candidates}
    ok = [s for s in candidates if not reasons[s.name]]
    if not ok:
        detail = "; ".join(f"{n}: {', '.join(r)}" for n, r in reasons.items())
        raise ReportError(
            f"no lesion type accepts the fixed values {fixed_n}: {detail}",
            field=next(iter(fixed_n), None),
            allowed=tuple(s.name for s in candidates),
        )
    for i in rng.permutation(len(ok)):
        spec = ok[int(i)]
        values = _search(spec, fixed_n, rng)
        if values is not None:
            break
    else:
        fixed_cat = {k: v for k, v in fixed_n.items() if k in VOCABULARY}
        raise ReportError(
            f"the fixed values {fixed_cat} contradict each other: {rule_violations(fixed_cat)}",
            field=next(iter(fixed_cat), None),
        )
    organ_name = fixed_n.get("organ", spec.organ)
    if "size" in fixed_n:
        size = fixed_n["size"]
    else:
        lo, hi = spec.size_mm
        d = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        others = d * rng.uniform(*spec.aspect_range, size=2)
        axes = np.array([d, others[0], others[1]])[rng.permutation(3)]
        size = tuple(float(round(max(v, 0.5), 1)) for v in axes)
    return Report(**values, organ=organ_name, size=size, lesion_type=spec.name)


def check_report_fits(report: Report, lesion_type: str | None = None) -> list[str]:
    """Reasons why a report does not fit its organ or lesion type (empty when it fits).

    Checks that the largest size axis is at most the organ's ``max_lesion_mm`` and, for a lesion
    type (the argument, else ``report.lesion_type``), that every attribute is one the type allows,
    the size is in its range and the co-occurrence rules hold. Used to vet untrusted reports
    (e.g. an LLM's).
    """
    out = []
    organ = ORGANS[report.organ]
    if max(report.size) > organ.max_lesion_mm:
        out.append(
            f"size {report.size_text()} does not fit the {organ.text}: at most "
            f"{organ.max_lesion_mm:g} mm along any axis"
        )
    name = lesion_type if lesion_type is not None else report.lesion_type
    values = {a: getattr(report, a) for a in VOCABULARY}
    out.extend(rule_violations(values))
    if name is not None:
        spec = LESION_TYPES[lesion_type_name(name)]
        fixed = {a: values[a] for a in VOCABULARY if a != "organ_type"}
        fixed.update(organ=report.organ, size=report.size)
        out.extend(_incompatibilities(spec, fixed))
    return out

