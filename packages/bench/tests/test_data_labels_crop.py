"""Label tables (TotalSegmentator v2 -> GuideGen) and crops around a box with paste-back offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ctsynth_bench.data import (
    GUIDEGEN_CLASSES,
    GUIDEGEN_FROM_V2,
    GUIDEGEN_TUMOUR,
    GUIDEGEN_UNMAPPED,
    TOTAL_V2,
    crop_around_box,
    to_guidegen,
)
from ctsynth_bench.exceptions import DataError
from lesion_inpaint import paste_back
from report_bbox import BBox

# ---------------------------------------------------------------------------------- label tables


def test_every_v2_name_maps_or_is_deliberately_unmapped() -> None:
    names = set(TOTAL_V2.values())
    mapped = set(GUIDEGEN_FROM_V2)
    assert not mapped & GUIDEGEN_UNMAPPED, "a name is both mapped and unmapped"
    undecided = sorted(names - mapped - GUIDEGEN_UNMAPPED)
    unknown = sorted((mapped | GUIDEGEN_UNMAPPED) - names)
    assert not undecided and not unknown, f"not decided: {undecided}; not v2 names: {unknown}"


def test_guidegen_classes_are_the_papers_21() -> None:
    assert list(GUIDEGEN_CLASSES) == list(range(21))
    assert GUIDEGEN_CLASSES[0] == "background" and GUIDEGEN_CLASSES[GUIDEGEN_TUMOUR] == "tumour"
    # every organ class 1-19 is reached from some v2 class; nothing maps to background or tumour
    assert sorted(set(GUIDEGEN_FROM_V2.values())) == list(range(1, 20))
    by_class: dict[int, set[str]] = {}
    for name, gid in GUIDEGEN_FROM_V2.items():
        by_class.setdefault(gid, set()).add(name)
    assert (
        len(by_class[6]) == 5 and len(by_class[13]) == 24 and len(by_class[12]) == 25
    )  # lobes, ribs, vertebrae


def test_to_guidegen_maps_ids_and_writes_the_tumour_over_organs() -> None:
    by_name = {n: i for i, n in TOTAL_V2.items()}
    organs = np.array(
        [
            [
                [
                    0,
                    by_name["liver"],
                    by_name["lung_middle_lobe_right"],
                    by_name["rib_left_7"],
                    by_name["femur_left"],
                    by_name["esophagus"],
                ]
            ]
        ],
        dtype=np.int16,
    )
    out = to_guidegen(organs)
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 3, 6, 13, 0, 16]]]
    lesion = np.zeros(organs.shape, np.uint8)
    lesion[0, 0, 1] = 1
    with_tumour = to_guidegen(organs, lesion)
    assert with_tumour.tolist() == [[[0, 20, 6, 13, 0, 16]]]  # the lesion changes exactly its voxel
    with pytest.raises(DataError, match="outside TotalSegmentator v2"):
        to_guidegen(np.array([[[118]]]))
    with pytest.raises(DataError, match="integer ids"):
        to_guidegen(organs.astype(float))
    with pytest.raises(DataError, match="lesion shape"):
        to_guidegen(organs, lesion[..., :2])


# ---------------------------------------------------------------------------------- crops


def _volume(shape=(40, 32, 24)) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        ((18, 14, 10), (23, 18, 13)),
        ((0, 0, 0), (3, 4, 5)),
        ((35, 28, 20), (40, 32, 24)),
        ((5, 20, 0), (17, 30, 8)),
    ],
)
def test_crop_offset_is_what_paste_back_needs(lo, hi) -> None:
    vol = _volume()
    size = (16, 12, 10)
    crop, offset = crop_around_box(vol, BBox(lo, hi), size)
    assert crop.shape == size
    sl = tuple(slice(o, o + s) for o, s in zip(offset, size, strict=True))
    assert np.array_equal(crop, vol[sl]), "the crop is the volume at the offset"
    for a, h, o, s, n in zip(lo, hi, offset, size, vol.shape, strict=True):
        assert o <= a and h <= o + s, "the box lies inside the crop"
        assert 0 <= o and o + s <= n, "the crop lies inside the volume"
    mask = np.zeros(size, np.uint8)
    mask[tuple(slice(a - o, h - o) for a, h, o in zip(lo, hi, offset, strict=True))] = 1
    # Pasting the unchanged crop back is the identity, bit for bit.
    assert np.array_equal(paste_back(vol, crop.copy(), mask, offset=offset), vol)
    # A changed crop lands exactly where it came from: the box region now holds the new values.
    edited = crop.copy() + 100.0
    pasted = paste_back(vol, edited, mask, offset=offset, dilation=0, feather=0)
    assert np.allclose(
        pasted[tuple(slice(a, h) for a, h in zip(lo, hi, strict=True))],
        vol[tuple(slice(a, h) for a, h in zip(lo, hi, strict=True))] + 100.0,
    )
    assert int((pasted != vol).sum()) == int(mask.sum())


def test_crop_is_centred_on_the_box_away_from_borders() -> None:
    crop, offset = crop_around_box(_volume(), ((18, 14, 10), (22, 18, 14)), 8)
    assert offset == (16, 12, 8) and crop.shape == (8, 8, 8)  # box centre 19.5 -> window 16..23


def test_crop_keeps_leading_axes_and_works_on_tensors() -> None:
    t = torch.arange(2 * 3 * 20 * 20 * 20, dtype=torch.float32).reshape(2, 3, 20, 20, 20)
    crop, offset = crop_around_box(t, ((2, 3, 4), (6, 7, 8)), (8, 8, 8))
    assert crop.shape == (2, 3, 8, 8, 8) and offset == (0, 1, 2)
    assert torch.equal(crop, t[..., 0:8, 1:9, 2:10])


def test_crop_bad_inputs() -> None:
    vol = _volume()
    with pytest.raises(DataError, match="does not fit in the volume"):
        crop_around_box(vol, ((0, 0, 0), (2, 2, 2)), 30)
    with pytest.raises(DataError, match="does not fit in a crop"):
        crop_around_box(vol, ((0, 0, 0), (10, 2, 2)), 8)
    with pytest.raises(DataError, match="not inside the volume"):
        crop_around_box(vol, ((38, 0, 0), (42, 2, 2)), 8)
    with pytest.raises(DataError, match="hi > lo"):
        crop_around_box(vol, ((3, 3, 3), (3, 4, 4)), 8)
    with pytest.raises(DataError, match="at least 3 axes"):
        crop_around_box(vol[0], ((0, 0, 0), (1, 1, 1)), 1)
    with pytest.raises(DataError, match="positive"):
        crop_around_box(vol, ((0, 0, 0), (1, 1, 1)), 0)
