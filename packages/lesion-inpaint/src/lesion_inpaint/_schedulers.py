"""Gaussian noise schedules and the DDPM / DDIM / inpainting-DDIM schedulers.

A scheduler holds no model (STYLE.md rule 1). It owns the noise schedule and the timestep grid and
follows the ctsynth timestep convention, shared with cat-diffusion's categorical scheduler::

    scheduler.set_timesteps(n, device=None)  # timesteps = round(linspace(T-1, 0, n)), int64
    scheduler.timesteps                      # (n,) descending, from T-1 to 0
    scheduler.add_noise(x0, noise, t)        # q(x_t | x_0), t in [0, T-1], noise ~ N(0, I)
    scheduler.step(model_output, t, sample, *, generator=None) -> SchedulerOutput

Timesteps are integers in ``[0, T-1]``: ``t = 0`` is one forward step away from the data and
``t = T-1`` the noisiest state. The step at a grid entry goes to the next grid entry; the step at
the last entry (``t = 0``) returns the clean sample. ``step`` takes ``t`` as a Python int (checked
against the grid) or as an integer tensor, scalar or ``(B,)``, e.g. an entry of
:attr:`timesteps`; a tensor is looked up in per-timestep coefficient tables on the sample's device,
so a sampling loop makes no host round trip per step. A tensor timestep that is not on the grid
gives NaN (the tables hold NaN there) rather than a silent wrong step.

:class:`InpaintingDDIMScheduler.step` also takes ``known`` and ``mask`` and re-imposes the known
(clean) latent outside the mask after every step (LesionDiffusion Sec. 2.2, sampling with Eq. (4)).

Schedules: ``"scaled_linear_beta"`` (what the authors' LDM code calls "linear": betas are
``linspace(sqrt(b0), sqrt(b1), T) ** 2``, with b0 = 0.0015, b1 = 0.0195) and ``"cosine"`` (Nichol &
Dhariwal 2021, s = 0.008, betas clipped at 0.999). Schedule arithmetic is done in float64 and cast to
the sample's dtype and device at each call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ._random import draw_randn
from .exceptions import ConfigError, ShapeError, did_you_mean

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "InpaintingDDIMScheduler",
    "ScheduleName",
    "SchedulerOutput",
    "make_betas",
]

ScheduleName = Literal["scaled_linear_beta", "cosine"]


@dataclass(frozen=True)
class SchedulerOutput:
    """Result of one reverse step.

    Attributes:
        prev_sample: x_{t_prev}, same shape/dtype/device as the input sample.
        pred_original_sample: the model's estimate of x_0 at this step, same shape.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def make_betas(
    schedule: ScheduleName,
    num_train_timesteps: int,
    *,
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
    cosine_s: float = 0.008,
) -> torch.Tensor:
    """Return the float64 beta schedule, shape ``(num_train_timesteps,)``, values in (0, 0.999].

    Args:
        schedule: ``"scaled_linear_beta"`` or ``"cosine"``.
        num_train_timesteps: T, at least 2.
        beta_start: first beta of the scaled-linear schedule.
        beta_end: last beta of the scaled-linear schedule.
        cosine_s: offset s of the cosine schedule.
    """
    if schedule not in get_args(ScheduleName):
        raise ConfigError(
            f"unknown schedule {schedule!r}; allowed: {list(get_args(ScheduleName))}."
            + did_you_mean(schedule, get_args(ScheduleName))
        )
    if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
        raise ConfigError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
    n = int(num_train_timesteps)
    if schedule == "scaled_linear_beta":
        if not (0.0 < beta_start < beta_end < 1.0):
            raise ConfigError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
            )
        return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=torch.float64) ** 2
    # cosine: alpha_bar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), normalised so alpha_bar(0) = 1
    x = torch.arange(n + 1, dtype=torch.float64) / n
    abar = torch.cos((x + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    abar = abar / abar[0]
    return (1.0 - abar[1:] / abar[:-1]).clamp(0.0, 0.999)


Timestep = int | torch.Tensor


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Shape gathered per-sample values ``(1,)`` or ``(B,)`` to broadcast against ``like`` (B, ...)."""
    if values.shape[0] == 1:
        return values.reshape(())
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


class _GaussianScheduler:
    """Shared schedule, timestep grid, coefficient tables and forward process q(x_t | x_0)."""

    _stochastic = True

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        schedule: ScheduleName = "scaled_linear_beta",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        clip_sample: float | None = None,
    ) -> None:
        if clip_sample is not None and not clip_sample > 0:
            raise ConfigError(f"clip_sample must be None or a positive bound, got {clip_sample!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.schedule: ScheduleName = schedule
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.clip_sample = clip_sample
        self.betas = make_betas(
            schedule, num_train_timesteps, beta_start=beta_start, beta_end=beta_end
        )
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.set_timesteps(self.num_train_timesteps)

    # -- timestep grid ---------------------------------------------------------------------------
    def set_timesteps(self, n: int, device: torch.device | str | None = None) -> None:
        """Use ``n`` timesteps ``round(linspace(T-1, 0, n))`` (descending, ``[T-1]`` for n = 1).

        Also precomputes the step coefficients of every grid entry, so :meth:`step` needs no search.

        Args:
            n: number of inference steps, 1 <= n <= T.
            device: device of :attr:`timesteps` (default CPU).
        """
        if isinstance(n, bool) or int(n) != n or not 1 <= n <= self.num_train_timesteps:
            raise ConfigError(
                f"number of inference steps must be an integer in [1, {self.num_train_timesteps}], "
                f"got {n!r}; closest valid: {min(max(int(n), 1), self.num_train_timesteps)}"
            )
        n = int(n)
        self.num_inference_steps = n
        grid = _grid(self.num_train_timesteps, n)
        prev = torch.full((self.num_train_timesteps,), -2, dtype=torch.long)  # -2: not on the grid
        prev[grid[:-1]] = grid[1:]
        prev[grid[-1]] = -1  # -1: the clean sample
        self._prev = prev
        self._on_grid = frozenset(grid.tolist())
        self._tables = self._coefficients(prev)
        self._table_cache: dict[torch.device, dict[str, torch.Tensor]] = {}
        self.timesteps = grid.to(device)
        if device is not None:  # copy the tables now, not inside the sampling loop
            self._device_tables(self.timesteps.device)

    def previous_timestep(self, t: int) -> int:
        """The grid entry after ``t`` in :attr:`timesteps`, or -1 (the clean sample) after the last."""
        return int(self._prev[self._check_int_t(t)])

    def _abar_prev(self, prev: torch.Tensor) -> torch.Tensor:
        abar_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp_min(0)], 1.0)
        return torch.where(prev == -2, math.nan, abar_prev)

    def _coefficients(self, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-timestep float64 tables (T,) of the step; NaN off the grid."""
        abar = self.alphas_cumprod
        return {"sqrt_abar": abar.sqrt(), "sqrt_one_minus_abar": (1.0 - abar).sqrt()}

    def _device_tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        cache = self._table_cache.get(device)
        if cache is None:
            dt = torch.float32 if device.type == "mps" else torch.float64
            cache = {k: v.to(device=device, dtype=dt) for k, v in self._tables.items()}
            self._table_cache[device] = cache
        return cache

    def _table(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return self._device_tables(like.device)[name]

    def _check_int_t(self, t: int) -> int:
        if t not in self._on_grid:
            grid = sorted(self._on_grid, reverse=True)
            raise ConfigError(
                f"timestep {t} is not on the current grid ({len(grid)} steps from {grid[0]} to "
                f"{grid[-1]}, all in [0, {self.num_train_timesteps - 1}]); call set_timesteps() and "
                "step through scheduler.timesteps"
            )
        return t

    def _coef(self, name: str, t: Timestep, like: torch.Tensor) -> float | torch.Tensor:
        """Coefficient ``name`` at ``t``: a float for an int ``t``, a broadcastable tensor otherwise."""
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim > 1:
                raise ShapeError(f"timestep must be an integer scalar or (B,) tensor, got {t.dtype} {tuple(t.shape)}")
            if t.ndim == 1 and t.shape[0] not in (1, like.shape[0]):
                raise ShapeError(f"timesteps of shape {tuple(t.shape)} do not match the batch {like.shape[0]}")
            idx = t.reshape(-1).to(device=like.device, dtype=torch.long)
            return _broadcast(self._table(name, like)[idx], like).to(like.dtype)
        if isinstance(t, bool) or int(t) != t:
            raise ShapeError(f"timestep must be an int or an integer tensor, got {t!r}")
        return float(self._tables[name][self._check_int_t(int(t))])

    # -- forward process ---------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """q(x_t | x_0): ``sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise``.

        Args:
            x0: clean sample (B, C, ...).
            noise: standard normal noise, same shape as ``x0``.
            t: integer timesteps in [0, T-1], shape (B,) or scalar.

        Returns:
            x_t, same shape, dtype and device as ``x0``.
        """
        if x0.shape != noise.shape:
            raise ShapeError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
        t = torch.as_tensor(t, device=x0.device)
        if t.dtype.is_floating_point or t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x0.shape[0]):
            raise ShapeError(f"t must be an integer scalar or ({x0.shape[0]},) tensor, got {t.dtype} {tuple(t.shape)}")
        t = t.long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ConfigError(
                f"timesteps must be in [0, {self.num_train_timesteps - 1}], got [{int(t.min())}, {int(t.max())}]"
            )
        abar = self.alphas_cumprod.to(x0.device)[t.reshape(-1)]
        abar = abar.reshape(()) if t.ndim == 0 else abar.reshape(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt().to(x0.dtype) * x0 + (1.0 - abar).sqrt().to(x0.dtype) * noise

    def _x0_from_eps(self, eps: torch.Tensor, t: Timestep, sample: torch.Tensor) -> torch.Tensor:
        x0 = (sample - self._coef("sqrt_one_minus_abar", t, sample) * eps) / self._coef("sqrt_abar", t, sample)
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0

    def _check_step_args(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if model_output.shape != sample.shape:
            raise ShapeError(
                f"model_output {tuple(model_output.shape)} must match sample {tuple(sample.shape)} "
                "(the model predicts the noise eps)"
            )
        if not sample.dtype.is_floating_point:
            raise ShapeError(f"sample must be a float tensor, got {sample.dtype}")

    def _noise(self, sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return draw_randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)


def _grid(num_train_timesteps: int, n: int) -> torch.Tensor:
    """``round(linspace(T-1, 0, n))`` as int64 (``[T-1]`` for n = 1): the ctsynth grid rule."""
    if n == 1:
        return torch.tensor([num_train_timesteps - 1], dtype=torch.long)
    return torch.linspace(num_train_timesteps - 1, 0, n, dtype=torch.float64).round().long()


class DDPMScheduler(_GaussianScheduler):
    """Ancestral DDPM sampling (Ho et al. 2020), eps-prediction, on any sub-grid of timesteps.

    With ``set_timesteps(T)`` this is the original ancestral sampler with the "fixed small"
    posterior variance; on a sub-grid the posterior uses abar of the two grid points. Every step
    draws one noise tensor from ``generator`` (scaled by 0 on the last step).
    """

    def _coefficients(self, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        abar_t = self.alphas_cumprod
        abar_prev = self._abar_prev(prev)
        beta = 1.0 - abar_t / abar_prev  # effective beta between the two grid points
        var = beta * (1.0 - abar_prev) / (1.0 - abar_t)
        std = torch.where(prev >= 0, var.clamp_min(1e-20).sqrt(), 0.0)
        return {
            **super()._coefficients(prev),
            "c_x0": abar_prev.sqrt() * beta / (1.0 - abar_t),
            "c_xt": (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar_t),
            "std": torch.where(prev == -2, math.nan, std),
        }

    def step(
        self,
        model_output: torch.Tensor,
        t: Timestep,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        """One reverse step x_t -> x_{t_prev} (x_0 after the last grid entry).

        Args:
            model_output: predicted noise eps_hat, same shape as ``sample``.
            t: current timestep on the grid: int, or integer tensor scalar / (B,).
            sample: x_t (B, C, ...), float.
            generator: random source of the posterior noise.

        Returns:
            :class:`SchedulerOutput` with tensors of ``sample``'s shape, dtype and device.
        """
        self._check_step_args(model_output, sample)
        x0 = self._x0_from_eps(model_output, t, sample)
        prev_sample = self._coef("c_x0", t, sample) * x0 + self._coef("c_xt", t, sample) * sample
        prev_sample = prev_sample + self._coef("std", t, sample) * self._noise(sample, generator)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class DDIMScheduler(_GaussianScheduler):
    """DDIM (Song et al. 2021, Eq. 12 and 16) with stochasticity ``eta`` (0 = deterministic).

    Args:
        num_train_timesteps: T.
        schedule: ``"scaled_linear_beta"`` or ``"cosine"``.
        beta_start: first beta of the scaled-linear schedule.
        beta_end: last beta of the scaled-linear schedule.
        clip_sample: clamp the predicted x_0 to [-c, c], or None.
        eta: 0 gives deterministic DDIM; 1 gives the DDPM posterior variance on the grid (the
            authors' setting, ``ddim_eta=1``). With ``eta > 0`` every step draws one noise tensor.
    """

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        schedule: ScheduleName = "scaled_linear_beta",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        clip_sample: float | None = None,
        eta: float = 0.0,
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {eta}; closest valid: {min(max(eta, 0.0), 1.0)}")
        self.eta = float(eta)
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            clip_sample=clip_sample,
        )

    def _coefficients(self, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        abar_t = self.alphas_cumprod
        abar_prev = self._abar_prev(prev)
        # Eq. 16: sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
        sigma = self.eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)).clamp_min(0).sqrt()
        return {
            **super()._coefficients(prev),
            "sqrt_abar_prev": abar_prev.sqrt(),
            "c_eps": (1.0 - abar_prev - sigma**2).clamp_min(0.0).sqrt(),
            "sigma": sigma,
        }

    def step(
        self,
        model_output: torch.Tensor,
        t: Timestep,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        """One DDIM step x_t -> x_{t_prev} (Song et al. Eq. 12; x_0 after the last grid entry).

        Args:
            model_output: predicted noise eps_hat, same shape as ``sample``.
            t: current timestep on the grid: int, or integer tensor scalar / (B,).
            sample: x_t (B, C, ...), float.
            generator: random source, used only when ``eta > 0``.

        Returns:
            :class:`SchedulerOutput` with tensors of ``sample``'s shape, dtype and device.
        """
        self._check_step_args(model_output, sample)
        x0 = self._x0_from_eps(model_output, t, sample)
        if self.clip_sample is not None:  # re-derive eps consistent with the clipped x0
            eps = (sample - self._coef("sqrt_abar", t, sample) * x0) / self._coef("sqrt_one_minus_abar", t, sample)
        else:
            eps = model_output
        prev_sample = self._coef("sqrt_abar_prev", t, sample) * x0 + self._coef("c_eps", t, sample) * eps
        if self.eta > 0:
            prev_sample = prev_sample + self._coef("sigma", t, sample) * self._noise(sample, generator)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class InpaintingDDIMScheduler(DDIMScheduler):
    """DDIM for LINet: the known latent is re-imposed outside the mask after every step.

    Following Eq. (4) of LesionDiffusion, the region outside the mask is the *clean* latent z_0 at
    every t (not a noised copy as in RePaint), so ``prev = prev * m + known * (1 - m)``. With a
    binary mask the output equals ``known`` exactly outside the mask. Without ``known`` and
    ``mask``, :meth:`step` is a plain DDIM step, so the scheduler keeps the common contract.
    """

    def initial_sample(
        self,
        known: torch.Tensor,
        mask: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """z_T = eps * m + z_0 * (1 - m).

        Args:
            known: clean latent z_0 (B, C, ...).
            mask: (B, 1, ...) or same shape as ``known``, values in [0, 1] (1 = generate).
            generator: random source of eps.
        """
        self._check_mask(known, mask)
        noise = self._noise(known, generator)
        return noise * mask + known * (1 - mask)

    @staticmethod
    def _check_mask(known: torch.Tensor, mask: torch.Tensor) -> None:
        if mask.ndim != known.ndim or mask.shape[0] != known.shape[0] or mask.shape[2:] != known.shape[2:]:
            raise ShapeError(
                f"mask {tuple(mask.shape)} must be (B, 1, *spatial) or (B, C, *spatial) matching known "
                f"{tuple(known.shape)}"
            )
        if mask.shape[1] not in (1, known.shape[1]):
            raise ShapeError(f"mask must have 1 or {known.shape[1]} channels, got {mask.shape[1]}")

    def step(
        self,
        model_output: torch.Tensor,
        t: Timestep,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        known: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        """One DDIM step, then ``prev * m + known * (1 - m)`` when ``known`` and ``mask`` are given.

        Args:
            model_output: predicted noise, same shape as ``sample``.
            t: current timestep on the grid: int, or integer tensor scalar / (B,).
            sample: z_t.
            generator: random source (eta > 0).
            known: clean latent z_0, same shape as ``sample`` (give it with ``mask``).
            mask: (B, 1, ...) or sample-shaped, 1 where the lesion is generated.
        """
        out = super().step(model_output, t, sample, generator=generator)
        if known is None and mask is None:
            return out
        if known is None or mask is None:
            raise ShapeError("known and mask go together: pass both (inpainting) or neither (plain DDIM)")
        if known.shape != sample.shape:
            raise ShapeError(f"known {tuple(known.shape)} must match sample {tuple(sample.shape)}")
        self._check_mask(known, mask)
        prev = out.prev_sample * mask + known * (1 - mask)
        x0 = out.pred_original_sample * mask + known * (1 - mask)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
