"""``bench run lesiondiffusion``: gallery of the 14 types, control check, report.md, a usable run folder.

The system is an untrained demo system (copied in with ``system_from``), 2 DDIM steps and 2 control
boxes: the test checks what the run produces and that the folder works as a run, not the numbers
(those come from the shipped weights, see the model side's test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ctsynth_bench.cli.main import main
from ctsynth_bench.data import bundled_dir
from ctsynth_bench.lesiondiffusion.run import RunError, run_lesiondiffusion


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctsynth_bench.lesiondiffusion.system import LesionDiffusionSystem

    folder = tmp_path_factory.mktemp("ld") / "untrained"
    LesionDiffusionSystem.from_preset("demo", seed=0).save(folder)
    return folder


def test_run_makes_report_gallery_control_and_a_run_folder(untrained: Path, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "run"
    s = run_lesiondiffusion(out, n_control=2, steps=2, system_from=untrained)
    assert s.report.is_file() and not s.failed
    assert sorted(p.stem for p in s.gallery) == sorted(__import__("report_bbox").LESION_TYPES)
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in s.gallery)
    for key in ("gallery", "sphericity", "density"):
        assert s.figures[key].is_file(), key
    md = s.report.read_text()
    for needle in (
        "Does it follow its report?",
        "text removed (ablation)",
        "sphericity",
        "hypo<iso",
        "figures/gallery.png",
        "figures/sphericity.png",
        "figures/density.png",
    ):
        assert needle in md, needle
    control = json.loads((out / "control.json").read_text())
    assert {"shape_passes", "density_passes", "ablation_holds", "per_case"} <= set(control)
    cases = sorted(p.stem for p in (out / "cases" / "reports").glob("*.json"))
    assert (
        len(cases) == 14
        and json.loads((out / "cases" / "dataset.json").read_text())["numTraining"] == 14
    )
    templates = {
        c: json.loads((out / "cases" / "reports" / f"{c}.json").read_text())["template"]
        for c in cases
    }
    assert templates["lung_cancer"] == templates["esophageal_cancer"] == "chest"
    assert templates["liver_cancer"] == "abdomen"
    info = json.loads((out / "bench_run.json").read_text())
    assert info["weights"].startswith("copied from")
    # the folder is a run: synth takes it
    ct, organs = (
        bundled_dir() / "abdomen" / "ct.nii.gz",
        bundled_dir() / "abdomen" / "organs.nii.gz",
    )
    rc = main(
        [
            "-q",
            "synth",
            "lesiondiffusion",
            "--run",
            str(out),
            "--ct",
            str(ct),
            "--organs",
            str(organs),
            "--organ",
            "kidney",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "syn"),
        ]
    )
    assert rc == 0
    meta = json.loads((tmp_path / "syn" / "reports" / "ld_00000.json").read_text())
    assert meta["system"]["run"] == str(out) and meta["system"]["weights"].startswith("copied from")
    assert np.isfinite(meta["measured"]["volume_ml"])


def test_run_refuses_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        run_lesiondiffusion(tmp_path)
    assert main(["run", "lesiondiffusion", "--out", str(tmp_path), "--n-control", "0"]) == 2
    assert "--n-control" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
