"""Schedules, the scheduler contract, and golden full sampling loops against independent references."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from lesion_inpaint import (
    ConfigError,
    DDIMScheduler,
    DDPMScheduler,
    GaussianSampler,
    InpaintingDDIMScheduler,
    InpaintingSampler,
    SchedulerOutput,
    ShapeError,
    make_betas,
)
from monai.networks.schedulers import DDPMScheduler as MonaiDDPM
from monai.networks.schedulers.scheduler import NoiseSchedules

T = 50


def eps_model(x, t, context=None):
    """A deterministic stand-in for a UNet: eps depends on x and t."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.3 * x * torch.cos(tt / 7.0) + 0.05


# ---------------------------------------------------------------- schedules against MONAI ------------
def test_scaled_linear_matches_monai():
    ours = make_betas("scaled_linear_beta", 1000, beta_start=0.0015, beta_end=0.0195)
    ref = NoiseSchedules["scaled_linear_beta"](num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-8)
    assert ours[0] == pytest.approx(0.0015) and ours[-1] == pytest.approx(0.0195)


def test_cosine_matches_monai():
    ours = make_betas("cosine", 1000)
    ref_betas, _, _ = NoiseSchedules["cosine"](num_train_timesteps=1000)
    np.testing.assert_allclose(ours.numpy(), ref_betas.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_schedule_suggests():
    with pytest.raises(ConfigError, match="cosine"):
        make_betas("cosin", 10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[1, 50\]"):
        DDIMScheduler(num_train_timesteps=T).set_timesteps(51)


# ---------------------------------------------------------------- one contract over all schedulers ----
SCHEDULERS = [
    pytest.param(lambda: DDPMScheduler(num_train_timesteps=T), id="ddpm"),
    pytest.param(lambda: DDIMScheduler(num_train_timesteps=T, eta=0.0), id="ddim"),
    pytest.param(lambda: DDIMScheduler(num_train_timesteps=T, eta=1.0, schedule="cosine"), id="ddim-eta1-cos"),
    pytest.param(lambda: InpaintingDDIMScheduler(num_train_timesteps=T, eta=0.5), id="inpaint-ddim"),
]


def _extra(s, x):
    if isinstance(s, InpaintingDDIMScheduler):
        mask = torch.zeros(x.shape[0], 1, *x.shape[2:])
        mask[..., 1:3, 1:3, 1:3] = 1
        return {"known": torch.ones_like(x), "mask": mask}
    return {}


@pytest.mark.parametrize("make", SCHEDULERS)
def test_scheduler_contract(make):
    s = make()
    s.set_timesteps(10, device="cpu")
    assert s.timesteps.dtype == torch.long and s.timesteps.shape == (10,)
    assert s.timesteps[0] == T - 1 and s.timesteps[-1] == 0
    assert bool((s.timesteps[:-1] > s.timesteps[1:]).all())

    x0 = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, T - 1])
    xt = s.add_noise(x0, noise, t)
    abar = torch.cumprod(1 - make_betas(s.schedule, T), 0)
    for i in range(2):
        exp = abar[t[i]].sqrt() * x0[i] + (1 - abar[t[i]]).sqrt() * noise[i]
        torch.testing.assert_close(xt[i], exp.float())

    out = s.step(noise, int(s.timesteps[0]), xt, generator=torch.Generator().manual_seed(3), **_extra(s, xt))
    assert isinstance(out, SchedulerOutput)
    assert out.prev_sample.shape == xt.shape and out.pred_original_sample.shape == xt.shape
    assert out.prev_sample.dtype == xt.dtype
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.prev_sample = xt  # type: ignore[misc]
    again = s.step(noise, int(s.timesteps[0]), xt, generator=torch.Generator().manual_seed(3), **_extra(s, xt))
    torch.testing.assert_close(out.prev_sample, again.prev_sample, rtol=0, atol=0)
    with pytest.raises(ShapeError):
        s.step(noise[:, :2], int(s.timesteps[0]), xt, **_extra(s, xt))
    with pytest.raises(ConfigError):
        s.step(noise, 3, xt, **_extra(s, xt))  # 3 is not on the 10-step grid


# ---------------------------------------------------------------- golden loops ------------------------
def test_ddpm_full_loop_matches_monai():
    shape = (2, 2, 4, 4, 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    ours = GaussianSampler(scheduler=DDPMScheduler(num_train_timesteps=T), num_inference_steps=T).sample(
        eps_model, x_T, generator=torch.Generator().manual_seed(9)
    )
    ref_s = MonaiDDPM(
        num_train_timesteps=T, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195,
        clip_sample=False,
    )
    ref_s.set_timesteps(T)
    g = torch.Generator().manual_seed(9)
    x = x_T
    for t in ref_s.timesteps:
        eps = eps_model(x, torch.full((shape[0],), int(t)))
        x, _ = ref_s.step(eps, int(t), x, generator=g)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def _reference_ddim(x_T, steps, eta, noise_gen, known=None, mask=None):
    """Closed-form DDIM (Song et al. Eq. 12, 16) in float64 numpy, written independently."""
    betas = (np.linspace(math.sqrt(0.0015), math.sqrt(0.0195), T) ** 2).astype(np.float64)
    abar = np.cumprod(1.0 - betas)
    grid = [round(float(v)) for v in np.linspace(T - 1, 0, steps)]
    x = x_T.double()
    if known is not None:
        z = torch.randn(x_T.shape, generator=noise_gen).double()
        x = z * mask + known.double() * (1 - mask)
    for i, t in enumerate(grid):
        prev = grid[i + 1] if i + 1 < len(grid) else -1
        a_t, a_p = abar[t], (abar[prev] if prev >= 0 else 1.0)
        eps = eps_model(x.float(), torch.full((x.shape[0],), t)).double()
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        x = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x_T.shape, generator=noise_gen).double()
        if known is not None:
            x = x * mask + known.double() * (1 - mask)
    return x.float()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_full_loop_golden(eta):
    shape = (2, 2, 4, 4, 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    ours = GaussianSampler(
        scheduler=DDIMScheduler(num_train_timesteps=T, eta=eta), num_inference_steps=7
    ).sample(eps_model, x_T, generator=torch.Generator().manual_seed(11))
    ref = _reference_ddim(x_T, 7, eta, torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, x_T)


def test_inpainting_full_loop_golden_and_exact_outside():
    shape = (2, 2, 6, 6, 6)
    known = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 1, 6, 6, 6)
    mask[:, :, 2:4, 1:5, 2:5] = 1
    ours = InpaintingSampler(
        scheduler=InpaintingDDIMScheduler(num_train_timesteps=T, eta=1.0), num_inference_steps=6
    ).sample(eps_model, known, mask, generator=torch.Generator().manual_seed(4))
    ref = _reference_ddim(known, 6, 1.0, torch.Generator().manual_seed(4), known=known, mask=mask.double())
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    outside = (mask == 0).expand_as(known)
    assert torch.equal(ours[outside], known[outside])  # bit-identical
    assert (ours[~outside] - known[~outside]).abs().mean() > 0.1
