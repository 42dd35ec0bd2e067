"""One scheduler contract over every scheduler of lesion-inpaint and cat-diffusion.

In the spirit of diffusers' ``SchedulerCommonTest``. The convention (both package READMEs):

* timesteps are integers in ``[0, T-1]``; ``set_timesteps(n, device=None)`` sets
  ``timesteps = round(linspace(T-1, 0, n))``, an int64 tensor, descending;
* ``add_noise(x0, noise, t)`` samples ``q(x_t | x_0)``; ``noise`` is standard normal for the
  Gaussian schedulers and uniform in ``[0, 1)`` (one number per voxel) for the categorical one;
  ``t = 0`` is one forward step from the data and ``t = T-1`` is (almost) pure noise;
* ``step(model_output, t, sample, *, generator=None)`` returns a frozen dataclass with
  ``prev_sample`` and ``pred_original_sample``; it goes to the next grid entry, and the step at the
  last one (``t = 0``) returns the clean sample; ``t`` may be a Python int or a tensor entry of
  ``timesteps``.

Only the two libraries' public APIs are used; they never import each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from cat_diffusion import CategoricalScheduler
from lesion_inpaint import DDIMScheduler, DDPMScheduler, InpaintingDDIMScheduler

T = 1000  # the Gaussian scaled-linear schedule reaches pure noise only with the usual T
SHAPE = (2, 1, 6, 6, 6)  # categorical label maps; Gaussian samples use 3 channels
N_CLASSES = 4


@dataclass(frozen=True)
class Case:
    make: Callable[[], object]
    categorical: bool
    final_is_prediction: bool = True  # the last step returns pred_original_sample
    step_kwargs: Callable[[torch.Tensor], dict] = lambda sample: {}

    def sample(self, g: torch.Generator) -> torch.Tensor:
        if self.categorical:
            return torch.randint(0, N_CLASSES, SHAPE, generator=g)
        return torch.randn(SHAPE[0], 3, *SHAPE[2:], generator=g)

    def noise(self, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.categorical:
            return torch.rand(like.shape, generator=g, dtype=torch.float64)
        return torch.randn(like.shape, generator=g)

    def noise_as_sample(self, noise: torch.Tensor) -> torch.Tensor:
        return torch.floor(noise * N_CLASSES).long() if self.categorical else noise

    def model_output(
        self, sample: torch.Tensor, t: torch.Tensor | int, g: torch.Generator
    ) -> torch.Tensor:
        if self.categorical:
            return torch.randn(sample.shape[0], N_CLASSES, *sample.shape[2:], generator=g)
        return torch.randn(sample.shape, generator=g)

    def agreement(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Fraction of equal voxels (categorical) or correlation (Gaussian)."""
        if self.categorical:
            return float((a == b).double().mean())
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _inpaint_kwargs(sample: torch.Tensor) -> dict:
    mask = torch.zeros(sample.shape[0], 1, *sample.shape[2:])
    mask[..., 1:4, 1:4, 1:4] = 1
    return {"known": torch.zeros_like(sample), "mask": mask}


CASES = {
    "ddpm": Case(lambda: DDPMScheduler(num_train_timesteps=T), categorical=False),
    "ddim": Case(lambda: DDIMScheduler(num_train_timesteps=T, eta=0.0), categorical=False),
    "ddim-eta1-cosine": Case(
        lambda: DDIMScheduler(num_train_timesteps=T, eta=1.0, schedule="cosine"), categorical=False
    ),
    "inpainting-ddim-plain": Case(
        lambda: InpaintingDDIMScheduler(num_train_timesteps=T, eta=0.5), categorical=False
    ),
    "inpainting-ddim-known": Case(
        lambda: InpaintingDDIMScheduler(num_train_timesteps=T, eta=0.5),
        categorical=False,
        final_is_prediction=False,
        step_kwargs=_inpaint_kwargs,
    ),
    "categorical-cosine": Case(
        lambda: CategoricalScheduler(num_classes=N_CLASSES, num_train_timesteps=T), categorical=True
    ),
    "categorical-linear-sample": Case(
        lambda: CategoricalScheduler(
            num_classes=N_CLASSES,
            num_train_timesteps=T,
            schedule="linear",
            beta_start=0.02,
            beta_end=0.5,
            final_step="sample",
        ),
        categorical=True,
        final_is_prediction=False,
    ),
}
PARAMS = [pytest.param(case, id=name) for name, case in CASES.items()]


@pytest.mark.parametrize("case", PARAMS)
def test_timesteps_descending_in_range_and_of_the_requested_length(case: Case) -> None:
    s = case.make()
    assert s.timesteps.tolist() == list(
        range(T - 1, -1, -1)
    )  # the full grid before any set_timesteps
    for n in (1, 2, 7, 50, T):
        s.set_timesteps(n)
        ts = s.timesteps
        assert ts.dtype == torch.long and ts.shape == (n,) and ts.device.type == "cpu"
        assert int(ts[0]) == T - 1 and int(ts.min()) >= 0 and int(ts.max()) <= T - 1
        assert bool((ts[:-1] > ts[1:]).all())
        expected = (
            [T - 1]
            if n == 1
            else torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long().tolist()
        )
        assert ts.tolist() == expected
    s.set_timesteps(5, device="cpu")
    assert s.timesteps.device.type == "cpu"
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match=str(T)):
            s.set_timesteps(bad)


@pytest.mark.parametrize("case", PARAMS)
def test_add_noise_at_the_first_and_last_timestep(case: Case) -> None:
    s = case.make()
    g = torch.Generator().manual_seed(0)
    x0 = case.sample(g)
    noise = case.noise(x0, g)
    first, last = s.add_noise(x0, noise, 0), s.add_noise(x0, noise, T - 1)
    for out in (first, last):
        assert out.shape == x0.shape and out.dtype == x0.dtype and out.device == x0.device
    assert case.agreement(first, x0) > 0.95  # one forward step: still the data
    assert case.agreement(last, case.noise_as_sample(noise)) > 0.95  # the last step: the noise
    # per-sample timesteps (B,) agree with the scalar form
    both = s.add_noise(x0, noise, torch.tensor([0, T - 1]))
    assert torch.equal(both[0], first[0]) and torch.equal(both[1], last[1])
    with pytest.raises(ValueError):
        s.add_noise(x0, noise, T)


@pytest.mark.parametrize("case", PARAMS)
def test_step_output_type_shape_dtype_device_and_determinism(case: Case) -> None:
    s = case.make()
    s.set_timesteps(6)
    g = torch.Generator().manual_seed(1)
    sample = case.sample(g)
    t = s.timesteps[0]
    out_g = case.model_output(sample, t, g)
    kw = case.step_kwargs(sample)
    out = s.step(out_g, t, sample, generator=torch.Generator().manual_seed(5), **kw)
    assert dataclasses.is_dataclass(out)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.prev_sample = sample  # type: ignore[misc]
    for tensor in (out.prev_sample, out.pred_original_sample):
        assert (
            tensor.shape == sample.shape
            and tensor.dtype == sample.dtype
            and tensor.device == sample.device
        )
    again = s.step(
        out_g, int(t), sample, generator=torch.Generator().manual_seed(5), **kw
    )  # int t, same step
    torch.testing.assert_close(again.prev_sample, out.prev_sample, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        again.pred_original_sample, out.pred_original_sample, rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError):
        s.step(out_g, 3, sample, **kw)  # 3 is not on the 6-step grid


@pytest.mark.parametrize("case", PARAMS)
def test_full_loop_gives_a_sample_of_the_right_shape_and_ends_at_the_prediction(case: Case) -> None:
    s = case.make()
    s.set_timesteps(5)
    g = torch.Generator().manual_seed(2)
    x = case.noise_as_sample(case.noise(case.sample(g), g))
    start = x.clone()
    kw = case.step_kwargs(x)
    for t in s.timesteps:
        out = s.step(case.model_output(x, t, g), t, x, generator=g, **kw)
        x = out.prev_sample
    assert x.shape == start.shape and x.dtype == start.dtype
    if case.categorical:
        assert int(x.min()) >= 0 and int(x.max()) < N_CLASSES
    else:
        assert bool(torch.isfinite(x).all())
    if case.final_is_prediction:  # the step at t = 0 returns the clean sample
        torch.testing.assert_close(out.prev_sample, out.pred_original_sample)


@pytest.mark.parametrize("case", PARAMS)
def test_same_generator_same_loop(case: Case) -> None:
    def loop(seed: int) -> torch.Tensor:
        s = case.make()
        s.set_timesteps(4)
        g = torch.Generator().manual_seed(seed)
        x = case.noise_as_sample(case.noise(case.sample(g), g))
        kw = case.step_kwargs(x)
        for t in s.timesteps:
            x = s.step(case.model_output(x, t, g), t, x, generator=g, **kw).prev_sample
        return x

    assert torch.equal(loop(3), loop(3))
