"""GuideGen's label space: 20 organ classes plus tumour (ids 0-20), mapped from TotalSegmentator.

The class order is the authors' (background, spleen, kidney, liver, stomach, pancreas, lung, small
bowel, duodenum, colon, urinary bladder, heart, vertebrae, rib, adrenal, portal and splenic vein,
oesophagus, aorta, inferior vena cava, gallbladder, tumour). :data:`GUIDEGEN_FROM_TOTAL_V2` maps
every TotalSegmentator v2 "total" name that has a GuideGen class; names not in it (muscles, femur,
pelvis, trachea, ...) become background. v1 maps go through ``ctsynth_bench.data.V1_TO_V2`` first.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GUIDEGEN_CLASSES",
    "GUIDEGEN_FROM_TOTAL_V2",
    "NUM_CLASSES",
    "TUMOUR",
    "class_id",
    "map_total_v2",
]

#: GuideGen class names, index = class id.
GUIDEGEN_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "kidney",
    "liver",
    "stomach",
    "pancreas",
    "lung",
    "small_bowel",
    "duodenum",
    "colon",
    "urinary_bladder",
    "heart",
    "vertebrae",
    "rib",
    "adrenal_gland",
    "portal_vein_and_splenic_vein",
    "esophagus",
    "aorta",
    "inferior_vena_cava",
    "gallbladder",
    "tumour",
)
NUM_CLASSES = len(GUIDEGEN_CLASSES)
TUMOUR = GUIDEGEN_CLASSES.index("tumour")


def _v2_map() -> dict[str, str]:
    m = {
        "spleen": "spleen",
        "kidney_right": "kidney",
        "kidney_left": "kidney",
        "kidney_cyst_left": "kidney",
        "kidney_cyst_right": "kidney",
        "liver": "liver",
        "stomach": "stomach",
        "pancreas": "pancreas",
        "small_bowel": "small_bowel",
        "duodenum": "duodenum",
        "colon": "colon",
        "urinary_bladder": "urinary_bladder",
        "heart": "heart",
        "atrial_appendage_left": "heart",
        "adrenal_gland_right": "adrenal_gland",
        "adrenal_gland_left": "adrenal_gland",
        "portal_vein_and_splenic_vein": "portal_vein_and_splenic_vein",
        "esophagus": "esophagus",
        "aorta": "aorta",
        "inferior_vena_cava": "inferior_vena_cava",
        "gallbladder": "gallbladder",
    }
    for lobe in ("upper_lobe_left", "lower_lobe_left", "upper_lobe_right", "middle_lobe_right", "lower_lobe_right"):
        m[f"lung_{lobe}"] = "lung"
    for v in [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]:
        m[f"vertebrae_{v}"] = "vertebrae"
    m["vertebrae_S1"] = "vertebrae"
    for side in ("left", "right"):
        for i in range(1, 13):
            m[f"rib_{side}_{i}"] = "rib"
    return m


#: TotalSegmentator v2 "total" name -> GuideGen class name (the one documented table).
GUIDEGEN_FROM_TOTAL_V2: dict[str, str] = _v2_map()


def class_id(name: str) -> int:
    """GuideGen class id of a class name (``"tumour"`` -> 20)."""
    return GUIDEGEN_CLASSES.index(name)


def map_total_v2(organs: np.ndarray, total_v2: dict[int, str]) -> np.ndarray:
    """Map a TotalSegmentator v2 id map to GuideGen ids (uint8, unmapped names -> 0).

    Args:
        organs: integer array of TotalSegmentator v2 ids, any shape.
        total_v2: id -> name table (``ctsynth_bench.data.TOTAL_V2``).

    Returns:
        uint8 array of the same shape with ids in ``0 .. 19`` (tumour is never produced here).
    """
    lut = np.zeros(max(max(total_v2), int(organs.max(initial=0))) + 1, dtype=np.uint8)
    for tid, name in total_v2.items():
        gg = GUIDEGEN_FROM_TOTAL_V2.get(name)
        if gg is not None:
            lut[tid] = GUIDEGEN_CLASSES.index(gg)
    return lut[np.clip(organs, 0, None).astype(np.int64)]
