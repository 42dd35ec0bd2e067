"""The left-right flip of the anatomy augmentation keeps every label on the side its name says."""

from __future__ import annotations

import numpy as np
import pytest
from ctsynth_bench.rulesynth._deform import (
    LR_PAIRS,
    UNPAIRED_LATERAL,
    _mirror_name,
    flip_allowed,
    flip_lr,
    lr_pairs,
)
from report_bbox import TOTALSEG_V2


def _side_free(name: str) -> str:
    return "_".join("SIDE" if p in ("left", "right") else p for p in name.split("_"))


def test_pairs_match_totalsegmentators_names():
    # Every pair joins X_left and X_right of TotalSegmentator's own table, in both directions.
    for a, b in LR_PAIRS.items():
        assert LR_PAIRS[b] == a and a != b
        assert _side_free(TOTALSEG_V2[a]) == _side_free(TOTALSEG_V2[b])
        assert {"left", "right"} == {
            p for n in (TOTALSEG_V2[a], TOTALSEG_V2[b]) for p in n.split("_")
        } & {"left", "right"}
    # ...and every sided name with a mirror in the table is paired.
    names = {n: i for i, n in TOTALSEG_V2.items()}
    sided = [i for i, n in TOTALSEG_V2.items() if {"left", "right"} & set(n.split("_"))]
    unpaired = sorted(TOTALSEG_V2[i] for i in sided if i not in LR_PAIRS)
    assert unpaired == ["atrial_appendage_left", "lung_middle_lobe_right"]
    for name in ("hip", "femur", "kidney_cyst", "iliac_artery", "iliac_vena", "gluteus_maximus",
                 "gluteus_medius", "gluteus_minimus", "kidney", "adrenal_gland", "humerus"):  # fmt: skip
        assert LR_PAIRS[names[f"{name}_left"]] == names[f"{name}_right"]
    for k in range(1, 13):
        assert LR_PAIRS[names[f"rib_left_{k}"]] == names[f"rib_right_{k}"]
    # Midline structures are never exchanged (the old table swapped sacrum/S1 and L5/L4).
    for name in ("sacrum", "vertebrae_S1", "vertebrae_L5", "vertebrae_L4", "urinary_bladder"):
        assert names[name] not in LR_PAIRS


def test_pairs_are_built_from_any_table():
    table = {
        1: "hip_left",
        2: "hip_right",
        3: "rib_left_7",
        4: "rib_right_7",
        5: "sacrum",
        6: "x_left",
    }
    assert lr_pairs(table) == {1: 2, 2: 1, 3: 4, 4: 3}


def _blob(shape, centre, r=2):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r * r


@pytest.mark.parametrize("layout", ["ras", "x_on_second_axis"])
def test_flipped_case_keeps_each_side_in_world_coordinates(layout):
    names = {n: i for i, n in TOTALSEG_V2.items()}
    shape = (40, 30, 20)
    organs = np.zeros(shape, np.int16)
    ct = np.full(shape, -1000.0, np.float32)
    # RAS+: world x grows towards the patient's right. The pelvis: hips, femurs, iliac vessels,
    # gluteal muscles and kidney cysts placed on their own side, the sacrum in the middle.
    placed = {
        "hip_left": 8, "hip_right": 31, "femur_left": 6, "femur_right": 33,
        "iliac_artery_left": 14, "iliac_artery_right": 25, "gluteus_maximus_left": 4,
        "gluteus_maximus_right": 35, "kidney_cyst_left": 11, "kidney_cyst_right": 28,
    }  # fmt: skip
    for k, (name, i) in enumerate(placed.items()):
        region = _blob(shape, (i, 5 + 2 * (k % 8), 10))
        organs[region] = names[name]
        ct[region] = 40.0 + k
    organs[_blob(shape, (20, 15, 10), 3)] = names["sacrum"]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-39.0, -29.0, -19.0)  # world x = 0 at the middle of the x axis
    if layout == "x_on_second_axis":  # voxel axis 1 runs along world x: the flip must use it
        ct, organs = ct.transpose(1, 0, 2).copy(), organs.transpose(1, 0, 2).copy()
        affine = affine[:, [1, 0, 2, 3]]
    assert flip_allowed(organs)
    ct_f, org_f = flip_lr(ct, organs, affine)

    def world_x(labels, name):
        idx = np.argwhere(labels == names[name]).mean(axis=0)
        return float(affine[0, :3] @ idx + affine[0, 3])

    for name in placed:
        before, after = world_x(organs, name), world_x(org_f, name)
        side = -1 if "_left" in name else 1
        assert side * before > 0 and side * after > 0, (name, before, after)
        # the label now marks the mirror image of its partner
        assert after == pytest.approx(-world_x(organs, _mirror_name(name)), abs=1e-6)
    # The midline sacrum is mirrored in place and keeps its label.
    assert world_x(org_f, "sacrum") == pytest.approx(-world_x(organs, "sacrum"), abs=1e-6)
    assert abs(world_x(org_f, "sacrum")) <= 2.0
    # The CT is mirrored with the labels: each label sits on its partner's intensity.
    for name in placed:
        partner = list(placed).index(_mirror_name(name))
        assert np.all(ct_f[org_f == names[name]] == 40.0 + partner)


def test_no_flip_with_an_unpaired_lateral_organ():
    for name in ("liver", "spleen", "lung_middle_lobe_right", "heart", "colon"):
        organs = np.zeros((4, 4, 4), np.int16)
        organs[0, 0, 0] = next(i for i, n in TOTALSEG_V2.items() if n == name)
        assert not flip_allowed(organs)
        assert organs[0, 0, 0] in UNPAIRED_LATERAL
