"""The one NIfTI writer: atomic, range-checked, and able to keep a source header."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from ctsynth_bench.data import save_nifti
from ctsynth_bench.exceptions import DataError


def test_keeps_the_source_header_and_sets_the_new_geometry(tmp_path) -> None:
    src = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    src.header["descrip"] = b"scanner XYZ, kernel B30f"
    src.header.set_xyzt_units("mm", "sec")
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.0)
    arr = np.arange(4 * 5 * 6).reshape(4, 5, 6) - 50
    out = save_nifti(tmp_path / "a" / "ct.nii.gz", arr, affine, dtype="int16", header=src.header)
    img = nib.load(out)
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"scanner XYZ, kernel B30f"
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.get_data_dtype() == np.int16 and np.array_equal(np.asarray(img.dataobj), arr)
    assert np.allclose(img.affine, affine) and np.allclose(img.header.get_zooms(), (1.5, 1.5, 2.5))
    plain = nib.load(save_nifti(tmp_path / "b.nii.gz", arr, affine, dtype="int16"))
    assert plain.header["descrip"].tobytes().strip(b"\0") == b""  # without a header: a fresh one
    assert [p.name for p in tmp_path.rglob(".*")] == [], "no temporary file is left"


def test_refuses_values_that_do_not_fit_and_leaves_the_old_file(tmp_path) -> None:
    path = save_nifti(tmp_path / "m.nii.gz", np.ones((3, 3, 3)), np.eye(4), dtype="uint8")
    before = path.read_bytes()
    with pytest.raises(DataError, match="do not fit uint8"):
        save_nifti(path, np.full((3, 3, 3), 300), np.eye(4), dtype="uint8")
    with pytest.raises(DataError, match="Nifti1Header"):
        save_nifti(path, np.ones((3, 3, 3)), np.eye(4), dtype="uint8", header={"descrip": "x"})  # type: ignore[arg-type]
    assert path.read_bytes() == before
