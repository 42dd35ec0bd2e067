"""The derived thoracic oesophagus (id 15) on the bundled chest CT, checked against anatomy.

The checks do not reuse the derivation's own landmarks: bone, air and lungs are found here again
with plain thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
from ctsynth_bench.data import load_case
from ctsynth_bench.data._esophagus import derive_esophagus, spine_track
from ctsynth_bench.data._lungs import body_mask


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    return load_case("chest", tmp_path_factory.mktemp("cache"))


def _slices(mask):
    return np.nonzero(mask.any(axis=(0, 1)))[0]


def test_oesophagus_is_a_continuous_tube_of_plausible_size(chest):
    eso = chest.organs == 15
    sp = np.asarray(chest.spacing)
    ks = _slices(eso)
    assert ks.size > 0
    assert np.array_equal(ks, np.arange(ks[0], ks[-1] + 1)), "gaps along z"
    length = ks.size * sp[2]
    assert 80.0 <= length <= 250.0  # thoracic oesophagus is about 180 mm in adults
    areas = eso.sum(axis=(0, 1))[ks] * sp[0] * sp[1]
    assert 50.0 <= np.median(areas) <= 250.0  # a collapsed oesophagus is about 20 x 15 mm
    assert areas.max() <= 320.0
    assert 5.0 <= eso.sum() * sp.prod() / 1000.0 <= 40.0  # ml
    # Soft tissue with at most a little luminal air.
    assert -60.0 <= np.median(chest.ct[eso]) <= 80.0
    assert (chest.ct[eso] < -300).mean() < 0.1


def test_oesophagus_lies_in_front_of_the_spine_behind_the_airway_near_the_midline(chest):
    eso = chest.organs == 15
    sp = np.asarray(chest.spacing)
    lungs = np.isin(chest.organs, (10, 11, 12, 13, 14))
    body_x = np.nonzero(chest.body)[0].mean()
    ks = _slices(eso)
    in_front_of_bone = with_air_above = 0
    for k in ks:
        xs, ys = np.nonzero(eso[:, :, k])
        cx, cy = int(round(xs.mean())), int(round(ys.mean()))
        assert abs(cx - body_x) * sp[0] < 35.0, f"slice {k}: {abs(cx - body_x) * sp[0]:.0f} mm off the midline"
        # Bone (vertebral body) within 30 mm behind the centre, in a 10 mm wide column; slices
        # through an intervertebral disc (about a fifth of the spine's height) have none.
        half = int(5 / sp[0])
        column = chest.ct[cx - half: cx + half + 1, max(0, cy - int(30 / sp[1])): cy, k]
        in_front_of_bone += bool((column > 200).any())
        # Airway: non-lung air within 30 mm in front of the centre (trachea / main bronchi).
        ahead = (chest.ct[:, :, k] < -500) & ~lungs[:, :, k]
        ahead[:, : cy] = False
        ahead[:, cy + int(30 / sp[1]):] = False
        ahead[: cx - int(20 / sp[0])] = False
        ahead[cx + int(20 / sp[0]):] = False
        if ahead.any() and k >= np.percentile(ks, 60):
            with_air_above += 1
    assert in_front_of_bone / ks.size >= 0.75
    # The upper part runs behind the trachea and the main bronchi.
    upper = ks[ks >= np.percentile(ks, 60)]
    assert with_air_above >= 0.5 * upper.size


def test_oesophagus_never_overlaps_lung_or_bone_and_avoids_a_given_aorta(chest):
    eso = chest.organs == 15
    assert not (eso & np.isin(chest.organs, (10, 11, 12, 13, 14))).any()
    assert (chest.ct[eso] > 300).mean() < 0.01
    # With a (fake) aorta mask covering the oesophagus's left half, the new tube avoids it.
    hu = chest.ct.astype(np.float32)
    lungs = np.isin(chest.organs, (10, 11, 12, 13, 14))
    aorta = np.zeros_like(eso)
    xs = np.nonzero(eso)[0]
    aorta[: int(np.median(xs))] = eso[: int(np.median(xs))]
    again = derive_esophagus(hu, chest.affine, body=body_mask(hu), lung=lungs, aorta=aorta)
    assert again.any() and not (again & aorta).any()


def test_spine_track_follows_the_vertebral_body(chest):
    hu = chest.ct.astype(np.float32)
    sp = np.asarray(chest.spacing)
    track = spine_track(hu, body_mask(hu), sp)
    ks = _slices(chest.organs == 15)
    for k in ks[:: max(1, ks.size // 8)]:
        x, yf = int(round(track.canal_x[k])), int(round(track.front_y[k]))
        # the cortex of the vertebral body lies just behind the front edge; in front, no bone
        behind = chest.ct[x - 2: x + 3, yf - int(6 / sp[1]): yf + 1, k]
        ahead = chest.ct[x - 2: x + 3, yf + int(4 / sp[1]): yf + int(8 / sp[1]), k]
        assert np.percentile(behind, 90) > 250, k
        assert np.median(ahead) < 150, k


def test_a_ct_without_lungs_gets_a_clear_error():
    hu = np.full((20, 20, 10), 40.0, dtype=np.float32)
    with pytest.raises(ValueError, match="no lung voxels"):
        derive_esophagus(hu, np.eye(4), body=np.ones(hu.shape, bool), lung=np.zeros(hu.shape, bool))
