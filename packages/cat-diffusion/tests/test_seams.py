"""The cross-package conventions as cat-diffusion implements them (issue 12).

Training under DistributedDataParallel, the randomness rule, the checkpoint shape, presets,
bad values and a sampler loop without per-step host round trips.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from cat_diffusion import (
    CategoricalDiffusionLoss,
    CategoricalSampler,
    CategoricalScheduler,
    SemanticSynthesizer,
    SynthesizerConfig,
    get_preset,
    load_checkpoint,
    save_checkpoint,
)
from cat_diffusion._random import draw_rand, draw_randint, draw_randn
from cat_diffusion.exceptions import CheckpointError, ConfigError, ShapeError
from torch.nn.parallel import DistributedDataParallel

TINY = SynthesizerConfig(
    num_classes=3,
    spatial_size=(4, 4, 4),
    num_train_timesteps=10,
    channels=(8, 8),
    attention_levels=(False, True),
    norm_num_groups=4,
    num_head_channels=4,
    context_dim=6,
    cross_attention_dim=8,
    num_queries=2,
    injection_layers=1,
    injection_heads=2,
    fast_steps=3,
)


def _model() -> SemanticSynthesizer:
    model = SemanticSynthesizer(config=TINY)
    g = torch.Generator().manual_seed(0)
    with (
        torch.no_grad()
    ):  # MONAI zero-initialises several layers; randomise so every gradient is non-zero
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------- training surface under DDP ------------
def test_loss_reaches_every_parameter_through_ddp(tmp_path) -> None:
    model = _model()
    sched = model.make_scheduler()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        loss_fn = CategoricalDiffusionLoss(ce_weight=1.0)
        g = torch.Generator().manual_seed(1)
        x0 = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
        prompt = torch.randn(2, 5, 6, generator=g)
        out = loss_fn(ddp, sched, x0, context=prompt, generator=torch.Generator().manual_seed(2))
        out.loss.backward()
        missing = [
            n
            for n, p in model.named_parameters()
            if p.grad is None or not bool(p.grad.abs().sum() > 0)
        ]
        assert not missing, f"no gradient reached {missing[:5]}"
        plain = loss_fn(
            model, sched, x0, context=prompt, generator=torch.Generator().manual_seed(2)
        )
        torch.testing.assert_close(out.loss.detach(), plain.loss.detach())
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- randomness rule ------------------------
def test_a_cpu_generator_reproduces_the_same_draw() -> None:
    for draw in (
        lambda g: draw_randn((3, 4), generator=g, device="cpu", dtype=torch.float64),
        lambda g: draw_rand((5,), generator=g, device="cpu"),
        lambda g: draw_randint(0, 9, (6,), generator=g, device="cpu"),
    ):
        assert torch.equal(
            draw(torch.Generator().manual_seed(7)), draw(torch.Generator().manual_seed(7))
        )
    sched = CategoricalScheduler(num_classes=4, num_train_timesteps=20)
    x0 = torch.randint(0, 4, (2, 1, 5, 5))
    a = sched.add_noise(x0, None, 9, generator=torch.Generator().manual_seed(3))
    b = sched.add_noise(
        x0, torch.rand(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 9
    )
    assert torch.equal(a, b)  # the generator's draw is the uniform noise tensor of add_noise


def test_draws_happen_on_the_generator_device_else_the_target_device(monkeypatch) -> None:
    seen: list[torch.device] = []
    real = torch.rand

    def spy(*args, **kwargs):
        seen.append(torch.device(kwargs["device"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", spy)
    out = draw_rand((2, 2), generator=torch.Generator().manual_seed(0), device="meta")
    assert seen[-1].type == "cpu" and out.device.type == "meta"
    out = draw_rand((2, 2), generator=None, device="meta")
    assert seen[-1].type == "meta" and out.device.type == "meta"


def test_sampler_takes_device_and_dtype_from_inputs_not_the_model() -> None:
    model = _model().to(torch.float64)
    sampler = CategoricalSampler(scheduler=model.make_scheduler())
    levels = [
        c.to(torch.float64) if c is not None else None
        for c in model.encode_context(torch.randn(1, 2, 6, dtype=torch.float64))
    ]
    out = sampler.fast(
        model,
        num_steps=2,
        shape=(1, 1, 4, 4, 4),
        context=levels,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.device.type == "cpu" and out.dtype == torch.long
    seen = []

    def net(x, t, *, context=None):
        seen.append((x.dtype, t.dtype, t.shape))
        return torch.zeros(x.shape, dtype=x.dtype)

    sampler.fast(net, num_steps=2, shape=(2, 1, 4, 4, 4), dtype=torch.float64)
    assert seen == [(torch.float64, torch.long, (2,))] * 2


# ---------------------------------------------------------------- checkpoints ----------------------------
def test_checkpoint_shape_eval_mode_extra_files_and_foreign_configs(tmp_path) -> None:
    model = _model()
    (tmp_path / "optimizer.pt").write_bytes(b"trainer state")
    save_checkpoint(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert {k: meta[k] for k in ("format", "format_version", "package", "class")} == {
        "format": "ctsynth-checkpoint",
        "format_version": 1,
        "package": "cat-diffusion",
        "class": "SemanticSynthesizer",
    }
    assert (tmp_path / "optimizer.pt").read_bytes() == b"trainer state"
    back = SemanticSynthesizer.load(tmp_path)
    assert not back.training and back.config == TINY
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    for key, value in (("package", "lesion-inpaint"), ("class", "LINet"), ("format", "x")):
        (tmp_path / "config.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(CheckpointError, match=r"config\.json"):
            load_checkpoint(tmp_path)
    other = dict(meta, config={**meta["config"], "channels": [8, 16], "norm_num_groups": 8})
    (tmp_path / "config.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------- presets ---------------------------------
def test_get_preset_overrides() -> None:
    cfg = get_preset("demo", context_dim=512, num_classes=5)
    assert cfg.context_dim == 512 and cfg.num_classes == 5 and get_preset("demo").context_dim == 384
    with pytest.raises(
        ConfigError,
        match=r"unknown preset override\(s\) \['context_dm'\].*Did you mean 'context_dim'",
    ):
        get_preset("demo", context_dm=512)
    with pytest.raises(TypeError):
        SemanticSynthesizer(TINY)  # type: ignore[misc]
    with pytest.raises(TypeError):
        SynthesizerConfig(3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        CategoricalSampler(CategoricalScheduler(num_classes=3))  # type: ignore[misc]


# ---------------------------------------------------------------- bad values -------------------------------
def test_sampler_rejects_a_non_finite_context_before_any_call() -> None:
    calls = []

    def net(x, t, *, context=None):
        calls.append(1)
        return torch.zeros_like(x)

    sampler = CategoricalSampler(
        scheduler=CategoricalScheduler(num_classes=3, num_train_timesteps=10)
    )
    bad = torch.zeros(1, 2, 4)
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ShapeError, match="context holds non-finite"):
        sampler.fast(net, num_steps=2, shape=(1, 1, 4, 4), context=bad)
    with pytest.raises(ShapeError, match=r"context\[1\] holds non-finite"):
        sampler.fast(net, num_steps=2, shape=(1, 1, 4, 4), context=[torch.zeros(1, 2, 4), bad])
    assert not calls


# ---------------------------------------------------------------- no per-step host round trip --------------
class _HostSyncCounter:
    """Counts Python-level conversions of tensors to host values (item, tolist, bool, int, float)."""

    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for name in self.names:
            real = getattr(torch.Tensor, name)

            def wrapper(self_, *a, _real=real, **k):
                self.count += 1
                return _real(self_, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapper)


def test_sampler_loop_makes_no_host_round_trip_per_step(monkeypatch) -> None:
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))

    def net(x, t, *, context=None):
        return torch.einsum("bj...,jk->bk...", x, weight) + 0.01 * t.reshape(-1, 1, 1, 1).to(
            x.dtype
        )

    sampler = CategoricalSampler(
        scheduler=CategoricalScheduler(num_classes=3, num_train_timesteps=40)
    )
    ctx = torch.randn(1, 2, 4)

    def run(steps: int) -> int:
        counter = _HostSyncCounter(monkeypatch)
        sampler.fast(
            net,
            num_steps=steps,
            shape=(2, 1, 4, 4),
            context=ctx,
            generator=torch.Generator().manual_seed(1),
        )
        monkeypatch.undo()
        return counter.count

    few, many = run(2), run(20)
    assert (
        0 < few == many
    )  # the counter sees the one-off input checks; nothing grows with the steps
