"""The LesionDiffusion structured report as a validated pydantic model.

A :class:`Report` holds the 11 template attributes (Lei et al., MICCAI 2025, Fig. 1) with values
from the closed vocabulary of the vocabulary (`VOCABULARY`) and organs from
:data:`~report_bbox.ORGANS`. Sizes are millimetres along the x, y, z axes of the organ map, never
voxels. Validation happens on construction; every failure is a
:class:`~report_bbox.exceptions.ReportError` naming the field, the value, the allowed values and
the closest match.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ._organs import ORGANS, TOTALSEG_V2, V1_TO_V2, resolve_organ
from ._vocabulary import (
    ATTRIBUTES,
    IMAGE_ATTRIBUTES,
    LOCATIONS_BY_ORGAN_TYPE,
    MASK_ATTRIBUTES,
    VOCABULARY,
    canonical_value,
)
from .exceptions import OrganError, ReportError

__all__ = ["LESION_ORGANS", "MAX_SIZE_MM", "Report", "parse_size_mm"]
# ``KEY_ALIASES``, ``norm_key`` and ``validate_organ`` are shared with the sampler and the LLM
# hook inside the package (not part of the public API, hence not in ``__all__``).

LESION_ORGANS: tuple[str, ...] = tuple(n for n, o in ORGANS.items() if o.kind != "other")
"""Organs a report may name: every hollow or parenchymal organ of the organ table."""

MAX_SIZE_MM = 500.0
"""Hard upper bound on any size axis (mm); organ-specific bounds are in the organ table."""

KEY_ALIASES: dict[str, str] = {
    "relationship_with_adjacent_organs": "relationship_with_surrounding_organs",
    "relationship": "relationship_with_surrounding_organs",
    "surface": "surface_characteristics",
    "features": "specific_features",
    "enhancement": "enhancement_status",
    "cavity": "lesion_location",
    "location": "lesion_location",
    "size_mm": "size",
    "type_of_organ": "organ_type",
}
_KEYS = (*ATTRIBUTES, "lesion_type")


def norm_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower()).strip("_")


def _closest(value: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.0)
    return close[0] if close else None


_NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def parse_size_mm(value: object) -> tuple[float, float, float]:
    """Parse a lesion size into three axes in millimetres.

    Accepts a number (a sphere's diameter), a sequence of one or three numbers, or a string such
    as ``"20 mm"``, ``"20x18x15 mm"``, ``"20 by 18 by 15mm"`` (``x``, ``*``, the multiplication sign or ``by``), ``"2 cm"``. Voxel units are refused.

    Returns:
        ``(x, y, z)`` in mm, each in ``(0, MAX_SIZE_MM]``.

    Raises:
        ReportError: Unparseable, non-positive, too large, or in voxels.
    """
    nums: list[float]
    scale = 1.0
    if isinstance(value, bool):
        nums = []
    elif isinstance(value, (int, float)):
        nums = [float(value)]
    elif isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            nums = []
        else:
            nums = [float(v) for v in value]
    elif isinstance(value, str):
        text = value.strip().lower().rstrip(",. ")
        if re.search(r"pixel|voxel|vox\b|px\b", text):
            raise ReportError(
                f"size: {value!r} is in voxels; report sizes are in mm (e.g. '20x18x15 mm'). "
                "Convert with the voxel spacing, or use Report.from_legacy(..., spacing=...).",
                field="size",
                value=value,
            )
        m = re.fullmatch(
            rf"({_NUMBER})(?:\s*(?:x|\u00d7|\*|by)\s*({_NUMBER})\s*(?:x|\u00d7|\*|by)\s*({_NUMBER}))?\s*(mm|cm|millimet(?:re|er)s?)?",
            text,
        )
        if m:
            nums = [float(g) for g in m.groups()[:3] if g is not None]
            scale = 10.0 if m.group(4) == "cm" else 1.0
        else:
            nums = []
    else:
        nums = []
    if len(nums) not in (1, 3):
        raise ReportError(
            f"size: cannot read {value!r}; give millimetres as a number, three numbers, "
            "'20 mm' or '20x18x15 mm'",
            field="size",
            value=value,
        )
    if len(nums) == 1:
        nums = nums * 3
    mm = tuple(n * scale for n in nums)
    if not all(math.isfinite(v) and 0 < v <= MAX_SIZE_MM for v in mm):
        raise ReportError(
            f"size: {value!r} gives {mm} mm; every axis must be in (0, {MAX_SIZE_MM:g}] mm",
            field="size",
            value=value,
        )
    return (mm[0], mm[1], mm[2])


def _fmt_mm(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


class Report(BaseModel):
    """A validated LesionDiffusion structured report (11 attributes, sizes in mm).

    Construct with keyword arguments or :meth:`from_dict`; any value may be a synonym, the stored
    value is canonical. ``organ_type`` may be omitted (it follows from the organ); when given it
    must match. ``specific_features`` defaults to ``"none"``.

    Attributes:
        shape: Lesion shape (mask attribute).
        organ_type: ``"hollow organ"`` or ``"parenchymal organ"`` (mask attribute).
        lesion_location: Where the lesion sits relative to the organ (mask attribute).
        organ: Canonical organ name (``"liver"``, ``"kidney"``, ``"kidney_left"``...).
        size: Lesion extent ``(x, y, z)`` in mm along the organ map's axes.
        relationship_with_surrounding_organs: Relation to neighbouring organs.
        surface_characteristics: Lesion margin.
        specific_features: Special findings, or ``"none"``.
        enhancement_status: ``"enhanced CT"`` or ``"non-contrast CT"`` (image attribute).
        density: Attenuation relative to the organ (image attribute).
        density_variations: ``"homogeneous"`` or ``"heterogeneous"`` (image attribute).
        lesion_type: Optional name from :data:`report_bbox.LESION_TYPES` (metadata, not rendered).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: Literal[tuple(VOCABULARY["shape"])]  # type: ignore[valid-type]
    organ_type: Literal[tuple(VOCABULARY["organ_type"])]  # type: ignore[valid-type]
    lesion_location: Literal[tuple(VOCABULARY["lesion_location"])]  # type: ignore[valid-type]
    organ: Literal[LESION_ORGANS]  # type: ignore[valid-type]
    size: tuple[float, float, float]
    relationship_with_surrounding_organs: Literal[  # type: ignore[valid-type]
        tuple(VOCABULARY["relationship_with_surrounding_organs"])
    ]
    surface_characteristics: Literal[tuple(VOCABULARY["surface_characteristics"])]  # type: ignore[valid-type]
    specific_features: Literal[tuple(VOCABULARY["specific_features"])] = "none"  # type: ignore[valid-type]
    enhancement_status: Literal[tuple(VOCABULARY["enhancement_status"])]  # type: ignore[valid-type]
    density: Literal[tuple(VOCABULARY["density"])]  # type: ignore[valid-type]
    density_variations: Literal[tuple(VOCABULARY["density_variations"])]  # type: ignore[valid-type]
    lesion_type: str | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _as_report_error(exc) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Report:  # type: ignore[override]
        """Pydantic entry point; raises :class:`ReportError` like the constructor."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise _as_report_error(exc) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes, **kwargs: Any) -> Report:  # type: ignore[override]
        """Pydantic JSON entry point; raises :class:`ReportError` like the constructor."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise _as_report_error(exc) from None

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ReportError(f"a report must be a mapping, got {type(data).__name__}")
        out: dict[str, Any] = {}
        for raw_key, value in data.items():
            if not isinstance(raw_key, str):
                raise ReportError(f"report keys must be strings, got {raw_key!r}")
            key = norm_key(raw_key)
            key = KEY_ALIASES.get(key, key)
            if key not in _KEYS:
                suggestion = _closest(key, list(_KEYS))
                raise ReportError(
                    f"unknown report attribute {raw_key!r}; did you mean {suggestion!r}? "
                    f"Attributes: {list(ATTRIBUTES)}",
                    field=raw_key,
                    value=value,
                    allowed=ATTRIBUTES,
                    suggestion=suggestion,
                )
            if key in out:
                raise ReportError(f"attribute {key!r} given twice", field=key, value=value)
            out[key] = value
        missing = [
            k for k in ATTRIBUTES if k not in out and k not in ("organ_type", "specific_features")
        ]
        if missing:
            raise ReportError(f"report is missing attributes {missing}", field=missing[0])
        for key, value in list(out.items()):
            if key in VOCABULARY:
                out[key] = canonical_value(key, value)
        out["organ"] = validate_organ(out["organ"])
        out["size"] = parse_size_mm(out["size"])
        organ = ORGANS[out["organ"]]
        organ_type = f"{organ.kind} organ"
        if "organ_type" in out and out["organ_type"] != organ_type:
            raise ReportError(
                f"organ_type: {out['organ_type']!r} contradicts organ {organ.name!r}, which is a "
                f"{organ_type}",
                field="organ_type",
                value=out["organ_type"],
                allowed=(organ_type,),
                suggestion=organ_type,
            )
        out["organ_type"] = organ_type
        allowed_locations = LOCATIONS_BY_ORGAN_TYPE[organ_type]
        if out["lesion_location"] not in allowed_locations:
            raise ReportError(
                f"lesion_location: {out['lesion_location']!r} does not fit organ {organ.name!r} "
                f"({organ_type}); allowed: {list(allowed_locations)}",
                field="lesion_location",
                value=out["lesion_location"],
                allowed=allowed_locations,
                suggestion=_closest(out["lesion_location"], list(allowed_locations)),
            )
        if out.get("lesion_type") is not None:
            from ._lesion_types import LESION_TYPES, lesion_type_name

            out["lesion_type"] = lesion_type_name(out["lesion_type"])
            spec = LESION_TYPES[out["lesion_type"]]
            if out["organ"] not in spec.organs:
                raise ReportError(
                    f"organ: {organ.name!r} does not fit lesion type {spec.name!r}; allowed: "
                    f"{list(spec.organs)}",
                    field="organ",
                    value=out["organ"],
                    allowed=spec.organs,
                    suggestion=spec.organ,
                )
        return out

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Build from a mapping whose keys are attribute names (spaces or underscores)."""
        return cls(**data) if isinstance(data, dict) else cls._normalize(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Report:
        """Build from a JSON object string (as written by :meth:`to_json`)."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise ReportError(f"report is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ReportError(f"report JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def from_legacy(
        cls,
        data: dict[str, Any] | str,
        *,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        organ_key: str | int | None = None,
    ) -> Report:
        """Read the LesionDiffusion authors' ``type.json`` format.

        The format is ``{"<v1 organ id>": [shape, "", {attributes}, [[centre]], [[size]]]]}``
        with values carrying trailing commas, the organ as a TotalSegmentator **v1** id and the
        size in voxels (``"[[28 29 26]] pixel,"``) of a volume resampled to 1 mm. The ``"CT
        value"`` entry is not one of the 11 attributes and is dropped. Without a ``cavity`` entry
        the location is derived as the authors' training code does: hollow organs -> lumen if the
        features mention a stone, else wall thickening; parenchymal -> within the organ.

        Args:
            data: The parsed ``type.json`` object or its text.
            spacing: Voxel spacing (mm) of the size in voxels; the authors' volumes are at 1 mm.
            organ_key: Which organ key to read when the file has several.

        Raises:
            ReportError: Malformed file or values outside the vocabulary.
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ReportError(f"legacy report is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise ReportError("legacy report must be a non-empty JSON object keyed by organ id")
        if organ_key is None:
            if len(data) > 1:
                raise ReportError(
                    f"legacy report has several organ keys {list(data)}; pass organ_key=",
                    field="organ",
                    allowed=tuple(str(k) for k in data),
                )
            organ_key = next(iter(data))
        if str(organ_key) not in {str(k) for k in data}:
            raise ReportError(
                f"organ_key {organ_key!r} is not in the legacy report; keys: {list(data)}",
                field="organ",
                value=organ_key,
            )
        entry = next(v for k, v in data.items() if str(k) == str(organ_key))
        if not isinstance(entry, list) or len(entry) < 3 or not isinstance(entry[2], dict):
            raise ReportError(
                "legacy entry must be [shape, '', {attributes}, [[centre]], [[size]]]",
                field="organ",
                value=organ_key,
            )
        attrs: dict[str, Any] = dict(entry[2])
        key = str(organ_key).strip()
        if key.isdigit():
            v1 = int(key)
            if v1 not in V1_TO_V2 or V1_TO_V2[v1] == 0:
                raise ReportError(
                    f"legacy organ id {v1} is not a TotalSegmentator v1 class with a v2 equivalent",
                    field="organ",
                    value=v1,
                )
            organ = TOTALSEG_V2[V1_TO_V2[v1]]
        else:
            organ = validate_organ(key)
        size_text = str(attrs.get("size", ""))
        nums = [float(n) for n in re.findall(_NUMBER, size_text)]
        if len(nums) != 3 and len(entry) >= 5:
            nums = [float(n) for n in re.findall(_NUMBER, json.dumps(entry[4]))]
        if len(nums) != 3:
            raise ReportError(
                f"legacy size {size_text!r} does not hold three numbers", field="size"
            )
        size = [n * float(s) for n, s in zip(nums, spacing, strict=True)]
        features = attrs.get("specific features", "")
        if "cavity" in attrs and str(attrs["cavity"]).strip(" ,"):
            location = attrs["cavity"]
        elif ORGANS[organ].kind == "hollow":
            stone = re.search(r"stone|calcul", str(features).lower())
            location = "within the lumen of a hollow organ" if stone else "wall thickening"
        else:
            location = "within the parenchymal organ"
        shape = attrs.get("shape", entry[0])
        return cls(
            shape=shape,
            lesion_location=location,
            organ=organ,
            size=size,
            relationship_with_surrounding_organs=attrs.get(
                "relationship with adjacent organs",
                attrs.get("relationship with surrounding organs"),
            ),
            surface_characteristics=attrs.get("surface characteristics"),
            specific_features=features,
            enhancement_status=attrs.get("enhancement status"),
            density=attrs.get("density"),
            density_variations=attrs.get("density variations"),
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict with underscore keys and ``size`` as a list of mm (JSON-ready)."""
        out = {k: getattr(self, k) for k in ATTRIBUTES}
        out["size"] = list(self.size)
        if self.lesion_type is not None:
            out["lesion_type"] = self.lesion_type
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        """JSON object text; :meth:`from_json` reads it back to an equal report."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema of the report as given to users and to LLM structured output.

        ``size`` is an array of three numbers (mm); every categorical attribute is an enum of its
        canonical values; ``organ_type`` and ``lesion_type`` are optional.
        """
        schema = cls.model_json_schema()
        schema["properties"]["size"] = {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SIZE_MM},
            "minItems": 3,
            "maxItems": 3,
            "description": "lesion extent in millimetres along x, y, z",
        }
        schema["required"] = [k for k in schema.get("required", []) if k != "organ_type"]
        schema["title"] = "LesionReport"
        return schema

    # ------------------------------------------------------------------ text
    def size_text(self) -> str:
        """``"20 mm"`` for equal axes, else ``"20x18x15 mm"``."""
        if len(set(self.size)) == 1:
            return f"{_fmt_mm(self.size[0])} mm"
        return "x".join(_fmt_mm(v) for v in self.size) + " mm"

    def attribute_texts(
        self, kind: Literal["mask", "image", "all"] = "all", *, with_names: bool = True
    ) -> dict[str, str]:
        """One string per attribute, as LesionDiffusion encodes each attribute separately.

        Args:
            kind: ``"mask"`` (attributes 1-8), ``"image"`` (4-11) or ``"all"`` (1-11).
            with_names: Prefix each value with its attribute name (``"density: hypodense"``).

        Returns:
            Ordered mapping attribute -> text, in template order.
        """
        names = {"mask": MASK_ATTRIBUTES, "image": IMAGE_ATTRIBUTES, "all": ATTRIBUTES}
        if kind not in names:
            raise ReportError(f"kind must be 'mask', 'image' or 'all', got {kind!r}", field="kind")
        out: dict[str, str] = {}
        for attr in names[kind]:
            if attr == "size":
                value = self.size_text()
            elif attr == "organ":
                value = ORGANS[self.organ].text
            else:
                value = getattr(self, attr)
            out[attr] = f"{attr.replace('_', ' ')}: {value}" if with_names else value
        return out

    def text(self) -> str:
        """The whole report as one sentence list (all 11 attributes)."""
        return "; ".join(self.attribute_texts("all").values()) + "."

    def mask_text(self) -> str:
        """The mask attributes (shape, organ type, location, organ, size, relationship, surface,
        specific features) as one string."""
        return "; ".join(self.attribute_texts("mask").values()) + "."

    def image_text(self) -> str:
        """The image attributes (organ, size, relationship, surface, specific features,
        enhancement, density, density variations) as one string."""
        return "; ".join(self.attribute_texts("image").values()) + "."


def validate_organ(value: object) -> str:
    try:
        name = resolve_organ(value)  # type: ignore[arg-type]
    except OrganError as exc:
        suggestion = exc.suggestion if exc.suggestion in LESION_ORGANS else None
        raise ReportError(
            f"organ: {exc}",
            field="organ",
            value=value,
            allowed=LESION_ORGANS,
            suggestion=suggestion,
        ) from None
    if name not in LESION_ORGANS:
        raise ReportError(
            f"organ: {name!r} is neither a hollow nor a parenchymal organ, so a report cannot "
            f"place a lesion in it; allowed: {list(LESION_ORGANS)}",
            field="organ",
            value=value,
            allowed=LESION_ORGANS,
            suggestion=_closest(name, list(LESION_ORGANS)),
        )
    return name


def _as_report_error(exc: ValidationError) -> ReportError:
    for err in exc.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ReportError):
            return inner
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    return ReportError(f"{field}: {first.get('msg')}", field=field, value=first.get("input"))

