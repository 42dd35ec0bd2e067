"""Loaders with validation: single files, our lesion dataset layout, nnU-Net raw / MSD / KiTS layouts.

Every loaded set of volumes is checked, and each failure raises :class:`DataError` naming the file
and the problem:

* readable (NIfTI ``.nii``/``.nii.gz`` or NRRD ``.nrrd``), 3D;
* CT and every mask have equal shapes and affines equal within :data:`AFFINE_ATOL` (mm, per
  matrix entry) after reorientation to RAS;
* masks hold integers (float masks must be whole numbers); lesion masks hold only 0/1 (or, for
  multi-class nnU-Net labels, non-negative integers which are binarised with ``> 0``);
  organ ids are within TotalSegmentator's range;
* CT values are plausible HU: within :data:`HU_RANGE` and, unless ``check_hu=False``, with some voxel
  below -200 HU (air or fat; an image without one is most likely not in HU, e.g. normalised or
  shifted by +1024), at most :data:`HU_DENSE_FRACTION` of the voxels above 900 HU (only bone and
  metal are that dense; a +1024 offset whose padding keeps the minimum low, or an inverted image,
  puts most voxels there) and, where an organ map is given, soft-tissue organs (liver, spleen,
  kidneys, pancreas) with a median in :data:`SOFT_TISSUE_HU`.

:func:`check_ct_and_organs` applies the same checks to arrays already in memory; the rule-based
synthesizer's ``Template`` calls it, so every CT and organ map that reaches a synthesizer passes
one validation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..exceptions import DataError
from ._case import CTCase
from ._io import read_nifti, read_nrrd
from ._labels import TOTAL_V1, TOTAL_V2, V1_TO_V2

#: Largest allowed absolute difference between two affines' entries (mm).
AFFINE_ATOL = 1e-3
#: Allowed CT values (HU). -3072 admits scanner padding (e.g. -3024), 32767 extended-range metal.
HU_RANGE = (-3072.0, 32767.0)
#: Some voxel must be below this (air/fat) for the image to count as HU.
HU_AIR_BELOW = -200.0


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        return read_nifti(path)
    if name.endswith(".nrrd"):
        return read_nrrd(path)
    raise DataError(f"{path}: unsupported file type; allowed: .nii.gz, .nii, .nrrd")


def _as_int_labels(arr: np.ndarray, path: Path | str) -> np.ndarray:
    if arr.dtype.kind in "iub":
        out = arr
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: label values must be integers, found NaN or infinite values")
        frac = arr != np.rint(arr)
        if frac.any():
            raise DataError(
                f"{path}: label values must be integers, found fractional values such as "
                f"{float(arr[frac].flat[0]):g}"
            )
        out = arr.astype(np.int64)
    else:
        raise DataError(f"{path}: label dtype {arr.dtype} is not numeric")
    if out.size and out.min() < 0:
        raise DataError(f"{path}: label values must be >= 0, found {out.min()}")
    return out


#: At most this fraction of a CT's voxels may be above 900 HU (bone and metal only).
HU_DENSE_FRACTION = 0.2
#: Median HU allowed for the soft-tissue organs of an organ map taken together.
SOFT_TISSUE_HU = (-100.0, 300.0)
#: TotalSegmentator v2 names of the organs :data:`SOFT_TISSUE_HU` is checked on.
_SOFT_TISSUE_NAMES = ("spleen", "kidney_right", "kidney_left", "liver", "pancreas")


def _check_hu(ct: np.ndarray, path: Path | str, check_hu: bool) -> None:
    if not np.all(np.isfinite(ct)):
        kind = "NaN" if np.isnan(ct).any() else "infinite"
        raise DataError(f"{path}: CT holds {kind} values; every voxel must be a finite HU value")
    lo, hi = float(ct.min()), float(ct.max())
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise DataError(
            f"{path}: CT values {lo:g}..{hi:g} are not plausible HU; allowed {HU_RANGE[0]:g}..{HU_RANGE[1]:g}"
        )
    if not check_hu:
        return
    if lo >= HU_AIR_BELOW:
        raise DataError(
            f"{path}: CT minimum is {lo:g}, no voxel below {HU_AIR_BELOW:g} HU (air/fat); the image "
            "does not look like Hounsfield units (normalised, or stored with a +1024 offset?); "
            "pass check_hu=False to accept it"
        )
    dense = float((ct > 900.0).mean())
    if dense > HU_DENSE_FRACTION:
        raise DataError(
            f"{path}: {100 * dense:.0f}% of the CT is above 900 HU (bone and metal only, at most "
            f"{100 * HU_DENSE_FRACTION:.0f}% allowed); the image does not look like Hounsfield units "
            "(stored with a +1024 offset, or inverted?); pass check_hu=False to accept it"
        )


def _check_soft_tissue(ct: np.ndarray, organs: np.ndarray, path: Path | str) -> None:
    """Soft-tissue organs must have soft-tissue HU (catches offsets and rescaling the air test misses)."""
    ids = [i for i, name in TOTAL_V2.items() if name in _SOFT_TISSUE_NAMES]
    inside = np.isin(organs, ids)
    if inside.sum() < 20:
        return
    median = float(np.median(ct[inside]))
    lo, hi = SOFT_TISSUE_HU
    if not lo <= median <= hi:
        raise DataError(
            f"{path}: the soft-tissue organs of the organ map (liver, spleen, kidneys, pancreas) "
            f"have a median of {median:g} HU, allowed {lo:g}..{hi:g}; the CT is not in Hounsfield "
            "units (offset or rescaled) or the organ map does not belong to it"
        )


def _check_organ_ids(organs: np.ndarray, path: Path | str, table: dict[int, str], version: str) -> None:
    bad = sorted(set(np.unique(organs).tolist()) - set(table) - {0})
    if bad:
        raise DataError(
            f"{path}: ids {bad[:10]} are not TotalSegmentator {version} 'total' ids "
            f"(allowed 0..{max(table)})"
        )


def check_ct_and_organs(
    ct: np.ndarray,
    organs: np.ndarray,
    *,
    where: str,
    check_hu: bool = True,
) -> np.ndarray:
    """Validate a CT and its organ map held in memory (the checks of the file loaders).

    Args:
        ct: (X, Y, Z) HU.
        organs: (X, Y, Z) TotalSegmentator v2 ids; integers, or floats holding whole numbers.
        where: how errors name the data (e.g. ``"template 'abdomen'"``).
        check_hu: apply the Hounsfield-unit plausibility checks (see the module docstring).

    Returns:
        The organ map as int16.

    Raises:
        DataError: not 3D, shapes differ, non-finite or implausible HU, non-integer, negative or
            unknown organ ids.
    """
    ct = np.asarray(ct)
    organs = np.asarray(organs)
    for what, arr in (("CT", ct), ("organ map", organs)):
        if arr.ndim != 3:
            raise DataError(
                f"{where}: the {what} is {arr.ndim}D with shape {arr.shape}; a 3D volume (X, Y, Z) "
                "is expected"
            )
        if arr.dtype.kind not in "iuf" or arr.dtype == bool:
            raise DataError(f"{where}: the {what} has dtype {arr.dtype}; a numeric array is expected")
    if ct.shape != organs.shape:
        raise DataError(f"{where}: CT shape {ct.shape} and organ map shape {organs.shape} differ")
    _check_hu(ct.astype(np.float32, copy=False), f"{where} CT", check_hu)
    labels = _as_int_labels(organs, f"{where} organ map")
    _check_organ_ids(labels, f"{where} organ map", TOTAL_V2, "v2")
    if not labels.any():
        raise DataError(f"{where}: the organ map holds no organ (every voxel is 0)")
    if check_hu:
        _check_soft_tissue(ct, labels, where)
    return labels.astype(np.int16)


def _check_grid(ref_path: Path, ref: tuple, path: Path, other: tuple) -> None:
    (r_arr, r_aff), (o_arr, o_aff) = ref, other
    if r_arr.shape != o_arr.shape:
        raise DataError(f"{path}: shape {o_arr.shape} differs from the CT {ref_path.name} {r_arr.shape}")
    diff = float(np.abs(r_aff - o_aff).max())
    if diff > AFFINE_ATOL:
        raise DataError(
            f"{path}: affine differs from the CT {ref_path.name} by up to {diff:.4g} mm "
            f"(tolerance {AFFINE_ATOL} mm)"
        )


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    s = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return (float(s[0]), float(s[1]), float(s[2]))


def load_volume_set(
    name: str,
    *,
    ct: str | os.PathLike[str],
    organs: str | os.PathLike[str] | None = None,
    lesion: str | os.PathLike[str] | None = None,
    body: str | os.PathLike[str] | None = None,
    organ_ids: Literal["v2", "v1"] = "v2",
    lesion_mode: Literal["binary", "any_positive"] = "binary",
    check_hu: bool = True,
):
    """Load and validate one CT with optional masks from single files (NIfTI or NRRD).

    Args:
        name: case name stored in the result.
        ct: CT file (HU).
        organs: organ label map with TotalSegmentator ids.
        lesion: lesion mask.
        body: body mask (0/1).
        organ_ids: ``"v2"`` (TotalSegmentator 2.x "total") or ``"v1"`` (converted to v2).
        lesion_mode: ``"binary"`` requires 0/1; ``"any_positive"`` accepts multi-class labels
            (nnU-Net/KiTS: e.g. 1 kidney, 2 tumour) and is used with an explicit class selection.
        check_hu: apply the Hounsfield-unit plausibility checks (module docstring).

    Returns:
        :class:`~._case.CTCase`.
    """
    ct_path = Path(ct)
    ct_arr, ct_aff = _read(ct_path)
    if ct_arr.dtype.kind not in "iuf":
        raise DataError(f"{ct_path}: CT dtype {ct_arr.dtype} is not numeric")
    ct_f = ct_arr.astype(np.float32)
    _check_hu(ct_f, ct_path, check_hu)
    ref = (ct_arr, ct_aff)

    def _mask(p: str | os.PathLike[str] | None) -> tuple[np.ndarray | None, Path | None]:
        if p is None:
            return None, None
        path = Path(p)
        arr, aff = _read(path)
        _check_grid(ct_path, ref, path, (arr, aff))
        return _as_int_labels(arr, path), path

    organ_arr, organ_path = _mask(organs)
    if organ_arr is not None:
        table = TOTAL_V2 if organ_ids == "v2" else TOTAL_V1
        _check_organ_ids(organ_arr, organ_path, table, organ_ids)
        if organ_ids == "v1":
            lut = np.zeros(max(TOTAL_V1) + 1, dtype=np.uint8)
            for k, v in V1_TO_V2.items():
                lut[k] = v
            organ_arr = lut[organ_arr]
        else:
            organ_arr = organ_arr.astype(np.uint8)
        if check_hu:
            _check_soft_tissue(ct_f, organ_arr, f"{ct_path} with {organ_path.name}")
    lesion_arr, lesion_path = _mask(lesion)
    if lesion_arr is not None:
        if lesion_mode == "binary" and lesion_arr.max(initial=0) > 1:
            raise DataError(
                f"{lesion_path}: lesion mask must hold only 0 and 1, found values up to "
                f"{int(lesion_arr.max())}"
            )
        lesion_arr = (lesion_arr > 0).astype(np.uint8)
    body_arr, _ = _mask(body)
    if body_arr is not None:
        body_arr = (body_arr > 0).astype(np.uint8)
    return CTCase(
        name=name,
        ct=ct_f,
        organs=organ_arr,
        lesion=lesion_arr,
        affine=ct_aff,
        spacing=_spacing(ct_aff),
        body=body_arr,
    )


def load_single(
    ct: str | os.PathLike[str],
    *,
    organs: str | os.PathLike[str] | None = None,
    lesion: str | os.PathLike[str] | None = None,
    organ_ids: Literal["v2", "v1"] = "v2",
    check_hu: bool = True,
):
    """Load one CT file with optional organ and lesion files; the case is named after the CT file."""
    name = Path(ct).name
    for ext in (".nii.gz", ".nii", ".nrrd"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return load_volume_set(
        name, ct=ct, organs=organs, lesion=lesion, organ_ids=organ_ids, check_hu=check_hu
    )


@dataclass(frozen=True)
class DatasetCase:
    """One case of a dataset on disk; the volumes are read only when :meth:`load` is called.

    Attributes:
        case_id: identifier (file stem without ``_0000``).
        image: CT path.
        label: lesion label path, or ``None``.
        organs: organ label map path, or ``None``.
        report: report JSON path, or ``None``.
        organ_ids: TotalSegmentator id version of the organ file (v1 is converted to v2).
        lesion_mode: ``"binary"`` (0/1 labels) or ``"any_positive"`` (multi-class labels).
        lesion_classes: label values that form the lesion (multi-class layouts); ``None`` = all > 0.
    """

    case_id: str
    image: Path
    label: Path | None
    organs: Path | None
    report: Path | None
    organ_ids: Literal["v2", "v1"] = "v2"
    lesion_mode: Literal["binary", "any_positive"] = "binary"
    lesion_classes: tuple[int, ...] | None = None

    def load(self, *, check_hu: bool = True):
        """Read and validate this case's volumes; returns :class:`~._case.CTCase`."""
        case = load_volume_set(
            self.case_id,
            ct=self.image,
            organs=self.organs,
            lesion=None if self.lesion_classes is not None else self.label,
            organ_ids=self.organ_ids,
            lesion_mode=self.lesion_mode,
            check_hu=check_hu,
        )
        if self.lesion_classes is None or self.label is None:
            return case
        arr, aff = _read(self.label)
        _check_grid(self.image, (case.ct, case.affine), self.label, (arr, aff))
        labels = _as_int_labels(arr, self.label)
        lesion = np.isin(labels, self.lesion_classes).astype(np.uint8)
        from dataclasses import replace

        return replace(case, lesion=lesion)

    def load_report(self) -> dict | None:
        """The report JSON as a dict, or ``None`` when the case has none."""
        if self.report is None:
            return None
        try:
            return json.loads(self.report.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.report}: not a readable JSON report ({exc})") from exc


def _nifti_stem(p: Path) -> str:
    return p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")


def load_lesion_dataset(root: str | os.PathLike[str]) -> list[DatasetCase]:
    """Index our lesion dataset layout (lazy: nothing is read until ``DatasetCase.load``).

    Layout (nnU-Net raw compatible)::

        root/dataset.json
        root/imagesTr/<case>_0000.nii.gz     CT (HU)
        root/labelsTr/<case>.nii.gz          lesion 0/1
        root/organs/<case>.nii.gz            TotalSegmentator v2 ids (optional folder)
        root/reports/<case>.json             structured report (optional folder)

    Raises:
        DataError: missing ``dataset.json``/``imagesTr``, an image without its ``_0000`` suffix, or a
            case without its label.
    """
    root = Path(root)
    _require_dir(root, "dataset")
    if not (root / "dataset.json").is_file():
        raise DataError(f"{root / 'dataset.json'}: file not found (required by the dataset layout)")
    try:
        json.loads((root / "dataset.json").read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{root / 'dataset.json'}: not valid JSON ({exc})") from exc
    return _index_nnunet(root, organ_dir=root / "organs", organ_ids="v2", reports=root / "reports")


def _index_nnunet(
    root: Path,
    *,
    organ_dir: Path | None,
    organ_ids: Literal["v2", "v1"],
    reports: Path | None = None,
    lesion_classes: tuple[int, ...] | None = None,
) -> list[DatasetCase]:
    images = root / "imagesTr"
    labels = root / "labelsTr"
    _require_dir(images, "imagesTr")
    cases: list[DatasetCase] = []
    files = sorted(p for p in images.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise DataError(f"{images}: no .nii.gz images found")
    for img in files:
        stem = _nifti_stem(img)
        if not stem.endswith("_0000"):
            if stem[-5:-4] == "_" and stem[-4:].isdigit():
                continue  # other channels (_0001...) are not CT
            raise DataError(f"{img}: image names must end in _0000.nii.gz (nnU-Net channel 0)")
        case_id = stem[:-5]
        lab = labels / f"{case_id}.nii.gz"
        if not lab.is_file():
            raise DataError(f"{lab}: label for case {case_id!r} not found")
        org = organ_dir / f"{case_id}.nii.gz" if organ_dir is not None else None
        if organ_dir is not None and organ_dir.is_dir() and not org.is_file():
            raise DataError(f"{org}: organ mask for case {case_id!r} not found")
        if org is not None and not org.is_file():
            org = None
        rep = reports / f"{case_id}.json" if reports is not None else None
        cases.append(
            DatasetCase(
                case_id=case_id,
                image=img,
                label=lab,
                organs=org,
                report=rep if rep is not None and rep.is_file() else None,
                organ_ids=organ_ids,
                lesion_mode="binary" if lesion_classes is None else "any_positive",
                lesion_classes=lesion_classes,
            )
        )
    return cases


def load_nnunet_dataset(
    root: str | os.PathLike[str],
    *,
    organs: str | os.PathLike[str],
    organ_ids: Literal["v2", "v1"] = "v2",
    lesion_classes: tuple[int, ...] | None = None,
) -> list[DatasetCase]:
    """Index an nnU-Net raw or Medical Segmentation Decathlon dataset with a separate organ folder.

    Args:
        root: folder with ``imagesTr/<case>_0000.nii.gz`` (nnU-Net) or ``imagesTr/<case>.nii.gz``
            (MSD) and ``labelsTr/<case>.nii.gz``.
        organs: folder of TotalSegmentator outputs ``<case>.nii.gz`` (multi-label files).
        organ_ids: ``"v2"`` or ``"v1"`` ids in the organ files (v1 is converted to v2 on load).
        lesion_classes: label values that count as lesion (e.g. ``(2,)`` for MSD liver tumour,
            ``(2, 3)`` for KiTS tumour + cyst). ``None`` requires 0/1 labels.
    """
    root = Path(root)
    organ_dir = Path(organs)
    _require_dir(root, "dataset")
    _require_dir(organ_dir, "organ-mask")
    images = root / "imagesTr"
    _require_dir(images, "imagesTr")
    if any(_nifti_stem(p).endswith("_0000") for p in images.iterdir()):
        return _index_nnunet(root, organ_dir=organ_dir, organ_ids=organ_ids, lesion_classes=lesion_classes)
    # MSD: imagesTr/<case>.nii.gz without the channel suffix (hidden "._" files are macOS junk).
    cases = []
    for img in sorted(p for p in images.iterdir() if p.name.endswith(".nii.gz") and not p.name.startswith(".")):
        case_id = _nifti_stem(img)
        lab = root / "labelsTr" / img.name
        if not lab.is_file():
            raise DataError(f"{lab}: label for case {case_id!r} not found")
        org = organ_dir / img.name
        if not org.is_file():
            raise DataError(f"{org}: organ mask for case {case_id!r} not found")
        cases.append(
            DatasetCase(
                case_id=case_id, image=img, label=lab, organs=org, report=None,
                organ_ids=organ_ids,
                lesion_mode="binary" if lesion_classes is None else "any_positive",
                lesion_classes=lesion_classes,
            )
        )
    if not cases:
        raise DataError(f"{images}: no .nii.gz images found")
    return cases


def load_kits_dataset(
    root: str | os.PathLike[str],
    *,
    organs: str | os.PathLike[str],
    organ_ids: Literal["v2", "v1"] = "v2",
    lesion_classes: tuple[int, ...] = (2, 3),
) -> list[DatasetCase]:
    """Index a KiTS19/21/23 layout: ``<case_id>/imaging.nii.gz`` + ``<case_id>/segmentation.nii.gz``.

    KiTS labels are 1 kidney, 2 tumour, 3 cyst; ``lesion_classes`` picks the lesion (default
    tumour + cyst). Organ masks come from ``organs/<case_id>.nii.gz``.
    """
    root = Path(root)
    organ_dir = Path(organs)
    _require_dir(root, "KiTS dataset")
    _require_dir(organ_dir, "organ-mask")
    cases = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        img = case / "imaging.nii.gz"
        if not img.is_file():
            continue
        seg = case / "segmentation.nii.gz"
        if not seg.is_file():
            raise DataError(f"{seg}: segmentation for case {case.name!r} not found")
        org = organ_dir / f"{case.name}.nii.gz"
        if not org.is_file():
            raise DataError(f"{org}: organ mask for case {case.name!r} not found")
        cases.append(
            DatasetCase(
                case_id=case.name, image=img, label=seg, organs=org, report=None,
                organ_ids=organ_ids, lesion_mode="any_positive", lesion_classes=tuple(lesion_classes),
            )
        )
    if not cases:
        raise DataError(f"{root}: no <case>/imaging.nii.gz found (KiTS layout)")
    return cases


#: Layout name -> indexer, for callers that pick a layout by name.
LAYOUTS: dict[str, Callable[..., list[DatasetCase]]] = {
    "ctsynth": load_lesion_dataset,
    "nnunet": load_nnunet_dataset,
    "msd": load_nnunet_dataset,
    "kits": load_kits_dataset,
}
