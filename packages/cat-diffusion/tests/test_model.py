"""Knowledge injection, per-level context routing in the MONAI UNet, presets, checkpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from cat_diffusion import (
    CategoricalDiffusionLoss,
    CategoricalSampler,
    KnowledgeInjection,
    LevelContextUNet,
    SemanticSynthesizer,
    SynthesizerConfig,
    get_preset,
    kl_loss,
    load_checkpoint,
    save_checkpoint,
)
from cat_diffusion.exceptions import CheckpointError, ConfigError, ShapeError
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import SpatialTransformer

TINY = SynthesizerConfig(
    num_classes=3,
    spatial_size=(8, 8, 8),
    num_train_timesteps=20,
    channels=(8, 8, 16),
    attention_levels=(False, True, True),
    norm_num_groups=8,
    num_head_channels=8,
    context_dim=6,
    cross_attention_dim=8,
    num_queries=3,
    injection_layers=2,
    injection_heads=2,
    fast_steps=4,
)


def _wake(module: torch.nn.Module, seed: int = 0) -> None:
    """Give MONAI's zero-initialised output convolutions random weights so gradients flow."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_injection_gives_one_context_per_level_and_gradients_reach_queries() -> None:
    ki = KnowledgeInjection(context_dim=6, dim=8, num_queries=5, num_levels=4, num_layers=2, num_heads=2)
    ctx = torch.randn(2, 7, 6)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    outs = ki(ctx, mask)
    assert len(outs) == 4 and all(o.shape == (2, 5, 8) for o in outs)
    # Levels differ from one another (separate projections), and padding is ignored.
    assert not torch.allclose(outs[0], outs[1])
    ctx2 = ctx.clone()
    ctx2[1, 4:] = 100.0
    torch.testing.assert_close(ki(ctx2, mask)[2][1], outs[2][1])
    sum(o.square().sum() for o in outs).backward()
    assert ki.queries.grad is not None and ki.queries.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="closest valid num_heads: 2"):
        KnowledgeInjection(context_dim=6, dim=8, num_levels=1, num_heads=3)
    with pytest.raises(ShapeError, match=r"\(B, L, 6\)"):
        ki(torch.randn(2, 7, 5))


def test_synthesizer_end_to_end_gradients_reach_the_queries() -> None:
    torch.manual_seed(0)
    model = SemanticSynthesizer(config=TINY)
    _wake(model)
    assert model.unet.context_levels == (1, 2)
    ctx = torch.randn(2, 4, 6)
    levels = model.encode_context(ctx)
    assert len(levels) == 3 and levels[0] is None
    assert all(lv.shape == (2, 3, 8) for lv in levels[1:])
    x = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 8, 8, 8)), 3).movedim(-1, 1).float()
    out = model(x, torch.tensor([3, 17]), ctx)
    assert out.shape == (2, 3, 8, 8, 8)
    out.square().mean().backward()
    assert model.injection is not None
    assert model.injection.queries.grad is not None and model.injection.queries.grad.abs().sum() > 0


def test_contexts_are_routed_level_by_level() -> None:
    torch.manual_seed(1)
    unet = LevelContextUNet(
        spatial_dims=3, in_channels=2, out_channels=2, channels=(8, 8, 8), attention_levels=(True, False, True),
        num_res_blocks=1, norm_num_groups=8, num_head_channels=8, with_conditioning=True, cross_attention_dim=4,
    )
    _wake(unet)
    assert unet.context_levels == (0, 2)
    seen: dict[int, list[torch.Tensor]] = {}

    def hook(name):
        def fn(module, args, kwargs):
            seen.setdefault(name, []).append(kwargs["context"])
        return fn

    names = {}
    for name, mod in unet.named_modules():
        if isinstance(mod, SpatialTransformer):
            names[name] = mod.register_forward_pre_hook(hook(name), with_kwargs=True)
    ctxs = [torch.randn(1, 2, 4), None, torch.randn(1, 5, 4)]
    x = torch.randn(1, 2, 8, 8, 8)
    unet(x, torch.tensor([4]), ctxs)
    for name, got in seen.items():
        if name.startswith("down_blocks.0") or name.startswith("up_blocks.2"):
            want = ctxs[0]
        else:
            assert name.startswith(("down_blocks.2", "middle_block", "up_blocks.0")), name
            want = ctxs[2]
        assert all(c is want for c in got), name
    assert any(n.startswith("up_blocks.2") for n in seen) and any(n.startswith("middle_block") for n in seen)
    # Changing the context of one level changes the output.
    out1 = unet(x, torch.tensor([4]), ctxs)
    out2 = unet(x, torch.tensor([4]), [ctxs[0], None, torch.randn(1, 5, 4)])
    assert not torch.allclose(out1, out2)
    with pytest.raises(ShapeError, match="expected 3 per-level contexts"):
        unet(x, torch.tensor([4]), ctxs[:2])


def test_shared_context_matches_monai_unet() -> None:
    torch.manual_seed(2)
    kw = dict(
        spatial_dims=3, in_channels=3, out_channels=3, channels=(8, 16), attention_levels=(False, True),
        num_res_blocks=1, norm_num_groups=8, num_head_channels=8, with_conditioning=True, cross_attention_dim=6,
    )
    ours = LevelContextUNet(**kw)
    _wake(ours)
    ref = DiffusionModelUNet(**kw)
    ref.load_state_dict(ours.state_dict())
    x, t, c = torch.randn(2, 3, 8, 8, 8), torch.tensor([1, 9]), torch.randn(2, 4, 6)
    torch.testing.assert_close(ours(x, t, context=c), ref(x, t, context=c))
    # every level given the same context: the same network as MONAI's own forward
    torch.testing.assert_close(ours(x, t, context=[c, c]), ref(x, t, context=c))
    # the constructor is MONAI's, keyword-only
    with pytest.raises(TypeError):
        LevelContextUNet(3, 3, 3)  # type: ignore[misc]


def test_presets() -> None:
    demo, paper = get_preset("demo"), get_preset("paper")
    assert demo.spatial_size == (32, 32, 32) and demo.num_classes == 21
    assert paper.num_classes == 21 and paper.spatial_size == (128, 128, 128) and paper.channels[0] == 64
    assert paper.attention_levels[-2:] == (True, True) and not any(paper.attention_levels[:-2])
    with pytest.raises(ConfigError, match="Did you mean 'paper'"):
        get_preset("papr")
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.num_classes = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"closest valid size: \(32, 32, 32\)"):
        dataclasses.replace(demo, spatial_size=(30, 32, 32))
    model = SemanticSynthesizer(config=demo)
    with torch.no_grad():
        out = model(torch.zeros(1, 21, 16, 16, 16), torch.tensor([500]), torch.randn(1, 5, demo.context_dim))
    assert out.shape == (1, 21, 16, 16, 16)


def test_real_backbone_trains_and_samples() -> None:
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    model = SemanticSynthesizer(config=TINY)
    sched = model.make_scheduler()
    x0 = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    x0[:, :, 2:6, 2:6, 2:6] = 1
    x0[:, :, 3:5, 3:5, 3:5] = 2
    ctx = torch.randn(2, 4, 6, generator=g)
    loss_fn = CategoricalDiffusionLoss(ce_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    eval_t = torch.tensor([5, 5])

    def eval_loss() -> float:
        with torch.no_grad():
            xt = sched.add_noise(x0, None, eval_t, generator=torch.Generator().manual_seed(0))
            logits = model(sched.one_hot(xt), eval_t, ctx)
            return float(torch.nn.functional.cross_entropy(logits, x0[:, 0]))

    before = eval_loss()
    for _ in range(25):
        out = loss_fn(model, sched, x0, context=ctx, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert eval_loss() < 0.5 * before
    model.eval()
    samples = CategoricalSampler(scheduler=sched).fast(
        model, num_steps=TINY.fast_steps, shape=(2, 1, 8, 8, 8), context=model.encode_context(ctx), generator=g
    )
    assert samples.shape == (2, 1, 8, 8, 8) and samples.dtype == torch.long
    assert int(samples.min()) >= 0 and int(samples.max()) < 3


def test_checkpoint_roundtrip(tmp_path) -> None:
    torch.manual_seed(4)
    model = SemanticSynthesizer(config=TINY)
    _wake(model)
    path = save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(path)
    assert loaded.config == TINY and not loaded.training
    x = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 8, 8, 8)), 3).movedim(-1, 1).float()
    ctx = torch.randn(1, 2, 6)
    model.eval()
    torch.testing.assert_close(loaded(x, torch.tensor([7]), context=ctx), model(x, torch.tensor([7]), context=ctx))
    cfg = json.loads((path / "config.json").read_text())
    cfg["config"]["num_clases"] = cfg["config"].pop("num_classes")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="Did you mean 'num_classes'"):
        load_checkpoint(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("conditioning", ["crossattn", "none"])
def test_other_conditionings(conditioning: str) -> None:
    cfg = dataclasses.replace(TINY, conditioning=conditioning)  # type: ignore[arg-type]
    model = SemanticSynthesizer(config=cfg)
    assert model.injection is None
    x = torch.zeros(1, 3, 8, 8, 8)
    t = torch.tensor([2])
    if conditioning == "crossattn":
        assert model(x, t, torch.randn(1, 4, 6)).shape == (1, 3, 8, 8, 8)
        with pytest.raises(ShapeError, match="only supported with conditioning='injection'"):
            model(x, t, torch.randn(1, 4, 6), torch.ones(1, 4, dtype=torch.bool))
        with pytest.raises(ShapeError, match="pass a context"):
            model(x, t)
    else:
        assert model(x, t).shape == (1, 3, 8, 8, 8)
        with pytest.raises(ShapeError, match="unconditional"):
            model(x, t, torch.randn(1, 4, 6))


def test_noise_weights_travel_with_the_config_and_shape_training_and_sampling(tmp_path) -> None:
    """A class with zero noise weight never appears by noise: not in x_t, not in the prior."""
    cfg = dataclasses.replace(TINY, noise_weights=(1.0, 1.0, 0.0))
    model = SemanticSynthesizer(config=cfg)
    _wake(model)
    sched = model.make_scheduler()
    assert sched.noise_weights == (0.5, 0.5, 0.0)
    assert SynthesizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert load_checkpoint(save_checkpoint(model, tmp_path / "ck")).make_scheduler().noise_weights == (0.5, 0.5, 0.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    x0[:, :, 2:4, 2:4, 2:4] = 2
    out = CategoricalDiffusionLoss(ce_weight=1.0)(model, sched, x0, context=torch.randn(2, 2, 6), generator=g)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # t = 0 steps to the clean data, where every impossible class has log-probability -inf
    model.zero_grad()
    xt0 = sched.add_noise(x0, None, 0, generator=g)
    logits = model(sched.one_hot(xt0), torch.zeros(2, dtype=torch.long), context=torch.randn(2, 2, 6))
    kl = kl_loss(sched, logits, x0, xt0, 0)
    kl.backward()
    assert torch.isfinite(kl) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    xt = sched.add_noise(x0, None, torch.tensor([19, 19]), generator=g)
    assert int((xt == 2).sum()) <= int((x0 == 2).sum())  # class 2 only where the data has it
    prior = sched.sample_prior((2, 1, 8, 8, 8), generator=g)
    assert int((prior == 2).sum()) == 0
    with pytest.raises(ConfigError, match="noise_weights"):
        dataclasses.replace(TINY, noise_weights=(1.0, 1.0))
