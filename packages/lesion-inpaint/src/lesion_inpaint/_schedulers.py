"""Gaussian noise schedules and the DDPM / DDIM / inpainting-DDIM schedulers.

A scheduler holds no model (STYLE.md rule 1). It owns the noise schedule and the timestep grid and
exposes the package-wide vocabulary::

    scheduler.set_timesteps(n, device=None)
    scheduler.timesteps                      # LongTensor (n,), descending
    scheduler.add_noise(x0, noise, t)        # q(x_t | x_0)
    scheduler.step(model_output, t, sample, *, generator=None) -> SchedulerOutput

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


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample values (B,) or a scalar to broadcast against ``like`` (B, ...)."""
    values = values.to(device=like.device, dtype=like.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


class _GaussianScheduler:
    """Shared schedule, timestep grid and forward process q(x_t | x_0)."""

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
        self.num_inference_steps = self.num_train_timesteps
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1, dtype=torch.long)
        self._next = self._next_map(self.timesteps.tolist())

    @staticmethod
    def _next_map(grid: list[int]) -> dict[int, int]:
        return {t: (grid[i + 1] if i + 1 < len(grid) else -1) for i, t in enumerate(grid)}

    # -- timestep grid ---------------------------------------------------------------------------
    def set_timesteps(self, n: int, device: torch.device | str | None = None) -> None:
        """Use ``n`` evenly spaced timesteps ``round(linspace(T-1, 0, n))`` (descending).

        Args:
            n: number of inference steps, 1 <= n <= T.
            device: device of :attr:`timesteps` (default CPU).
        """
        if int(n) != n or not 1 <= n <= self.num_train_timesteps:
            raise ConfigError(
                f"number of inference steps must be an integer in [1, {self.num_train_timesteps}], "
                f"got {n!r}; closest valid: {min(max(int(n), 1), self.num_train_timesteps)}"
            )
        n = int(n)
        self.num_inference_steps = n
        if n == 1:
            grid = torch.tensor([self.num_train_timesteps - 1], dtype=torch.float64)
        else:
            grid = torch.linspace(self.num_train_timesteps - 1, 0, n, dtype=torch.float64)
        grid_long = grid.round().long()
        self._next = self._next_map(grid_long.tolist())  # host-side lookup: no device sync per step
        self.timesteps = grid_long.to(device)

    def previous_timestep(self, t: int) -> int:
        """The grid point after ``t`` in :attr:`timesteps`, or -1 after the last one."""
        if t not in self._next:
            raise ConfigError(
                f"timestep {t} is not on the current grid (first steps: {list(self._next)[:5]}); "
                "call set_timesteps() and step through scheduler.timesteps"
            )
        return self._next[t]

    def _abar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def _check_t(self, t: int | torch.Tensor) -> int:
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ShapeError(f"step() takes one timestep for the whole batch, got shape {tuple(t.shape)}")
            t = int(t.item())
        if not 0 <= int(t) < self.num_train_timesteps:
            raise ConfigError(f"timestep must be in [0, {self.num_train_timesteps - 1}], got {t}")
        return int(t)

    # -- forward process ---------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): ``sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise``.

        Args:
            x0: clean sample (B, C, ...).
            noise: standard normal noise, same shape as ``x0``.
            t: integer timesteps, shape (B,) or scalar, in [0, T).
        """
        if x0.shape != noise.shape:
            raise ShapeError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
        t = torch.as_tensor(t).long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ConfigError(f"timesteps must be in [0, {self.num_train_timesteps - 1}]")
        abar = self.alphas_cumprod.to(t.device)[t]
        return _expand(abar.sqrt(), x0) * x0 + _expand((1.0 - abar).sqrt(), x0) * noise

    def _x0_from_eps(self, eps: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t)
        x0 = (sample - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0

    def _check_step_args(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if model_output.shape != sample.shape:
            raise ShapeError(
                f"model_output {tuple(model_output.shape)} must match sample {tuple(sample.shape)} "
                "(the model predicts the noise eps)"
            )


class DDPMScheduler(_GaussianScheduler):
    """Ancestral DDPM sampling (Ho et al. 2020), eps-prediction, on any sub-grid of timesteps.

    With ``set_timesteps(T)`` this is the original ancestral sampler with the "fixed small"
    posterior variance; on a sub-grid the posterior uses abar of the two grid points.
    """

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        """One reverse step x_t -> x_{t_prev}.

        Args:
            model_output: predicted noise eps_hat, same shape as ``sample``.
            t: current timestep (on the grid).
            sample: x_t.
            generator: random source of the posterior noise.
        """
        self._check_step_args(model_output, sample)
        t = self._check_t(t)
        prev = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t), self._abar(prev)
        beta = 1.0 - abar_t / abar_prev  # effective beta between the two grid points
        x0 = self._x0_from_eps(model_output, t, sample)
        c0 = math.sqrt(abar_prev) * beta / (1.0 - abar_t)
        ct = math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
        prev_sample = c0 * x0 + ct * sample
        if prev >= 0:
            var = max(beta * (1.0 - abar_prev) / (1.0 - abar_t), 1e-20)
            noise = torch.randn(
                sample.shape, dtype=sample.dtype, device=sample.device, generator=generator
            )
            prev_sample = prev_sample + math.sqrt(var) * noise
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class DDIMScheduler(_GaussianScheduler):
    """DDIM (Song et al. 2021, Eq. 12 and 16) with stochasticity ``eta`` (0 = deterministic).

    Args:
        eta: 0 gives deterministic DDIM; 1 gives the DDPM posterior variance on the grid (the
            authors' setting, ``ddim_eta=1``).
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
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            clip_sample=clip_sample,
        )
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {eta}; closest valid: {min(max(eta, 0.0), 1.0)}")
        self.eta = float(eta)

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        """One DDIM step x_t -> x_{t_prev} (Song et al. Eq. 12).

        Args:
            model_output: predicted noise eps_hat, same shape as ``sample``.
            t: current timestep (on the grid).
            sample: x_t.
            generator: random source, used only when ``eta > 0``.
        """
        self._check_step_args(model_output, sample)
        t = self._check_t(t)
        prev = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t), self._abar(prev)
        x0 = self._x0_from_eps(model_output, t, sample)
        if self.clip_sample is not None:  # re-derive eps consistent with the clipped x0
            eps = (sample - math.sqrt(abar_t) * x0) / math.sqrt(1.0 - abar_t)
        else:
            eps = model_output
        # Eq. 16: sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
        sigma = self.eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
        prev_sample = math.sqrt(abar_prev) * x0 + math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            noise = torch.randn(
                sample.shape, dtype=sample.dtype, device=sample.device, generator=generator
            )
            prev_sample = prev_sample + sigma * noise
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class InpaintingDDIMScheduler(DDIMScheduler):
    """DDIM for LINet: the known latent is re-imposed outside the mask after every step.

    Following Eq. (4) of LesionDiffusion, the region outside the mask is the *clean* latent z_0 at
    every t (not a noised copy as in RePaint), so ``prev = prev * m + known * (1 - m)``. With a
    binary mask the output equals ``known`` exactly outside the mask.
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
        noise = torch.randn(known.shape, dtype=known.dtype, device=known.device, generator=generator)
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

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        known: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        """One DDIM step, then ``prev * m + known * (1 - m)``.

        Args:
            model_output: predicted noise, same shape as ``sample``.
            t: current timestep (on the grid).
            sample: z_t.
            known: clean latent z_0, same shape as ``sample``.
            mask: (B, 1, ...) or sample-shaped, 1 where the lesion is generated.
            generator: random source (eta > 0).
        """
        if known.shape != sample.shape:
            raise ShapeError(f"known {tuple(known.shape)} must match sample {tuple(sample.shape)}")
        self._check_mask(known, mask)
        out = super().step(model_output, t, sample, generator=generator)
        prev = out.prev_sample * mask + known * (1 - mask)
        x0 = out.pred_original_sample * mask + known * (1 - mask)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
