"""Loaders: dataset layouts, single files, validation errors, bundled cases (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ctsynth_bench.data import (
    AFFINE_ATOL,
    BUNDLED_CASES,
    V1_TO_V2,
    CTCase,
    list_cases,
    load_case,
    load_kits_dataset,
    load_lesion_dataset,
    load_nnunet_dataset,
    load_single,
    save_nifti,
)
from ctsynth_bench.exceptions import DataError

SHAPE = (12, 10, 8)
AFF = np.diag([1.5, 1.5, 3.0, 1.0])
AFF[:3, 3] = (-10.0, 20.0, -30.0)


def _ct(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ct = rng.normal(40, 20, SHAPE)
    ct[:2] = -1000  # air at the border
    return ct.astype(np.int16)


def _lesion() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[5:8, 4:7, 3:5] = 1
    return m


def _organs() -> np.ndarray:
    o = np.zeros(SHAPE, np.uint8)
    o[3:10, 2:9, 1:7] = 5  # liver
    return o


def _write(path: Path, arr, affine=AFF, dtype=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(arr) if dtype is None else np.asarray(arr, dtype), affine)
    nib.save(img, path)
    return path


def _ours(root: Path, cases=("c1", "c2")) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"name": "test", "labels": {"background": 0, "lesion": 1}}))
    for i, c in enumerate(cases):
        _write(root / "imagesTr" / f"{c}_0000.nii.gz", _ct(i))
        _write(root / "labelsTr" / f"{c}.nii.gz", _lesion())
        _write(root / "organs" / f"{c}.nii.gz", _organs())
        (root / "reports").mkdir(exist_ok=True)
        (root / "reports" / f"{c}.json").write_text(json.dumps({"text": f"report of {c}"}))
    return root


def test_our_layout_loads_lazily_and_validates(tmp_path):
    cases = load_lesion_dataset(_ours(tmp_path / "ds"))
    assert [c.case_id for c in cases] == ["c1", "c2"]
    case = cases[0].load()
    assert isinstance(case, CTCase)
    assert case.ct.dtype == np.float32 and case.ct.shape == SHAPE
    assert case.lesion.sum() == _lesion().sum() and case.organs.max() == 5
    assert case.spacing == (1.5, 1.5, 3.0)
    np.testing.assert_allclose(case.affine, AFF)
    assert cases[1].load_report() == {"text": "report of c2"}


def test_loaded_volume_is_reoriented_to_ras_keeping_world_positions(tmp_path):
    flip = AFF.copy()
    flip[0, 0] = -1.5  # stored LAS
    ct = _ct()
    lesion = _lesion()
    p = _write(tmp_path / "ct.nii.gz", ct, flip)
    q = _write(tmp_path / "les.nii.gz", lesion, flip)
    case = load_single(p, lesion=q)
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    src_world = flip[:3, :3] @ np.argwhere(lesion).mean(0) + flip[:3, 3]
    got_world = case.affine[:3, :3] @ np.argwhere(case.lesion).mean(0) + case.affine[:3, 3]
    np.testing.assert_allclose(got_world, src_world)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_dataset_json", "dataset.json: file not found"),
        ("bad_name", "must end in _0000"),
        ("missing_label", "label for case 'c1' not found"),
        ("missing_organ", "organ mask for case 'c1' not found"),
    ],
)
def test_layout_errors_name_the_file(tmp_path, breakage, message):
    root = _ours(tmp_path / "ds", cases=("c1",))
    if breakage == "no_dataset_json":
        (root / "dataset.json").unlink()
    elif breakage == "bad_name":
        (root / "imagesTr" / "c1_0000.nii.gz").rename(root / "imagesTr" / "c1.nii.gz")
    elif breakage == "missing_label":
        (root / "labelsTr" / "c1.nii.gz").unlink()
    elif breakage == "missing_organ":
        (root / "organs" / "c1.nii.gz").unlink()
    with pytest.raises(DataError, match=message):
        load_lesion_dataset(root)


def _single(tmp_path, *, ct=None, lesion=None, organs=None, ct_aff=AFF, les_aff=AFF, **kw):
    p = _write(tmp_path / "ct.nii.gz", _ct() if ct is None else ct, ct_aff)
    q = _write(tmp_path / "les.nii.gz", _lesion() if lesion is None else lesion, les_aff)
    o = None if organs is None else _write(tmp_path / "org.nii.gz", organs)
    return load_single(p, lesion=q, organs=o, **kw)


def test_affine_within_tolerance_is_accepted_beyond_is_refused(tmp_path):
    near = AFF.copy()
    near[0, 3] += AFFINE_ATOL / 2
    _single(tmp_path, les_aff=near)
    far = AFF.copy()
    far[0, 3] += 0.5
    with pytest.raises(DataError, match=r"les\.nii\.gz: affine differs from the CT ct\.nii\.gz by up to 0\.5"):
        _single(tmp_path, les_aff=far)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lesion": np.zeros((12, 10, 7), np.uint8)}, r"les\.nii\.gz: shape \(12, 10, 7\) differs"),
        ({"lesion": np.full(SHAPE, 0.5, np.float32)}, r"les\.nii\.gz: label values must be integers"),
        ({"lesion": np.full(SHAPE, 2, np.uint8)}, r"les\.nii\.gz: lesion mask must hold only 0 and 1"),
        ({"lesion": np.full(SHAPE, -1, np.int16)}, r"les\.nii\.gz: label values must be >= 0"),
        ({"ct": np.full(SHAPE, 0.5, np.float32)}, r"ct\.nii\.gz: CT minimum is 0\.5.*Hounsfield"),
        ({"ct": np.full(SHAPE, -5000, np.int16)}, r"ct\.nii\.gz: CT values -5000\.\.-5000 are not plausible HU"),
        ({"organs": np.full(SHAPE, 200, np.uint8)}, r"org\.nii\.gz: ids \[200\] are not TotalSegmentator v2"),
    ],
)
def test_validation_errors(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        _single(tmp_path, **kwargs)


def test_hu_check_can_be_relaxed_for_tight_crops(tmp_path):
    case = _single(tmp_path, ct=np.full(SHAPE, 50, np.int16), check_hu=False)
    assert case.ct.min() == 50


def test_unreadable_and_non_3d_files(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"bad\.nii\.gz: not a readable NIfTI"):
        load_single(bad)
    four_d = _write(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 3), np.int16))
    with pytest.raises(DataError, match=r"4d\.nii\.gz: a 4D image"):
        load_single(four_d)
    with pytest.raises(DataError, match="unsupported file type"):
        load_single(tmp_path / "x.mha")
    with pytest.raises(DataError, match="file not found"):
        load_single(tmp_path / "missing.nii.gz")


def test_v1_organ_ids_are_converted(tmp_path):
    organs = np.zeros(SHAPE, np.uint8)
    organs[0, 0, 0] = 10  # v1 pancreas -> v2 7
    organs[1, 0, 0] = 44  # v1 heart_myocardium -> v2 heart 51
    organs[2, 0, 0] = 49  # v1 pulmonary_artery -> no v2 class: 0
    organs[3, 0, 0] = 104  # v1 urinary_bladder -> v2 21
    case = _single(tmp_path, organs=organs, organ_ids="v1")
    assert [int(case.organs[i, 0, 0]) for i in range(4)] == [7, 51, 0, 21]
    assert V1_TO_V2[13] == 10  # lung_upper_lobe_left


def test_nnunet_and_msd_layouts_with_separate_organ_folder(tmp_path):
    nn = tmp_path / "Dataset001"
    _write(nn / "imagesTr" / "a_0000.nii.gz", _ct())
    labels = _lesion() * 2  # class 2 = tumour
    labels[0, 0, 0] = 1
    _write(nn / "labelsTr" / "a.nii.gz", labels)
    _write(tmp_path / "ts" / "a.nii.gz", _organs())
    cases = load_nnunet_dataset(nn, organs=tmp_path / "ts", lesion_classes=(2,))
    case = cases[0].load()
    assert case.lesion.sum() == _lesion().sum() and case.lesion[0, 0, 0] == 0
    msd = tmp_path / "Task03_Liver"
    _write(msd / "imagesTr" / "liver_1.nii.gz", _ct())
    _write(msd / "labelsTr" / "liver_1.nii.gz", labels)
    _write(tmp_path / "ts2" / "liver_1.nii.gz", _organs())
    (msd / "imagesTr" / "._liver_1.nii.gz").write_bytes(b"macOS junk")
    cases = load_nnunet_dataset(msd, organs=tmp_path / "ts2", lesion_classes=(2,))
    assert [c.case_id for c in cases] == ["liver_1"]
    assert cases[0].load().lesion.sum() == _lesion().sum()
    with pytest.raises(DataError, match="organ-mask folder not found"):
        load_nnunet_dataset(msd, organs=tmp_path / "nope")
    with pytest.raises(DataError, match="lesion mask must hold only 0 and 1"):
        load_nnunet_dataset(nn, organs=tmp_path / "ts")[0].load()


def test_kits_layout(tmp_path):
    root = tmp_path / "kits23"
    seg = np.zeros(SHAPE, np.uint8)
    seg[3:9, 3:8, 2:6] = 1
    seg[4:6, 4:6, 3:5] = 2
    seg[7, 6, 4] = 3
    _write(root / "case_00000" / "imaging.nii.gz", _ct())
    _write(root / "case_00000" / "segmentation.nii.gz", seg)
    organs = np.zeros(SHAPE, np.uint8)
    organs[3:9, 3:8, 2:6] = 2
    _write(tmp_path / "ts" / "case_00000.nii.gz", organs)
    case = load_kits_dataset(root, organs=tmp_path / "ts")[0].load()
    assert case.lesion.sum() == 2 * 2 * 2 + 1
    only_tumour = load_kits_dataset(root, organs=tmp_path / "ts", lesion_classes=(2,))[0].load()
    assert only_tumour.lesion.sum() == 8
    (tmp_path / "ts" / "case_00000.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case_00000\.nii\.gz: organ mask for case 'case_00000' not found"):
        load_kits_dataset(root, organs=tmp_path / "ts")


def test_save_nifti_is_atomic_and_range_checked(tmp_path):
    p = save_nifti(tmp_path / "x.nii.gz", _lesion(), AFF, dtype="uint8")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.nii.gz"]
    img = nib.load(p)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, AFF)
    with pytest.raises(DataError, match="do not fit uint8"):
        save_nifti(tmp_path / "y.nii.gz", np.full(SHAPE, 300), AFF, dtype="uint8")
    with pytest.raises(DataError, match="expected a 3D array"):
        save_nifti(tmp_path / "z.nii.gz", np.zeros((3, 3)), AFF, dtype="uint8")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.nii.gz"]


def test_bundled_cases_load_offline(tmp_path):
    infos = {i.name: i for i in list_cases(tmp_path)}  # empty cache: bundled only
    assert set(BUNDLED_CASES) <= set(infos)
    assert all(infos[n].where == "bundled" for n in BUNDLED_CASES)
    abdomen = load_case("abdomen", tmp_path)
    assert abdomen.ct.shape == (122, 101, 112) and abdomen.organs.shape == abdomen.ct.shape
    assert len(np.unique(abdomen.organs)) - 1 == 61
    assert abdomen.lesion is None


def _centre_x(case: CTCase, mask: np.ndarray) -> float:
    return float(case.affine[0, :3] @ np.argwhere(mask).mean(0) + case.affine[0, 3])


def test_bundled_abdomen_orientation_liver_right_spleen_left(tmp_path):
    case = load_case("abdomen", tmp_path)
    # RAS+: larger world x is the patient's right; the liver (5) lies right of the spleen (1).
    assert _centre_x(case, case.organs == 5) > _centre_x(case, case.organs == 1) + 50


def test_bundled_chest_has_tumour_in_a_lung_and_two_lungs(tmp_path):
    case = load_case("chest", tmp_path)
    assert case.spacing == (2.0, 2.0, 2.0)
    assert case.lesion.sum() > 500
    assert set(np.unique(case.organs)) == {0, 10, 11, 12, 13, 14, 15}  # 15: derived oesophagus
    in_lung = np.isin(case.organs[case.lesion > 0], (10, 11, 12, 13, 14)).mean()
    assert in_lung > 0.95
    left = np.isin(case.organs, (10, 11))
    right = np.isin(case.organs, (12, 13, 14))
    assert _centre_x(case, right) > _centre_x(case, left) + 100
    # Lung voxels are mostly air-density; the body mask contains the lungs.
    assert np.median(case.ct[left | right]) < -600
    assert case.body is not None and case.body[left | right].mean() > 0.99


def test_unknown_case_suggests_a_name(tmp_path):
    with pytest.raises(DataError, match="did you mean 'abdomen'"):
        load_case("abdomn", tmp_path)
    with pytest.raises(DataError, match="run `bench data fetch` first"):
        load_case("rider", tmp_path)


def test_derived_chest_labels_on_a_phantom():
    from ctsynth_bench.data import derive_chest_labels

    # Body: a 200 x 150 mm elliptic cylinder of soft tissue in air; two air-filled ellipsoid lungs.
    shape = (110, 90, 60)
    aff = np.diag([2.0, 2.0, 2.5, 1.0])
    aff[:3, 3] = (-110.0, -90.0, 0.0)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    world_x = aff[0, 0] * x + aff[0, 3]
    hu = np.full(shape, -1000.0)
    body = ((x - 55) / 50.0) ** 2 + ((y - 45) / 38.0) ** 2 <= 1
    hu[body] = 40.0
    right = ((x - 78) / 15.0) ** 2 + ((y - 45) / 22.0) ** 2 + ((z - 30) / 24.0) ** 2 <= 1
    left = ((x - 32) / 15.0) ** 2 + ((y - 45) / 22.0) ** 2 + ((z - 30) / 24.0) ** 2 <= 1
    hu[right | left] = -850.0
    hu[78, 45, 30] = 30.0  # a vessel inside the right lung: hole filling keeps it lung
    organs, body_mask = derive_chest_labels(hu, aff)
    assert body_mask[body].all() and not body_mask[~body].any()
    # RAS: larger world x = patient's right, so the x ~ 78 ellipsoid is the right lung.
    assert np.all(world_x[right] > 0)
    # Apex/base tips with < 300 mm^2 cross-section are dropped with the airways (documented).
    assert np.isin(organs[right], (12, 13, 14)).mean() > 0.95
    assert np.isin(organs[left], (10, 11)).mean() > 0.95
    assert set(np.unique(organs[right])) - {0} == {12, 13, 14}
    assert set(np.unique(organs[left])) - {0} == {10, 11}
    assert organs[78, 45, 30] != 0
    assert not organs[~(right | left)].any()
    # Height split: the right lung's upper third is 12 (superior = larger z), lower third 14.
    zs = np.nonzero(right.any(axis=(0, 1)))[0]
    assert organs[78, 45, zs[-1] - 3] == 12 and organs[78, 45, zs[0] + 3] == 14
