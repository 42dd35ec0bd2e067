"""Multinomial diffusion with uniform transitions: schedule, forward process, posteriors, step.

Notation (GuideGen Sec. 3.1; Hoogeboom et al. 2021, "Argmax flows and multinomial diffusion"):

* ``N`` classes, label maps ``x`` with values in ``{0, ..., N-1}``.
* One forward step (Eq. 1): ``q(x_t | x_{t-1}) = C(x_t; alpha_t e(x_{t-1}) + (1 - alpha_t) / N)``
  with ``alpha_t = 1 - beta_t``.
* Closed form (Eq. 2): ``q(x_t | x_0) = C(x_t; abar_t e(x_0) + (1 - abar_t) / N)`` with
  ``abar_t = prod_{tau <= t} alpha_tau``.

**Timestep indexing.** ``x_0`` is the data and ``x_1 ... x_T`` are the noisy states, so the
integer timesteps used everywhere (network input, ``add_noise``, ``step``, losses) run from 1 to
``T = num_train_timesteps``. ``abar_0 = 1`` by convention. The reverse step at timestep ``t`` maps
``x_t`` to ``x_s`` where ``s`` is the previous entry of the timestep grid (``s = t - 1`` for the
full ancestral grid, ``s = 0`` for the last step). The authors' code subtracts one from ``t``
twice in places; here ``t`` always names the state the network sees.

**Skip posterior (categorical DDIM).** Uniform transitions compose: for ``s < t``,
``q(x_t | x_s) = C(x_t; (abar_t / abar_s) e(x_s) + (1 - abar_t / abar_s) / N)``. Bayes' rule gives
the exact posterior of the skip

``q(x_s = k | x_t, x_0 = d) = a_k b_{k,d} / Z_d`` with
``a_k = alpha_{t|s} [x_t = k] + (1 - alpha_{t|s}) / N``, ``alpha_{t|s} = abar_t / abar_s``,
``b_{k,d} = abar_s [k = d] + (1 - abar_s) / N`` and ``Z_d = q(x_t | x_0 = d) =
abar_t [x_t = d] + (1 - abar_t) / N``. For ``s = t - 1`` this is ``pi_t(x_0)`` of Eq. 5.
Because ``sum_{x_t} q(x_s | x_t, x_0) q(x_t | x_0) = q(x_s | x_0)``, a skip sampler keeps the
marginals of the forward process, the property DDIM relies on.

**Model distribution (Eq. 6).** With the x0-parameterised network ``f = f_theta(x_t)`` (softmax
over classes), ``p_theta(x_s | x_t) = sum_d f_d q(x_s | x_t, x_0 = d) = A f``. The sum over ``d``
has a closed form in O(N) per voxel:
``p_theta(k) = a_k (abar_s w_k + (1 - abar_s) / N sum_d w_d)`` with ``w_d = f_d / Z_d``.
It is evaluated in log space for stability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .exceptions import ConfigError, ShapeError, closest

__all__ = ["CategoricalScheduler", "CategoricalStepOutput"]

ScheduleName = Literal["cosine", "linear"]
FinalStep = Literal["argmax", "sample"]
_SCHEDULES = ("cosine", "linear")
_FINAL_STEPS = ("argmax", "sample")


@dataclass(frozen=True)
class CategoricalStepOutput:
    """Result of one reverse step.

    Attributes:
        prev_sample: ``x_s``, int64 label map ``(B, 1, *spatial)`` in ``[0, N)``.
        pred_original_sample: ``argmax f_theta(x_t)``, int64 label map ``(B, 1, *spatial)``.
        pred_original_probs: ``f_theta(x_t)``, the predicted ``p(x_0 | x_t)``, float
            ``(B, N, *spatial)``, sums to 1 over dim 1.
    """

    prev_sample: Tensor
    pred_original_sample: Tensor
    pred_original_probs: Tensor


def _cosine_betas(num_steps: int, s: float) -> Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021), as in Hoogeboom et al. 2021."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos(((steps / num_steps) + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = 1 - abar[1:] / abar[:-1]
    return betas.clamp(min=0.0, max=0.999)


def uniform_like(
    shape: Sequence[int], *, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_from_probs(probs: Tensor, *, generator: torch.Generator | None) -> Tensor:
    """Draw one class per voxel from ``probs`` ``(B, N, *S)`` by inverse CDF; returns ``(B, 1, *S)``."""
    cdf = probs.cumsum(dim=1)
    u = uniform_like(
        (probs.shape[0], 1, *probs.shape[2:]), generator=generator, device=probs.device, dtype=probs.dtype
    )
    u = u * cdf[:, -1:]  # guards against a total that rounds slightly below 1
    idx = (cdf <= u).sum(dim=1, keepdim=True)
    return idx.clamp_(max=probs.shape[1] - 1).long()


class CategoricalScheduler:
    """Noise schedule, forward process and reverse step of multinomial diffusion.

    The scheduler holds no network. ``step`` turns the network's logits into the next sample; a
    sampler (``CategoricalSampler``) runs the loop.

    Args:
        num_classes: number of classes ``N`` (>= 2).
        num_train_timesteps: ``T``, number of forward steps.
        schedule: ``"cosine"`` (default; GuideGen and the authors' code) or ``"linear"`` betas.
        cosine_s: offset ``s`` of the cosine schedule.
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.
        final_step: what the last reverse step (to ``x_0``) does: ``"argmax"`` takes the most
            probable class (GuideGen Sec. 3.1), ``"sample"`` draws from ``f_theta``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        num_train_timesteps: int = 1000,
        schedule: ScheduleName = "cosine",
        cosine_s: float = 0.008,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        final_step: FinalStep = "argmax",
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}.")
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}.")
        if schedule not in _SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {_SCHEDULES}, got {schedule!r}.{closest(schedule, _SCHEDULES)}"
            )
        if final_step not in _FINAL_STEPS:
            raise ConfigError(
                f"final_step must be one of {_FINAL_STEPS}, got {final_step!r}."
                f"{closest(final_step, _FINAL_STEPS)}"
            )
        if schedule == "cosine":
            if not 0.0 <= cosine_s < 1.0:
                raise ConfigError(f"cosine_s must be in [0, 1), got {cosine_s}.")
            betas = _cosine_betas(num_train_timesteps, cosine_s)
        else:
            if not (0.0 < beta_start <= beta_end < 1.0):
                raise ConfigError(
                    f"linear betas need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}."
                )
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        self.num_classes = num_classes
        self.num_train_timesteps = num_train_timesteps
        self.schedule = schedule
        self.final_step = final_step
        # Index t holds the value for timestep t; index 0 is the identity (alpha_0 = abar_0 = 1).
        zero = torch.zeros(1, dtype=torch.float64)
        self.betas = torch.cat([zero, betas])  # (T+1,) float64
        self.log_alphas = torch.log1p(-self.betas)
        self.log_alphas_cumprod = torch.cumsum(self.log_alphas, dim=0)
        self.alphas_cumprod = torch.exp(self.log_alphas_cumprod)
        self.timesteps = torch.arange(num_train_timesteps, 0, -1, dtype=torch.long)
        self.num_inference_steps = num_train_timesteps

    # ------------------------------------------------------------------ timestep grid
    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Set the descending grid of reverse timesteps.

        ``num_inference_steps == T`` gives the full ancestral grid ``T, T-1, ..., 1``; fewer steps
        give an evenly spaced grid ``round(T - i T / n)``, ``i = 0..n-1`` (it always starts at
        ``T``), each step jumping to the next grid entry and the last one to ``0``.

        Args:
            num_inference_steps: number of network calls, ``1 <= n <= T``.
            device: device of ``self.timesteps`` (default CPU).
        """
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(
                f"num_inference_steps must be an int in [1, {self.num_train_timesteps}], got "
                f"{num_inference_steps!r}; closest valid value: "
                f"{min(max(int(num_inference_steps), 1), self.num_train_timesteps)}."
            )
        T = self.num_train_timesteps
        n = num_inference_steps
        grid = [round(T - i * T / n) for i in range(n)]
        self.timesteps = torch.tensor(grid, dtype=torch.long, device=device)
        self.num_inference_steps = n

    def previous_timestep(self, timestep: int) -> int:
        """The grid entry after ``timestep`` (0 after the last one)."""
        grid = self.timesteps.tolist()
        if timestep not in grid:
            raise ConfigError(
                f"timestep {timestep} is not on the current grid ({len(grid)} steps, "
                f"from {grid[0]} to {grid[-1]}); call set_timesteps first or pass prev_timestep."
            )
        i = grid.index(timestep)
        return grid[i + 1] if i + 1 < len(grid) else 0

    # ------------------------------------------------------------------ validation helpers
    def _check_labels(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ShapeError(f"{name} must be an integer label map, got dtype {x.dtype}.")
        if x.ndim < 3 or x.shape[1] != 1:
            raise ShapeError(
                f"{name} must have shape (B, 1, *spatial) (channel dim of size 1), got "
                f"{tuple(x.shape)}; add the channel with x.unsqueeze(1)."
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ShapeError(
                f"{name} holds values in [{int(x.min())}, {int(x.max())}], allowed "
                f"[0, {self.num_classes - 1}] for num_classes={self.num_classes}."
            )

    def _check_t(self, t: Tensor | int, batch: int, device: torch.device, *, allow_zero: bool = False) -> Tensor:
        t = torch.as_tensor(t, device=device).long()
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ShapeError(f"timesteps must be a scalar or shape ({batch},), got {tuple(t.shape)}.")
        lo = 0 if allow_zero else 1
        if int(t.min()) < lo or int(t.max()) > self.num_train_timesteps:
            raise ShapeError(
                f"timesteps must lie in [{lo}, {self.num_train_timesteps}], got "
                f"[{int(t.min())}, {int(t.max())}] (timestep 0 is the clean data x_0)."
            )
        return t

    def _coef(self, table: Tensor, t: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
        """Gather ``table[t]`` (float64 on CPU) and shape it ``(B, 1, 1, ...)`` for broadcasting."""
        v = table[t.cpu()].to(device=t.device, dtype=dtype)
        return v.view(-1, *([1] * (ndim - 1)))

    def one_hot(self, labels: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """One-hot encode ``(B, 1, *S)`` int labels to ``(B, N, *S)`` floats (network input)."""
        self._check_labels(labels, "labels")
        oh = F.one_hot(labels[:, 0], self.num_classes)
        return oh.movedim(-1, 1).to(dtype)

    # ------------------------------------------------------------------ forward process
    def q_probs(self, x0_probs: Tensor, t: Tensor | int) -> Tensor:
        """``q(x_t | x_0)`` (Eq. 2) for a distribution over ``x_0``.

        Args:
            x0_probs: ``(B, N, *S)`` probabilities of ``x_0`` (one-hot for a known label map).
            t: timesteps in ``[0, T]``, scalar or ``(B,)``.

        Returns:
            ``(B, N, *S)`` probabilities of ``x_t``.
        """
        t = self._check_t(t, x0_probs.shape[0], x0_probs.device, allow_zero=True)
        abar = self._coef(self.alphas_cumprod, t, x0_probs.ndim, x0_probs.dtype)
        one_minus = self._coef(-torch.expm1(self.log_alphas_cumprod), t, x0_probs.ndim, x0_probs.dtype)
        return abar * x0_probs + one_minus / self.num_classes

    def add_noise(
        self,
        original_samples: Tensor,
        noise: Tensor | None,
        timesteps: Tensor | int,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` (Eq. 2) for integer label maps.

        Each voxel keeps its class with probability ``abar_t`` and otherwise takes a class drawn
        uniformly; this gives ``P(x_t = x_0) = abar_t + (1 - abar_t) / N`` as Eq. 2 requires.

        Args:
            original_samples: ``x_0``, int label map ``(B, 1, *S)`` in ``[0, N)``.
            noise: uniform numbers in ``[0, 1)`` with the shape of ``original_samples`` that drive
                the draw (one per voxel), or ``None`` to draw them from ``generator``. Passing the
                same noise gives the same ``x_t``.
            timesteps: ``t`` in ``[0, T]``, scalar or ``(B,)`` (``t = 0`` returns ``x_0``).
            generator: source of randomness when ``noise`` is ``None``.

        Returns:
            ``x_t``, int64 label map ``(B, 1, *S)``.
        """
        self._check_labels(original_samples, "original_samples")
        x0 = original_samples.long()
        t = self._check_t(timesteps, x0.shape[0], x0.device, allow_zero=True)
        if noise is None:
            noise = uniform_like(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        elif noise.shape != x0.shape or not noise.dtype.is_floating_point:
            raise ShapeError(
                f"noise must be floats in [0, 1) with the shape of original_samples {tuple(x0.shape)}, "
                f"got {tuple(noise.shape)} {noise.dtype}."
            )
        u = noise.to(torch.float64)
        if u.numel() and (float(u.min()) < 0.0 or float(u.max()) >= 1.0):
            raise ShapeError("noise must hold uniform numbers in [0, 1).")
        abar = self._coef(self.alphas_cumprod, t, x0.ndim, torch.float64)
        keep = u < abar
        # Rescale the remaining mass (abar, 1) to a uniform class index.
        rand_class = torch.floor((u - abar) / (1 - abar).clamp_min(1e-300) * self.num_classes)
        rand_class = rand_class.clamp(0, self.num_classes - 1).long()
        return torch.where(keep, x0, rand_class)

    # ------------------------------------------------------------------ posteriors
    def _pair(self, t: Tensor | int, s: Tensor | int | None, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        t = self._check_t(t, batch, device)
        s = t - 1 if s is None else self._check_t(s, batch, device, allow_zero=True)
        if bool((s >= t).any()):
            raise ShapeError("the target timestep s must be smaller than t for every batch element.")
        return t, s

    def q_posterior(
        self, x_t: Tensor, x0: Tensor, t: Tensor | int, s: Tensor | int | None = None
    ) -> Tensor:
        """True posterior ``q(x_s | x_t, x_0)`` (``pi_t(x_0)`` of Eq. 5 when ``s = t - 1``).

        Args:
            x_t: int label map ``(B, 1, *S)``.
            x0: int label map ``(B, 1, *S)``.
            t: timesteps in ``[1, T]``, scalar or ``(B,)``.
            s: target timesteps, ``0 <= s < t`` (default ``t - 1``).

        Returns:
            ``(B, N, *S)`` probabilities over ``x_s`` (sum to 1 over dim 1).
        """
        self._check_labels(x_t, "x_t")
        self._check_labels(x0, "x0")
        t, s = self._pair(t, s, x_t.shape[0], x_t.device)
        dtype = torch.float32
        n = self.num_classes
        ndim = x_t.ndim
        log_ab_t = self._coef(self.log_alphas_cumprod, t, ndim, torch.float64)
        log_ab_s = self._coef(self.log_alphas_cumprod, s, ndim, torch.float64)
        alpha_ts = torch.exp(log_ab_t - log_ab_s)
        abar_s = torch.exp(log_ab_s)
        a = alpha_ts * self.one_hot(x_t, torch.float64) + (1 - alpha_ts) / n
        b = abar_s * self.one_hot(x0, torch.float64) + (1 - abar_s) / n
        post = a * b
        return (post / post.sum(dim=1, keepdim=True)).to(dtype)

    def model_log_probs(
        self, model_output: Tensor, x_t: Tensor, t: Tensor | int, s: Tensor | int | None = None
    ) -> Tensor:
        """``log p_theta(x_s | x_t) = log (A f_theta)`` (Eq. 6), marginalised over the classes.

        Args:
            model_output: network logits ``(B, N, *S)``; ``f_theta = softmax(logits, dim=1)``.
            x_t: int label map ``(B, 1, *S)``.
            t: timesteps in ``[1, T]``, scalar or ``(B,)``.
            s: target timesteps, ``0 <= s < t`` (default ``t - 1``).

        Returns:
            ``(B, N, *S)`` log-probabilities over ``x_s`` (float dtype of ``model_output``).
        """
        self._check_logits(model_output, x_t)
        t, s = self._pair(t, s, x_t.shape[0], x_t.device)
        dtype = model_output.dtype
        n = self.num_classes
        ndim = x_t.ndim
        log_ab_t = self._coef(self.log_alphas_cumprod, t, ndim, torch.float64)
        log_ab_s = self._coef(self.log_alphas_cumprod, s, ndim, torch.float64)
        alpha_ts = torch.exp(log_ab_t - log_ab_s)
        is_xt = self.one_hot(x_t, torch.bool)
        # a_k = q(x_t | x_s = k); Z_d = q(x_t | x_0 = d); both take two values per voxel.
        log_a_same = torch.log(alpha_ts + (1 - alpha_ts) / n).to(dtype)
        log_a_diff = torch.log((1 - alpha_ts) / n).to(dtype)
        log_z_same = torch.log(torch.exp(log_ab_t) + (-torch.expm1(log_ab_t)) / n).to(dtype)
        log_z_diff = torch.log(-torch.expm1(log_ab_t) / n).to(dtype)
        log_a = torch.where(is_xt, log_a_same, log_a_diff)
        log_f = torch.log_softmax(model_output, dim=1)
        log_w = log_f - torch.where(is_xt, log_z_same, log_z_diff)
        abar_s = torch.exp(log_ab_s)
        log_abar_s = log_ab_s.to(dtype)
        log_mix = torch.log((1 - abar_s) / n).to(dtype)  # -inf when s == 0
        inner = torch.logaddexp(log_abar_s + log_w, log_mix + torch.logsumexp(log_w, dim=1, keepdim=True))
        return torch.log_softmax(log_a + inner, dim=1)

    def _check_logits(self, model_output: Tensor, x_t: Tensor) -> None:
        self._check_labels(x_t, "sample")
        if not isinstance(model_output, Tensor) or not model_output.dtype.is_floating_point:
            raise ShapeError("model_output must be a float tensor of logits (B, N, *spatial).")
        expected = (x_t.shape[0], self.num_classes, *x_t.shape[2:])
        if tuple(model_output.shape) != expected:
            raise ShapeError(
                f"model_output must have shape {expected} (logits over num_classes="
                f"{self.num_classes}), got {tuple(model_output.shape)}."
            )

    # ------------------------------------------------------------------ reverse step
    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        *,
        prev_timestep: int | None = None,
        generator: torch.Generator | None = None,
    ) -> CategoricalStepOutput:
        """One reverse step ``x_t -> x_s`` with ``s`` the next grid entry (Eq. 6, skip posterior).

        For ``s > 0`` the new sample is drawn from ``p_theta(x_s | x_t) = sum_d f_d q(x_s | x_t,
        x_0 = d)``; for ``s = 0`` it is ``argmax f_theta`` (or a draw from ``f_theta`` when
        ``final_step="sample"``), since ``q(x_0 | x_t, x_0 = d) = e(d)``.

        Args:
            model_output: logits ``(B, N, *S)`` of ``f_theta(x_t, t)``.
            timestep: current ``t`` (a Python int or 0-d tensor on the grid).
            sample: ``x_t``, int label map ``(B, 1, *S)``.
            prev_timestep: target ``s`` (default: next entry of ``self.timesteps``).
            generator: randomness for the categorical draw.

        Returns:
            ``CategoricalStepOutput`` with ``prev_sample = x_s``.
        """
        if isinstance(timestep, Tensor):
            if timestep.numel() != 1:
                raise ShapeError("step() takes one timestep for the whole batch (a Python int or 0-d tensor).")
            timestep = int(timestep.item())
        t = int(timestep)
        s = self.previous_timestep(t) if prev_timestep is None else int(prev_timestep)
        if not 0 <= s < t <= self.num_train_timesteps:
            raise ShapeError(f"need 0 <= prev_timestep < timestep <= {self.num_train_timesteps}, got s={s}, t={t}.")
        self._check_logits(model_output, sample)
        probs_x0 = torch.softmax(model_output, dim=1)
        pred_x0 = probs_x0.argmax(dim=1, keepdim=True)
        if s == 0:
            prev = pred_x0 if self.final_step == "argmax" else sample_from_probs(probs_x0, generator=generator)
        else:
            log_p = self.model_log_probs(model_output, sample, t, s)
            prev = sample_from_probs(log_p.exp(), generator=generator)
        return CategoricalStepOutput(prev_sample=prev, pred_original_sample=pred_x0, pred_original_probs=probs_x0)

    def sample_prior(
        self,
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``x_T ~ C(1/N)`` (uniform over the classes), an int64 label map of ``shape``."""
        shape = tuple(int(v) for v in shape)
        if len(shape) < 3 or shape[1] != 1:
            raise ShapeError(f"shape must be (B, 1, *spatial), got {shape}.")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        u = uniform_like(shape, generator=generator, device=dev, dtype=torch.float64)
        return torch.floor(u * self.num_classes).clamp_(max=self.num_classes - 1).long()
