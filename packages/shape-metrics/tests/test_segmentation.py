"""Dice and HD95 against medpy (live when installed) and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import shape_metrics as sm

SPACINGS = [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)]


def _pairs(shapes):
    shifted = np.roll(shapes["ellipsoid"], (2, -1, 1), axis=(0, 1, 2))
    return [
        (shapes["sphere"], shapes["ellipsoid"]),
        (shapes["box"], shapes["lshape"]),
        (shapes["ellipsoid"], shifted),
        (shapes["spiky"], shapes["crescent"]),
    ]


@pytest.mark.parametrize("spacing", SPACINGS)
def test_hd95_pooled_equals_medpy(shapes, spacing):
    binary = pytest.importorskip("medpy.metric.binary")
    for pred, ref in _pairs(shapes):
        ours = sm.hd95(pred, ref, spacing, convention="pooled")
        assert ours == pytest.approx(binary.hd95(pred, ref, voxelspacing=spacing), rel=1e-12)
        assert sm.dice(pred, ref) == pytest.approx(binary.dc(pred, ref), rel=1e-12)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_hd95_monai_convention_is_max_of_directed(shapes, spacing):
    binary = pytest.importorskip("medpy.metric.binary")
    for pred, ref in _pairs(shapes):
        # medpy's __surface_distances is private; the directed 95th percentiles are recovered
        # from its public hd95 applied to each direction's pooled set being just that direction.
        d_pr = binary.__dict__["__surface_distances"](pred, ref, spacing, 1)
        d_rp = binary.__dict__["__surface_distances"](ref, pred, spacing, 1)
        expected = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
        assert sm.hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-12)


def test_hd95_monai_equals_monai_metric(shapes):
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    sp = (0.7, 1.3, 2.5)
    for pred, ref in _pairs(shapes):
        m = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None], percentile=95, spacing=sp
        ).item()
        assert sm.hd95(pred, ref, sp, convention="monai") == pytest.approx(m, rel=1e-5)


def test_hd95_hand_computed_slabs():
    # Two slabs 3 voxels apart along x (spacing 2 mm): every surface voxel of one slab is 6 or
    # more mm from the other's nearest surface voxel.
    a = np.zeros((12, 6, 6), bool)
    b = np.zeros((12, 6, 6), bool)
    a[2, :, :] = True
    b[5, :, :] = True
    assert sm.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert sm.hd95(a, b, (2.0, 1.0, 1.0), convention="pooled") == pytest.approx(6.0)
    assert sm.hd95(a, a, (2.0, 1.0, 1.0)) == 0.0
    assert sm.dice(a, b) == 0.0 and sm.dice(a, a) == 1.0


def test_conventions_differ_on_asymmetric_case():
    # ref is a big block; pred is that block plus a far away small blob -> the directed
    # pred->ref percentile is large for a small fraction of points only.
    ref = np.zeros((40, 12, 12), bool)
    ref[2:12, 2:10, 2:10] = True
    pred = ref.copy()
    pred[34:37, 5:8, 5:8] = True
    monai = sm.hd95(pred, ref, (1, 1, 1), convention="monai")
    pooled = sm.hd95(pred, ref, (1, 1, 1), convention="pooled")
    assert monai >= pooled


def test_empty_masks():
    e = np.zeros((5, 5, 5), bool)
    f = e.copy()
    f[2, 2, 2] = True
    assert np.isnan(sm.hd95(e, e, (1, 1, 1)))
    assert sm.hd95(e, f, (1, 1, 1)) == np.inf
    assert sm.hd95(f, e, (1, 1, 1), convention="pooled") == np.inf
    assert np.isnan(sm.dice(e, e))
    assert sm.dice(e, e, empty_value=1.0) == 1.0
    assert sm.dice(e, f) == 0.0


def test_bad_inputs():
    a = np.ones((4, 4, 4), bool)
    with pytest.raises(sm.ConventionError, match="Did you mean 'pooled'"):
        sm.hd95(a, a, (1, 1, 1), convention="pooles")
    with pytest.raises(sm.MaskError, match="same shape"):
        sm.dice(a, np.ones((4, 4, 5), bool))
    with pytest.raises(sm.ConventionError):
        sm.hd95(a, a, (1, 1, 1), convention="nnunet")
