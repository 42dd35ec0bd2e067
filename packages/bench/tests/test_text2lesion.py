"""``bench synth text2lesion`` on the shipped weights: one grid, lesion in the report's organ, the
CT changed only at the lesion, both texts in the sidecar, the report moving the lesion, the
``--ct --organs`` path equal to ``bench synth lesiondiffusion``, and bad input writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import report_bbox
from ctsynth_bench.cli.main import main
from ctsynth_bench.text2lesion import LESION_ID, resolve_run

PROMPT = (
    "The patient is a 63-year-old white male. In this imaging, the patient's condition is "
    "described as liver cancer, T2 N0 M0, 1 primary tumours, small."
)
FAST = ["--steps", "3", "--gg-steps", "3", "--seed", "0"]
SHIPPED = ["--run-guidegen", "shipped", "--run-lesiondiffusion", "shipped"]
ABDOMEN = Path(__file__).parents[1] / "src" / "ctsynth_bench" / "_bundled" / "abdomen"


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _case(out: Path, name: str = "t2l_00000") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    files = {
        "ct": out / "imagesTr" / f"{name}_0000.nii.gz",
        "labels": out / "labelsTr" / f"{name}.nii.gz",
        "lesion": out / "lesions" / f"{name}.nii.gz",
        "organs": out / "organs" / f"{name}.nii.gz",
        "torso": out / "torso" / f"{name}_0000.nii.gz",
    }
    return {k: _load(p) for k, p in files.items() if p.exists()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t2l")
    out = {}
    for what, extra in (
        ("liver", ["--lesion-type", "liver_cancer"]),
        ("kidney", ["--organ", "kidney_left"]),
    ):
        out[what] = root / what
        code = main(
            [
                "synth",
                "text2lesion",
                "--prompt",
                PROMPT,
                *extra,
                *FAST,
                *SHIPPED,
                "--out",
                str(out[what]),
            ]
        )
        assert code == 0
    return out


def test_torso_lesion_geometry_and_labels_agree(runs: dict[str, Path]) -> None:
    case = _case(runs["liver"])
    assert set(case) == {"ct", "labels", "lesion", "organs", "torso"}
    shape, affine = case["ct"][0].shape, case["ct"][1]
    for name, (arr, aff) in case.items():
        assert arr.shape == shape, name
        np.testing.assert_allclose(aff, affine, atol=1e-5, err_msg=name)
    assert np.allclose(np.diag(affine)[:3], 3.0)  # the default working grid
    ct, labels, lesion = case["ct"][0], case["labels"][0], case["lesion"][0] > 0
    organs, torso = case["organs"][0], case["torso"][0]
    assert 10 < lesion.sum() and np.array_equal(labels == LESION_ID, lesion)
    # inside the report's organ (liver, TotalSegmentator v2 id 5) of the torso's organ map
    assert np.all(np.isin(organs[lesion], report_bbox.organ_ids("liver")))
    # the CT changed only near the lesion: outside its box grown by 4 voxels, it is the torso's
    idx = np.argwhere(lesion)
    lo, hi = np.maximum(idx.min(0) - 4, 0), idx.max(0) + 5
    near = np.zeros(shape, bool)
    near[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    assert np.array_equal(ct[~near], torso[~near])
    assert not np.array_equal(ct[lesion], torso[lesion])
    # the label map is GuideGen's (ids 0-20) plus the lesion
    assert set(np.unique(labels)) <= set(range(LESION_ID + 1)) and 3 in set(np.unique(labels))


def test_sidecar_has_both_texts_seeds_runs_geometry(runs: dict[str, Path]) -> None:
    out = runs["liver"]
    meta = json.loads((out / "meta" / "t2l_00000.json").read_text())
    assert meta["prompt"] == PROMPT and meta["prompt_fields"]["site"] == "liver"
    assert meta["report"]["organ"] == "liver" and "liver" in meta["report_text"]
    assert meta["lesion_type"] == "liver_cancer"
    assert meta["seeds_guidegen"]["chunk_seed"] == 0 and "torch" in meta["seeds_lesiondiffusion"]
    assert meta["lesiondiffusion"]["weights"] == "shipped demo"
    assert meta["geometry"]["spacing_mm"] == [3.0, 3.0, 3.0]
    assert json.loads((out / "dataset.json").read_text())["labels"]["lesion"] == LESION_ID
    assert (out / "preview" / "t2l_00000.png").read_bytes()[:4] == b"\x89PNG"


def test_changing_the_report_moves_the_lesion(runs: dict[str, Path]) -> None:
    liver, kidney = _case(runs["liver"]), _case(runs["kidney"])
    assert np.array_equal(liver["torso"][0], kidney["torso"][0])  # same prompt and seed: same torso
    k_lesion = kidney["lesion"][0] > 0
    assert np.all(kidney["organs"][0][k_lesion] == 3)  # kidney_left
    c_liver = np.argwhere(liver["lesion"][0]).mean(0)
    c_kidney = np.argwhere(k_lesion).mean(0)
    assert np.linalg.norm(c_liver - c_kidney) * 3.0 > 30  # mm apart


def test_ct_and_organs_is_plain_lesiondiffusion(tmp_path: Path) -> None:
    common = ["--ct", str(ABDOMEN / "ct.nii.gz"), "--organs", str(ABDOMEN / "organs.nii.gz")]
    common += ["--lesion-type", "kidney_cyst", "--steps", "3", "--seed", "1"]
    assert main(["synth", "text2lesion", *common, "--out", str(tmp_path / "t")]) == 0
    assert main(["synth", "lesiondiffusion", *common, "--out", str(tmp_path / "ld")]) == 0
    ours = _case(tmp_path / "t")
    ct_ld, aff_ld = _load(tmp_path / "ld" / "imagesTr" / "ld_00000_0000.nii.gz")
    les_ld, _ = _load(tmp_path / "ld" / "labelsTr" / "ld_00000.nii.gz")
    assert np.array_equal(ours["ct"][0], ct_ld) and np.allclose(ours["ct"][1], aff_ld)
    assert np.array_equal(ours["lesion"][0], les_ld)
    assert np.array_equal(ours["labels"][0] == LESION_ID, les_ld > 0)
    meta = json.loads((tmp_path / "t" / "meta" / "t2l_00000.json").read_text())
    assert meta["mode"] == "lesiondiffusion" and meta["prompt"] is None
    assert not (tmp_path / "t" / "torso").exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--prompt", PROMPT, "--lesion-type", "liver_tumour"], ["liver_tumour"]),
        (
            ["--prompt", PROMPT, "--ct", "ct.nii.gz", "--organs", "o.nii.gz"],
            ["--prompt", "--ct", "not both"],
        ),
        (
            ["--ct", "missing.nii.gz", "--organs", "missing.nii.gz", "--lesion-type", "liver_cyst"],
            ["missing.nii.gz", "does not exist"],
        ),
        (
            ["--prompt", PROMPT, "--report", "none.json"],
            ["--report", "none.json", "does not exist"],
        ),
        (["--prompt", PROMPT, "--spacing", "0.1"], ["--spacing", "0.5..12"]),
        (["--prompt", PROMPT, "--run-guidegen", "no_run"], ["--run-guidegen", "no_run", "shipped"]),
        (["--prompt", PROMPT.replace("liver", "spleen")], ["spleen", "--lesion-type"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    argv: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["synth", "text2lesion", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert not out.exists()


def test_organ_missing_from_the_torso_names_what_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["--prompt", PROMPT, "--lesion-type", "esophageal_cancer", *FAST, *SHIPPED]
    assert main(["synth", "text2lesion", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "esophagus" in err and "it holds: " in err and "liver" in err, err
    assert not out.exists()


def test_default_runs_are_the_bench_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_run("guidegen", None) is None  # nothing here: the shipped weights
    (tmp_path / "guidegen_run").mkdir()
    (tmp_path / "guidegen_run" / "guidegen.json").write_text("{}")
    assert resolve_run("guidegen", None) == Path("guidegen_run")
    assert resolve_run("guidegen", "shipped") is None
    assert resolve_run("lesiondiffusion", None) is None
