"""Paste-back, the latent generator, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lesion_inpaint import (
    ConfigError,
    DiffusionConfig,
    LatentGenerator,
    LatentGeneratorConfig,
    LINet,
    ShapeError,
    UNetConfig,
    blend_weights,
    generator_loss,
    get_preset,
    label_channels,
    paste_back,
)


# ---------------------------------------------------------------- paste-back -------------------------
def test_paste_back_changes_only_the_feathered_region():
    rng = np.random.default_rng(0)
    vol = rng.normal(40, 30, (40, 36, 30)).astype(np.float32)
    crop = rng.normal(200, 10, (12, 12, 12)).astype(np.float32)
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[4:8, 5:8, 4:7] = 1
    before = vol.copy()
    out = paste_back(vol, crop, mask, offset=(10, 8, 5), dilation=1, feather=2)
    assert np.array_equal(vol, before)  # the input is not modified
    w = np.zeros(vol.shape, np.float32)
    w[10:22, 8:20, 5:17] = blend_weights(mask, dilation=1, feather=2)
    assert out.dtype == vol.dtype and out.shape == vol.shape
    assert np.array_equal(out[w == 0], vol[w == 0])  # bit-identical outside the region
    assert (w > 0).sum() < 12**3  # the region is a neighbourhood of the lesion, not the crop
    inside = np.zeros(vol.shape, bool)
    inside[10:22, 8:20, 5:17] = mask.astype(bool)
    np.testing.assert_allclose(out[inside], crop[mask.astype(bool)], rtol=1e-6)
    feather = (w > 0) & (w < 1)
    assert feather.any()
    full = vol.copy()
    full[10:22, 8:20, 5:17] = crop
    np.testing.assert_allclose(out[feather], (w * full + (1 - w) * vol)[feather], rtol=1e-5)
    with pytest.raises(ShapeError, match="does not fit"):
        paste_back(vol, crop, mask, offset=(30, 0, 0))


def test_blend_weights_profile():
    m = np.zeros((15, 15, 15), np.uint8)
    m[7, 7, 7] = 1
    w = blend_weights(m, dilation=0, feather=3)
    assert w[7, 7, 7] == 1 and w[7, 7, 8] == pytest.approx(0.75) and w[7, 7, 11] == 0


# ---------------------------------------------------------------- latent generator -------------------
def _gen_cfg() -> LatentGeneratorConfig:
    return LatentGeneratorConfig(
        latent_channels=2, num_label_classes=3,
        unet=UNetConfig(in_channels=5, out_channels=2, channels=(8, 16), attention_levels=(True, True),
                        num_res_blocks=1, num_head_channels=8, norm_num_groups=4, context_dim=6),
        diffusion=DiffusionConfig(num_inference_steps=4, eta=0.0, guidance_scale=2.0),
    )


def test_generator_loss_is_eq11():
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 2.0, 5.0]])
    assert generator_loss(a, b).item() == pytest.approx((1 + 0 + 4) / 3)


def test_label_channels():
    lab = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    lab[0, :4] = 2
    oh = label_channels(lab, 3, (4, 4, 4))
    assert oh.shape == (1, 3, 4, 4, 4)
    torch.testing.assert_close(oh.sum(1), torch.ones(1, 4, 4, 4))
    assert oh[0, 2, :2].min() == 1 and oh[0, 0, 2:].min() == 1
    with pytest.raises(ShapeError):
        label_channels(lab, 2, (4, 4, 4))


def test_generator_trains_and_samples_with_per_level_contexts(tmp_path):
    torch.manual_seed(0)
    net = LatentGenerator(config=_gen_cfg())
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 3, (4, 1, 8, 8, 8), generator=g)  # (B, 1, *spatial) like cat-diffusion's output
    cond = label_channels(lab, 3, (8, 8, 8))
    z0 = (cond[:, :2] * 2 - 1).contiguous()  # latent determined by the label map
    ctx = [torch.randn(4, 1, 6, generator=g), torch.randn(4, 3, 6, generator=g)]
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = net.training_loss(z0, lab, context=ctx, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:15])
    out = net.eval().sample(lab, context=ctx, generator=torch.Generator().manual_seed(3))
    assert out.shape == z0.shape and torch.isfinite(out).all()
    net.save(tmp_path / "gen")
    back = LatentGenerator.load(tmp_path / "gen")
    again = back.sample(lab, context=ctx, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    other = back.sample((lab + 1) % 3, context=ctx, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(out, other)  # the label map conditions the output
    with pytest.raises(ShapeError, match=r"allowed|\[0, 2\]"):
        net.sample(lab + 3, context=ctx)
    with pytest.raises(ConfigError, match="num_label_classes"):
        LatentGeneratorConfig(latent_channels=2, num_label_classes=4, unet=_gen_cfg().unet)


# ---------------------------------------------------------------- presets ----------------------------
def test_presets():
    paper = get_preset("paper")
    assert paper.linet.unet.channels == (128, 256, 512) and paper.linet.unet.num_res_blocks == 2
    assert paper.linet.unet.attention_levels[-1] and not paper.linet.unet.attention_levels[0]
    assert paper.latent_generator.unet.channels == (128, 256, 512)
    assert paper.linet.diffusion.num_inference_steps == 200 and paper.linet.diffusion.guidance_scale == 2.5
    assert paper.lmnet.gamma == 0.001
    assert get_preset("paper", context_dim=384).linet.unet.context_dim == 384
    with pytest.raises(ConfigError, match="demo"):
        get_preset("dmeo")
    demo = get_preset("demo")
    net = LINet(config=demo.linet)
    z = torch.zeros(1, 4, *demo.inpaint_latent)
    m = torch.zeros(1, 1, *demo.inpaint_latent)
    m[..., 6:10, 6:10, 6:10] = 1
    with torch.no_grad():
        eps = net(torch.cat([z, m], 1), torch.tensor([10]), context=torch.zeros(1, 3, 384))
    assert eps.shape == z.shape


def test_benchmark_smoke():
    from lesion_inpaint.benchmark import benchmark_sampler

    r = benchmark_sampler(model="linet", steps=1, repeats=1, generator=torch.Generator().manual_seed(0))
    assert r.shape == (1, 4, 16, 16, 16) and r.step_s > 0 and r.forward_s > 0
    assert r.ratio == pytest.approx(r.step_s / r.forward_s)
    assert r.overhead_s > 0 and r.overhead_ratio == pytest.approx((r.forward_s + r.overhead_s) / r.forward_s)
    with pytest.raises(ConfigError):
        benchmark_sampler(model="unet", steps=1)  # type: ignore[arg-type]
