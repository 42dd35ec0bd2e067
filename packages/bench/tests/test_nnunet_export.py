"""Export to nnU-Net v2's raw format, checked by nnU-Net itself, then planned and preprocessed.

The set is four GuideGen demo cases (real templates, deformed; 32^3 CT at 12 mm, labels upsampled
from 16^3 by nearest neighbour). nnU-Net runs as its own command, so its integrity check, not ours,
decides whether the export is valid; a label edited after the export must make that check fail.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ctsynth_bench.data import GUIDEGEN_CLASSES
from ctsynth_bench.eval import (
    INSTALL_HINT,
    NnunetCase,
    export_dataset,
    nnunet_env,
    plan_and_preprocess,
)
from ctsynth_bench.exceptions import BenchError, DataError
from ctsynth_bench.guidegen.data import (
    CT_GRID,
    CT_SPACING,
    grid_affine,
    load_gg_templates,
    make_case,
)

GG_LABELS = {name: i for i, name in GUIDEGEN_CLASSES.items()}
DATASET_ID = 517


@pytest.fixture(scope="module")
def demo_cases() -> list[NnunetCase]:
    templates = load_gg_templates()
    affine = grid_affine(CT_GRID, CT_SPACING)
    cases = []
    for i in range(4):
        c = make_case(templates, 0, i, with_ct=True)
        labels = c.labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)  # 16^3 -> 32^3, nearest
        cases.append(NnunetCase(f"gg{i:03d}", c.ct, labels, affine))
    return cases


@pytest.fixture(scope="module")
def exported(demo_cases, tmp_path_factory) -> tuple[Path, Path]:
    """``(root, dataset folder)`` of the demo set, exported under ``nnunet_env(root)``."""
    root = tmp_path_factory.mktemp("nnunet")
    folder = export_dataset(
        demo_cases,
        nnunet_env(root)["nnUNet_raw"],
        dataset_id=DATASET_ID,
        name="GGDemo",
        labels=GG_LABELS,
    )
    return root, folder


def test_export_writes_nnunet_raw_layout_and_round_trips(demo_cases, exported) -> None:
    root, folder = exported
    assert folder == Path(nnunet_env(root)["nnUNet_raw"]) / f"Dataset{DATASET_ID}_GGDemo"
    assert json.loads((folder / "dataset.json").read_text()) == {
        "channel_names": {"0": "CT"},
        "labels": GG_LABELS,
        "numTraining": 4,
        "file_ending": ".nii.gz",
        "name": "GGDemo",
        "converted_by": "ctsynth_bench.eval.nnunet.export_dataset",
    }
    ids = [c.case_id for c in demo_cases]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        f"{i}_0000.nii.gz" for i in ids
    ]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert not (folder / "imagesTs").exists()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name], "no temporary folder is left"
    for case in demo_cases:
        img = nib.load(folder / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        lab = nib.load(folder / "labelsTr" / f"{case.case_id}.nii.gz")
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(img.dataobj), np.rint(case.image).astype(np.int16))
        assert np.array_equal(np.asarray(lab.dataobj), case.label)
        assert np.allclose(img.affine, case.affine) and np.allclose(lab.affine, case.affine)
        assert np.allclose(img.header.get_zooms(), (12.0, 12.0, 12.0))


def test_nnunet_verifies_plans_and_preprocesses_the_export(demo_cases, exported) -> None:
    root, folder = exported
    out = plan_and_preprocess(DATASET_ID, root)  # nnU-Net's own --verify_dataset_integrity
    assert out == Path(nnunet_env(root)["nnUNet_preprocessed"]) / folder.name
    log_text = (root / "logs" / f"plan_and_preprocess_Dataset{DATASET_ID}.log").read_text()
    assert "verify_dataset_integrity Done" in log_text
    assert "Error" not in log_text
    plans = json.loads((out / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert plans["dataset_name"] == folder.name
    assert np.allclose(conf["spacing"], [12.0, 12.0, 12.0])
    data_dir = out / conf["data_identifier"]
    for case in demo_cases:
        files = list(data_dir.glob(f"{case.case_id}.*"))
        assert any(f.suffix in (".b2nd", ".npz", ".npy") for f in files), (case.case_id, files)
        assert (data_dir / f"{case.case_id}.pkl").is_file()
        assert (out / "gt_segmentations" / f"{case.case_id}.nii.gz").is_file()
    assert json.loads((out / "dataset_fingerprint.json").read_text())["shapes_after_crop"]


def test_nnunet_check_fails_on_an_export_broken_afterwards(exported, tmp_path) -> None:
    _, folder = exported
    root = tmp_path / "broken"
    raw = Path(nnunet_env(root)["nnUNet_raw"])
    shutil.copytree(folder, raw / folder.name)
    path = raw / folder.name / "labelsTr" / "gg002.nii.gz"
    img = nib.load(path)
    lab = np.asarray(img.dataobj).copy()
    lab[0, 0, 0] = len(GG_LABELS)  # one voxel of a class dataset.json does not declare
    nib.save(nib.Nifti1Image(lab, img.affine, img.header), path)
    with pytest.raises(BenchError, match="Unexpected labels") as err:
        plan_and_preprocess(DATASET_ID, root)
    assert "gg002.nii.gz" in str(err.value)
    assert not (
        Path(nnunet_env(root)["nnUNet_preprocessed"]) / folder.name / "nnUNetPlans.json"
    ).exists()


# --- bad inputs: tiny arrays, no nnU-Net run ---

SMALL = {"background": 0, "organ": 1, "tumour": 2}


def _good(cid: str, shift: float = 0.0) -> NnunetCase:
    rng = np.random.default_rng(len(cid))
    image = rng.normal(0.0, 100.0, (8, 8, 8)).astype(np.float32)
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    label[3:5, 3:5, 3:5] = 2
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = shift
    return NnunetCase(cid, image, label, affine)


def _file(tmp_path: Path, name: str, arr: np.ndarray, affine: np.ndarray) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), path)
    return path


BAD_KINDS = [
    "unsafe id",
    "space in id",
    "duplicate id",
    "shape",
    "affine",
    "undeclared label",
    "float label",
    "nan image",
    "no affine",
    "2d image",
    "int16 overflow",
    "no label",
    "missing file",
]


def _bad_cases(tmp_path: Path) -> dict[str, tuple[NnunetCase, str]]:
    """Each kind of bad case -> (the case, what its error must say); keys are ``BAD_KINDS``."""
    g = _good("bad")
    nan = g.image.copy()
    nan[1, 2, 3] = np.nan
    undeclared = g.label.copy()
    undeclared[0, 0, 0] = 5
    off_grid = _file(tmp_path, "lab.nii.gz", g.label, g.affine + np.diag([0, 0, 0.5, 0]))
    return {
        "unsafe id": (NnunetCase("../evil", g.image, g.label, g.affine), "unsafe case id"),
        "space in id": (NnunetCase("a b", g.image, g.label, g.affine), "unsafe case id"),
        "duplicate id": (_good("C1"), "duplicate case id"),
        "shape": (NnunetCase("bad", g.image, g.label[:, :, :7], g.affine), "label shape"),
        "affine": (NnunetCase("bad", g.image, off_grid, g.affine), "affines disagree"),
        "undeclared label": (NnunetCase("bad", g.image, undeclared, g.affine), "label values 5"),
        "float label": (NnunetCase("bad", g.image, g.label * 0.5, g.affine), "non-integer"),
        "nan image": (NnunetCase("bad", nan, g.label, g.affine), "NaN"),
        "no affine": (NnunetCase("bad", g.image, g.label), "pass its 4x4 affine"),
        "2d image": (NnunetCase("bad", g.image[0], g.label[0], g.affine), "3D volume"),
        "int16 overflow": (NnunetCase("bad", g.image * 1e4, g.label, g.affine), "do not fit int16"),
        "no label": (NnunetCase("bad", g.image, None, g.affine), "needs a label"),
        "missing file": (NnunetCase("bad", tmp_path / "nope.nii.gz", g.label), "not found"),
    }


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_case_names_the_case_and_leaves_nothing(kind, tmp_path) -> None:
    bad, problem = _bad_cases(tmp_path)[kind]
    out_root = tmp_path / "raw"
    out_root.mkdir()
    cases = [_good("c0"), _good("c1"), bad]  # the bad case comes after two written ones
    with pytest.raises(DataError) as err:
        export_dataset(cases, out_root, dataset_id=5, name="Bad", labels=SMALL)
    msg = str(err.value)
    assert repr(bad.case_id) in msg and problem in msg, msg
    assert "\n" not in msg
    assert list(out_root.iterdir()) == [], "nothing may be left behind"


def test_file_inputs_keep_voxel_order_affine_and_header(tmp_path) -> None:
    g = _good("f")
    affine = np.array(
        [[-2.0, 0, 0, 10], [0, -2.0, 0, 12], [0, 0, 3.0, -5], [0, 0, 0, 1]]
    )  # LPS-like
    src = nib.Nifti1Image(np.rint(g.image).astype(np.int16), affine)
    src.header["descrip"] = b"synthetic, seed 0"
    image_path = tmp_path / "img.nii.gz"
    nib.save(src, image_path)
    label_path = _file(tmp_path, "lab.nii.gz", g.label, affine)
    folder = export_dataset(
        [NnunetCase("f", image_path, label_path)],
        tmp_path / "raw",
        dataset_id=6,
        name="Files",
        labels=SMALL,
        test_cases=[NnunetCase("t", image_path, g.label), NnunetCase("u", image_path)],
    )
    out = nib.load(folder / "imagesTr" / "f_0000.nii.gz")
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(src.dataobj))
    assert np.allclose(out.affine, affine)
    assert out.header["descrip"].tobytes().rstrip(b"\0") == b"synthetic, seed 0"
    assert np.array_equal(np.asarray(nib.load(folder / "labelsTr" / "f.nii.gz").dataobj), g.label)
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [
        "t_0000.nii.gz",
        "u_0000.nii.gz",
    ]
    assert [p.name for p in (folder / "labelsTs").iterdir()] == ["t.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1


def test_existing_dataset_is_kept_unless_overwrite(tmp_path) -> None:
    raw = tmp_path / "raw"
    folder = export_dataset([_good("a")], raw, dataset_id=7, name="Keep", labels=SMALL)
    before = (folder / "dataset.json").read_bytes()
    with pytest.raises(BenchError, match="overwrite=True"):
        export_dataset([_good("a"), _good("b")], raw, dataset_id=7, name="Keep", labels=SMALL)
    assert (folder / "dataset.json").read_bytes() == before
    with pytest.raises(BenchError, match="already used by Dataset007_Keep"):
        export_dataset([_good("a")], raw, dataset_id=7, name="Other", labels=SMALL)
    with pytest.raises(DataError, match="'b'"):  # a failed overwrite keeps the old dataset too
        export_dataset(
            [_good("a"), _good("b", shift=np.nan)],
            raw,
            dataset_id=7,
            name="Keep",
            labels=SMALL,
            overwrite=True,
        )
    assert (folder / "dataset.json").read_bytes() == before
    export_dataset(
        [_good("a"), _good("b")], raw, dataset_id=7, name="Keep", labels=SMALL, overwrite=True
    )
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset007_Keep"]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"labels": {"background": 0, "tumour": 2}}, "without gaps"),
        ({"labels": {"background": 0, "both": (1, 2)}}, "region-based"),
        ({"channel_names": {"0": "CT", "1": "PET"}}, "exactly one entry"),
        ({"dataset_id": 1000}, "1..999"),
        ({"name": "a/b"}, "safe dataset name"),
        ({"image_dtype": "int61"}, "did you mean 'int16'"),
    ],
)
def test_bad_arguments(kwargs, problem, tmp_path) -> None:
    args = {"dataset_id": 8, "name": "Args", "labels": SMALL, **kwargs}
    with pytest.raises(BenchError, match=problem):
        export_dataset([_good("a")], tmp_path / "raw", **args)
    assert not (tmp_path / "raw").exists()


def test_nnunet_env_is_absolute_and_under_one_root(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = nnunet_env("work")
    assert env == {
        k: str(tmp_path.resolve() / "work" / k)
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    }


def test_plan_and_preprocess_refuses_before_running(tmp_path) -> None:
    with pytest.raises(BenchError, match="export it first"):
        plan_and_preprocess(9, tmp_path)
    export_dataset([_good("a")], tmp_path, dataset_id=9, name="Misplaced", labels=SMALL)
    with pytest.raises(BenchError, match="directly under root"):
        plan_and_preprocess(9, tmp_path)
    raw = nnunet_env(tmp_path)["nnUNet_raw"]
    export_dataset([_good("a")], raw, dataset_id=9, name="M", labels=SMALL)
    with pytest.raises(BenchError, match="did you mean '3d_fullres'"):
        plan_and_preprocess(9, tmp_path, configurations=("3d_fulres",))


def test_missing_nnunet_gives_the_install_line(tmp_path, monkeypatch) -> None:
    export_dataset(
        [_good("a")], nnunet_env(tmp_path)["nnUNet_raw"], dataset_id=9, name="M", labels=SMALL
    )
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "nnunetv2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(BenchError, match="not installed") as err:
        plan_and_preprocess(9, tmp_path)
    assert INSTALL_HINT in str(err.value) and "uv sync --extra nnunet" in str(err.value)
    assert not (tmp_path / "logs").exists(), "nothing ran"
