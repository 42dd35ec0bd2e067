"""Hand a synthetic set to nnU-Net v2: export, plan and preprocess, train briefly, predict.

nnU-Net v2 (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
image segmentation", Nature Methods 2021) is the downstream segmenter of the bench: a synthetic set
is judged by how well an nnU-Net trained on it segments real CT. This module does the steps:

* :func:`export_dataset` validates every case, then writes ``Dataset{ID:03d}_{name}/`` in nnU-Net's
  raw layout (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, optional ``imagesTs/``
  and ``labelsTs/``, ``dataset.json``). It writes into a hidden temporary folder beside the target
  and renames it at the end, so a failed export leaves nothing behind and an existing dataset is
  replaced only when asked.
* :func:`nnunet_env` names the three folders nnU-Net reads from its environment, under one root.
* :func:`plan_and_preprocess` runs ``nnUNetv2_plan_and_preprocess`` with that environment, nnU-Net's
  own dataset-integrity check included, and returns the preprocessed dataset folder.
* :func:`train_nnunet` trains nnU-Net's own trainer with a short schedule (a subclass,
  :data:`SHORT_TRAINER`) on the CPU in a subprocess; :func:`predict_nnunet` segments arrays with
  the trained model (``nnUNetPredictor``).

Only :func:`plan_and_preprocess`, :func:`train_nnunet` and :func:`predict_nnunet` need nnU-Net, an
optional dependency: ``pip install "ctsynth-bench[nnunet]"`` (in this repository:
``uv sync --extra nnunet``).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import nibabel as nib
import numpy as np

from ..data import AFFINE_ATOL, read_nifti_stored, save_nifti
from ..exceptions import BenchError, DataError

__all__ = [
    "CT_CHANNEL",
    "INSTALL_HINT",
    "NNUNET_CONFIGURATIONS",
    "NNUNET_ENV_VARS",
    "NnunetCase",
    "export_dataset",
    "nnunet_env",
    "plan_and_preprocess",
    "predict_nnunet",
    "train_nnunet",
]

log = logging.getLogger(__name__)

#: The one channel of a CT set; the name ``"CT"`` selects nnU-Net's CT normalisation (clip to the
#: foreground's 0.5-99.5 percentiles, then z-score with the foreground's statistics).
CT_CHANNEL: Mapping[str, str] = MappingProxyType({"0": "CT"})
#: The environment variables nnU-Net v2 reads its folders from, in :func:`nnunet_env`'s order.
NNUNET_ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: The configurations ``nnUNetv2_plan_and_preprocess`` can make.
NNUNET_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
INSTALL_HINT = (
    'install the nnunet extra: pip install "ctsynth-bench[nnunet]" '
    "(in this repository: uv sync --extra nnunet, or uv sync --all-packages --group dev)"
)

_FILE_ENDING = ".nii.gz"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SAFE_ID_TEXT = "letters, digits, '_' and '-', starting with a letter or digit"
_PLAN_SCRIPT = "nnUNetv2_plan_and_preprocess"
_PLANS = "nnUNetPlans"


@dataclass(frozen=True)
class NnunetCase:
    """One case of a set to export.

    Files are read as stored (no reorientation) and written in the same voxel order with their
    affine and header kept, so an array given together with a file must be in that file's voxel
    order (``np.asanyarray(nibabel.load(path).dataobj)``).

    Attributes:
        case_id: nnU-Net case identifier: letters, digits, ``_`` and ``-``, starting with a letter
            or digit; unique within a dataset (training and test cases together, ignoring case).
        image: a NIfTI file, or an array ``(X, Y, Z)`` of intensities (Hounsfield units for CT),
            finite.
        label: a NIfTI file, or an integer array ``(X, Y, Z)`` on the image's grid whose values are
            all declared in the dataset's ``labels``. Required for training cases; optional for
            test cases (then written to ``labelsTs/``).
        affine: 4x4 voxel -> world (mm) matrix of an array ``image``; must be ``None`` when the
            image is a file. An array label takes the image's affine; a file label's affine must
            agree with it.
    """

    case_id: str
    image: str | os.PathLike[str] | np.ndarray
    label: str | os.PathLike[str] | np.ndarray | None = None
    affine: np.ndarray | None = None


def _did_you_mean(value: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(allowed), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_labels_decl(labels: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(labels, Mapping) or not labels:
        raise BenchError(
            "labels must be a non-empty mapping of class name -> integer value, "
            'e.g. {"background": 0, "tumour": 1}'
        )
    out: dict[str, int] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not key:
            raise BenchError(f"labels: class names must be non-empty strings, got {key!r}")
        if isinstance(value, (tuple, list)):
            raise BenchError(
                f"labels: {key!r} maps to {value!r}; region-based labels (tuples) are not "
                "supported by export_dataset, give one integer per class"
            )
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise BenchError(f"labels: {key!r} maps to {value!r}; an integer is expected")
        out[key] = int(value)
    values = sorted(out.values())
    if values != list(range(len(values))):
        raise BenchError(
            f"labels: values must be 0, 1, ..., N without gaps or repeats (nnU-Net needs "
            f"consecutive labels, 0 = background), got {values}"
        )
    return out


def _check_channels(channel_names: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(channel_names, Mapping) or list(channel_names) != ["0"]:
        got = dict(channel_names) if isinstance(channel_names, Mapping) else channel_names
        raise BenchError(
            "channel_names must have exactly one entry with key '0' (one image per case), "
            f"e.g. {{'0': 'CT'}}; got {got!r}"
        )
    name = channel_names["0"]
    if not isinstance(name, str) or not name.strip():
        raise BenchError(
            f"channel_names['0'] must be a non-empty string such as 'CT', got {name!r}"
        )
    return {"0": name}


def _check_case_ids(train: Sequence[NnunetCase], test: Sequence[NnunetCase]) -> None:
    seen: dict[str, str] = {}
    for split, cases in (("cases", train), ("test_cases", test)):
        for i, case in enumerate(cases):
            if not isinstance(case, NnunetCase):
                raise BenchError(
                    f"{split}[{i}]: expected an NnunetCase(case_id, image, label, affine), "
                    f"got {type(case).__name__}"
                )
            cid = case.case_id
            if not isinstance(cid, str) or not _SAFE_ID.fullmatch(cid):
                raise DataError(f"case {cid!r}: unsafe case id; allowed: {_SAFE_ID_TEXT}")
            if cid.lower() in seen:
                raise DataError(
                    f"case {cid!r}: duplicate case id (same as {seen[cid.lower()]!r}; ids are "
                    "compared ignoring case, as on case-insensitive file systems)"
                )
            seen[cid.lower()] = cid
            if split == "cases" and case.label is None:
                raise DataError(f"case {cid!r}: a training case needs a label")


def _read_stored(
    cid: str, what: str, path: Path
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header | None]:
    """:func:`ctsynth_bench.data.read_nifti_stored`, its errors naming the case."""
    try:
        return read_nifti_stored(path)
    except DataError as exc:
        raise DataError(f"case {cid!r}: {what} {exc}") from exc


def _check_affine(cid: str, what: str, affine: object) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64) if affine is not None else None
    if aff is None or aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise DataError(f"case {cid!r}: {what} affine must be a finite 4x4 matrix")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise DataError(f"case {cid!r}: {what} affine is singular (zero spacing?)")
    return aff


def _load_case(
    case: NnunetCase, allowed: np.ndarray, image_dtype: str
) -> tuple[
    np.ndarray, np.ndarray | None, np.ndarray, nib.Nifti1Header | None, nib.Nifti1Header | None
]:
    """Load and validate one case; returns ``(image, label, affine, image_header, label_header)``."""
    cid = case.case_id
    img_header = lab_header = None
    if isinstance(case.image, (str, os.PathLike)):
        if case.affine is not None:
            raise DataError(
                f"case {cid!r}: affine is given but the image is a file with its own affine; "
                "pass affine only with an array image"
            )
        image, affine, img_header = _read_stored(cid, "image", Path(case.image))
    else:
        image = np.asarray(case.image)
        if case.affine is None:
            raise DataError(f"case {cid!r}: the image is an array; pass its 4x4 affine too")
        affine = case.affine
    affine = _check_affine(cid, "image", affine)
    if image.ndim != 3:
        raise DataError(
            f"case {cid!r}: image has shape {image.shape}; a 3D volume (X, Y, Z) is expected"
        )
    if image.dtype.kind not in "iuf":
        raise DataError(f"case {cid!r}: image dtype {image.dtype} is not numeric (int or float)")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise DataError(f"case {cid!r}: image has {bad} NaN or infinite voxels")
    if image_dtype == "int16" and image.size:
        lo, hi = float(np.rint(image.min())), float(np.rint(image.max()))
        if lo < -32768 or hi > 32767:
            raise DataError(
                f"case {cid!r}: image values {lo:g}..{hi:g} do not fit int16; "
                "pass image_dtype='float32' for non-HU intensities"
            )

    if case.label is None:
        return image, None, affine, img_header, None
    if isinstance(case.label, (str, os.PathLike)):
        label, lab_affine, lab_header = _read_stored(cid, "label", Path(case.label))
        lab_affine = _check_affine(cid, "label", lab_affine)
        if not np.allclose(lab_affine, affine, atol=AFFINE_ATOL):
            diff = float(np.abs(lab_affine - affine).max())
            raise DataError(
                f"case {cid!r}: label and image affines disagree (max difference {diff:.3g} > "
                f"{AFFINE_ATOL}); the label must be on the image's grid"
            )
    else:
        label = np.asarray(case.label)
    if label.shape != image.shape:
        raise DataError(
            f"case {cid!r}: label shape {label.shape} differs from image shape {image.shape}"
        )
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.rint(label)):
            raise DataError(
                f"case {cid!r}: label has non-integer values; a label map of class ids is expected"
            )
    elif label.dtype.kind not in "iub":
        raise DataError(f"case {cid!r}: label dtype {label.dtype} is not an integer type")
    found = np.unique(label)
    unknown = np.setdiff1d(found, allowed)
    if unknown.size:
        shown = ", ".join(str(int(v)) for v in unknown[:8]) + (" ..." if unknown.size > 8 else "")
        raise DataError(
            f"case {cid!r}: label values {shown} are not declared in labels "
            f"(allowed {int(allowed[0])}..{int(allowed[-1])})"
        )
    return image, label, affine, img_header, lab_header


def _dataset_folders(raw_root: Path, dataset_id: int) -> list[Path]:
    prefix = f"Dataset{dataset_id:03d}_"
    if not raw_root.is_dir():
        return []
    return sorted(p for p in raw_root.iterdir() if p.is_dir() and p.name.startswith(prefix))


def _check_dataset_id(dataset_id: int) -> int:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)):
        raise BenchError(f"dataset_id must be an integer 1..999, got {dataset_id!r}")
    if not 1 <= int(dataset_id) <= 999:
        raise BenchError(
            f"dataset_id must be in 1..999 (nnU-Net uses three digits), got {dataset_id}"
        )
    return int(dataset_id)


def export_dataset(
    cases: Sequence[NnunetCase],
    out_root: str | os.PathLike[str],
    *,
    dataset_id: int,
    name: str,
    labels: Mapping[str, int],
    channel_names: Mapping[str, str] = CT_CHANNEL,
    test_cases: Sequence[NnunetCase] = (),
    image_dtype: Literal["int16", "float32"] = "int16",
    overwrite: bool = False,
) -> Path:
    """Write ``cases`` as nnU-Net v2 raw dataset ``out_root/Dataset{ID:03d}_{name}``.

    Every case is validated before the dataset appears: case ids unique and safe, image 3D and
    finite, label on the image's grid (same shape, affines within ``AFFINE_ATOL``) with integer
    values all declared in ``labels``. The dataset is written into a hidden temporary folder in
    ``out_root`` and renamed into place at the end.

    ``dataset.json`` holds ``channel_names``, ``labels``, ``numTraining`` (``len(cases)``),
    ``file_ending`` (``".nii.gz"``) and ``name``, as nnU-Net v2 reads it.

    Args:
        cases: training cases (each with a label), written to ``imagesTr/<case>_0000.nii.gz`` and
            ``labelsTr/<case>.nii.gz``.
        out_root: nnU-Net's raw folder, e.g. ``nnunet_env(root)["nnUNet_raw"]``; created if missing.
        dataset_id: nnU-Net dataset id, 1..999. No other dataset in ``out_root`` may use it.
        name: dataset name: letters, digits, ``_`` and ``-``.
        labels: class name -> value, values ``0..N`` consecutive with 0 the background, e.g.
            ``{"background": 0, "tumour": 1}``.
        channel_names: the one image channel; ``{"0": "CT"}`` selects nnU-Net's CT normalisation.
        test_cases: optional cases for ``imagesTs/`` (with ``labelsTs/`` for those with a label).
        image_dtype: on-disk image type; ``"int16"`` (HU, rounded) or ``"float32"``.
        overwrite: replace an existing ``Dataset{ID:03d}_{name}``; without it an existing dataset
            is an error and is left untouched.

    Returns:
        The dataset folder.

    Raises:
        DataError: a bad case, naming it and the problem; nothing is written.
        BenchError: a bad argument, or the dataset exists and ``overwrite`` is false.
    """
    dataset_id = _check_dataset_id(dataset_id)
    if not isinstance(name, str) or not _SAFE_ID.fullmatch(name):
        raise BenchError(f"name {name!r} is not a safe dataset name; allowed: {_SAFE_ID_TEXT}")
    if image_dtype not in ("int16", "float32"):
        raise BenchError(
            f"image_dtype must be 'int16' or 'float32', got {image_dtype!r}"
            + _did_you_mean(str(image_dtype), ("int16", "float32"))
        )
    labels_decl = _check_labels_decl(labels)
    channels = _check_channels(channel_names)
    cases, test_cases = list(cases), list(test_cases)
    if not cases:
        raise BenchError("cases is empty; nnU-Net needs at least one training case")
    _check_case_ids(cases, test_cases)
    allowed = np.arange(len(labels_decl))
    label_dtype = "uint8" if len(labels_decl) <= 256 else "uint16"

    root = Path(out_root)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    target = root / folder_name
    others = [p.name for p in _dataset_folders(root, dataset_id) if p.name != folder_name]
    if others:
        raise BenchError(
            f"{root}: dataset id {dataset_id} is already used by {others[0]}; nnU-Net finds datasets "
            "by id, so pick another dataset_id or remove that folder"
        )
    if target.exists() and not overwrite:
        raise BenchError(f"{target} exists; pass overwrite=True to replace it")

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder_name}-", dir=root))
    try:
        splits = (("Tr", cases), ("Ts", test_cases))
        for split, split_cases in splits:
            for case in split_cases:
                image, label, affine, img_header, lab_header = _load_case(
                    case, allowed, image_dtype
                )
                save_nifti(
                    tmp / f"images{split}" / f"{case.case_id}_0000{_FILE_ENDING}",
                    image,
                    affine,
                    dtype=image_dtype,
                    header=img_header,
                )
                if label is not None:
                    save_nifti(
                        tmp / f"labels{split}" / f"{case.case_id}{_FILE_ENDING}",
                        label,
                        affine,
                        dtype=label_dtype,
                        header=lab_header,
                    )
        dataset_json = {
            "channel_names": channels,
            "labels": labels_decl,
            "numTraining": len(cases),
            "file_ending": _FILE_ENDING,
            "name": name,
            "converted_by": "ctsynth_bench.eval.nnunet.export_dataset",
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d training and %d test cases to %s", len(cases), len(test_cases), target)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first, removed after."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
    old.rmdir()
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def nnunet_env(root: str | os.PathLike[str]) -> dict[str, str]:
    """The environment nnU-Net v2 reads its folders from, all under ``root``.

    Args:
        root: one folder for nnU-Net's data; need not exist yet.

    Returns:
        ``{"nnUNet_raw": "<root>/nnUNet_raw", "nnUNet_preprocessed": "<root>/nnUNet_preprocessed",
        "nnUNet_results": "<root>/nnUNet_results"}`` with ``root`` made absolute, to merge into a
        subprocess's environment (``{**os.environ, **nnunet_env(root)}``).
    """
    base = Path(root).expanduser().resolve()
    return {var: str(base / var) for var in NNUNET_ENV_VARS}


def _console_script(name: str) -> Path:
    """nnU-Net's console script ``name`` in the environment of ``sys.executable``."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise BenchError(f"nnU-Net v2 (nnunetv2) is not installed; {INSTALL_HINT}")
    folders = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    for folder in folders:
        found = shutil.which(name, path=str(folder))
        if found:
            return Path(found)
    raise BenchError(
        f"nnU-Net's command {name} was not found beside {sys.executable}; {INSTALL_HINT}"
    )


def _failure_summary(output: str) -> str:
    """nnU-Net's own error lines (its checks print ``Error: ...``) and the final exception line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    picked = [ln for ln in lines if ln.startswith("Error")][:5]
    if lines and lines[-1] not in picked:
        picked.append(lines[-1])
    return "\n".join(picked) or "(no output)"


def plan_and_preprocess(
    dataset_id: int,
    root: str | os.PathLike[str],
    *,
    configurations: Sequence[str] = ("3d_fullres",),
    verify: bool = True,
    processes: int = 1,
) -> Path:
    """Run ``nnUNetv2_plan_and_preprocess`` on dataset ``dataset_id`` under ``root``.

    The command runs as a subprocess with the environment of :func:`nnunet_env` (nobody needs to
    set it by hand), from the same Python environment as ``sys.executable``:
    ``nnUNetv2_plan_and_preprocess -d ID -c CONFIGS -np P -npfp P --clean
    [--verify_dataset_integrity]``. ``--clean`` recomputes the dataset fingerprint every time, so
    a re-exported set is never planned from a stale one. The whole output goes to
    ``<root>/logs/plan_and_preprocess_Dataset{ID:03d}.log``.

    Args:
        dataset_id: the id given to :func:`export_dataset`; the dataset must be in
            ``nnunet_env(root)["nnUNet_raw"]``.
        root: the folder of :func:`nnunet_env`.
        configurations: any of ``"2d"``, ``"3d_fullres"``, ``"3d_lowres"``. nnU-Net plans
            ``3d_lowres`` only for large images and skips it otherwise (logged as a warning).
        verify: run nnU-Net's dataset-integrity check first (label values, shapes, spacings,
            NaNs); a failed check is an error.
        processes: worker processes for fingerprinting and for each configuration.

    Returns:
        The preprocessed dataset folder, ``<root>/nnUNet_preprocessed/Dataset{ID:03d}_{name}``,
        holding ``nnUNetPlans.json`` and a data folder per configuration.

    Raises:
        BenchError: nnU-Net is not installed (the message has the install line), bad arguments,
            no such dataset, or nnU-Net failed (the message has its error lines and the log path).
    """
    dataset_id = _check_dataset_id(dataset_id)
    if isinstance(configurations, str):
        configurations = (configurations,)
    configs = list(configurations)
    if not configs:
        raise BenchError(f"configurations is empty; choose from {list(NNUNET_CONFIGURATIONS)}")
    for c in configs:
        if c not in NNUNET_CONFIGURATIONS:
            raise BenchError(
                f"unknown nnU-Net configuration {c!r}; allowed: {list(NNUNET_CONFIGURATIONS)}"
                + _did_you_mean(str(c), NNUNET_CONFIGURATIONS)
            )
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise BenchError(f"processes must be a positive integer, got {processes!r}")

    env_dirs = nnunet_env(root)
    raw_root = Path(env_dirs["nnUNet_raw"])
    found = _dataset_folders(raw_root, dataset_id)
    if not found:
        misplaced = _dataset_folders(Path(root), dataset_id)
        hint = (
            f"; {misplaced[0]} is directly under root: export into nnunet_env(root)['nnUNet_raw']"
            if misplaced
            else "; export it first with export_dataset(cases, nnunet_env(root)['nnUNet_raw'], ...)"
        )
        raise BenchError(f"no dataset with id {dataset_id} in {raw_root}{hint}")
    if len(found) > 1:
        raise BenchError(
            f"{raw_root}: several datasets use id {dataset_id} ({', '.join(p.name for p in found)}); "
            "nnU-Net needs one"
        )
    dataset_name = found[0].name
    script = _console_script(_PLAN_SCRIPT)

    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        Path(env_dirs[var]).mkdir(parents=True, exist_ok=True)
    cmd = [str(script), "-d", str(dataset_id), "-c", *configs]
    cmd += ["-np", str(processes), "-npfp", str(processes), "--clean"]
    if verify:
        cmd.append("--verify_dataset_integrity")
    env = {**os.environ, **env_dirs, "nnUNet_def_n_proc": str(processes)}
    log_path = raw_root.parent / "logs" / f"plan_and_preprocess_Dataset{dataset_id:03d}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    log_path.write_text(proc.stdout)
    if proc.returncode != 0:
        raise BenchError(
            f"{_PLAN_SCRIPT} failed on {dataset_name} (exit {proc.returncode}); full output in "
            f"{log_path}:\n{_failure_summary(proc.stdout)}"
        )

    out = Path(env_dirs["nnUNet_preprocessed"]) / dataset_name
    plans_file = out / f"{_PLANS}.json"
    if not plans_file.is_file():
        raise BenchError(f"{_PLAN_SCRIPT} finished but wrote no {plans_file}; see {log_path}")
    plans = json.loads(plans_file.read_text())
    for c in configs:
        conf = plans.get("configurations", {}).get(c)
        if conf is None:
            log.warning(
                "nnU-Net did not plan configuration %s for %s (not needed)", c, dataset_name
            )
            continue
        data_dir = out / conf.get("data_identifier", f"{_PLANS}_{c}")
        if not data_dir.is_dir():
            raise BenchError(f"{_PLAN_SCRIPT} finished but wrote no {data_dir}; see {log_path}")
    return out


# ------------------------------------------------------------------------- short training, predict

#: Name of the short trainer (a subclass of nnU-Net's ``nnUNetTrainer`` made in the worker); the
#: model folder is ``nnUNet_results/Dataset.../nnUNetTrainerShort__nnUNetPlans__<config>``.
SHORT_TRAINER = "nnUNetTrainerShort"
#: What a trained model keeps beside nnU-Net's own checkpoint, so it is read without unpickling:
#: the network's weights, and its configuration, trainer name and mirroring axes.
NETWORK_FILE = "network.safetensors"
NETWORK_INFO = "network.json"


def _run_worker(func: str, args: dict, root: str | os.PathLike[str], log_path: Path, threads: int):
    """Run ``ctsynth_bench.eval.nnunet.<func>(args)`` in a subprocess with nnU-Net's environment
    (nnU-Net reads its folders when first imported, so they are set before the import)."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise BenchError(f"nnU-Net v2 (nnunetv2) is not installed; {INSTALL_HINT}")
    env = {
        **os.environ,
        **nnunet_env(root),
        "nnUNet_n_proc_DA": "0",  # augment in the training process, no worker pool
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "f",
        "OMP_NUM_THREADS": str(threads),
    }
    code = f"import json, sys; from ctsynth_bench.eval.nnunet import {func}; {func}(json.loads(sys.argv[1]))"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    log_path.write_text(proc.stdout)
    if proc.returncode != 0:
        raise BenchError(
            f"nnU-Net {func.strip('_')} failed (exit {proc.returncode}); full output in {log_path}:\n"
            f"{_failure_summary(proc.stdout)}"
        )


def train_nnunet(
    dataset_id: int,
    root: str | os.PathLike[str],
    *,
    configuration: str = "3d_fullres",
    epochs: int = 1,
    iterations_per_epoch: int = 5,
    val_iterations_per_epoch: int = 1,
    minutes: float | None = None,
    init: str | os.PathLike[str] | None = None,
    initial_lr: float = 1e-2,
    seed: int = 0,
    threads: int = 1,
) -> Path:
    """Train nnU-Net v2 on a planned and preprocessed dataset, briefly, on the CPU.

    nnU-Net's default schedule (1000 epochs of 250 iterations) is for GPUs and days; this runs its
    own ``nnUNetTrainer`` (data augmentation, deep supervision, Dice + CE, poly learning rate) as the
    subclass :data:`SHORT_TRAINER` with ``epochs`` x ``iterations_per_epoch`` iterations, stopping
    early after ``minutes`` (checked after each epoch). It trains on every case (fold ``"all"``)
    in a subprocess with :func:`nnunet_env` set; the output goes to
    ``<root>/logs/train_Dataset{ID:03d}_<config>.log``.

    Args:
        dataset_id: a dataset :func:`plan_and_preprocess` has prepared under ``root``.
        root: the folder of :func:`nnunet_env`.
        configuration: ``"3d_fullres"``, ``"2d"`` or ``"3d_lowres"`` (planned).
        epochs / iterations_per_epoch / val_iterations_per_epoch: the schedule.
        minutes: stop after the epoch that passes this wall-clock budget.
        init: the ``fold_all/network.safetensors`` of a trained model to start from (fine-tuning);
            every weight of matching name and shape is copied except the segmentation heads, as
            nnU-Net's ``load_pretrained_weights`` does.
        initial_lr: nnU-Net's SGD learning rate (poly-decayed over ``epochs``).
        seed: seed of torch, numpy and random in the worker.
        threads: torch CPU threads of the worker.

    Returns:
        The model folder (holding ``plans.json``, ``dataset.json`` and
        ``fold_all/network.safetensors`` + ``network.json`` (read without unpickling), nnU-Net's
        own ``checkpoint_final.pth`` and ``fold_all/short_training.json`` with the epochs,
        iterations and seconds done), for :func:`predict_nnunet`.

    Raises:
        BenchError: nnU-Net missing, bad arguments, no preprocessed dataset, or training failed.
    """
    dataset_id = _check_dataset_id(dataset_id)
    if configuration not in NNUNET_CONFIGURATIONS:
        raise BenchError(
            f"unknown nnU-Net configuration {configuration!r}; allowed: "
            f"{list(NNUNET_CONFIGURATIONS)}"
            + _did_you_mean(str(configuration), NNUNET_CONFIGURATIONS)
        )
    for name, v in (
        ("epochs", epochs),
        ("iterations_per_epoch", iterations_per_epoch),
        ("val_iterations_per_epoch", val_iterations_per_epoch),
        ("threads", threads),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BenchError(f"{name} must be a positive integer, got {v!r}")
    if minutes is not None and not minutes > 0:
        raise BenchError(f"minutes must be > 0, got {minutes!r}")
    if init is not None and not Path(init).is_file():
        raise BenchError(f"init {init} is not a file; give the {NETWORK_FILE} of a trained model")
    env_dirs = nnunet_env(root)
    pre = _dataset_folders(Path(env_dirs["nnUNet_preprocessed"]), dataset_id)
    if not pre or not (pre[0] / f"{_PLANS}.json").is_file():
        raise BenchError(
            f"dataset {dataset_id} is not preprocessed under {root}; run plan_and_preprocess first"
        )
    model_dir = (
        Path(env_dirs["nnUNet_results"])
        / pre[0].name
        / f"{SHORT_TRAINER}__{_PLANS}__{configuration}"
    )
    if model_dir.exists():  # a fresh training every call (nnU-Net would append to its logs)
        shutil.rmtree(model_dir)
    args = {
        "dataset": pre[0].name,
        "configuration": configuration,
        "epochs": epochs,
        "iterations_per_epoch": iterations_per_epoch,
        "val_iterations_per_epoch": val_iterations_per_epoch,
        "seconds": None if minutes is None else 60.0 * minutes,
        "init": None if init is None else str(Path(init).resolve()),
        "initial_lr": initial_lr,
        "seed": seed,
        "threads": threads,
    }
    log_path = Path(root) / "logs" / f"train_Dataset{dataset_id:03d}_{configuration}.log"
    log.info(
        "training nnU-Net on %s (%s, %d x %d iterations)",
        pre[0].name,
        configuration,
        epochs,
        iterations_per_epoch,
    )
    _run_worker("_train_worker", args, root, log_path, threads)
    if not (model_dir / "fold_all" / NETWORK_FILE).is_file():
        raise BenchError(f"nnU-Net training wrote no {NETWORK_FILE} in {model_dir}; see {log_path}")
    return model_dir


def _train_worker(args: dict) -> None:
    """The subprocess of :func:`train_nnunet` (nnU-Net's environment is set)."""
    import random
    import time

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(int(args["threads"]))
    random.seed(args["seed"])
    np.random.seed(args["seed"])  # noqa: NPY002 - nnU-Net's augmentations draw from it
    torch.manual_seed(args["seed"])

    class nnUNetTrainerShort(nnUNetTrainer):
        """nnU-Net's trainer with a short schedule and a wall-clock budget."""

        def __init__(self, plans, configuration, fold, dataset_json, device=None):
            super().__init__(
                plans, configuration, fold, dataset_json, device or torch.device("cpu")
            )
            self.num_epochs = int(args["epochs"])
            self.num_iterations_per_epoch = int(args["iterations_per_epoch"])
            self.num_val_iterations_per_epoch = int(args["val_iterations_per_epoch"])
            self.initial_lr = float(args["initial_lr"])
            self.save_every = 10**9  # only the final checkpoint

        def run_training(self) -> None:
            self.on_train_start()
            t0 = time.monotonic()
            done = 0
            for _ in range(self.current_epoch, self.num_epochs):
                self.on_epoch_start()
                self.on_train_epoch_start()
                outs = [
                    self.train_step(next(self.dataloader_train))
                    for _ in range(self.num_iterations_per_epoch)
                ]
                self.on_train_epoch_end(outs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    vals = [
                        self.validation_step(next(self.dataloader_val))
                        for _ in range(self.num_val_iterations_per_epoch)
                    ]
                    self.on_validation_epoch_end(vals)
                self.on_epoch_end()
                done += 1
                if args["seconds"] is not None and time.monotonic() - t0 > args["seconds"]:
                    break
            self.on_train_end()
            info = {
                "epochs": done,
                "iterations": done * self.num_iterations_per_epoch,
                "seconds": time.monotonic() - t0,
            }
            with open(os.path.join(self.output_folder, "short_training.json"), "w") as f:
                json.dump(info, f)

    base = os.path.join(nnUNet_preprocessed, args["dataset"])
    plans = load_json(os.path.join(base, f"{_PLANS}.json"))
    plans["continue_training"] = False
    trainer = nnUNetTrainerShort(
        plans=plans,
        configuration=args["configuration"],
        fold="all",
        dataset_json=load_json(os.path.join(base, "dataset.json")),
        device=torch.device("cpu"),
    )
    if args["init"] is not None:
        # as nnU-Net's own load_pretrained_weights (every weight but the segmentation heads), read
        # from safetensors: nnU-Net's .pth checkpoints would have to be unpickled
        trainer.initialize()
        own = trainer.network.state_dict()
        for key, value in load_file(args["init"]).items():
            if ".seg_layers." not in key and key in own and own[key].shape == value.shape:
                own[key] = value
        trainer.network.load_state_dict(own)
    trainer.run_training()
    out = os.path.join(trainer.output_folder, NETWORK_FILE)
    # clone: the encoder is shared by reference in the decoder, safetensors stores no aliases
    save_file({k: v.detach().clone() for k, v in trainer.network.state_dict().items()}, out)
    with open(os.path.join(trainer.output_folder, NETWORK_INFO), "w") as fh:
        json.dump(
            {
                "configuration": args["configuration"],
                "trainer_name": type(trainer).__name__,
                "mirroring_axes": trainer.inference_allowed_mirroring_axes,
            },
            fh,
        )


def predict_nnunet(
    model_dir: str | os.PathLike[str],
    images: np.ndarray,
    *,
    spacing: float | Sequence[float],
    work_dir: str | os.PathLike[str],
    threads: int = 1,
) -> np.ndarray:
    """Label maps of ``images`` from a model of :func:`train_nnunet`.

    The images are written as NIfTI (int16 HU, an axis-aligned affine of ``spacing``) to
    ``work_dir/images``, segmented by ``nnUNetPredictor`` (sliding window, Gaussian weighting, no
    test-time mirroring) in a subprocess, and read back in the same voxel order.

    Args:
        model_dir: the folder :func:`train_nnunet` returned.
        images: HU volumes ``(N, X, Y, Z)``.
        spacing: voxel size in mm (one number: isotropic).
        work_dir: scratch folder (created; its ``images`` and ``labels`` are replaced).
        threads: torch CPU threads of the worker.

    Returns:
        uint8 labels ``(N, X, Y, Z)``.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "fold_all" / NETWORK_FILE).is_file():
        raise BenchError(f"{model_dir} has no fold_all/{NETWORK_FILE}; train it with train_nnunet")
    images = np.asarray(images)
    if images.ndim != 4 or not len(images):
        raise BenchError(f"images must be (N, X, Y, Z) with N >= 1, got shape {images.shape}")
    sp = [float(spacing)] * 3 if np.isscalar(spacing) else [float(s) for s in spacing]
    affine = np.diag([*sp, 1.0])
    work = Path(work_dir)
    inp, outp = work / "images", work / "labels"
    for d in (inp, outp):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    names = [f"case{i:05d}" for i in range(len(images))]
    for n, im in zip(names, images, strict=True):
        save_nifti(inp / f"{n}_0000{_FILE_ENDING}", np.rint(im), affine, dtype="int16")
    args = {
        "model_dir": str(model_dir.resolve()),
        "inputs": [str((inp / f"{n}_0000{_FILE_ENDING}").resolve()) for n in names],
        "outputs": [str((outp / n).resolve()) for n in names],
        "threads": threads,
    }
    _run_worker("_predict_worker", args, work, work / "predict.log", threads)
    out = []
    for n in names:
        f = outp / f"{n}{_FILE_ENDING}"
        if not f.is_file():
            raise BenchError(f"nnU-Net wrote no {f}; see {work / 'predict.log'}")
        out.append(read_nifti_stored(f)[0].astype(np.uint8))
    return np.stack(out)


def _predict_worker(args: dict) -> None:
    """The subprocess of :func:`predict_nnunet`."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from safetensors.torch import load_file

    torch.set_num_threads(int(args["threads"]))
    model_dir = args["model_dir"]
    info = load_json(os.path.join(model_dir, "fold_all", NETWORK_INFO))
    weights = load_file(os.path.join(model_dir, "fold_all", NETWORK_FILE))
    plans = PlansManager(load_json(os.path.join(model_dir, "plans.json")))
    dataset_json = load_json(os.path.join(model_dir, "dataset.json"))
    conf = plans.get_configuration(info["configuration"])
    # the short trainer builds nnU-Net's own network, so the base class rebuilds it
    net = nnUNetTrainer.build_network_architecture(
        plans,
        conf,
        determine_num_input_channels(plans, conf, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        net,
        plans,
        conf,
        [weights],
        dataset_json,
        info["trainer_name"],
        None if info["mirroring_axes"] is None else tuple(info["mirroring_axes"]),
    )
    predictor.predict_from_files_sequential(
        [[f] for f in args["inputs"]],
        args["outputs"],
        save_probabilities=False,
        overwrite=True,
        folder_with_segs_from_prev_stage=None,
    )
