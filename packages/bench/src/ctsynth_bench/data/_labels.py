"""Label tables: TotalSegmentator "total" v1/v2 ids and GuideGen's 20 classes plus tumour.

TotalSegmentator ids come from report-bbox's organ table (the one table): ``TOTAL_V2`` /
``TOTAL_V1`` map id -> name; ``V1_TO_V2`` maps v1 ids to v2 ids (the five v1 heart parts become v2
``heart``); v1 classes with no v2 "total" counterpart are listed in :data:`V1_UNMAPPED` and become
background (0).

GuideGen (Dai et al., AAAI 2026) trains its categorical diffusion on 21 classes: background, 19
organ groups of TotalSegmentator, and the tumour written over them as class 20. The authors group
TotalSegmentator classes by name prefix (all lung lobes are "lung", all ribs are "rib"). Here the
grouping is written out once, by TotalSegmentator v2 name, in :data:`GUIDEGEN_FROM_V2`; every v2
class is either in it or in :data:`GUIDEGEN_UNMAPPED` (becomes background), and a test keeps it so.

====  ===========================  ==========================================================
id    GuideGen class               TotalSegmentator v2 classes
====  ===========================  ==========================================================
0     background                   everything in GUIDEGEN_UNMAPPED, and unlabelled voxels
1     spleen                       spleen
2     kidney                       kidney_left/right, kidney_cyst_left/right (name prefix)
3     liver                        liver
4     stomach                      stomach
5     pancreas                     pancreas
6     lung                         the five lobes
7     small bowel                  small_bowel
8     duodenum                     duodenum
9     colon                        colon
10    urinary bladder              urinary_bladder
11    heart                        heart
12    vertebrae                    vertebrae_C1 ... vertebrae_S1 (not the sacrum)
13    rib                          rib_left_1..12, rib_right_1..12 (not costal cartilages)
14    adrenal                      adrenal_gland_left/right
15    portal and splenic vein      portal_vein_and_splenic_vein
16    oesophagus                   esophagus
17    aorta                        aorta
18    inferior vena cava           inferior_vena_cava
19    gallbladder                  gallbladder
20    tumour                       a lesion mask, written over the organs
====  ===========================  ==========================================================
"""

from __future__ import annotations

import numpy as np
from report_bbox import TOTALSEG_V1, TOTALSEG_V2
from report_bbox import V1_TO_V2 as _V1_TO_V2

from ..exceptions import DataError

#: TotalSegmentator v2 "total" task: id -> name (117 classes).
TOTAL_V2: dict[int, str] = dict(TOTALSEG_V2)
#: TotalSegmentator v1 "total" task: id -> name (104 classes).
TOTAL_V1: dict[int, str] = dict(TOTALSEG_V1)
#: v1 id -> v2 id for every v1 class that has a v2 counterpart.
V1_TO_V2: dict[int, int] = {k: v for k, v in _V1_TO_V2.items() if v}
#: v1 names with no v2 "total" class; they become background.
V1_UNMAPPED: tuple[str, ...] = tuple(TOTAL_V1[k] for k in sorted(TOTAL_V1) if not _V1_TO_V2.get(k))

#: GuideGen class id -> name (GuideGen's ``OrganTypes`` order; 20 is the tumour).
GUIDEGEN_CLASSES: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "kidney",
    3: "liver",
    4: "stomach",
    5: "pancreas",
    6: "lung",
    7: "small_bowel",
    8: "duodenum",
    9: "colon",
    10: "urinary_bladder",
    11: "heart",
    12: "vertebrae",
    13: "rib",
    14: "adrenal",
    15: "portal_vein_and_splenic_vein",
    16: "esophagus",
    17: "aorta",
    18: "inferior_vena_cava",
    19: "gallbladder",
    20: "tumour",
}
#: GuideGen id of the tumour class (written over the organ classes).
GUIDEGEN_TUMOUR = 20

_SIDES = ("left", "right")
#: TotalSegmentator v2 name -> GuideGen class id, for every v2 class GuideGen keeps.
GUIDEGEN_FROM_V2: dict[str, int] = {
    "spleen": 1,
    **{f"kidney_{s}": 2 for s in _SIDES},
    **{f"kidney_cyst_{s}": 2 for s in _SIDES},  # the authors group by name prefix "kidney"
    "liver": 3,
    "stomach": 4,
    "pancreas": 5,
    **{
        f"lung_{lobe}": 6
        for lobe in (
            "upper_lobe_left",
            "lower_lobe_left",
            "upper_lobe_right",
            "middle_lobe_right",
            "lower_lobe_right",
        )
    },
    "small_bowel": 7,
    "duodenum": 8,
    "colon": 9,
    "urinary_bladder": 10,
    "heart": 11,
    **{
        f"vertebrae_{v}": 12
        for v in (
            "S1",
            *(f"L{i}" for i in range(1, 6)),
            *(f"T{i}" for i in range(1, 13)),
            *(f"C{i}" for i in range(1, 8)),
        )
    },
    **{f"rib_{s}_{i}": 13 for s in _SIDES for i in range(1, 13)},
    **{f"adrenal_gland_{s}": 14 for s in _SIDES},
    "portal_vein_and_splenic_vein": 15,
    "esophagus": 16,
    "aorta": 17,
    "inferior_vena_cava": 18,
    "gallbladder": 19,
}
#: TotalSegmentator v2 names GuideGen does not model; they become background (0).
GUIDEGEN_UNMAPPED: frozenset[str] = frozenset(
    {
        # airway, glands, pelvis organs
        "trachea",
        "thyroid_gland",
        "prostate",
        # bones other than vertebrae and ribs (the sacrum is not a "vertebrae_" class)
        "sacrum",
        "sternum",
        "costal_cartilages",
        "skull",
        *(f"{b}_{s}" for b in ("humerus", "scapula", "clavicula", "femur", "hip") for s in _SIDES),
        # vessels other than the aorta, the inferior vena cava and the portal/splenic vein
        "pulmonary_vein",
        "brachiocephalic_trunk",
        "superior_vena_cava",
        "atrial_appendage_left",
        *(
            f"{v}_{s}"
            for v in (
                "subclavian_artery",
                "common_carotid_artery",
                "brachiocephalic_vein",
                "iliac_artery",
                "iliac_vena",
            )
            for s in _SIDES
        ),
        # muscles, nervous system
        *(
            f"{m}_{s}"
            for m in (
                "gluteus_maximus",
                "gluteus_medius",
                "gluteus_minimus",
                "autochthon",
                "iliopsoas",
            )
            for s in _SIDES
        ),
        "spinal_cord",
        "brain",
    }
)


def _guidegen_lut() -> np.ndarray:
    by_name = {name: i for i, name in TOTAL_V2.items()}
    lut = np.zeros(max(TOTAL_V2) + 1, dtype=np.uint8)
    for name, gid in GUIDEGEN_FROM_V2.items():
        lut[by_name[name]] = gid
    return lut


def to_guidegen(organs: np.ndarray, lesion: np.ndarray | None = None) -> np.ndarray:
    """Map a TotalSegmentator v2 label map (and a lesion mask) to GuideGen's 21 classes.

    Args:
        organs: integer TotalSegmentator v2 "total" ids, any shape (e.g. ``(X, Y, Z)``).
        lesion: optional mask of the same shape; its non-zero voxels become the tumour (20),
            over whatever organ they are in.

    Returns:
        uint8 array of ``organs``' shape with GuideGen ids 0-20.

    Raises:
        DataError: non-integer organs, ids outside TotalSegmentator v2 (0-117), or a lesion mask
            of another shape.
    """
    organs = np.asarray(organs)
    if organs.dtype.kind not in "iu":
        raise DataError(f"to_guidegen: organs must hold integer ids, got dtype {organs.dtype}")
    if organs.size and (organs.min() < 0 or organs.max() > max(TOTAL_V2)):
        raise DataError(
            f"to_guidegen: organ ids {organs.min()}..{organs.max()} are outside TotalSegmentator "
            f"v2 (0..{max(TOTAL_V2)}); convert v1 maps with V1_TO_V2 first"
        )
    out = _guidegen_lut()[organs]
    if lesion is not None:
        lesion = np.asarray(lesion)
        if lesion.shape != organs.shape:
            raise DataError(
                f"to_guidegen: lesion shape {lesion.shape} differs from organs {organs.shape}"
            )
        out[lesion != 0] = GUIDEGEN_TUMOUR
    return out
