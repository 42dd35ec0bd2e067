"""``bench train guidegen`` on the training engine: a tiny run of every stage, loadable, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ctsynth_bench import train as engine
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
        stages=("tcss", "autoencoder"),
    )
    assert rep2["tcss"]["steps"] == 3
    assert rep2["autoencoder"]["steps"] == 3  # continued from step 2, not trained again
    assert [r["step"] for r in engine.read_metrics(run / "autoencoder")][-1] == 3
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


def test_autoencoder_stage_resumes_exactly_with_both_discriminators(tmp_path: Path) -> None:
    """The HDR autoencoder's stage on the engine: interrupted and resumed equals one straight run,
    for the autoencoder and its two discriminators, which train once the adversarial terms start."""
    import dataclasses

    import ct_autoencoder as ca
    from ctsynth_bench.guidegen.presets import get_preset
    from ctsynth_bench.guidegen.stages import make_autoencoder, train_autoencoder
    from safetensors.torch import load_file

    p = get_preset("demo")
    cfg = dataclasses.replace(make_autoencoder(p).config, adversarial_start=2)
    g = torch.Generator().manual_seed(0)
    s, ls = p.ct_size, p.tcss.spatial_size[0]
    ct = torch.rand(6, 1, s, s, s, generator=g) * 1400 - 1000
    labels = torch.randint(0, len(GUIDEGEN_CLASSES), (6, 1, ls, ls, ls), generator=g)

    def run(folder: Path, steps: int, resume: bool = False) -> tuple[torch.nn.Module, object]:
        torch.manual_seed(0)
        ae = ca.HDRAutoencoder(config=cfg)
        res = train_autoencoder(
            ae, ct, labels, run_dir=folder, max_steps=steps, batch_size=2, resume=resume,
            checkpoint_every=2,
        )  # fmt: skip
        return ae, res

    straight, res_a = run(tmp_path / "a", 5)
    assert res_a.step == 5
    run(tmp_path / "b", 3)
    torch.manual_seed(123)
    resumed, res_b = run(tmp_path / "b", 5, resume=True)
    assert res_b.resumed_from == 3 and res_b.step == 5
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    disc_a = load_file(str(tmp_path / "a" / "autoencoder" / "discriminators" / "model.safetensors"))
    disc_b = load_file(str(tmp_path / "b" / "autoencoder" / "discriminators" / "model.safetensors"))
    assert all(torch.equal(disc_a[k], disc_b[k]) for k in disc_a)
    torch.manual_seed(0)
    ca.HDRAutoencoder(config=cfg)
    init = ca.Discriminators(config=cfg).state_dict()
    assert any(not torch.equal(init[k], disc_a[k]) for k in init)  # the discriminators trained
    rows = engine.read_metrics(tmp_path / "a" / "autoencoder")
    assert "disc_frame" in rows[-1] and "disc_volume" in rows[-1] and "adv_frame" in rows[-1]
    loaded = ca.load_autoencoder(tmp_path / "b" / "autoencoder")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in straight.state_dict().items())


DDP_AE_SCRIPT = """
import dataclasses, sys, torch
import ct_autoencoder as ca
from ctsynth_bench.guidegen.presets import get_preset
from ctsynth_bench.guidegen.stages import make_autoencoder, train_autoencoder
from ctsynth_bench.train import dist_info
p = get_preset("demo")
cfg = dataclasses.replace(make_autoencoder(p).config, adversarial_start=1)
g = torch.Generator().manual_seed(0)
s, ls = p.ct_size, p.tcss.spatial_size[0]
ct = torch.rand(8, 1, s, s, s, generator=g) * 1400 - 1000
labels = torch.randint(0, 21, (8, 1, ls, ls, ls), generator=g)
torch.manual_seed(0)
ae = ca.HDRAutoencoder(config=cfg)
r = train_autoencoder(ae, ct, labels, run_dir=sys.argv[1], max_steps=3, batch_size=4)
total = sum(float(v.double().sum()) for v in ae.state_dict().values())
# one file per rank: two processes printing to one pipe may not both reach it intact
info = dist_info()
with open(f"{sys.argv[2]}/rank{info.rank}.txt", "w") as f:
    f.write(f"{info.world_size} {r.step} {total!r}")
"""


def test_autoencoder_stage_trains_under_torchrun(tmp_path: Path) -> None:
    """Two CPU processes train the autoencoder and its discriminators with DDP and end with the
    same weights on both ranks; only rank 0 writes the stage folder."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ae_ddp.py"
    script.write_text(DDP_AE_SCRIPT)
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tmp_path / "run"), str(tmp_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    ranks = {k: (tmp_path / f"rank{k}.txt") for k in (0, 1)}
    assert all(f.is_file() for f in ranks.values()), (two.stdout[-2000:], two.stderr[-2000:])
    got = {k: f.read_text().split() for k, f in ranks.items()}
    assert got[0][:2] == got[1][:2] == ["2", "3"] and got[0][2] == got[1][2], got
    meta = engine.read_trainer_state(tmp_path / "run" / "autoencoder")[0]
    assert meta["world_size"] == 2 and meta["step"] == 3
    assert (tmp_path / "run" / "autoencoder" / "discriminators" / "model.safetensors").is_file()
