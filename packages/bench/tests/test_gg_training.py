"""``bench train guidegen`` on the training engine: a tiny run of every stage, loadable, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ctsynth_bench.guidegen import training
from ctsynth_bench.guidegen._labels import GUIDEGEN_CLASSES
from ctsynth_bench.guidegen.system import load_system


def test_train_every_stage_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "PER_CELL", 1)  # one prompt per (site, count, size): 24 to encode
    run = tmp_path / "run"
    rep = training.train_guidegen(
        run, max_steps=2, n_labels=8, n_ct=16, progress=False, device="cpu"
    )
    assert rep["tcss"]["steps"] == 2 and rep["generator"]["steps"] == 2
    assert set(rep["segmenter"]["real_dice"]) <= set(GUIDEGEN_CLASSES)
    ae = rep["autoencoder"]
    assert ae["autoencoder_mae_hu"] > 0 and ae["baseline_mae_hu"] > 0 and ae["scale_factor"] > 0
    manifest = json.loads((run / "guidegen.json").read_text())
    assert manifest["stages"]["autoencoder"]["baseline_mae_hu"] == ae["baseline_mae_hu"]
    system = load_system(run)
    assert system.has_ct
    ema = system.tcss.state_dict()
    rep2 = training.train_guidegen(
        run,
        max_steps=3,
        n_labels=8,
        n_ct=16,
        progress=False,
        device="cpu",
        resume=True,
        stages=("tcss",),
    )
    assert rep2["tcss"]["steps"] == 3
    after = load_system(run, stages=("tcss",)).tcss.state_dict()
    assert any(not torch.equal(ema[k], after[k]) for k in ema)


def test_unknown_stage_and_missing_budget(tmp_path: Path) -> None:
    from ctsynth_bench.exceptions import BenchError

    with pytest.raises(BenchError, match="allowed"):
        training.train_guidegen(tmp_path, stages=("tcss", "vae"), max_steps=1)
    with pytest.raises(BenchError, match="budget"):
        training.train_guidegen(tmp_path)


def test_parallel_training_runs_tcss_beside_the_ct_chain(tmp_path: Path) -> None:
    """Two processes (TCSS | autoencoder, generator, segmenter) fill one run folder; neither
    loses the other's record in the shared manifests."""
    run = tmp_path / "run"
    rep = training.train_guidegen(
        run, max_steps=2, n_labels=8, n_ct=16, progress=False, device="cpu", parallel=True
    )
    assert set(rep) == set(training.STAGES)
    assert rep["tcss"]["steps"] == 2 and rep["generator"]["steps"] == 2
    engine_manifest = json.loads((run / "manifest.json").read_text())
    assert {"tcss", "generator", "segmenter"} <= set(engine_manifest["stages"])
    gg = json.loads((run / "guidegen.json").read_text())
    assert set(gg["stages"]) == set(training.STAGES)
    assert load_system(run).has_ct
