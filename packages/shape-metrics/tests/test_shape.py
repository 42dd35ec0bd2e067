"""Shape features against pyradiomics (live when installed, recorded values otherwise)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import shape_metrics as sm
import torch

SPACINGS = {"iso": (1.0, 1.0, 1.0), "aniso": (0.7, 1.3, 2.5)}

# Recorded with pyradiomics-bhklab 3.1.4 (RadiomicsShape on a SimpleITK image built from
# mask.transpose(2, 1, 0) with the spacing): Sphericity, MeshVolume, SurfaceArea,
# Maximum3DDiameter, Elongation, Flatness.
RECORDED = {
    ('sphere', 'iso'): (0.9311097407664438, 1457.0, 667.5077140293023, 14.89966442575134, 0.9999999999999997, 0.9999999999999994),
    ('sphere', 'aniso'): (0.7653384497477437, 3314.6750000000006, 1404.7247271794372, 35.605336678649735, 0.5200000000000012, 0.2800000000000002),
    ('ellipsoid', 'iso'): (0.8431752946739501, 896.6666666666666, 533.3188511851902, 18.275666882497067, 0.6700223810823318, 0.4462002751940461),
    ('ellipsoid', 'aniso'): (0.8517053607762861, 2039.9166666666667, 913.2780670037422, 20.95924616965028, 0.7810382878963945, 0.6273526266790063),
    ('box', 'iso'): (0.8258470681288732, 1104.6666666666667, 625.7564374252055, 18.05547008526779, 0.7125253031944244, 0.5683985600588057),
    ('box', 'aniso'): (0.7750212501925583, 2513.116666666669, 1153.3973454177365, 28.117965787019514, 0.4148164983130822, 0.3929685005496522),
    ('lshape', 'iso'): (0.6938735243326973, 1420.4166666666667, 880.672254416843, 22.693611435820433, 0.6890596041041417, 0.5789441309780403),
    ('lshape', 'aniso'): (0.5717024895136188, 3231.4479166666893, 1848.8945748388014, 35.80013966453204, 0.6195133170575622, 0.286572032321047),
    ('spiky', 'iso'): (0.4686991192232936, 1257.5, 1202.0669303074876, 14.89966442575134, 0.9813914063676145, 0.9793033930120393),
    ('spiky', 'aniso'): (0.38110990216468776, 2860.812499999994, 2557.1732615106234, 35.605336678649735, 0.5146950569372901, 0.27834175315476467),
    ('crescent', 'iso'): (0.5737945590577395, 778.8333333333334, 713.4398863120387, 14.89966442575134, 1.0, 0.6470610481245175),
    ('crescent', 'aniso'): (0.48358592027297737, 1771.8458333333285, 1464.2922522081872, 35.605336678649735, 0.5200000000000004, 0.18117709347486494),
}

CASES = sorted(RECORDED)
KEYS = ("sphericity", "volume_mm3", "surface_area_mm2", "max_3d_diameter_mm", "elongation", "flatness")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_matches_recorded_pyradiomics(case, shapes):
    name, sp = case
    feats = sm.shape_features(shapes[name], SPACINGS[sp], convexity=False)
    for key, expected in zip(KEYS, RECORDED[case], strict=True):
        assert feats[key] == pytest.approx(expected, rel=1e-9, abs=1e-9), key
    assert sm.sphericity(shapes[name], SPACINGS[sp]) == pytest.approx(RECORDED[case][0], abs=1e-6)


def _pyradiomics(mask, spacing):
    sitk = pytest.importorskip("SimpleITK")
    shape = pytest.importorskip("radiomics.shape")
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    img = sitk.GetImageFromArray(mask.astype(np.float32).transpose(2, 1, 0))
    img.SetSpacing(tuple(float(s) for s in spacing))
    lab = sitk.GetImageFromArray(mask.astype(np.uint8).transpose(2, 1, 0))
    lab.CopyInformation(img)
    ext = shape.RadiomicsShape(img, lab)
    ext.enableAllFeatures()
    return {k: float(v) for k, v in ext.execute().items()}


@pytest.mark.parametrize("seed", range(4))
def test_matches_live_pyradiomics_random_masks(seed):
    pytest.importorskip("radiomics")
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(5, 12, size=3))
    mask = rng.random(shape) < rng.uniform(0.2, 0.7)
    spacing = tuple(rng.uniform(0.4, 3.0, size=3))
    ref = _pyradiomics(mask, spacing)
    ours = sm.shape_features(mask, spacing, convexity=False)
    assert ours["sphericity"] == pytest.approx(ref["Sphericity"], abs=1e-6)
    assert ours["volume_mm3"] == pytest.approx(ref["MeshVolume"], rel=1e-9)
    assert ours["surface_area_mm2"] == pytest.approx(ref["SurfaceArea"], rel=1e-9)
    assert ours["max_3d_diameter_mm"] == pytest.approx(ref["Maximum3DDiameter"], rel=1e-9)
    assert ours["voxel_volume_mm3"] == pytest.approx(ref["VoxelVolume"], rel=1e-9)


def test_live_pyradiomics_named_shapes(shapes):
    pytest.importorskip("radiomics")
    for name, mask in shapes.items():
        for spacing in SPACINGS.values():
            ref = _pyradiomics(mask, spacing)
            assert sm.sphericity(mask, spacing) == pytest.approx(ref["Sphericity"], abs=1e-6), name


def test_analytic_box_volume_and_solidity():
    box = np.zeros((12, 12, 12), bool)
    box[2:8, 3:9, 4:10] = True  # 6 x 6 x 6 voxels
    sp = (0.5, 1.0, 2.0)
    # The midpoint mesh spans the voxel extent a x b x c, with edges chamfered: each of the n-1
    # edge cells along an edge keeps half of its quadrant (a right prism), each corner cell keeps
    # a tetrahedron (1/6 of its quadrant).
    n = 6
    a, b, c = n * sp[0], n * sp[1], n * sp[2]
    hx, hy, hz = sp[0] / 2, sp[1] / 2, sp[2] / 2
    edges = 4 * (n - 1) * (sp[0] * hy * hz + sp[1] * hx * hz + sp[2] * hx * hy) / 2
    corners = 8 * (5 / 6) * hx * hy * hz
    assert sm.volume(box, sp) == pytest.approx(a * b * c - edges - corners, rel=1e-12)
    assert sm.solidity(box, sp) == pytest.approx(1.0, abs=1e-9)
    assert sm.connected_components(box) == 1


def test_ordering_of_convex_and_concave_shapes(shapes):
    sp = SPACINGS["aniso"]
    sol = {n: sm.solidity(m, sp) for n, m in shapes.items()}
    conv = {
        n: sm.convexity(m, sp, n_rotations=4, refine_evals=8)
        for n, m in shapes.items()
        if n in ("box", "sphere", "lshape", "crescent")
    }
    assert sol["box"] > 0.999 and sol["sphere"] > 0.9
    assert sol["lshape"] < 0.8 and sol["crescent"] < 0.75
    assert conv["box"] > 0.99
    assert conv["sphere"] > conv["lshape"] and conv["sphere"] > conv["crescent"]
    assert all(0 < v <= 1 for v in conv.values())


def test_convexity_rotation_invariant_box():
    # A box rotated by the search should still score ~1 (silhouette rasterisation is accurate).
    box = np.zeros((10, 14, 12), bool)
    box[2:8, 2:12, 3:9] = True
    assert sm.convexity(box, (1.0, 1.0, 1.0), n_rotations=4, refine_evals=0) > 0.99


def test_equivalent_diameter_and_components(shapes):
    sp = (1.0, 1.0, 1.0)
    v = sm.volume(shapes["sphere"], sp)
    assert sm.equivalent_diameter(shapes["sphere"], sp) == pytest.approx((6 * v / np.pi) ** (1 / 3))
    two = np.zeros((10, 10, 10), bool)
    two[1:3, 1:3, 1:3] = True
    two[3:5, 3:5, 3:5] = True  # touches the first only at a corner
    assert sm.connected_components(two, connectivity=26) == 1
    assert sm.connected_components(two, connectivity=6) == 2
    assert sm.connected_components(np.zeros((3, 3, 3))) == 0


def test_torch_input_and_batch(shapes):
    sp = (1.0, 1.0, 1.0)
    t = torch.from_numpy(shapes["ellipsoid"].astype(np.float32))
    assert sm.sphericity(t, sp) == pytest.approx(sm.sphericity(shapes["ellipsoid"], sp))
    batch = sm.shape_features_batch([shapes["box"], shapes["sphere"]], sp, convexity=False)
    assert [b["sphericity"] for b in batch] == [sm.sphericity(shapes["box"], sp), sm.sphericity(shapes["sphere"], sp)]
    with pytest.raises(sm.MaskError, match="spacings"):
        sm.shape_features_batch([shapes["box"]], [sp, sp], convexity=False)


def test_mesh_is_closed_for_smooth_shapes(shapes):
    mesh = sm.mask_mesh(shapes["ellipsoid"], (1.0, 1.0, 2.0)).to_trimesh()
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(sm.volume(shapes["ellipsoid"], (1.0, 1.0, 2.0)), rel=1e-9)
    assert mesh.area == pytest.approx(sm.surface_area(shapes["ellipsoid"], (1.0, 1.0, 2.0)), rel=1e-9)


def test_bad_inputs():
    with pytest.raises(sm.MaskError, match="empty"):
        sm.sphericity(np.zeros((4, 4, 4)), (1, 1, 1))
    with pytest.raises(sm.MaskError, match="3D"):
        sm.sphericity(np.ones((4, 4)), (1, 1, 1))
    with pytest.raises(sm.MaskError, match="binary"):
        sm.sphericity(np.full((4, 4, 4), 2), (1, 1, 1))
    with pytest.raises(sm.SpacingError, match="positive"):
        sm.sphericity(np.ones((4, 4, 4)), (1, 0, 1))
    with pytest.raises(sm.SpacingError, match="scalar"):
        sm.sphericity(np.ones((4, 4, 4)), 1.0)
    with pytest.raises(sm.MaskError, match="connectivity"):
        sm.connected_components(np.ones((4, 4, 4)), connectivity=8)


def test_hull_candidates_give_the_hull_of_all_vertices(shapes):
    from scipy.spatial import ConvexHull

    for name, mask in shapes.items():
        mesh = sm.mask_mesh(mask, (0.7, 1.3, 2.5))
        full = ConvexHull(mesh.vertices)
        assert sm.convex_hull_volume(mask, (0.7, 1.3, 2.5)) == pytest.approx(full.volume, rel=1e-12), name
        assert len(mesh.hull_points) < len(mesh.vertices)
