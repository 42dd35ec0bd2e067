"""Reading and writing volumes with their geometry: NIfTI, NRRD, DICOM series and DICOM-SEG.

Every reader returns ``(array, affine)`` with the array in NIfTI axis order ``(x, y, z)`` and the
affine a 4x4 voxel -> world (mm) matrix in nibabel's RAS+ convention (``+x`` towards the patient's
right, ``+y`` anterior, ``+z`` superior). DICOM and NRRD store LPS+ world coordinates; they become
RAS+ by negating the first two world axes, ``RAS = diag(-1, -1, 1, 1) @ LPS``. Voxel axes are then
permuted/flipped (never resampled) so that the stored affine is as close to diagonal-positive as the
data allows (``nibabel.as_closest_canonical`` semantics).

Writes go through :func:`save_nifti`, the one NIfTI writer: a temporary file in the destination
folder, fsync, then :func:`os.replace`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ..exceptions import DataError

#: Flip from DICOM/NRRD LPS world coordinates to NIfTI RAS world coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_INT_DTYPES = {"int16", "uint8", "uint16", "int32", "int8"}


def process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_nifti(
    path: str | os.PathLike[str],
    array: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: str | np.dtype | type,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write ``array`` as a NIfTI file atomically: the one NIfTI writer of ctsynth-bench.

    The data go to a temporary file in the destination folder, which is flushed to disk, renamed
    over ``path`` with :func:`os.replace`, and the folder is synced; a reader never sees a
    half-written file, and an interrupted write leaves only a ``.tmp-*`` file that resumable
    writers remove.

    Args:
        path: destination, ending in ``.nii.gz`` or ``.nii``.
        array: 3D volume, shape ``(X, Y, Z)``.
        affine: 4x4 voxel -> RAS world (mm) matrix; written as both qform and sform (code 1).
        dtype: on-disk dtype, e.g. ``"int16"`` for HU or ``"uint8"`` for labels. Integer targets
            are range-checked (no silent wrap-around); float input is rounded first.
        header: a source image's NIfTI header to keep (descriptions, intent, units, slice
            timing...); its data type, shape and scaling are replaced to fit ``array`` and
            ``dtype``. ``None`` starts from an empty header.

    Returns:
        The written path.

    Raises:
        DataError: wrong dimensionality, bad affine, a header that is not NIfTI-1, or values that
            do not fit ``dtype``.
    """
    path = Path(path)
    arr = np.asarray(array)
    dt = np.dtype(dtype)
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 3D array (X, Y, Z), got shape {arr.shape}")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise DataError(f"{path}: affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if header is not None and not isinstance(header, nib.Nifti1Header):
        raise DataError(
            f"{path}: header must be a nibabel Nifti1Header (or None), got {type(header).__name__}"
        )
    if dt.kind in "iu":
        if arr.dtype.kind == "f":
            arr = np.rint(arr)
        info = np.iinfo(dt)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise DataError(
                f"{path}: values {arr.min()}..{arr.max()} do not fit {dt.name} "
                f"({info.min}..{info.max})"
            )
    out = arr.astype(dt, copy=False)
    img = nib.Nifti1Image(out, aff, header=None if header is None else header.copy())
    img.header.set_data_dtype(dt)
    img.header.set_slope_inter(None, None)
    if header is None:
        img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~process_umask())  # mkstemp makes 0600; give the usual permissions
        nib.save(img, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip voxel axes so the array is closest to RAS; return ``(array, new_affine)``.

    World coordinates are unchanged: voxel ``v`` of the result maps to the same point as the
    corresponding voxel of the input. Pure index permutation and flips, no resampling.
    """
    ornt = io_orientation(affine)
    target = axcodes2ornt(("R", "A", "S"))
    transform = ornt_transform(ornt, target)
    out = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(out), new_affine


def read_nifti_stored(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header | None]:
    """Read a NIfTI file as stored (voxel order, dtype, affine), a 4th axis of 1 squeezed.

    Returns ``(array, affine, header)``; the header is the file's NIfTI-1 header, or None for a
    NIfTI-2 or Analyze file (written back with a fresh one).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; a NIfTI file (.nii.gz, .nii) is expected")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        detail = str(exc).replace(f'"{path}"', "it").replace(f"'{path}'", "it").replace(str(path), "it")
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {detail})") from exc
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    header = img.header if type(img.header) is nib.Nifti1Header else None
    return arr, np.asarray(img.affine, dtype=np.float64), header


def read_nifti(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume in its stored dtype, reoriented to RAS. Returns ``(array, affine)``."""
    arr, affine, _ = read_nifti_stored(path)
    if arr.ndim != 3:
        raise DataError(
            f"{path}: a {arr.ndim}D image of shape {arr.shape}; a 3D volume (X, Y, Z) is expected"
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: the affine is not a finite, invertible voxel-to-world matrix")
    return reorient_to_ras(np.asarray(arr), affine)


def read_nrrd(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NRRD volume; LPS/RAS ``space`` converted to a RAS affine, axes reoriented to RAS.

    NRRD ``space directions`` columns are the world step of each voxel axis; the affine is
    ``[[dirs^T, origin], [0, 1]]`` in the file's space, then ``diag(-1, -1, 1)`` for LPS.
    """
    import nrrd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr, header = nrrd.read(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a readable NRRD file ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {arr.shape}")
    space = str(header.get("space", "")).lower()
    dirs = np.asarray(header.get("space directions"), dtype=np.float64)
    origin = np.asarray(header.get("space origin"), dtype=np.float64)
    if dirs.shape != (3, 3) or origin.shape != (3,):
        raise DataError(f"{path}: NRRD header lacks 3D 'space directions'/'space origin'")
    affine = np.eye(4)
    affine[:3, :3] = dirs.T  # row i of 'space directions' is the world vector of voxel axis i
    affine[:3, 3] = origin
    if space in ("left-posterior-superior", "lps"):
        affine = LPS_TO_RAS @ affine
    elif space not in ("right-anterior-superior", "ras"):
        raise DataError(
            f"{path}: NRRD space {space!r} is not supported; allowed: "
            "'left-posterior-superior', 'right-anterior-superior'"
        )
    return reorient_to_ras(arr, affine)


def _slice_geometry(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def read_dicom_series(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a single-frame CT DICOM series into HU, shape ``(X, Y, Z)``, RAS.

    Slices are sorted along the slice normal; rescale slope/intercept applied. The LPS affine has
    columns ``row_dir * dx`` (DICOM columns = array x), ``col_dir * dy`` and the slice step.

    Returns:
        ``(hu, affine, sop_instance_uids)``: float32 HU, RAS affine, and the SOP Instance UIDs in
        the original (pre-reorientation) slice order, for matching DICOM-SEG frames.
    """
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "LICENSE")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:
            raise DataError(f"{f}: not a readable DICOM file ({exc})") from exc
        if getattr(ds, "Modality", None) != "CT" or "PixelData" not in ds:
            continue
        slices.append(ds)
    if len(slices) < 2:
        raise DataError(f"{folder}: expected a CT series of 2 or more slices, found {len(slices)}")
    row_dir, col_dir, normal = _slice_geometry(slices[0])
    slices.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    positions = np.array([np.asarray(d.ImagePositionPatient, float) for d in slices])
    steps = np.diff(positions @ normal)
    if np.any(np.abs(steps - steps[0]) > 1e-2 * max(abs(steps[0]), 1.0)) or steps[0] <= 0:
        raise DataError(f"{folder}: slices are not evenly spaced (steps {steps.min()}..{steps.max()})")
    dy, dx = (float(v) for v in slices[0].PixelSpacing)  # PixelSpacing = (row spacing, column spacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dx
    lps[:3, 1] = col_dir * dy
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    lps[:3, 3] = positions[0]
    vol = np.empty((int(slices[0].Columns), int(slices[0].Rows), len(slices)), dtype=np.float32)
    for k, ds in enumerate(slices):
        px = ds.pixel_array.astype(np.float32)  # (rows, columns)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        vol[:, :, k] = (px * slope + intercept).T
    uids = [str(d.SOPInstanceUID) for d in slices]
    hu, ras = reorient_to_ras(vol, LPS_TO_RAS @ lps)
    return hu, ras, uids


def read_dicom_seg_on_grid(
    path: str | os.PathLike[str],
    *,
    segment: int,
    reference_affine: np.ndarray,
    reference_shape: tuple[int, int, int],
) -> np.ndarray:
    """Read one segment of a binary DICOM-SEG and place it on a reference RAS voxel grid.

    Each frame is positioned by its own ``ImagePositionPatient`` (world coordinates), so the frame
    order and the referenced series' order never matter.

    Returns:
        uint8 mask, shape ``reference_shape``, values 0/1.
    """
    import pydicom

    path = Path(path)
    ds = pydicom.dcmread(str(path))
    if getattr(ds, "Modality", None) != "SEG":
        raise DataError(f"{path}: not a DICOM-SEG (Modality {getattr(ds, 'Modality', None)!r})")
    numbers = [int(s.SegmentNumber) for s in ds.SegmentSequence]
    if segment not in numbers:
        raise DataError(f"{path}: segment {segment} not found; allowed: {numbers}")
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    row_dir, col_dir = iop[:3], iop[3:]
    world_to_vox = np.linalg.inv(reference_affine)
    out = np.zeros(reference_shape, dtype=np.uint8)
    rows, cols = int(ds.Rows), int(ds.Columns)
    cc, rr = np.meshgrid(np.arange(cols), np.arange(rows))
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment:
            continue
        frame = frames[f]
        if not frame.any():
            continue
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        r, c = rr[frame > 0], cc[frame > 0]
        lps = ipp[None] + c[:, None] * dx * row_dir[None] + r[:, None] * dy * col_dir[None]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        vox = np.rint(ras @ world_to_vox[:3, :3].T + world_to_vox[:3, 3]).astype(int)
        ok = np.all((vox >= 0) & (vox < np.asarray(reference_shape)), axis=1)
        if not ok.all():
            raise DataError(f"{path}: frame {f} lies outside the referenced CT grid")
        out[vox[:, 0], vox[:, 1], vox[:, 2]] = 1
    return out


def labels_on_grid(
    labels: np.ndarray,
    affine: np.ndarray,
    *,
    reference_affine: np.ndarray,
    reference_shape: tuple[int, int, int],
    atol: float = 1e-3,
) -> np.ndarray:
    """Place a label map onto a reference grid by world coordinates (nearest voxel, no blending).

    Works for any grid that shares the reference's voxel size and axes up to flips, permutations
    and whole-voxel offsets (a crop, a flipped copy). Voxels outside ``labels`` become 0.

    Raises:
        DataError: the two grids do not line up to within ``atol`` (mm / voxel fraction).
    """
    to_ref = np.linalg.inv(reference_affine) @ affine  # label voxel -> reference voxel
    rot = to_ref[:3, :3]
    if np.abs(np.abs(rot) - np.rint(np.abs(rot))).max() > atol or np.abs(
        to_ref[:3, 3] - np.rint(to_ref[:3, 3])
    ).max() > atol:
        raise DataError(
            "label grid does not line up with the reference grid (needs resampling); "
            f"voxel mapping:\n{np.round(to_ref, 4)}"
        )
    idx = np.indices(labels.shape).reshape(3, -1)
    ref = np.rint(rot @ idx + to_ref[:3, 3:4]).astype(int)
    ok = np.all((ref >= 0) & (ref < np.asarray(reference_shape)[:, None]), axis=0)
    out = np.zeros(reference_shape, dtype=labels.dtype)
    out[ref[0, ok], ref[1, ok], ref[2, ok]] = labels.reshape(-1)[ok]
    return out
