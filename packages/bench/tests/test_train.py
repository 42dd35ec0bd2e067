"""Training engine: a tiny stage trains, exact resume in-process, run folder files and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ctsynth_bench.train import (
    EMA,
    RunFolderError,
    ShardedBatches,
    TrainConfig,
    TrainConfigError,
    TrainingError,
    _atomic,
    cpu_threads_for,
    read_manifest,
    read_metrics,
    read_trainer_state,
    start_run,
    train,
    write_model_card,
)
from torch import nn


class TinyNet(nn.Module):
    """A small denoiser with the config protocol: ``config_dict()`` gives its arguments."""

    def __init__(self, *, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.body = nn.Sequential(
            nn.Conv3d(1, width, 3, padding=1), nn.SiLU(), nn.Conv3d(width, 1, 3, padding=1)
        )

    def config_dict(self) -> dict:
        return {"width": self.width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class RandomCrops(torch.utils.data.Dataset):
    """Crops of a fixed volume; the crop offset is drawn from torch's global generator."""

    def __init__(self, n: int = 12, size: int = 6) -> None:
        g = torch.Generator().manual_seed(123)
        self.volume = torch.randn(1, 10, 10, 10, generator=g)
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        o = torch.randint(0, 10 - self.size + 1, (3,)).tolist()
        s = self.size
        return {"x": self.volume[:, o[0] : o[0] + s, o[1] : o[1] + s, o[2] : o[2] + s]}


def denoise_loss(model, batch, generator):
    x = batch["x"]
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    loss = (model(x + 0.5 * noise) - x).pow(2).mean()
    return loss, {"mse": float(loss.detach())}


def _cfg(**kw) -> TrainConfig:
    base = dict(batch_size=4, grad_accum=2, lr=3e-3, ema_decay=0.9, checkpoint_every=4)
    base.update(kw)
    return TrainConfig(**base)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors")), load_file(str(folder / "ema.safetensors"))


def test_tiny_diffusion_unet_stage_trains_and_writes_run_folder(tmp_path):
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    class Denoiser(DiffusionModelUNet):
        def config_dict(self) -> dict:
            return {"channels": [8, 8]}

    torch.manual_seed(0)
    net = Denoiser(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=4,
    )
    scheduler = DDPMScheduler(num_train_timesteps=100)

    class Blobs(torch.utils.data.Dataset):  # a bright ball at a random place in each crop
        def __len__(self):
            return 16

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            c = torch.randint(3, 5, (3,), generator=g).float()
            grid = torch.stack(torch.meshgrid(*[torch.arange(8.0)] * 3, indexing="ij"))
            ball = ((grid - c[:, None, None, None]).pow(2).sum(0) < 4).float()
            return ball[None] * 2 - 1

    def ddpm_loss(model, x0, generator):
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 100, (x0.shape[0],), generator=generator)
        pred = model(scheduler.add_noise(x0, noise, t), t)
        loss = (pred - noise).pow(2).mean()
        return loss, {}

    run = tmp_path / "run"
    manifest = start_run(
        run, system="toy", preset="demo", data={"cases": 16, "crop": [8, 8, 8]}, seeds={"train": 0}
    )
    result = train(
        net,
        ddpm_loss,
        Blobs(),
        run_dir=run,
        stage="unet",
        config=TrainConfig(max_steps=50, batch_size=4, lr=2e-3, log_every=5, checkpoint_every=25),
        progress=False,
    )
    assert result.step == 50 and result.stopped_by == "max_steps"
    losses = [r["loss"] for r in read_metrics(run / "unet")]
    assert len(losses) == 10 and all("grad_norm" in r for r in read_metrics(run / "unet"))
    # Learned: the last 10 steps' loss is clearly below the first 10 (noise prediction starts ~1).
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "loss.png"):
        assert (run / "unet" / name).stat().st_size > 0
    assert (run / "unet" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "unet" / "config.json").read_text())
    assert config["format"] == "ctsynth-checkpoint" and config["class"] == "Denoiser"
    assert config["config"] == {"channels": [8, 8]}
    manifest = read_manifest(run)
    assert manifest["system"] == "toy" and manifest["stages"]["unet"]["steps"] == 50
    assert manifest["stages"]["unet"]["status"] == "done"
    assert len(manifest["data_hash"]) == 64 and "torch" in manifest["packages"]
    card = write_model_card(
        run,
        title="Toy denoiser",
        intended_use="Testing the engine.",
        limits=["Eight-voxel balls only."],
        results={"final loss": losses[-1]},
    )
    text = card.read_text()
    assert "| unet | 50 |" in text and "final loss" in text and "Eight-voxel balls" in text
    assert manifest["data_hash"] in text
    # Reopening the run with other data is refused.
    with pytest.raises(RunFolderError, match=r"manifest\.json belongs to another run"):
        start_run(run, system="toy", preset="demo", data={"cases": 17}, seeds={"train": 0})


def test_resume_continues_exactly_in_process(tmp_path):
    def run(folder, steps, resume):
        torch.manual_seed(0)
        net = TinyNet()
        return net, train(
            net,
            denoise_loss,
            RandomCrops(),
            run_dir=folder,
            stage="s",
            config=_cfg(max_steps=steps),
            resume=resume,
            progress=False,
        )

    torch.manual_seed(7)  # the dataset's crops draw from the global generator
    straight, res = run(tmp_path / "a", 10, False)
    assert res.step == 10
    torch.manual_seed(7)
    run(tmp_path / "b", 6, False)
    torch.manual_seed(99)  # whatever the global state now: resume restores the saved one
    resumed, res_b = run(tmp_path / "b", 10, True)
    assert res_b.resumed_from == 6 and res_b.step == 10
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    model_a, ema_a = _weights(tmp_path / "a" / "s")
    model_b, ema_b = _weights(tmp_path / "b" / "s")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert any(not torch.equal(ema_a[k], model_a[k]) for k in ema_a)  # EMA is not a copy
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "s")] == [6, 10]  # budget end, then 10
    # Already at the budget: nothing to do, nothing changes.
    _, again = run(tmp_path / "b", 10, True)
    assert again.step == 10 and again.resumed_from == 10
    assert all(torch.equal(v, _weights(tmp_path / "b" / "s")[0][k]) for k, v in model_b.items())


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    def mse(model, batch, generator):  # deterministic, a mean over the batch
        return (model(batch["x"]) - batch["x"].flip(-1)).pow(2).mean(), {}

    weights = []
    for accum in (1, 2, 4):
        torch.manual_seed(0)
        net = TinyNet()
        train(net, mse, _FixedCrops(), run_dir=tmp_path / str(accum), stage="s",
              config=TrainConfig(max_steps=5, batch_size=4, grad_accum=accum, lr=1e-2),
              progress=False)  # fmt: skip
        weights.append(net.state_dict())
    for other in weights[1:]:
        for key, value in weights[0].items():
            torch.testing.assert_close(other[key], value, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.allclose(TinyNet().state_dict()["body.0.weight"], weights[0]["body.0.weight"])


class _FixedCrops(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(12, 1, 6, 6, 6, generator=torch.Generator().manual_seed(4))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i]}


def test_resume_refuses_changed_settings_and_fresh_start_over_state(tmp_path):
    net = TinyNet()
    train(net, denoise_loss, RandomCrops(), run_dir=tmp_path, stage="s",
          config=_cfg(max_steps=2), progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="resume=True"):
        train(net, denoise_loss, RandomCrops(), run_dir=tmp_path, stage="s",
              config=_cfg(max_steps=4), progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match=r"settings changed \(lr: saved 0.003, now 0.001\)"):
        train(net, denoise_loss, RandomCrops(), run_dir=tmp_path, stage="s",
              config=_cfg(max_steps=4, lr=1e-3), resume=True, progress=False)  # fmt: skip


def test_corrupt_or_foreign_files_give_one_line_errors_naming_the_file(tmp_path):
    net = TinyNet()
    train(net, denoise_loss, RandomCrops(), run_dir=tmp_path, stage="s",
          config=_cfg(max_steps=2), progress=False)  # fmt: skip
    state = read_trainer_state(tmp_path / "s")
    assert state is not None and state[0]["step"] == 2
    blob = tmp_path / "s" / state[0]["file"]
    blob.write_bytes(blob.read_bytes()[:-7] + b"garbage")
    with pytest.raises(RunFolderError, match=r"trainer_state-0+2\.safetensors does not match"):
        train(net, denoise_loss, RandomCrops(), run_dir=tmp_path, stage="s",
              config=_cfg(max_steps=4), resume=True, progress=False)  # fmt: skip
    (tmp_path / "s" / "trainer_state.json").write_text("{not json")
    with pytest.raises(RunFolderError, match=r"trainer_state\.json is not readable JSON") as err:
        read_trainer_state(tmp_path / "s")
    assert "\n" not in str(err.value)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(RunFolderError, match=r"manifest\.json is not a ctsynth run manifest"):
        read_manifest(tmp_path)
    with pytest.raises(RunFolderError, match=r"manifest\.json does not exist"):
        read_manifest(tmp_path / "nowhere")
    metrics = tmp_path / "s" / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 1.0}\nbroken\n{"step": 2, "loss": 1.0}\n{"st')
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl line 2"):
        read_metrics(tmp_path / "s")
    metrics.write_text('{"step": 1, "loss": 1.0}\n{"st')  # a torn last line is ignored
    assert read_metrics(tmp_path / "s") == [{"step": 1, "loss": 1.0}]


def test_bad_settings_and_inputs_are_refused(tmp_path):
    with pytest.raises(TrainConfigError, match="budget"):
        TrainConfig()
    with pytest.raises(TrainConfigError, match="not divisible by grad_accum"):
        TrainConfig(max_steps=1, batch_size=3, grad_accum=2)
    with pytest.raises(TrainConfigError, match="fewer than one global batch"):
        train(TinyNet(), denoise_loss, RandomCrops(n=3), run_dir=tmp_path, stage="s",
              config=TrainConfig(max_steps=1, batch_size=4), progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="save_fn"):
        train(nn.Linear(2, 2), denoise_loss, RandomCrops(), run_dir=tmp_path, stage="s",
              config=TrainConfig(max_steps=1), progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="stage must be"):
        train(TinyNet(), denoise_loss, RandomCrops(), run_dir=tmp_path, stage="../x",
              config=TrainConfig(max_steps=1), progress=False)  # fmt: skip
    with pytest.raises(TrainConfigError, match="bf16"):
        train(TinyNet(), denoise_loss, RandomCrops(), run_dir=tmp_path, stage="s",
              config=TrainConfig(max_steps=1, precision="bf16"), device="cpu", progress=False)  # fmt: skip

    def nan_loss(model, batch, generator):
        return model(batch["x"]).sum() * math.nan, {}

    with pytest.raises(TrainingError, match="loss is nan at step 1"):
        train(TinyNet(), nan_loss, RandomCrops(), run_dir=tmp_path, stage="n",
              config=TrainConfig(max_steps=1), progress=False)  # fmt: skip


def test_save_fn_and_save_method_are_used(tmp_path):
    calls = []

    def save_fn(model, folder):
        calls.append(folder)
        (folder / "model.safetensors").write_bytes(b"x")

    train(nn.Conv3d(1, 1, 1), denoise_loss, RandomCrops(), run_dir=tmp_path, stage="a",
          config=TrainConfig(max_steps=2, checkpoint_every=1), save_fn=save_fn,
          progress=False)  # fmt: skip
    assert calls == [tmp_path / "a"] * 2

    class WithSave(nn.Conv3d):
        def save(self, folder):
            (folder / "config.json").write_text('{"mine": true}')

    train(WithSave(1, 1, 1), denoise_loss, RandomCrops(), run_dir=tmp_path, stage="b",
          config=TrainConfig(max_steps=1), progress=False)  # fmt: skip
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == {"mine": True}


def test_minutes_budget_stops(tmp_path):
    result = train(TinyNet(), denoise_loss, RandomCrops(), run_dir=tmp_path, stage="m",
                   config=TrainConfig(minutes=0.002, batch_size=2), progress=False)  # fmt: skip
    assert result.stopped_by == "minutes" and result.step >= 1
    assert read_manifest(tmp_path)["stages"]["m"]["steps"] == result.step


def test_sharded_batches_split_the_global_batch_and_resume():
    one = ShardedBatches(n=10, global_batch=4, seed=3)
    two = [ShardedBatches(n=10, global_batch=4, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for _ in range(2):  # two epochs of two global batches (the last 2 samples are dropped)
        whole = one.remaining()
        parts = [s.remaining() for s in two]
        assert [a + b for a, b in zip(parts[0], parts[1], strict=True)] == whole
        for s in (one, *two):
            for _ in range(len(whole)):
                s.advance()
    assert one.epoch == 1 and one.remaining()[0] != whole[0]  # epoch 2 reshuffles
    again = ShardedBatches(n=10, global_batch=4, seed=3)
    again.load_state_dict({**one.state_dict()})
    assert again.remaining() == one.remaining()
    with pytest.raises(TrainConfigError, match="not divisible"):
        ShardedBatches(n=10, global_batch=3, world_size=2)


def test_ema_and_thread_default():
    net = nn.Linear(2, 1)
    ema = EMA(net, decay=0.5)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(net)
    torch.testing.assert_close(ema.state_dict()["weight"], start + 1.0)
    assert cpu_threads_for(2) == 1 and cpu_threads_for(1) == 1
    assert cpu_threads_for(16, 2) == 8


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.json"
    _atomic.write_json(target, {"a": 1})

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic.atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_warmup_ramps_the_learning_rate_and_resumes_exactly(tmp_path):
    def run(folder, steps, resume):
        torch.manual_seed(0)
        net = TinyNet()
        train(
            net,
            denoise_loss,
            RandomCrops(),
            run_dir=folder,
            stage="s",
            config=_cfg(max_steps=steps, warmup_steps=8, log_every=1),
            resume=resume,
            progress=False,
        )
        return net

    torch.manual_seed(7)
    straight = run(tmp_path / "a", 10, False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "a" / "s")]
    base = _cfg(max_steps=1).lr
    assert lrs[:3] == pytest.approx([base / 8, 2 * base / 8, 3 * base / 8])
    assert lrs[-1] == pytest.approx(base)
    torch.manual_seed(7)
    run(tmp_path / "b", 5, False)
    resumed = run(tmp_path / "b", 10, True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with pytest.raises(TrainConfigError, match="warmup_steps"):
        _cfg(max_steps=1, warmup_steps=-1)
