"""Property tests of the bbox rules, checked by brute-force geometry independent of the sampler."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_bbox import DEFAULT_BBOX_RULES, BBox, BBoxError, Report, organ_ids, sample_bbox

RULES = DEFAULT_BBOX_RULES
LOCATIONS = {
    "within the parenchymal organ": "liver",
    "protruding from the parenchymal organ": "liver",
    "within the lumen of a hollow organ": "urinary_bladder",
    "wall thickening": "urinary_bladder",
}
SHAPE_FOR = {"wall thickening": "irregular wall thickening"}


def make_report(organ, location, size):
    return Report(
        shape=SHAPE_FOR.get(location, "round-like"),
        lesion_location=location,
        organ=organ,
        size=size,
        relationship_with_surrounding_organs="no close relationship",
        surface_characteristics="ill-defined margin",
        enhancement_status="enhanced CT",
        density="hypodense",
        density_variations="homogeneous",
    )


def blob_organ(seed, spacing, label):
    """A 60 mm field of view holding a union of two ellipsoids (semi-axes 15-25 mm) with ``label``,
    and a distractor organ (spleen, id 1) elsewhere."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(np.ceil(70.0 / s)) for s in spacing)
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(2):
        c = rng.uniform(30, 40, 3)
        a = rng.uniform(15, 25, 3)
        inside = sum(((g - ci) / ai) ** 2 for g, ci, ai in zip(grids, c, a, strict=True)) <= 1
        labels[inside] = label
    labels[:, :, :2][labels[:, :, :2] == 0] = 1
    return labels


def ellipsoid_voxels(box):
    idx = np.stack(
        np.meshgrid(
            *[np.arange(a0, h) for a0, h in zip(box.lo, box.hi, strict=True)], indexing="ij"
        ),
        -1,
    )
    centre = (np.array(box.lo) + np.array(box.hi) - 1) / 2
    half = np.array(box.size) / 2
    return idx[(((idx - centre) / half) ** 2).sum(-1) <= 1]


def min_distance_mm(points, targets, spacing):
    """Brute-force smallest distance (mm) from each point to the target voxel set."""
    t = targets * np.asarray(spacing)
    out = []
    for p in points * np.asarray(spacing):
        out.append(np.sqrt(((t - p) ** 2).sum(-1)).min() if len(t) else np.inf)
    return np.array(out)


def assert_rule(box, report, labels, spacing):
    organ = np.isin(labels, organ_ids(report.organ))
    shape = np.array(labels.shape)
    assert all(v >= 0 for v in box.lo) and np.all(np.array(box.hi) <= shape)
    jit = RULES.jitter
    for n, s_mm, sp in zip(box.size, report.size, spacing, strict=True):
        lo_n = max(1, np.floor((1 - RULES.shrink_tolerance) * (1 - jit) * s_mm / sp))
        hi_n = max(1, np.ceil((1 + jit) * s_mm / sp))
        assert lo_n <= n <= hi_n
    c = np.array(box.center_voxel)
    loc = report.lesion_location
    ell = ellipsoid_voxels(box)
    ell_organ = organ[tuple(ell.T)]
    if loc == "within the parenchymal organ":
        outside = ell[~ell_organ]
        if len(outside):
            d = min_distance_mm(outside, np.argwhere(organ), spacing)
            assert np.all(d <= RULES.within_margin_mm + 1e-6)
    elif loc == "protruding from the parenchymal organ":
        assert organ[tuple(c)]
        assert (~ell_organ).any()
    else:
        assert organ[tuple(c)]
        depth = min_distance_mm(c[None], np.argwhere(~organ), spacing)[0]
        if loc == "within the lumen of a hollow organ":
            assert depth >= RULES.lumen_depth_mm - 1e-6
        else:
            assert depth <= max(RULES.wall_thickness_mm, max(spacing)) + 1e-6


spacings = st.tuples(*[st.sampled_from([1.0, 1.5, 2.0, 3.0])] * 3)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    spacing=spacings,
    location=st.sampled_from(sorted(LOCATIONS)),
    size=st.tuples(*[st.floats(2.0, 14.0)] * 3),
)
def test_every_box_satisfies_its_rule(seed, spacing, location, size):
    organ = LOCATIONS[location]
    labels = blob_organ(seed, spacing, organ_ids(organ)[0])
    if location.startswith("protruding"):  # a one-voxel lesion cannot cross a surface
        size = tuple(max(s, 2 * max(spacing)) for s in size)
    report = make_report(organ, location, size)
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(3):
        box = sample_bbox(report, labels, spacing, rng, existing=boxes)
        assert_rule(box, report, labels, spacing)
        assert not any(box.overlaps(b) for b in boxes)
        boxes.append(box)
    # several lesions: the union of box masks has exactly the summed volume (no overlap)
    union = np.zeros(labels.shape, bool)
    for b in boxes:
        union |= b.to_mask(labels.shape)
    assert union.sum() == sum(np.prod(b.size) for b in boxes)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1), spacing=spacings, location=st.sampled_from(sorted(LOCATIONS))
)
def test_deterministic_given_rng(seed, spacing, location):
    organ = LOCATIONS[location]
    labels = blob_organ(seed, spacing, organ_ids(organ)[0])
    report = make_report(organ, location, 8)
    a = sample_bbox(report, labels, spacing, np.random.default_rng(seed))
    b = sample_bbox(report, labels, spacing, np.random.default_rng(seed))
    assert a == b


def test_group_organ_uses_both_kidneys():
    labels = np.zeros((40, 20, 20), np.uint8)
    labels[2:18, 4:16, 4:16] = 2
    labels[22:38, 4:16, 4:16] = 3
    report = make_report("kidney", "within the parenchymal organ", 6)
    rng = np.random.default_rng(0)
    sides = {sample_bbox(report, labels, (1, 1, 1), rng).center_voxel[0] > 20 for _ in range(40)}
    assert sides == {True, False}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spacing=spacings)
def test_impossible_requests_raise(seed, spacing):
    labels = blob_organ(seed, spacing, 5)
    rng = np.random.default_rng(seed)
    with pytest.raises(BBoxError, match="absent"):
        sample_bbox(
            make_report("pancreas", "within the parenchymal organ", 5), labels, spacing, rng
        )
    with pytest.raises(BBoxError, match=r"organ smaller than the lesion|did not fit"):
        sample_bbox(make_report("liver", "within the parenchymal organ", 90), labels, spacing, rng)
    with pytest.raises(BBoxError, match="larger than the image"):
        sample_bbox(
            make_report("liver", "protruding from the parenchymal organ", 400), labels, spacing, rng
        )


def test_thin_hollow_organ_has_no_lumen():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:25, 5:25, 14:17] = 21  # a 3-voxel (3 mm) sheet
    with pytest.raises(BBoxError, match="no lumen voxels"):
        sample_bbox(
            make_report("bladder", "within the lumen", 4),
            labels,
            (1, 1, 1),
            np.random.default_rng(0),
        )


def test_organ_filling_the_image_has_no_wall():
    labels = np.full((10, 10, 10), 21, np.uint8)
    with pytest.raises(BBoxError, match="no wall voxels"):
        sample_bbox(
            make_report("bladder", "wall thickening", 4),
            labels,
            (1, 1, 1),
            np.random.default_rng(0),
        )


def test_full_organ_raises_overlap_reason():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:16, 4:16, 4:16] = 5
    report = make_report("liver", "within the parenchymal organ", 4)
    rng = np.random.default_rng(0)
    existing = [BBox((0, 0, 0), (20, 20, 20))]
    with pytest.raises(BBoxError, match="overlapped"):
        sample_bbox(report, labels, (1, 1, 1), rng, existing=existing)


def test_bad_inputs():
    labels = np.zeros((10, 10, 10), np.uint8)
    report = make_report("liver", "within the parenchymal organ", 4)
    rng = np.random.default_rng(0)
    with pytest.raises(BBoxError, match="spacing"):
        sample_bbox(report, labels, (1, 0, 1), rng)
    with pytest.raises(BBoxError, match="3-d"):
        sample_bbox(report, labels[0], (1, 1, 1), rng)
    with pytest.raises(BBoxError, match="integer"):
        sample_bbox(report, labels.astype(float), (1, 1, 1), rng)
    with pytest.raises(TypeError, match="Generator"):
        sample_bbox(report, labels, (1, 1, 1), 0)


def test_bbox_geometry():
    b = BBox((1, 2, 3), (5, 5, 4))
    assert b.size == (4, 3, 1) and b.center == (2.5, 3.0, 3.0) and b.center_voxel == (3, 3, 3)
    m = b.to_mask((6, 6, 6))
    assert m.sum() == 12 and m[1, 2, 3] and not m[5, 4, 3]
    assert b.ellipsoid_mask((6, 6, 6)).sum() <= 12
    assert b.overlaps(BBox((4, 4, 3), (6, 6, 6))) and not b.overlaps(BBox((5, 0, 0), (6, 6, 6)))
    with pytest.raises(BBoxError):
        BBox((0, 0, 0), (0, 1, 1))
    from_numpy = BBox(np.array([1, 2, 3]), np.array([5, 5, 4]))
    assert from_numpy == b and hash(from_numpy) == hash(b) and type(from_numpy.lo[0]) is int


def test_cache_sees_in_place_changes():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:18, 2:18, 2:18] = 5
    report = make_report("liver", "within the parenchymal organ", 4)
    sample_bbox(report, labels, (1, 1, 1), np.random.default_rng(0))
    labels[:] = 0
    labels[0:4, 0:20, 0:20] = 3  # much of the array changes: fingerprint differs
    with pytest.raises(BBoxError, match="absent"):
        sample_bbox(report, labels, (1, 1, 1), np.random.default_rng(0))


def test_sample_report_and_bbox_redraws_reports():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[8:32, 8:32, 8:32] = (
        2  # a 24 mm "right kidney" cube: big kidney cancers do not fit within
    )
    rng = np.random.default_rng(0)
    from report_bbox import sample_report_and_bbox

    for _ in range(20):
        report, box = sample_report_and_bbox(rng, labels, (1, 1, 1), organ="kidney")
        assert report.organ in ("kidney", "kidney_left", "kidney_right")
        assert_rule(box, report, labels, (1, 1, 1))
    with pytest.raises(BBoxError, match="absent"):
        sample_report_and_bbox(rng, labels, (1, 1, 1), organ="liver")


def test_single_voxel_lesion_cannot_protrude():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:16, 4:16, 4:16] = 5
    report = make_report("liver", "protruding from the parenchymal organ", 1)
    with pytest.raises(BBoxError, match="single-voxel"):
        sample_bbox(report, labels, (3, 3, 3), np.random.default_rng(0))
