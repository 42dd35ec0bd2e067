"""LINet: Eq. (4) forward process, Eq. (5) loss, inpainting, guidance, and text reaching the output."""

from __future__ import annotations

import pytest
import torch
from lesion_inpaint import (
    CheckpointError,
    DiffusionConfig,
    LINet,
    LINetConfig,
    ShapeError,
    UNetConfig,
    guided_eps,
    linet_loss,
    resize_mask,
)

D = 8  # context feature size of the toy "text encoder"


def tiny_config(**diff) -> LINetConfig:
    return LINetConfig(
        latent_channels=1,
        unet=UNetConfig(
            in_channels=2, out_channels=1, channels=(16, 32), attention_levels=(True, True),
            num_res_blocks=1, num_head_channels=8, norm_num_groups=8, context_dim=D,
        ),
        diffusion=DiffusionConfig(
            num_train_timesteps=1000, num_inference_steps=10, eta=0.0, guidance_scale=2.5,
            cond_drop_prob=0.2, **diff,
        ),
        loss_region="mask",
    )


# ---------------------------------------------------------------- equations on hand-built tensors ----
def test_linet_loss_equals_eq5():
    eps = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])  # (1, 1, 2, 2) 2D is enough for the formula
    eps_hat = torch.tensor([[[[0.0, 1.0], [0.5, -1.0]]]])
    box = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])
    # |1-0| + |-2-1| + |3+1| over the 3 bbox voxels
    assert linet_loss(eps, eps_hat, box).item() == pytest.approx((1 + 3 + 4) / 3)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert linet_loss(eps, eps_hat, mask, normaliser=box).item() == pytest.approx(1 / 3)
    # batch mean of per-sample values
    two = linet_loss(torch.cat([eps, eps]), torch.cat([eps_hat, eps]), torch.cat([box, box]))
    assert two.item() == pytest.approx((8 / 3 + 0) / 2)


def test_forward_process_eq4():
    net = LINet(config=tiny_config())
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 1, 8, 8, 8, generator=g)
    noise = torch.randn(2, 1, 8, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 8, 8, 8)
    mask[:, :, 2:5, 3:6, 1:7] = 1
    t = torch.tensor([10, 900])
    zt = net.noisy_latent(z0, mask, noise, t)
    abar = net.train_scheduler.alphas_cumprod
    for i in range(2):
        a = float(abar[t[i]])
        exp = (a**0.5 * z0[i] + (1 - a) ** 0.5 * noise[i]) * mask[i] + z0[i] * (1 - mask[i])
        torch.testing.assert_close(zt[i], exp)
    assert torch.equal(zt[mask.expand_as(zt) == 0], z0[mask.expand_as(z0) == 0])


def test_resize_mask_keeps_small_lesions():
    m = torch.zeros(1, 1, 16, 16, 16)
    m[0, 0, 5, 9, 3] = 1  # one voxel
    r = resize_mask(m, (8, 8, 8))
    assert r.shape == (1, 1, 8, 8, 8) and r.sum() == 1 and r[0, 0, 2, 4, 1] == 1
    with pytest.raises(ShapeError):
        resize_mask(m[0], (8, 8, 8))


# ---------------------------------------------------------------- the toy bright/dark task -----------
def toy_batch(g: torch.Generator, b: int = 8):
    """Latent 1 x 8^3: background noise ~0; inside a random box +1 ("bright") or -1 ("dark")."""
    z = 0.2 * torch.randn(b, 1, 8, 8, 8, generator=g)
    mask = torch.zeros(b, 1, 8, 8, 8)
    bright = torch.rand(b, generator=g) < 0.5
    for i in range(b):
        lo = torch.randint(1, 4, (3,), generator=g)
        sz = torch.randint(2, 4, (3,), generator=g)
        mask[i, :, lo[0] : lo[0] + sz[0], lo[1] : lo[1] + sz[1], lo[2] : lo[2] + sz[2]] = 1
    value = torch.where(bright, 1.0, -1.0).reshape(b, 1, 1, 1, 1)
    z = z * (1 - mask) + (value + 0.1 * torch.randn(z.shape, generator=g)) * mask
    ctx = torch.stack([TOKENS["bright"] if x else TOKENS["dark"] for x in bright])
    return z, mask, ctx


TOKENS = {
    "bright": torch.randn(2, D, generator=torch.Generator().manual_seed(100)),
    "dark": torch.randn(2, D, generator=torch.Generator().manual_seed(200)),
}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)  # weight init only; the library itself never seeds
    net = LINet(config=tiny_config())
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(300):
        z, mask, ctx = toy_batch(g)
        loss = net.training_loss(z, mask, context=ctx, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return net.eval(), losses


def test_training_reduces_loss(trained):
    _, losses = trained
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.8 * first, (first, last)


def _inpaint(net, token: str, scale: float, seed: int = 7):
    g = torch.Generator().manual_seed(3)
    z = 0.2 * torch.randn(4, 1, 8, 8, 8, generator=g)
    mask = torch.zeros(4, 1, 8, 8, 8)
    mask[:, :, 2:5, 2:5, 3:6] = 1
    ctx = TOKENS[token].expand(4, -1, -1)
    out = net.inpaint(z, mask, context=ctx, guidance_scale=scale, generator=torch.Generator().manual_seed(seed))
    inside = out[mask.expand_as(out) == 1].mean().item()
    return z, mask, out, inside


def test_text_reaches_the_output(trained):
    net, _ = trained
    _, _, _, bright = _inpaint(net, "bright", 2.5)
    _, _, _, dark = _inpaint(net, "dark", 2.5)
    assert bright > 0.4 and dark < -0.4, (bright, dark)
    assert bright - dark > 1.0


def test_guidance_moves_towards_condition(trained):
    net, _ = trained
    means = {s: (_inpaint(net, "bright", s)[3], _inpaint(net, "dark", s)[3]) for s in (0.0, 1.0, 3.0)}
    # s = 0 is the unconditional model; larger s pushes bright up and dark down
    assert means[3.0][0] > means[0.0][0] + 0.2
    assert means[3.0][1] < means[0.0][1] - 0.2
    assert means[3.0][0] - means[3.0][1] > means[1.0][0] - means[1.0][1] - 0.05


def test_inpainting_leaves_outside_exactly_unchanged(trained):
    net, _ = trained
    z, mask, out, _ = _inpaint(net, "bright", 2.5)
    outside = mask.expand_as(z) == 0
    assert torch.equal(out[outside], z[outside])


def test_guidance_scale_one_equals_conditional(trained):
    net, _ = trained
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 8, 8, generator=g)
    mask = torch.ones(2, 1, 8, 8, 8)
    ctx = TOKENS["dark"].expand(2, -1, -1)
    with torch.no_grad():
        plain = net(torch.cat([x, mask], 1), torch.tensor([400, 400]), context=ctx)
        guided = guided_eps(net, x, 400, cond=mask, context=ctx, guidance_scale=1.0)
        strong = guided_eps(net, x, 400, cond=mask, context=ctx, guidance_scale=2.5)
    assert torch.equal(plain, guided)
    assert not torch.allclose(plain, strong)
    # full loop: scale 1 equals a loop that only ever calls the conditional model
    a = net.inpaint(x, mask, context=ctx, guidance_scale=1.0, generator=torch.Generator().manual_seed(1))
    calls = []

    def cond_only(inp, t, *, context):
        calls.append(inp.shape[0])
        return net(inp, t, context=ctx)

    b = net.sampler(guidance_scale=1.0).sample(
        cond_only, x, mask, cond=mask, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a, b) and set(calls) == {2}


def test_checkpoint_roundtrip(trained, tmp_path):
    net, _ = trained
    net.save(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    back = LINet.load(tmp_path / "ck")
    assert back.config == net.config
    for k, v in net.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    assert not back.training  # loads in eval mode
    with pytest.raises(CheckpointError, match="lacks"):
        LINet.load(tmp_path / "nothing")
