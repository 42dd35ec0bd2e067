"""The cross-package conventions as lesion-inpaint implements them (issue 12).

Training under DistributedDataParallel, the randomness rule, the checkpoint shape, presets,
bad values, the public surface and a sampler loop without per-step host round trips.
"""

from __future__ import annotations

import json

import lesion_inpaint
import numpy as np
import pytest
import torch
import torch.distributed as dist
from lesion_inpaint import (
    CheckpointError,
    ConfigError,
    DDIMScheduler,
    DiffusionConfig,
    GaussianSampler,
    InpaintingDDIMScheduler,
    InpaintingSampler,
    LatentGenerator,
    LatentGeneratorConfig,
    LINet,
    LINetConfig,
    LMNet,
    LMNetConfig,
    ShapeError,
    UNetConfig,
    generator_training_loss,
    get_preset,
    linet_training_loss,
    lmnet_training_loss,
    load_checkpoint,
    paste_back,
    save_checkpoint,
)
from lesion_inpaint._random import draw_rand, draw_randint, draw_randn
from torch.nn.parallel import DistributedDataParallel

_UNET = {
    "channels": (4, 8),
    "attention_levels": (False, True),
    "num_res_blocks": 1,
    "num_head_channels": 4,
    "norm_num_groups": 4,
    "context_dim": 6,
}
_DIFF = DiffusionConfig(
    num_train_timesteps=20, num_inference_steps=3, eta=0.0, guidance_scale=1.5, cond_drop_prob=0.0
)


def _linet() -> LINet:
    return LINet(
        config=LINetConfig(
            latent_channels=2,
            unet=UNetConfig(in_channels=3, out_channels=2, **_UNET),
            diffusion=_DIFF,
        )
    )


def _lmnet() -> LMNet:
    return LMNet(
        config=LMNetConfig(unet=UNetConfig(in_channels=4, out_channels=1, **_UNET), diffusion=_DIFF)
    )


def _generator() -> LatentGenerator:
    cfg = LatentGeneratorConfig(
        latent_channels=2,
        num_label_classes=3,
        unet=UNetConfig(in_channels=5, out_channels=2, **_UNET),
        diffusion=_DIFF,
    )
    return LatentGenerator(config=cfg)


def _randomise(net: torch.nn.Module) -> None:
    """MONAI zero-initialises several layers; randomise so every parameter gets a non-zero gradient."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _loss(kind: str, model: torch.nn.Module, g: torch.Generator) -> torch.Tensor:
    ctx = torch.randn(2, 3, 6, generator=g)
    if kind == "linet":
        z0 = torch.randn(2, 2, 4, 4, 4, generator=g)
        mask = torch.zeros(2, 1, 4, 4, 4)
        mask[..., 1:3, 1:3, 1:3] = 1
        return linet_training_loss(
            model, z0, mask, bbox=torch.ones_like(mask), context=ctx, generator=g
        )
    if kind == "lmnet":
        mask = torch.zeros(2, 1, 4, 4, 4)
        mask[..., 1:3, 1:3, 1:3] = 1
        organ = torch.full((2, 1, 4, 4, 4), 7, dtype=torch.long)
        return lmnet_training_loss(
            model,
            mask,
            organ_map=organ,
            target_organ=torch.ones_like(mask),
            bbox=torch.ones_like(mask),
            context=ctx,
            generator=g,
        )
    labels = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g)
    return generator_training_loss(
        model, torch.randn(2, 2, 4, 4, 4, generator=g), labels, context=ctx, generator=g
    )


# ---------------------------------------------------------------- 2. training surface under DDP -------
@pytest.mark.parametrize("kind", ["linet", "lmnet", "generator"])
def test_loss_reaches_every_parameter_through_ddp(kind, tmp_path):
    net = {"linet": _linet, "lmnet": _lmnet, "generator": _generator}[kind]()
    _randomise(net)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(net)
        loss = _loss(kind, ddp, torch.Generator().manual_seed(1))
        loss.backward()
        named = dict(net.named_parameters())
        missing = [
            n for n, p in named.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)
        ]
        assert not missing, f"no gradient reached {missing[:5]}"
        # the DDP path computes the same loss as the plain module (same draws)
        net.zero_grad()
        plain = _loss(kind, net, torch.Generator().manual_seed(1))
        torch.testing.assert_close(loss.detach(), plain.detach())
    finally:
        dist.destroy_process_group()


def test_method_is_a_thin_wrapper_and_wrong_model_is_rejected():
    net = _linet()
    g = torch.Generator().manual_seed(3)
    z0, mask = torch.randn(1, 2, 4, 4, 4, generator=g), torch.ones(1, 1, 4, 4, 4)
    a = net.training_loss(
        z0, mask, context=torch.zeros(1, 1, 6), generator=torch.Generator().manual_seed(4)
    )
    b = linet_training_loss(
        net, z0, mask, context=torch.zeros(1, 1, 6), generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="LINet"):
        linet_training_loss(_lmnet(), z0, mask)


# ---------------------------------------------------------------- 3. randomness rule ------------------
def test_a_cpu_generator_reproduces_the_same_draw():
    for draw in (
        lambda g: draw_randn((3, 4), generator=g, device="cpu", dtype=torch.float64),
        lambda g: draw_rand((5,), generator=g, device="cpu"),
        lambda g: draw_randint(0, 9, (6,), generator=g, device="cpu"),
    ):
        assert torch.equal(
            draw(torch.Generator().manual_seed(7)), draw(torch.Generator().manual_seed(7))
        )
    ref = torch.randn((3, 4), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(
        draw_randn(
            (3, 4), generator=torch.Generator().manual_seed(7), device="cpu", dtype=torch.float64
        ),
        ref,
    )


def test_draws_happen_on_the_generator_device_else_the_target_device(monkeypatch):
    seen: list[torch.device] = []
    real = torch.randn

    def spy(*args, **kwargs):
        seen.append(torch.device(kwargs["device"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", spy)
    out = draw_randn(
        (2, 2), generator=torch.Generator().manual_seed(0), device="meta", dtype=torch.float32
    )
    assert (
        seen[-1].type == "cpu" and out.device.type == "meta"
    )  # CPU generator: CPU draw, then moved
    out = draw_randn((2, 2), generator=None, device="meta", dtype=torch.float32)
    assert (
        seen[-1].type == "meta" and out.device.type == "meta"
    )  # no generator: the target's device


def test_sampling_is_reproducible_with_a_seeded_generator():
    net = _linet().eval()
    _randomise(net)
    z0, mask = torch.randn(1, 2, 4, 4, 4), torch.ones(1, 1, 4, 4, 4)

    def run(seed: int) -> torch.Tensor:
        return net.inpaint(
            z0, mask, context=torch.ones(1, 2, 6), generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


# ---------------------------------------------------------------- 5. checkpoints -----------------------
@pytest.mark.parametrize("make", [_linet, _lmnet, _generator])
def test_checkpoint_shape_eval_mode_and_extra_files(make, tmp_path):
    net = make()
    _randomise(net)
    (tmp_path / "trainer_state.pt").write_bytes(b"optimizer state of a trainer")
    save_checkpoint(net, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert {k: meta[k] for k in ("format", "format_version", "package", "class")} == {
        "format": "ctsynth-checkpoint",
        "format_version": 1,
        "package": "lesion-inpaint",
        "class": type(net).__name__,
    }
    assert (
        tmp_path / "trainer_state.pt"
    ).read_bytes() == b"optimizer state of a trainer"  # untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    back = load_checkpoint(tmp_path)
    assert type(back) is type(net) and not back.training and back.config == net.config
    for k, v in net.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    assert not type(net).load(tmp_path).training


def test_foreign_or_mismatched_checkpoints_are_rejected_naming_the_file(tmp_path):
    net = _linet()
    net.save(tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json holds a LINet, expected a LMNet"):
        LMNet.load(tmp_path)
    cfg_path = tmp_path / "config.json"
    meta = json.loads(cfg_path.read_text())
    for key, value in (("package", "cat-diffusion"), ("format", "other"), ("class", "VQGAN")):
        cfg_path.write_text(json.dumps({**meta, key: value}))
        with pytest.raises(CheckpointError, match=r"config\.json"):
            load_checkpoint(tmp_path)
    # weights of another config: tensor keys/shapes do not match
    other = _lmnet()
    save_checkpoint(other, tmp_path / "o")
    cfg_path.write_text(json.dumps(meta))
    (tmp_path / "model.safetensors").write_bytes(
        (tmp_path / "o" / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------- 6. presets ---------------------------
def test_presets_are_frozen_with_overrides_and_clear_errors():
    p = get_preset("demo", context_dim=512, mask_crop=(16, 16, 16))
    assert (
        p.linet.unet.context_dim
        == p.lmnet.unet.context_dim
        == p.latent_generator.unet.context_dim
        == 512
    )
    assert p.mask_crop == (16, 16, 16)
    with pytest.raises(AttributeError):
        p.mask_crop = (1, 1, 1)  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"Did you mean 'paper'"):
        get_preset("papr")
    with pytest.raises(ConfigError, match=r"\['context_dim'.*'generator_latent'\]"):
        get_preset("demo", steps=3)
    with pytest.raises(TypeError):
        LINet(p.linet)  # type: ignore[misc]  # keyword-only constructors
    with pytest.raises(TypeError):
        DiffusionConfig(1000)  # type: ignore[misc]


# ---------------------------------------------------------------- 9. bad values -------------------------
def test_paste_back_rejects_non_finite_input():
    ct = np.zeros((8, 8, 8), np.float32)
    crop = np.zeros((4, 4, 4), np.float32)
    mask = np.ones((4, 4, 4), np.uint8)
    for bad_ct, bad_crop, name in ((ct, crop.copy(), "crop"), (ct.copy(), crop, "volume")):
        (bad_crop if name == "crop" else bad_ct)[1, 1, 1] = np.nan
        with pytest.raises(ShapeError, match=f"{name} holds 1 non-finite"):
            paste_back(bad_ct, bad_crop, mask, offset=(2, 2, 2))
    inf_crop = crop.copy()
    inf_crop[0, 0, 0] = np.inf
    with pytest.raises(ShapeError, match="non-finite"):
        paste_back(ct, inf_crop, mask, offset=(2, 2, 2))


def test_samplers_reject_non_finite_inputs_before_the_first_call():
    calls = []

    def model(x, t, *, context=None):
        calls.append(1)
        return torch.zeros_like(x[:, :2])

    s = GaussianSampler(scheduler=DDIMScheduler(num_train_timesteps=20), num_inference_steps=3)
    noise = torch.zeros(1, 2, 4, 4, 4)
    bad = noise.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ShapeError, match="noise holds 1 non-finite"):
        s.sample(model, bad)
    with pytest.raises(ShapeError, match=r"context\[1\] holds"):
        s.sample(model, noise, context=[torch.zeros(1, 1, 6), torch.full((1, 1, 6), float("inf"))])
    inp = InpaintingSampler(
        scheduler=InpaintingDDIMScheduler(num_train_timesteps=20), num_inference_steps=3
    )
    with pytest.raises(ShapeError, match="known holds"):
        inp.sample(model, bad, torch.ones(1, 1, 4, 4, 4))
    assert not calls


# ---------------------------------------------------------------- 10. public surface ---------------------
def test_public_surface_is_init_and_modules_are_private():
    import pkgutil

    public = [
        m.name for m in pkgutil.iter_modules(lesion_inpaint.__path__) if not m.name.startswith("_")
    ]
    assert sorted(public) == ["benchmark", "exceptions"]
    for name in lesion_inpaint.__all__:
        assert hasattr(lesion_inpaint, name), name


# ---------------------------------------------------------------- 1. no per-step host round trip ----------
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


def test_sampler_loops_make_no_host_round_trip_per_step(monkeypatch):
    def model(x, t, *, context=None):
        return 0.1 * x[:, :2] + 0.01 * t.reshape(-1, 1, 1, 1, 1).to(x.dtype)

    known = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., 1:3, 1:3, 1:3] = 1
    ctx = torch.randn(1, 2, 6)

    def run(steps: int) -> int:
        counter = _HostSyncCounter(monkeypatch)
        g = torch.Generator().manual_seed(1)
        GaussianSampler(
            scheduler=DDIMScheduler(num_train_timesteps=50, eta=1.0), num_inference_steps=steps
        ).sample(model, known, cond=mask, context=ctx, guidance_scale=2.0, generator=g)
        InpaintingSampler(
            scheduler=InpaintingDDIMScheduler(num_train_timesteps=50, eta=1.0),
            num_inference_steps=steps,
        ).sample(model, known, mask, context=ctx, generator=g)
        monkeypatch.undo()
        return counter.count

    few, many = run(2), run(12)
    assert (
        0 < few == many
    )  # the counter sees the one-off input checks; nothing grows with the steps
