"""LMNet: Eq. (2) loss, thresholding, retries, training on a tiny set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from lesion_inpaint import (
    ConfigError,
    DiffusionConfig,
    EmptyMaskError,
    LMNet,
    LMNetConfig,
    ShapeError,
    UNetConfig,
    binarize_mask,
    lmnet_loss,
)
from scipy import ndimage
from torch import nn


def tiny() -> LMNetConfig:
    return LMNetConfig(
        unet=UNetConfig(
            in_channels=4, out_channels=1, channels=(8, 16), attention_levels=(False, True),
            num_res_blocks=1, num_head_channels=8, norm_num_groups=4, context_dim=8,
        ),
        diffusion=DiffusionConfig(num_inference_steps=5, eta=0.0, guidance_scale=1.0),
        max_attempts=3,
    )


def test_lmnet_loss_equals_eq2():
    eps = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])
    eps_hat = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    box = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # inside the box: (1-0)^2 + (-1-1)^2 = 5; everywhere: 1 + 4 + 1 + 4 = 10
    g = 0.001
    assert lmnet_loss(eps, eps_hat, box, gamma=g, reduction="sum").item() == pytest.approx(5 + g * 10)
    assert lmnet_loss(eps, eps_hat, box, gamma=g).item() == pytest.approx((5 + g * 10) / 4)
    assert lmnet_loss(eps, eps_hat, box, gamma=0.5, reduction="sum").item() == pytest.approx(5 + 5)
    with pytest.raises(ShapeError):
        lmnet_loss(eps, eps_hat[..., :1], box)


def _blobs():
    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:8, 2:8, 2:8] = 0.8  # 216 voxels
    prob[12:15, 12:15, 12:15] = 0.9  # 27 voxels, separate
    return prob


def test_fixed_threshold_keeps_largest_component():
    m = binarize_mask(_blobs(), threshold=0.5)
    assert m.sum() == 216 and m[3, 3, 3] and not m[13, 13, 13]
    assert ndimage.label(m, structure=np.ones((3, 3, 3)))[1] == 1
    assert not binarize_mask(_blobs(), threshold=0.95).any()
    with pytest.raises(ConfigError):
        binarize_mask(_blobs(), threshold=1.5)


def test_volume_threshold_matches_requested_size():
    # radial profile: threshold th keeps the ball of radius (1 - th) * 10
    x, y, z = np.mgrid[:31, :31, :31] - 15
    r = np.sqrt(x**2 + y**2 + z**2)
    prob = np.clip(1 - r / 10, 0, 1)
    for th in (0.4, 0.6, 0.8):
        target = int((prob > th).sum())
        m = binarize_mask(prob, threshold="volume", target_volume=target)
        assert m.sum() == target
    with pytest.raises(ConfigError, match="target_volume"):
        binarize_mask(prob, threshold="volume")


class _FixedX0(nn.Module):
    """A fake UNet whose eps makes the predicted x_0 equal -1, or +1 inside the bbox once enabled."""

    def __init__(self, abar: torch.Tensor, fill_after_calls: int | None) -> None:
        super().__init__()
        self.abar = abar
        self.calls = 0
        self.fill_after = fill_after_calls
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, context=None):
        self.calls += 1
        xt, bbox = x[:, :1], x[:, 3:4]
        x0 = -torch.ones_like(xt)
        if self.fill_after is not None and self.calls > self.fill_after:
            x0 = torch.where(bbox > 0, 1.0, -1.0)
        a = self.abar[t].float().reshape(-1, 1, 1, 1, 1)
        return (xt - a.sqrt() * x0) / (1 - a).sqrt()


def _inputs(b=2):
    organ = torch.zeros(b, 1, 16, 16, 16)
    organ[:, :, 2:14, 2:14, 2:14] = 1
    ids = organ.long() * 58  # organ id 58 inside, background 0
    bbox = torch.zeros(b, 1, 16, 16, 16)
    bbox[:, :, 5:10, 6:11, 5:9] = 1
    return {"organ_map": ids, "target_organ": organ, "bbox": bbox}


def test_empty_mask_is_retried_then_reported():
    net = LMNet(config=tiny())
    steps = net.config.diffusion.num_inference_steps
    net.unet = _FixedX0(net.train_scheduler.alphas_cumprod, fill_after_calls=None)
    with pytest.raises(EmptyMaskError, match="after 3 attempts"):
        net.sample(**_inputs(), threshold=0.5, generator=torch.Generator().manual_seed(0))
    assert net.unet.calls == 3 * steps
    # empty on the first attempt, filled on the second: the retry succeeds
    net.unet = _FixedX0(net.train_scheduler.alphas_cumprod, fill_after_calls=steps)
    out = net.sample(**_inputs(), threshold=0.5, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and torch.equal(out.bool(), _inputs()["bbox"].bool())
    assert net.unet.calls == 2 * steps


def test_training_reduces_loss_and_sampling_runs():
    torch.manual_seed(0)
    net = LMNet(config=tiny())
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    inp = _inputs(4)
    x, y, z = np.mgrid[:16, :16, :16]
    ball = torch.from_numpy(((x - 7) ** 2 + (y - 8) ** 2 + (z - 6.5) ** 2 <= 6).astype(np.float32))
    mask = ball.expand(4, 1, 16, 16, 16)
    ctx = torch.randn(4, 2, 8, generator=g)
    losses = []
    for _ in range(120):
        loss = net.training_loss(mask, context=ctx, generator=g, **inp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20])
    out = net.eval().sample(**inp, context=ctx, generator=torch.Generator().manual_seed(2))
    assert out.shape == (4, 1, 16, 16, 16) and out.dtype == torch.uint8
    for i in range(4):
        assert out[i].sum() > 0 and ndimage.label(out[i, 0].numpy(), structure=np.ones((3, 3, 3)))[1] == 1


def test_organ_map_encoding_lives_in_the_config():
    net = LMNet(config=tiny())
    assert net.config.organ_id_max == 117
    inp = _inputs()
    v2 = dict(inp, organ_map=inp["organ_map"] * 0 + (inp["target_organ"].long() * 117))  # TotalSegmentator v2 id
    enc = net.encode_organ_map(v2["organ_map"])
    assert float(enc.max()) == 1.0 and float(enc.min()) == 0.0
    ctx = torch.zeros(2, 1, 8)
    net.training_loss(v2["target_organ"], context=ctx, **v2)  # accepted
    with pytest.raises(ShapeError, match=r"allowed \[0, 117\].*organ_id_max"):
        net.training_loss(inp["target_organ"], context=ctx, **dict(inp, organ_map=inp["organ_map"] * 3))  # id 174
    with pytest.raises(ShapeError, match="integer organ ids"):
        net.training_loss(inp["target_organ"], context=ctx, **dict(inp, organ_map=inp["organ_map"] / 104))
    v1 = LMNet(config=dataclasses.replace(tiny(), organ_id_max=104))  # the authors' v1 encoding
    torch.testing.assert_close(v1.encode_organ_map(inp["organ_map"]), inp["organ_map"].float() / 104)
    with pytest.raises(ConfigError, match="organ_id_max"):
        dataclasses.replace(tiny(), organ_id_max=0)


def test_organ_map_changes_the_output():
    torch.manual_seed(0)
    net = LMNet(config=tiny())
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    inp = _inputs(1)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ctx = torch.ones(1, 1, 8)
    a = net.sample_continuous(**inp, context=ctx, generator=g())
    b = net.sample_continuous(**dict(inp, organ_map=inp["organ_map"] * 2), context=ctx, generator=g())
    assert not torch.allclose(a, b)


def test_empty_bbox_fails_before_any_network_call():
    net = LMNet(config=tiny())
    net.unet = _FixedX0(net.train_scheduler.alphas_cumprod, fill_after_calls=None)
    inp = _inputs()
    inp["bbox"][1] = 0
    with pytest.raises(ShapeError, match=r"bbox is empty .* \[1\]"):
        net.sample(**inp, threshold=0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ShapeError, match="bbox is empty"):
        net.sample_continuous(**inp)
    assert net.unet.calls == 0
