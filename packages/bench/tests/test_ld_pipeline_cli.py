"""``bench synth lesiondiffusion`` and ``bench data reports`` on the command line.

The system is an untrained demo system saved as a run folder (``--run``), with 2 DDIM steps: the
checks are about the command (inputs, outputs, errors, resume), not about what a trained net draws.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import report_bbox
from ctsynth_bench.cli.main import main
from ctsynth_bench.data import bundled_dir

ABD = (bundled_dir() / "abdomen" / "ct.nii.gz", bundled_dir() / "abdomen" / "organs.nii.gz")
CHEST = (bundled_dir() / "chest" / "ct.nii.gz", bundled_dir() / "chest" / "organs.nii.gz")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctsynth_bench.lesiondiffusion.system import LesionDiffusionSystem

    folder = tmp_path_factory.mktemp("ld") / "untrained"
    LesionDiffusionSystem.from_preset("demo", seed=0).save(folder)
    return folder


def _args(run: Path, out: Path, *extra: str, ct: tuple[Path, Path] = ABD) -> list[str]:
    return [
        "-q",
        "synth",
        "lesiondiffusion",
        "--run",
        str(run),
        "--ct",
        str(ct[0]),
        "--organs",
        str(ct[1]),
        "--steps",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def test_synth_writes_the_dataset(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            _args(
                run_dir,
                out,
                "--lesion-type",
                "liver_cyst",
                "--set",
                "density=hypodense",
                "--n",
                "2",
            )
        )
        == 0
    )
    assert "wrote 2" in capsys.readouterr().out
    src = nib.load(ABD[0])
    for case in ("ld_00000", "ld_00001"):
        img = nib.load(out / "imagesTr" / f"{case}_0000.nii.gz")
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        assert np.asarray(nib.load(out / "labelsTr" / f"{case}.nii.gz").dataobj).any()
        meta = json.loads((out / "reports" / f"{case}.json").read_text())
        assert meta["report"]["density"] == "hypodense" and meta["lesion_type"] == "liver_cyst"
        assert meta["system"]["run"] == str(run_dir) and meta["steps"] == 2
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2


def _bad_report(tmp_path: Path) -> Path:
    rep = report_bbox.sample_report(
        np.random.default_rng(0),
        lesion_type="pancreas_cyst",
        size=[40, 40, 40],
        lesion_location="within the parenchymal organ",
    )
    path = tmp_path / "big.json"
    path.write_text(rep.to_json())
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("organ_absent", "absent"),
        ("geometry", "different shapes"),
        ("no_fit", "cannot fit"),
        ("other_system", "not a LesionDiffusion run"),
        ("n_zero", "--n"),
        ("bad_set", "--set takes"),
        ("bad_value", "hypodens"),
        ("two_sources", "not both"),
        ("no_source", "say what to make"),
        ("missing_ct", "does not exist"),
    ],
)
def test_unusable_input_is_one_line_exit_2_nothing_written(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    out = tmp_path / "out"
    other = tmp_path / "gg"
    other.mkdir()
    (other / "guidegen.json").write_text("{}")
    extra = {
        "organ_absent": (["--organ", "pancreas"], CHEST, run_dir),
        "geometry": (["--organ", "liver"], (ABD[0], CHEST[1]), run_dir),
        "no_fit": (["--report", str(_bad_report(tmp_path))], ABD, run_dir),
        "other_system": (["--organ", "liver"], ABD, other),
        "n_zero": (["--organ", "liver", "--n", "0"], ABD, run_dir),
        "bad_set": (["--organ", "liver", "--set", "density"], ABD, run_dir),
        "bad_value": (["--organ", "liver", "--set", "density=hypodens"], ABD, run_dir),
        "two_sources": (
            ["--report", str(_bad_report(tmp_path)), "--llm", "http://127.0.0.1:9/v1"],
            ABD,
            run_dir,
        ),
        "no_source": ([], ABD, run_dir),
        "missing_ct": (["--organ", "liver"], (tmp_path / "nope.nii.gz", ABD[1]), run_dir),
    }[case]
    rc = main(_args(extra[2], out, *extra[0], ct=extra[1]))
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2
        and err.startswith("bench: error:")
        and len(err.splitlines()) == 1
        and message in err
    ), err
    assert not out.exists()


def test_checks_run_before_torch_is_imported(run_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from ctsynth_bench.cli.main import main; "
        f"rc = main({_args(run_dir, tmp_path / 'o', '--organ', 'pancreas', ct=CHEST)!r}); "
        "print(rc, 'torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["2", "False"], res.stdout + res.stderr


def _contents(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name.endswith(".nii.gz"):
            out[str(p.relative_to(root))] = np.asarray(nib.load(p).dataobj).tobytes()
        elif p.is_file() and p.parent.name == "reports":
            meta = json.loads(p.read_text())
            meta.pop("timings_s")
            out[str(p.relative_to(root))] = meta
    return out


def test_n_k_resumes_after_sigkill(run_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ctsynth_bench.cli.main",
            *_args(run_dir, out, "--lesion-type", "kidney_cyst", "--n", "3", "--seed", "4"),
        ]

    full = tmp_path / "full"
    subprocess.run(cmd(full), check=True, timeout=600, env=env, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(
        cmd(part), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 300
        while not (part / "reports" / "ld_00000.json").exists():
            assert proc.poll() is None and time.time() < deadline, "the batch did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list((part / "reports").glob("*.json")))
    assert 1 <= done < 3, done  # killed mid-batch
    subprocess.run(cmd(part), check=True, timeout=600, env=env, capture_output=True)
    assert _contents(part) == _contents(full)


def test_data_reports_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ctsynth_bench.rulesynth import load_templates, synthesize_dataset

    root = tmp_path / "set"
    synthesize_dataset(root, n=3, templates=load_templates(["abdomen"]), seed=2, deform=False)
    assert main(["-q", "data", "reports", str(root)]) == 0
    assert "3 derived reports" in capsys.readouterr().out
    doc = json.loads((root / "derived_reports" / "synth_00000.json").read_text())
    assert doc["derived"] is True and "organ" in doc["report"]
    assert main(["-q", "data", "reports", str(root), "--layout", "nnunet"]) == 2
    assert "--organs" in capsys.readouterr().err


def test_torchrun_ranks_split_the_batch(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ("--lesion-type", "gallstone", "--n", "3", "--seed", "9")
    assert main(_args(run_dir, one, *extra)) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert main(_args(run_dir, two, *extra)) == 0
        if rank == "1":
            assert sorted(p.stem for p in (two / "reports").glob("*.json")) == ["ld_00001"]
    assert _contents(one) == _contents(two)
    assert json.loads((two / "dataset.json").read_text())["numTraining"] == 3
    monkeypatch.setenv("RANK", "2")
    assert main(_args(run_dir, tmp_path / "bad", *extra)) == 2
