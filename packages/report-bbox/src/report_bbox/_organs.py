"""Organ vocabulary: TotalSegmentator v2 "total" classes, groups, aliases, hollow vs parenchymal.

This module is the single organ table used everywhere in ``report_bbox`` (reports, report sampling,
bbox sampling). Organ label maps are integer arrays of TotalSegmentator **v2** "total" class ids
(117 classes, 0 = background). Maps written with TotalSegmentator's ``v1_order=True`` (the 104-class
v1 order, which the LesionDiffusion code uses) are converted with :func:`v1_to_v2`.

Names:

* every v2 class name (``"liver"``, ``"kidney_left"``, ``"urinary_bladder"`` ...);
* groups that resolve to several ids: ``kidney`` (2, 3), ``lung`` (10-14), ``lung_left`` (10, 11),
  ``lung_right`` (12-14), ``adrenal_gland`` (8, 9), ``kidney_cyst`` (23, 24);
* aliases (``bladder`` -> ``urinary_bladder``, ``oesophagus`` -> ``esophagus``, ``left kidney`` ->
  ``kidney_left`` ...). Spaces, hyphens and case do not matter. Unknown names raise
  :class:`~report_bbox.exceptions.OrganError` with the closest known name.

Kinds (the LesionDiffusion "organ type" attribute):

* ``hollow``: gallbladder, stomach, esophagus, trachea, small_bowel, duodenum, colon,
  urinary_bladder. Lesions sit in the lumen or thicken the wall.
* ``parenchymal``: spleen, kidneys, liver, pancreas, adrenal glands, lung lobes, thyroid gland,
  prostate, brain. Lesions sit within the organ or protrude from it.
* ``other``: bones, vessels, muscles, heart, lesion classes (kidney cysts). Valid organ-map labels,
  but reports cannot place a lesion in them.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .exceptions import OrganError

__all__ = [
    "ORGANS",
    "ORGAN_GROUPS",
    "TOTALSEG_V1",
    "TOTALSEG_V2",
    "V1_TO_V2",
    "Organ",
    "OrganKind",
    "is_hollow",
    "organ_ids",
    "organ_kind",
    "resolve_organ",
    "v1_to_v2",
]

OrganKind = Literal["parenchymal", "hollow", "other"]

# (TotalSegmentator v2 "total" id, name, kind). Ids and names follow TotalSegmentator 2.x
# ``map_to_binary.class_map["total"]``.
_V2_TABLE: tuple[tuple[int, str, OrganKind], ...] = (
    (1, "spleen", "parenchymal"),
    (2, "kidney_right", "parenchymal"),
    (3, "kidney_left", "parenchymal"),
    (4, "gallbladder", "hollow"),
    (5, "liver", "parenchymal"),
    (6, "stomach", "hollow"),
    (7, "pancreas", "parenchymal"),
    (8, "adrenal_gland_right", "parenchymal"),
    (9, "adrenal_gland_left", "parenchymal"),
    (10, "lung_upper_lobe_left", "parenchymal"),
    (11, "lung_lower_lobe_left", "parenchymal"),
    (12, "lung_upper_lobe_right", "parenchymal"),
    (13, "lung_middle_lobe_right", "parenchymal"),
    (14, "lung_lower_lobe_right", "parenchymal"),
    (15, "esophagus", "hollow"),
    (16, "trachea", "hollow"),
    (17, "thyroid_gland", "parenchymal"),
    (18, "small_bowel", "hollow"),
    (19, "duodenum", "hollow"),
    (20, "colon", "hollow"),
    (21, "urinary_bladder", "hollow"),
    (22, "prostate", "parenchymal"),
    (23, "kidney_cyst_left", "other"),
    (24, "kidney_cyst_right", "other"),
    (25, "sacrum", "other"),
    (26, "vertebrae_S1", "other"),
    (27, "vertebrae_L5", "other"),
    (28, "vertebrae_L4", "other"),
    (29, "vertebrae_L3", "other"),
    (30, "vertebrae_L2", "other"),
    (31, "vertebrae_L1", "other"),
    (32, "vertebrae_T12", "other"),
    (33, "vertebrae_T11", "other"),
    (34, "vertebrae_T10", "other"),
    (35, "vertebrae_T9", "other"),
    (36, "vertebrae_T8", "other"),
    (37, "vertebrae_T7", "other"),
    (38, "vertebrae_T6", "other"),
    (39, "vertebrae_T5", "other"),
    (40, "vertebrae_T4", "other"),
    (41, "vertebrae_T3", "other"),
    (42, "vertebrae_T2", "other"),
    (43, "vertebrae_T1", "other"),
    (44, "vertebrae_C7", "other"),
    (45, "vertebrae_C6", "other"),
    (46, "vertebrae_C5", "other"),
    (47, "vertebrae_C4", "other"),
    (48, "vertebrae_C3", "other"),
    (49, "vertebrae_C2", "other"),
    (50, "vertebrae_C1", "other"),
    (51, "heart", "other"),
    (52, "aorta", "other"),
    (53, "pulmonary_vein", "other"),
    (54, "brachiocephalic_trunk", "other"),
    (55, "subclavian_artery_right", "other"),
    (56, "subclavian_artery_left", "other"),
    (57, "common_carotid_artery_right", "other"),
    (58, "common_carotid_artery_left", "other"),
    (59, "brachiocephalic_vein_left", "other"),
    (60, "brachiocephalic_vein_right", "other"),
    (61, "atrial_appendage_left", "other"),
    (62, "superior_vena_cava", "other"),
    (63, "inferior_vena_cava", "other"),
    (64, "portal_vein_and_splenic_vein", "other"),
    (65, "iliac_artery_left", "other"),
    (66, "iliac_artery_right", "other"),
    (67, "iliac_vena_left", "other"),
    (68, "iliac_vena_right", "other"),
    (69, "humerus_left", "other"),
    (70, "humerus_right", "other"),
    (71, "scapula_left", "other"),
    (72, "scapula_right", "other"),
    (73, "clavicula_left", "other"),
    (74, "clavicula_right", "other"),
    (75, "femur_left", "other"),
    (76, "femur_right", "other"),
    (77, "hip_left", "other"),
    (78, "hip_right", "other"),
    (79, "spinal_cord", "other"),
    (80, "gluteus_maximus_left", "other"),
    (81, "gluteus_maximus_right", "other"),
    (82, "gluteus_medius_left", "other"),
    (83, "gluteus_medius_right", "other"),
    (84, "gluteus_minimus_left", "other"),
    (85, "gluteus_minimus_right", "other"),
    (86, "autochthon_left", "other"),
    (87, "autochthon_right", "other"),
    (88, "iliopsoas_left", "other"),
    (89, "iliopsoas_right", "other"),
    (90, "brain", "parenchymal"),
    (91, "skull", "other"),
    (92, "rib_left_1", "other"),
    (93, "rib_left_2", "other"),
    (94, "rib_left_3", "other"),
    (95, "rib_left_4", "other"),
    (96, "rib_left_5", "other"),
    (97, "rib_left_6", "other"),
    (98, "rib_left_7", "other"),
    (99, "rib_left_8", "other"),
    (100, "rib_left_9", "other"),
    (101, "rib_left_10", "other"),
    (102, "rib_left_11", "other"),
    (103, "rib_left_12", "other"),
    (104, "rib_right_1", "other"),
    (105, "rib_right_2", "other"),
    (106, "rib_right_3", "other"),
    (107, "rib_right_4", "other"),
    (108, "rib_right_5", "other"),
    (109, "rib_right_6", "other"),
    (110, "rib_right_7", "other"),
    (111, "rib_right_8", "other"),
    (112, "rib_right_9", "other"),
    (113, "rib_right_10", "other"),
    (114, "rib_right_11", "other"),
    (115, "rib_right_12", "other"),
    (116, "sternum", "other"),
    (117, "costal_cartilages", "other"),
)

TOTALSEG_V2: dict[int, str] = {i: name for i, name, _ in _V2_TABLE}
"""TotalSegmentator v2 "total" class id -> name (117 classes)."""

# TotalSegmentator v1 (104 classes; ``v1_order=True``) id -> name, as in
# ``map_to_binary.class_map["total_v1"]``.
TOTALSEG_V1: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "aorta",
    8: "inferior_vena_cava",
    9: "portal_vein_and_splenic_vein",
    10: "pancreas",
    11: "adrenal_gland_right",
    12: "adrenal_gland_left",
    13: "lung_upper_lobe_left",
    14: "lung_lower_lobe_left",
    15: "lung_upper_lobe_right",
    16: "lung_middle_lobe_right",
    17: "lung_lower_lobe_right",
    18: "vertebrae_L5",
    19: "vertebrae_L4",
    20: "vertebrae_L3",
    21: "vertebrae_L2",
    22: "vertebrae_L1",
    23: "vertebrae_T12",
    24: "vertebrae_T11",
    25: "vertebrae_T10",
    26: "vertebrae_T9",
    27: "vertebrae_T8",
    28: "vertebrae_T7",
    29: "vertebrae_T6",
    30: "vertebrae_T5",
    31: "vertebrae_T4",
    32: "vertebrae_T3",
    33: "vertebrae_T2",
    34: "vertebrae_T1",
    35: "vertebrae_C7",
    36: "vertebrae_C6",
    37: "vertebrae_C5",
    38: "vertebrae_C4",
    39: "vertebrae_C3",
    40: "vertebrae_C2",
    41: "vertebrae_C1",
    42: "esophagus",
    43: "trachea",
    44: "heart_myocardium",
    45: "heart_atrium_left",
    46: "heart_ventricle_left",
    47: "heart_atrium_right",
    48: "heart_ventricle_right",
    49: "pulmonary_artery",
    50: "brain",
    51: "iliac_artery_left",
    52: "iliac_artery_right",
    53: "iliac_vena_left",
    54: "iliac_vena_right",
    55: "small_bowel",
    56: "duodenum",
    57: "colon",
    58: "rib_left_1",
    59: "rib_left_2",
    60: "rib_left_3",
    61: "rib_left_4",
    62: "rib_left_5",
    63: "rib_left_6",
    64: "rib_left_7",
    65: "rib_left_8",
    66: "rib_left_9",
    67: "rib_left_10",
    68: "rib_left_11",
    69: "rib_left_12",
    70: "rib_right_1",
    71: "rib_right_2",
    72: "rib_right_3",
    73: "rib_right_4",
    74: "rib_right_5",
    75: "rib_right_6",
    76: "rib_right_7",
    77: "rib_right_8",
    78: "rib_right_9",
    79: "rib_right_10",
    80: "rib_right_11",
    81: "rib_right_12",
    82: "humerus_left",
    83: "humerus_right",
    84: "scapula_left",
    85: "scapula_right",
    86: "clavicula_left",
    87: "clavicula_right",
    88: "femur_left",
    89: "femur_right",
    90: "hip_left",
    91: "hip_right",
    92: "sacrum",
    93: "face",
    94: "gluteus_maximus_left",
    95: "gluteus_maximus_right",
    96: "gluteus_medius_left",
    97: "gluteus_medius_right",
    98: "gluteus_minimus_left",
    99: "gluteus_minimus_right",
    100: "autochthon_left",
    101: "autochthon_right",
    102: "iliopsoas_left",
    103: "iliopsoas_right",
    104: "urinary_bladder",
}
"""TotalSegmentator v1 class id -> name (104 classes)."""

# v1 classes that v2 merged or dropped: the four heart chambers and myocardium became ``heart``;
# ``pulmonary_artery`` and ``face`` have no v2 class (converted to background).
_V1_RENAMED: dict[str, str] = {
    "heart_myocardium": "heart",
    "heart_atrium_left": "heart",
    "heart_ventricle_left": "heart",
    "heart_atrium_right": "heart",
    "heart_ventricle_right": "heart",
}
_V2_IDS: dict[str, int] = {name: i for i, name in TOTALSEG_V2.items()}

V1_TO_V2: dict[int, int] = {
    i: _V2_IDS.get(_V1_RENAMED.get(name, name), 0) for i, name in TOTALSEG_V1.items()
}
"""TotalSegmentator v1 id -> v2 id; 0 where v2 has no such class (pulmonary_artery, face)."""

ORGAN_GROUPS: dict[str, tuple[str, ...]] = {
    "kidney": ("kidney_right", "kidney_left"),
    "lung": (
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    ),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "adrenal_gland": ("adrenal_gland_right", "adrenal_gland_left"),
    "kidney_cyst": ("kidney_cyst_left", "kidney_cyst_right"),
}
"""Group name -> member v2 class names. A group's ids are the union of its members' ids."""

# Largest lesion diameter (mm) a report may give for a lesion in this organ ("sizes must fit the
# organ"); organs not listed allow ``_DEFAULT_MAX_LESION_MM``.
_MAX_LESION_MM: dict[str, float] = {
    "liver": 200.0,
    "kidney": 150.0,
    "lung": 150.0,
    "spleen": 150.0,
    "stomach": 120.0,
    "colon": 120.0,
    "pancreas": 100.0,
    "esophagus": 100.0,
    "urinary_bladder": 100.0,
    "small_bowel": 100.0,
    "duodenum": 80.0,
    "gallbladder": 60.0,
    "adrenal_gland": 80.0,
    "thyroid_gland": 60.0,
    "prostate": 60.0,
    "trachea": 50.0,
}
_DEFAULT_MAX_LESION_MM = 100.0


@dataclass(frozen=True)
class Organ:
    """One row of the organ table.

    Attributes:
        name: Canonical name (a v2 class name or a group name).
        ids: TotalSegmentator v2 ids the name covers (one id, or several for a group).
        kind: ``"hollow"``, ``"parenchymal"`` or ``"other"``.
        is_group: Whether the name is a group of several classes.
        max_lesion_mm: Largest lesion diameter in mm a report may give in this organ.
    """

    name: str
    ids: tuple[int, ...]
    kind: OrganKind
    is_group: bool
    max_lesion_mm: float

    @property
    def text(self) -> str:
        """Name for report text (underscores as spaces), e.g. ``"urinary bladder"``."""
        return self.name.replace("_", " ")


def _max_lesion(name: str) -> float:
    if name in _MAX_LESION_MM:
        return _MAX_LESION_MM[name]
    for group, members in ORGAN_GROUPS.items():
        if name in members and group in _MAX_LESION_MM:
            return _MAX_LESION_MM[group]
    return _DEFAULT_MAX_LESION_MM


def _build_organs() -> dict[str, Organ]:
    kinds = {name: kind for _, name, kind in _V2_TABLE}
    organs = {
        name: Organ(name, (i,), kind, False, _max_lesion(name)) for i, name, kind in _V2_TABLE
    }
    for group, members in ORGAN_GROUPS.items():
        member_kinds = {kinds[m] for m in members}
        kind = member_kinds.pop() if len(member_kinds) == 1 else "other"
        organs[group] = Organ(
            group, tuple(sorted(_V2_IDS[m] for m in members)), kind, True, _max_lesion(group)
        )
    return organs


ORGANS: dict[str, Organ] = _build_organs()
"""Canonical organ name -> :class:`Organ`, for all 117 v2 classes and the groups."""

_ALIASES: dict[str, str] = {
    "bladder": "urinary_bladder",
    "gall_bladder": "gallbladder",
    "gall": "gallbladder",
    "oesophagus": "esophagus",
    "oesophageal": "esophagus",
    "esophageal": "esophagus",
    "kidneys": "kidney",
    "renal": "kidney",
    "left_kidney": "kidney_left",
    "right_kidney": "kidney_right",
    "lungs": "lung",
    "left_lung": "lung_left",
    "right_lung": "lung_right",
    "hepatic": "liver",
    "pancreatic": "pancreas",
    "gastric": "stomach",
    "large_bowel": "colon",
    "large_intestine": "colon",
    "colorectal": "colon",
    "small_intestine": "small_bowel",
    "thyroid": "thyroid_gland",
    "adrenal": "adrenal_gland",
    "adrenal_glands": "adrenal_gland",
    "left_adrenal_gland": "adrenal_gland_left",
    "right_adrenal_gland": "adrenal_gland_right",
    **dict.fromkeys(_V1_RENAMED, "heart"),
}


def _normalize(name: str) -> str:
    return re.sub(r"[\s\-,.;]+", "_", name.strip().lower()).strip("_")


# normalized spelling -> canonical name (canonical v2 names keep their case, e.g. vertebrae_L1)
_KNOWN: dict[str, str] = {**{_normalize(n): n for n in ORGANS}, **_ALIASES}


def resolve_organ(name: str | int) -> str:
    """Return the canonical organ name for a name, alias or TotalSegmentator v2 id.

    Args:
        name: Organ name in any case with spaces, hyphens or underscores (``"Urinary Bladder"``,
            ``"kidney left"``), an alias (``"bladder"``), a group (``"lung"``) or a v2 class id.

    Returns:
        The canonical name, a key of :data:`ORGANS`.

    Raises:
        OrganError: Unknown name or id; the message gives the closest known name.
    """
    if isinstance(name, bool) or not isinstance(name, (str, int, np.integer)):
        raise OrganError(
            f"organ must be a name or a TotalSegmentator v2 id, got {type(name).__name__}",
            field="organ",
            value=name,
        )
    if isinstance(name, (int, np.integer)):
        if int(name) in TOTALSEG_V2:
            return TOTALSEG_V2[int(name)]
        raise OrganError(
            f"unknown TotalSegmentator v2 organ id {int(name)}; ids are 1..{max(TOTALSEG_V2)}",
            field="organ",
            value=name,
        )
    key = _normalize(name)
    if key.isdigit() and int(key) in TOTALSEG_V2:
        return TOTALSEG_V2[int(key)]
    if key in _KNOWN:
        return _KNOWN[key]
    close = difflib.get_close_matches(key, list(_KNOWN), n=1, cutoff=0.0)
    suggestion = _KNOWN[close[0]] if close else None
    hint = f"; did you mean {suggestion!r}?" if suggestion else "."
    raise OrganError(
        f"unknown organ {name!r}{hint} Known organs are the TotalSegmentator v2 'total' class "
        f"names and the groups {sorted(ORGAN_GROUPS)}.",
        field="organ",
        value=name,
        allowed=tuple(ORGANS),
        suggestion=suggestion,
    )


def organ_ids(name: str | int) -> tuple[int, ...]:
    """TotalSegmentator v2 ids covered by an organ name (several for a group such as ``"lung"``)."""
    return ORGANS[resolve_organ(name)].ids


def organ_kind(name: str | int) -> OrganKind:
    """``"hollow"``, ``"parenchymal"`` or ``"other"`` for an organ name."""
    return ORGANS[resolve_organ(name)].kind


def is_hollow(name: str | int) -> bool:
    """Whether the organ is hollow (lesions in the lumen or the wall)."""
    return organ_kind(name) == "hollow"


def v1_to_v2(
    labels: np.ndarray, *, unmapped: Literal["background", "error"] = "background"
) -> np.ndarray:
    """Convert a TotalSegmentator v1 (104-class) label map to v2 "total" ids.

    Heart chambers and myocardium become ``heart`` (51). ``pulmonary_artery`` and ``face`` have no
    v2 class: they become background, or raise with ``unmapped="error"``.

    Args:
        labels: Integer array of any shape with values in 0..104.
        unmapped: What to do with v1 classes that v2 lacks.

    Returns:
        Array of the same shape, dtype uint8, with v2 ids.

    Raises:
        OrganError: Non-integer input, ids outside 0..104, or unmapped classes with
            ``unmapped="error"``.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(labels == np.round(labels)):
            raise OrganError(f"label map must hold integer ids, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > max(TOTALSEG_V1)):
        raise OrganError(
            f"v1 label map values must lie in 0..{max(TOTALSEG_V1)}, "
            f"got {labels.min()}..{labels.max()}"
        )
    lut = np.zeros(max(TOTALSEG_V1) + 1, dtype=np.uint8)
    for v1, v2 in V1_TO_V2.items():
        lut[v1] = v2
    if unmapped == "error":
        missing = sorted(
            TOTALSEG_V1[int(i)] for i in np.unique(labels) if i and V1_TO_V2[int(i)] == 0
        )
        if missing:
            raise OrganError(f"v1 classes {missing} have no TotalSegmentator v2 class")
    return lut[labels]
