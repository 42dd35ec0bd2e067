"""End to end: a tiny model learns "the prompt says on which side the blob lies".

Training uses ``CategoricalDiffusionLoss`` (Eq. 6) and the prompt goes through
``KnowledgeInjection``; generation uses both samplers. The network is a small conv net (MONAI's
UNet is exercised in ``test_model.py``; here it would make the test too slow for a 2-core CI).
"""

from __future__ import annotations

import math

import pytest
import torch
from cat_diffusion import (
    CategoricalDiffusionLoss,
    CategoricalSampler,
    CategoricalScheduler,
    KnowledgeInjection,
)
from torch import nn

SIZE = 8
T = 50
FAST_STEPS = 5


def make_batch(sides: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Label maps (B, 1, 8, 8, 8): a 3x3x3 blob of class 1 in the left (side 0) or right half (x axis)."""
    b = sides.shape[0]
    x0 = torch.zeros(b, 1, SIZE, SIZE, SIZE, dtype=torch.long)
    xs = torch.randint(0, 2, (b,), generator=g)  # start inside the half: 0..1
    ys = torch.randint(0, SIZE - 2, (b,), generator=g)
    zs = torch.randint(0, SIZE - 2, (b,), generator=g)
    for i in range(b):
        x = int(xs[i]) + (SIZE // 2 if int(sides[i]) == 1 else 0)
        x0[i, 0, x : x + 3, ys[i] : ys[i] + 3, zs[i] : zs[i] + 3] = 1
    return x0


def prompt(sides: torch.Tensor) -> torch.Tensor:
    """Encoded prompt tokens (B, 2, 4): a side token and a constant 'filler' token."""
    tok = torch.nn.functional.one_hot(sides, 2).float()
    filler = torch.tensor([0.0, 0.0, 1.0, 0.0]).expand(sides.shape[0], 4)
    return torch.stack([torch.cat([tok, torch.zeros_like(tok)], 1), filler], 1)


class ToyNet(nn.Module):
    """x0-parameterised conv net; the prompt enters through knowledge injection + FiLM."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.injection = KnowledgeInjection(context_dim=4, dim=16, num_queries=2, num_levels=1, num_layers=1, num_heads=2)
        self.t_embed = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, 2 * width))
        self.c_embed = nn.Linear(16, 2 * width)
        self.inp = nn.Conv3d(2 + 3, width, 3, padding=1)
        self.body = nn.ModuleList([nn.Conv3d(width, width, 3, padding=d, dilation=d) for d in (1, 2, 2, 1)])
        self.out = nn.Conv3d(width, 2, 1)
        grid = torch.linspace(-1, 1, SIZE)
        self.register_buffer("coords", torch.stack(torch.meshgrid(grid, grid, grid, indexing="ij"))[None])

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        half = 8
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half) / half)
        ang = t.float()[:, None] * freqs[None]
        temb = torch.cat([ang.sin(), ang.cos()], 1)
        r = self.injection(context)[0].mean(1)  # (B, 16)
        scale, shift = (self.t_embed(temb) + self.c_embed(r)).chunk(2, 1)
        h = self.inp(torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1, -1)], 1))
        h = h * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
        for conv in self.body:
            h = h + conv(torch.nn.functional.silu(h))
        return self.out(torch.nn.functional.silu(h))


class CallCounter:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls = 0

    def parameters(self):
        return self.model.parameters()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def side_rates(samples: torch.Tensor, sides: torch.Tensor) -> tuple[float, float]:
    """(fraction with the blob on the requested side, fraction with most of it on the other side)."""
    fg = (samples[:, 0] == 1).float()
    left = fg[:, : SIZE // 2].sum((1, 2, 3))
    right = fg[:, SIZE // 2 :].sum((1, 2, 3))
    want = torch.where(sides == 0, left, right)
    other = torch.where(sides == 0, right, left)
    return float(((want > other) & (want >= 8)).float().mean()), float((other > want).float().mean())


@pytest.fixture(scope="module")
def trained() -> tuple[ToyNet, CategoricalScheduler]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sched = CategoricalScheduler(num_classes=2, num_train_timesteps=T)
    net = ToyNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = CategoricalDiffusionLoss(kl_weight=1.0, ce_weight=1.0, class_weights=[1.0, 4.0])
    for _ in range(300):
        sides = torch.randint(0, 2, (32,), generator=g)
        out = loss_fn(net, sched, make_batch(sides, g), context=prompt(sides), generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    net.eval()
    return net, sched


@pytest.mark.parametrize("sampler_kind", ["ancestral", "fast"])
def test_prompt_controls_the_side_of_the_blob(trained, sampler_kind: str) -> None:
    net, sched = trained
    sampler = CategoricalSampler(scheduler=sched)
    counter = CallCounter(net)
    sides = torch.tensor([0, 1] * 24)
    g = torch.Generator().manual_seed(123)
    shape = (sides.shape[0], 1, SIZE, SIZE, SIZE)
    if sampler_kind == "ancestral":
        out = sampler.ancestral(counter, shape=shape, context=prompt(sides), generator=g)
        assert counter.calls == T
    else:
        out = sampler.fast(counter, num_steps=FAST_STEPS, shape=shape, context=prompt(sides), generator=g)
        assert counter.calls == FAST_STEPS and T / counter.calls >= 10
    right_side, wrong_side = side_rates(out, sides)
    # A prompt-blind model puts the blob on the requested side half of the time (0.5 / 0.5).
    assert right_side >= 0.8, f"{sampler_kind}: blob on the requested side in {right_side:.2f} of samples"
    assert wrong_side <= 0.05, f"{sampler_kind}: blob on the wrong side in {wrong_side:.2f} of samples"
    # Generated blobs look like blobs (27 voxels in the data; noise would be ~256), not noise.
    fg = (out == 1).sum((1, 2, 3, 4)).float()
    assert 15 <= float(fg.median()) <= 60, fg
