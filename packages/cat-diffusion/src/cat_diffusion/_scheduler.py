"""Multinomial diffusion: schedule, forward process, posteriors, step.

Notation (GuideGen Sec. 3.1; Hoogeboom et al. 2021, "Argmax flows and multinomial diffusion"):

* ``N`` classes, label maps ``x`` with values in ``{0, ..., N-1}``.
* One forward step (Eq. 1): ``q(x_t | x_{t-1}) = C(x_t; alpha_t e(x_{t-1}) + (1 - alpha_t) / N)``
  with ``alpha_t = 1 - beta_t``.
* Closed form (Eq. 2): ``q(x_t | x_0) = C(x_t; abar_t e(x_0) + (1 - abar_t) / N)`` with
  ``abar_t = prod_{tau <= t} alpha_tau``.

**Timestep convention (shared by every ctsynth scheduler).** Public timesteps are integers in
``[0, T-1]`` (``T = num_train_timesteps``), as in lesion-inpaint's Gaussian schedulers, MONAI and
diffusers. In the papers' notation ``x_0`` is the data and ``x_1 ... x_T`` the noisy states; public
timestep ``t`` names the state ``x_{t+1}`` (``t = 0``: one forward step, ``t = T-1``: the noisiest),
so the formulas below are written with the paper index ``i = t + 1`` and ``abar_0 = 1``.
``set_timesteps(n)`` gives the grid ``round(linspace(T-1, 0, n))``. The reverse step at a grid entry
goes to the next grid entry; the step at the last one (``t = 0``) goes to the clean data. Where a
target timestep ``s`` is taken explicitly (``q_posterior``, ``model_log_probs``), ``s = -1`` names
the clean data. The network sees the public ``t``.

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

**Noise marginal.** The paper's noise is uniform (``m = 1/N`` above). ``noise_weights`` gives any
marginal ``m`` (``m_k >= 0``, summing to 1) in its place, the "uniform-like" transitions of Austin
et al. 2021 (D3PM): ``q(x_t | x_0) = C(abar_t e(x_0) + (1 - abar_t) m)``. Every formula above
holds with ``1/N`` replaced by ``m_{x_t}`` in ``a`` and ``Z`` and by ``m_k`` in ``b``. A class with
``m_k = 0`` is never made by noise, so wherever it shows in ``x_t`` it is data: a rare class of
one-voxel objects (a tumour on a coarse grid) then never has noise look-alikes to tell apart. In the
model distribution ``x_0 = d`` with ``Z_d = 0`` (impossible given ``x_t``) gets no weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._random import draw_rand
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


def sample_from_probs(probs: Tensor, *, generator: torch.Generator | None) -> Tensor:
    """Draw one class per voxel from ``probs`` ``(B, N, *S)`` by inverse CDF; returns ``(B, 1, *S)``."""
    cdf = probs.cumsum(dim=1)
    u = draw_rand(
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
        noise_weights: relative weight of each class in the noise marginal ``m`` (``N``
            non-negative numbers, normalised here; at least two positive). ``None`` (default) is
            the paper's uniform noise.
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
        noise_weights: Sequence[float] | None = None,
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
        if noise_weights is None:
            m = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        else:
            try:
                m = torch.as_tensor([float(v) for v in noise_weights], dtype=torch.float64)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"noise_weights must be {num_classes} numbers (one per class), got {noise_weights!r}."
                ) from None
            if m.shape != (num_classes,) or not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
                raise ConfigError(
                    f"noise_weights must be {num_classes} finite non-negative numbers (one per class), "
                    f"got {list(noise_weights)}."
                )
            if int((m > 0).sum()) < 2:
                raise ConfigError(
                    f"noise_weights must give at least two classes a positive weight, got {list(noise_weights)}."
                )
            m = m / m.sum()
        self.noise_weights = None if noise_weights is None else tuple(float(v) for v in m)
        self.noise_probs = m  # (N,) float64, the noise marginal m
        self._uniform = noise_weights is None
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
        self._device_tables: dict[torch.device, dict[str, Tensor]] = {}
        self.set_timesteps(num_train_timesteps)

    # ------------------------------------------------------------------ timestep grid
    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Set the descending grid ``round(linspace(T-1, 0, n))`` of reverse timesteps.

        ``n == T`` gives the full ancestral grid ``T-1, ..., 0``. Each step jumps to the next grid
        entry and the last one to the clean data. The grid's successor table is precomputed here,
        so :meth:`step` does no search.

        Args:
            num_inference_steps: number of network calls, ``1 <= n <= T``.
            device: device of ``self.timesteps`` (default CPU).
        """
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.num_train_timesteps:
            raise ConfigError(
                f"num_inference_steps must be an int in [1, {self.num_train_timesteps}], got "
                f"{num_inference_steps!r}; closest valid value: "
                f"{min(max(int(num_inference_steps), 1), self.num_train_timesteps)}."
            )
        T = self.num_train_timesteps
        if n == 1:
            grid = torch.tensor([T - 1], dtype=torch.long)
        else:
            grid = torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long()
        prev = torch.full((T,), -2, dtype=torch.long)  # -2: not on the grid
        prev[grid[:-1]] = grid[1:]
        prev[grid[-1]] = -1  # -1: the clean data
        self._prev = prev
        self._prev_on_device: dict[torch.device, Tensor] = {}
        self._on_grid = frozenset(grid.tolist())
        self.timesteps = grid.to(device)
        self.num_inference_steps = n
        if device is not None:  # copy the tables now, not inside the sampling loop
            dev = self.timesteps.device
            self._prev_on_device[dev] = prev.to(dev)
            self._table("abar", dev)

    def previous_timestep(self, timestep: int) -> int:
        """The grid entry after ``timestep`` (-1, the clean data, after the last one)."""
        if timestep not in self._on_grid:
            grid = sorted(self._on_grid, reverse=True)
            raise ConfigError(
                f"timestep {timestep} is not on the current grid ({len(grid)} steps, from {grid[0]} to "
                f"{grid[-1]}); call set_timesteps first and step through scheduler.timesteps."
            )
        return int(self._prev[timestep])

    # ------------------------------------------------------------------ validation helpers
    def _check_labels(self, x: Tensor, name: str, *, values: bool = True) -> None:
        if not isinstance(x, Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ShapeError(f"{name} must be an integer label map, got dtype {x.dtype}.")
        if x.ndim < 3 or x.shape[1] != 1:
            raise ShapeError(
                f"{name} must have shape (B, 1, *spatial) (channel dim of size 1), got "
                f"{tuple(x.shape)}; add the channel with x.unsqueeze(1)."
            )
        if values and x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ShapeError(
                f"{name} holds values in [{int(x.min())}, {int(x.max())}], allowed "
                f"[0, {self.num_classes - 1}] for num_classes={self.num_classes}."
            )

    def _index(self, t: Tensor | int, batch: int, device: torch.device, *, allow_clean: bool = False) -> Tensor:
        """Check public timesteps (scalar or ``(B,)``) and return the paper index ``t + 1``, ``(B,)``."""
        t = torch.as_tensor(t, device=device)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ShapeError(f"timesteps must be integers, got dtype {t.dtype}.")
        t = t.long()
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ShapeError(f"timesteps must be a scalar or shape ({batch},), got {tuple(t.shape)}.")
        lo = -1 if allow_clean else 0
        if int(t.min()) < lo or int(t.max()) > self.num_train_timesteps - 1:
            raise ShapeError(
                f"timesteps must lie in [{lo}, {self.num_train_timesteps - 1}], got "
                f"[{int(t.min())}, {int(t.max())}]"
                + (" (-1 names the clean data x_0)." if allow_clean else ".")
            )
        return t + 1

    def _table(self, name: str, device: torch.device) -> Tensor:
        tables = self._device_tables.get(device)
        if tables is None:
            dt = torch.float32 if device.type == "mps" else torch.float64
            tables = {
                "log_abar": self.log_alphas_cumprod.to(device=device, dtype=dt),
                "abar": self.alphas_cumprod.to(device=device, dtype=dt),
                "one_minus_abar": (-torch.expm1(self.log_alphas_cumprod)).to(device=device, dtype=dt),
                "m": self.noise_probs.to(device=device, dtype=dt),
                "m_cdf": self.noise_probs.cumsum(0).to(device=device, dtype=dt),
            }
            self._device_tables[device] = tables
        return tables[name]

    def _coef(self, name: str, idx: Tensor, ndim: int) -> Tensor:
        """Gather ``table[idx]`` on ``idx``'s device and shape it ``(B, 1, 1, ...)`` for broadcasting."""
        v = self._table(name, idx.device)[idx]
        return v.view(-1, *([1] * (ndim - 1)))

    def one_hot(self, labels: Tensor, dtype: torch.dtype = torch.float32, *, check: bool = True) -> Tensor:
        """One-hot encode ``(B, 1, *S)`` int labels to ``(B, N, *S)`` floats (network input).

        ``check=False`` skips the value-range check (a host round trip), as the samplers do per step.
        """
        self._check_labels(labels, "labels", values=check)
        oh = F.one_hot(labels[:, 0], self.num_classes)
        return oh.movedim(-1, 1).to(dtype)

    # ------------------------------------------------------------------ forward process
    def q_probs(self, x0_probs: Tensor, t: Tensor | int) -> Tensor:
        """``q(x_t | x_0)`` (Eq. 2) for a distribution over ``x_0``.

        Args:
            x0_probs: ``(B, N, *S)`` probabilities of ``x_0`` (one-hot for a known label map).
            t: timesteps in ``[0, T-1]``, scalar or ``(B,)``.

        Returns:
            ``(B, N, *S)`` probabilities of ``x_t``.
        """
        i = self._index(t, x0_probs.shape[0], x0_probs.device)
        abar = self._coef("abar", i, x0_probs.ndim).to(x0_probs.dtype)
        one_minus = self._coef("one_minus_abar", i, x0_probs.ndim).to(x0_probs.dtype)
        m = self._table("m", x0_probs.device).to(x0_probs.dtype)
        return abar * x0_probs + one_minus * m.view(1, -1, *([1] * (x0_probs.ndim - 2)))

    def add_noise(
        self,
        x0: Tensor,
        noise: Tensor | None,
        t: Tensor | int,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` (Eq. 2) for integer label maps.

        Each voxel keeps its class with probability ``abar_t`` and otherwise takes a class drawn
        from the noise marginal (uniform by default); this gives ``P(x_t = x_0) = abar_t +
        (1 - abar_t) m_{x_0}`` as Eq. 2 requires.

        Args:
            x0: clean int label map ``(B, 1, *S)`` in ``[0, N)``.
            noise: the categorical counterpart of Gaussian noise: uniform numbers in ``[0, 1)``
                with the shape of ``x0`` (one per voxel, e.g. ``torch.rand(x0.shape)``) that drive
                the draw, or ``None`` to draw them from ``generator``. The same noise gives the
                same ``x_t``.
            t: timesteps in ``[0, T-1]``, scalar or ``(B,)``; ``t = T-1`` is (up to the
                schedule's ``abar``) uniform over the classes.
            generator: source of randomness when ``noise`` is ``None``.

        Returns:
            ``x_t``, int64 label map ``(B, 1, *S)``.
        """
        self._check_labels(x0, "x0")
        x0 = x0.long()
        i = self._index(t, x0.shape[0], x0.device)
        if noise is None:
            noise = draw_rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        elif noise.shape != x0.shape or not noise.dtype.is_floating_point:
            raise ShapeError(
                f"noise must be floats in [0, 1) with the shape of x0 {tuple(x0.shape)}, "
                f"got {tuple(noise.shape)} {noise.dtype}."
            )
        u = noise.to(torch.float64)
        if u.numel() and (float(u.min()) < 0.0 or float(u.max()) >= 1.0):
            raise ShapeError("noise must hold uniform numbers in [0, 1).")
        abar = self._coef("abar", i, x0.ndim).to(torch.float64)
        keep = u < abar
        # Rescale the remaining mass (abar, 1) to [0, 1) and read a class off the noise marginal.
        v = (u - abar) / (1 - abar).clamp_min(1e-300)
        return torch.where(keep, x0, self._noise_class(v))

    def _noise_class(self, v: Tensor) -> Tensor:
        """Class of each uniform number ``v`` in ``[0, 1)`` under the noise marginal (inverse CDF)."""
        if self._uniform:
            return torch.floor(v * self.num_classes).clamp(0, self.num_classes - 1).long()
        cdf = self._table("m_cdf", v.device).to(torch.float64)
        idx = torch.searchsorted(cdf, v.to(torch.float64).contiguous(), right=True)
        return idx.clamp_(max=self.num_classes - 1).long()

    # ------------------------------------------------------------------ posteriors
    def _pair(self, t: Tensor | int, s: Tensor | int | None, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        t = self._index(t, batch, device)
        s = t - 1 if s is None else self._index(s, batch, device, allow_clean=True)
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
            t: timesteps in ``[0, T-1]``, scalar or ``(B,)``.
            s: target timesteps, ``-1 <= s < t`` (default ``t - 1``; ``-1`` is the clean data).

        Returns:
            ``(B, N, *S)`` probabilities over ``x_s`` (sum to 1 over dim 1).
        """
        self._check_labels(x_t, "x_t")
        self._check_labels(x0, "x0")
        t, s = self._pair(t, s, x_t.shape[0], x_t.device)
        dtype = torch.float32
        n = self.num_classes
        ndim = x_t.ndim
        log_ab_t = self._coef("log_abar", t, ndim)
        log_ab_s = self._coef("log_abar", s, ndim)
        alpha_ts = torch.exp(log_ab_t - log_ab_s)
        abar_s = torch.exp(log_ab_s)
        m = self._table("m", x_t.device).to(torch.float64)
        m_xt = m[x_t.long()]  # (B, 1, *S): m of the observed class
        a = alpha_ts * self.one_hot(x_t, torch.float64) + (1 - alpha_ts) * m_xt
        b = abar_s * self.one_hot(x0, torch.float64) + (1 - abar_s) * m.view(1, n, *([1] * (ndim - 2)))
        post = a * b
        return (post / post.sum(dim=1, keepdim=True)).to(dtype)

    def model_log_probs(
        self, model_output: Tensor, x_t: Tensor, t: Tensor | int, s: Tensor | int | None = None
    ) -> Tensor:
        """``log p_theta(x_s | x_t) = log (A f_theta)`` (Eq. 6), marginalised over the classes.

        Args:
            model_output: network logits ``(B, N, *S)``; ``f_theta = softmax(logits, dim=1)``.
            x_t: int label map ``(B, 1, *S)``.
            t: timesteps in ``[0, T-1]``, scalar or ``(B,)``.
            s: target timesteps, ``-1 <= s < t`` (default ``t - 1``; ``-1`` is the clean data).

        Returns:
            ``(B, N, *S)`` log-probabilities over ``x_s`` (float dtype of ``model_output``).
        """
        self._check_logits(model_output, x_t)
        self._check_labels(x_t, "x_t")
        t, s = self._pair(t, s, x_t.shape[0], x_t.device)
        return self._log_probs(model_output, x_t, t, s)

    def _log_probs(self, model_output: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Unchecked Eq. 6 with paper indices ``t`` and ``s`` (``(B,)`` or ``(1,)`` on ``x_t``'s device)."""
        dtype = model_output.dtype
        n = self.num_classes
        ndim = x_t.ndim
        log_ab_t = self._coef("log_abar", t, ndim)
        log_ab_s = self._coef("log_abar", s, ndim)
        alpha_ts = torch.exp(log_ab_t - log_ab_s)
        is_xt = F.one_hot(x_t[:, 0], n).movedim(-1, 1).bool()
        m = self._table("m", x_t.device)
        # m of the observed class: a scalar for uniform noise, else one value per voxel.
        m_xt = m[:1] if self._uniform else m[x_t.long()]
        # a_k = q(x_t | x_s = k); Z_d = q(x_t | x_0 = d); both take two values per voxel.
        log_a_same = torch.log(alpha_ts + (1 - alpha_ts) * m_xt).to(dtype)
        log_a_diff = torch.log((1 - alpha_ts) * m_xt).to(dtype)
        log_z_same = torch.log(torch.exp(log_ab_t) + (-torch.expm1(log_ab_t)) * m_xt).to(dtype)
        log_z_diff = torch.log(-torch.expm1(log_ab_t) * m_xt).to(dtype)
        log_a = torch.where(is_xt, log_a_same, log_a_diff)
        log_f = torch.log_softmax(model_output, dim=1)
        log_w = log_f - torch.where(is_xt, log_z_same, log_z_diff)
        if not self._uniform:
            # x_0 = d with Z_d = 0 cannot have given x_t: no weight. A very negative finite value
            # instead of -inf keeps logaddexp's gradient finite where both of its terms vanish.
            log_w = torch.where(is_xt | (m_xt > 0), log_w, torch.full_like(log_w, torch.finfo(dtype).min / 4))
        abar_s = torch.exp(log_ab_s)
        log_abar_s = log_ab_s.to(dtype)
        # log((1 - abar_s) m_k): -inf when s is the clean data or m_k = 0
        log_mix = torch.log((1 - abar_s) * m.view(1, n, *([1] * (ndim - 2)))).to(dtype)
        inner = torch.logaddexp(log_abar_s + log_w, log_mix + torch.logsumexp(log_w, dim=1, keepdim=True))
        return torch.log_softmax(log_a + inner, dim=1)

    def _check_logits(self, model_output: Tensor, x_t: Tensor) -> None:
        self._check_labels(x_t, "sample", values=False)
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
        t: int | Tensor,
        sample: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> CategoricalStepOutput:
        """One reverse step from ``t`` to the next grid entry (Eq. 6 with the skip posterior).

        Before the last grid entry the new sample is drawn from ``p_theta(x_s | x_t) =
        sum_d f_d q(x_s | x_t, x_0 = d)``; the step at the last entry returns ``argmax f_theta``
        (or a draw from ``f_theta`` when ``final_step="sample"``), since ``q(x_0 | x_t, x_0 = d) =
        e(d)``. The successor of ``t`` comes from the table built by :meth:`set_timesteps`; a
        tensor ``t`` is looked up on the sample's device, so the step makes no host round trip; for
        the same reason neither a tensor ``t`` nor the sample's values are range-checked here.

        Args:
            model_output: logits ``(B, N, *S)`` of ``f_theta(x_t, t)``.
            t: current timestep on the grid: a Python int (checked), or an integer tensor, scalar
                or ``(B,)`` (e.g. an entry of ``self.timesteps``).
            sample: ``x_t``, int label map ``(B, 1, *S)``.
            generator: randomness for the categorical draw.

        Returns:
            ``CategoricalStepOutput`` with ``prev_sample = x_s``.
        """
        self._check_logits(model_output, sample)
        dev = sample.device
        if isinstance(t, Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim > 1:
                raise ShapeError(f"t must be an integer scalar or (B,) tensor, got {t.dtype} {tuple(t.shape)}.")
            if t.ndim == 1 and t.shape[0] not in (1, sample.shape[0]):
                raise ShapeError(f"t of shape {tuple(t.shape)} does not match the batch {sample.shape[0]}.")
            t_idx = t.reshape(-1).to(device=dev, dtype=torch.long)
            prev = self._prev_on_device.get(dev)
            if prev is None:
                prev = self._prev_on_device.setdefault(dev, self._prev.to(dev))
            s_idx = prev[t_idx]
        else:
            if isinstance(t, bool) or int(t) != t:
                raise ShapeError(f"t must be an int or an integer tensor, got {t!r}.")
            s_int = self.previous_timestep(int(t))
            t_idx = torch.full((1,), int(t), dtype=torch.long, device=dev)
            s_idx = torch.full((1,), s_int, dtype=torch.long, device=dev)
        # Paper indices t + 1 and s + 1; an off-grid tensor t (successor -2) acts as the last step.
        probs_x0 = torch.softmax(model_output, dim=1)
        pred_x0 = probs_x0.argmax(dim=1, keepdim=True)
        s_idx = s_idx.clamp_min(-1)
        log_p = self._log_probs(model_output, sample, t_idx + 1, s_idx + 1)
        drawn = sample_from_probs(log_p.exp(), generator=generator)
        if self.final_step == "argmax":
            last = (s_idx == -1).view(-1, *([1] * (sample.ndim - 1)))
            drawn = torch.where(last, pred_x0, drawn)
        return CategoricalStepOutput(prev_sample=drawn, pred_original_sample=pred_x0, pred_original_probs=probs_x0)

    def sample_prior(
        self,
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``x_T ~ C(m)`` (the noise marginal; uniform by default), an int64 label map of ``shape``."""
        shape = tuple(int(v) for v in shape)
        if len(shape) < 3 or shape[1] != 1:
            raise ShapeError(f"shape must be (B, 1, *spatial), got {shape}.")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        u = draw_rand(shape, generator=generator, device=dev, dtype=torch.float64)
        return self._noise_class(u)
