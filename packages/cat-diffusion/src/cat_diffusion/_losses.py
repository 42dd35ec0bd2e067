"""Training objective of the text-conditional semantic synthesizer (GuideGen Eq. 5-6).

``L_1 = E_{t, x_0} KL( q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t) )`` with
``p_theta = A f_theta`` (Eq. 6), averaged over voxels. At public timestep ``t = 0`` (the paper's
``x_1``) the true posterior is the
one-hot ``e(x_0)`` and the KL reduces to the cross-entropy ``-log f_theta(x_0)``, the decoder
term of Hoogeboom et al. 2021, so no special case is needed. An optional cross-entropy on the
x0 prediction (what the authors' ``CategoricalDiffusionV2`` trains with) can be added or used alone,
and so can a class-mass term (:func:`class_mass_loss`, not in the paper) for a rare class whose
number of voxels matters.

Training surface (the ctsynth convention): the loss holds no network and takes the model on every
call, calling it only as ``model(x, t, context=context)``, so a ``DistributedDataParallel``-wrapped
model can be passed directly and its gradient synchronisation works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._random import draw_randint
from ._scheduler import CategoricalScheduler
from .exceptions import ConfigError, ShapeError, closest

__all__ = [
    "CategoricalDiffusionLoss",
    "DiffusionLossOutput",
    "class_mass_loss",
    "cross_entropy_loss",
    "kl_loss",
    "sample_timesteps",
]

TimestepSampling = Literal["uniform", "power"]
_SAMPLINGS = ("uniform", "power")


def sample_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    *,
    mode: TimestepSampling = "uniform",
    power: float = 1.5,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw training timesteps ``t`` in ``[0, T-1]`` (the ctsynth timestep convention).

    Args:
        batch_size: number of timesteps ``B``.
        num_train_timesteps: ``T``.
        mode: ``"uniform"`` or ``"power"``: ``P(t) proportional to (t + 1)**power`` (the paper
            index ``t + 1``), biased towards large ``t`` as in the authors' code (``power=1.5``; their version puts zero mass on
            one end because of an off-by-one, this one does not).
        power: exponent for ``mode="power"`` (> 0).
        device: device of the result (default CPU).
        generator: source of randomness (drawn on its device, then moved to ``device``).

    Returns:
        int64 tensor ``(B,)`` with values in ``[0, T-1]``.
    """
    if mode not in _SAMPLINGS:
        raise ConfigError(f"mode must be one of {_SAMPLINGS}, got {mode!r}.{closest(mode, _SAMPLINGS)}")
    if batch_size < 1 or num_train_timesteps < 1:
        raise ConfigError("batch_size and num_train_timesteps must be >= 1.")
    target = torch.device(device) if device is not None else torch.device("cpu")
    if mode == "uniform":
        return draw_randint(0, num_train_timesteps, (batch_size,), generator=generator, device=target)
    if not power > 0:
        raise ConfigError(f"power must be > 0, got {power}.")
    src = generator.device if generator is not None else target
    w = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64, device=src) ** power
    t = torch.multinomial(w, batch_size, replacement=True, generator=generator)
    return t.to(target)


def _weights(x0: Tensor, class_weights: Sequence[float] | Tensor | None, num_classes: int, dtype: torch.dtype) -> Tensor | None:
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=dtype, device=x0.device)
    if w.shape != (num_classes,) or bool((w < 0).any()) or not bool((w > 0).any()):
        raise ConfigError(
            f"class_weights must be {num_classes} non-negative numbers (not all zero), got shape "
            f"{tuple(w.shape)}."
        )
    return w[x0[:, 0]]  # (B, *S): weight of each voxel's true class


def _reduce(per_voxel: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return per_voxel.mean()
    return (per_voxel * weights).sum() / weights.sum().clamp_min(torch.finfo(per_voxel.dtype).tiny)


def kl_loss(
    scheduler: CategoricalScheduler,
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    timesteps: Tensor | int,
    *,
    class_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """KL of Eq. 6 between the true posterior and ``A f_theta``, averaged over voxels.

    Args:
        scheduler: the categorical scheduler.
        model_output: logits ``(B, N, *S)`` of ``f_theta(x_t, t)``.
        x0: clean int label map ``(B, 1, *S)``.
        x_t: noisy int label map ``(B, 1, *S)``.
        timesteps: ``t`` in ``[0, T-1]``, scalar or ``(B,)``.
        class_weights: optional ``(N,)`` weights; each voxel's KL is weighted by the weight of its
            true class and the result is the weighted mean ``sum w_i KL_i / sum w_i``.

    Returns:
        Scalar loss (nats per voxel).
    """
    q = scheduler.q_posterior(x_t, x0, timesteps).to(model_output.dtype)
    log_p = scheduler.model_log_probs(model_output, x_t, timesteps)
    # 0 log 0 = 0 on both sides: log_p is -inf where a class is impossible (a noise weight of 0)
    log_p = log_p.clamp_min(torch.finfo(log_p.dtype).min)
    kl = (torch.special.xlogy(q, q) - q * log_p).sum(dim=1)  # (B, *S)
    return _reduce(kl, _weights(x0, class_weights, scheduler.num_classes, kl.dtype))


def cross_entropy_loss(
    model_output: Tensor,
    x0: Tensor,
    *,
    class_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Cross-entropy ``-log f_theta(x_0)`` of the x0 prediction, (weighted) mean over voxels.

    Args:
        model_output: logits ``(B, N, *S)``.
        x0: int label map ``(B, 1, *S)``.
        class_weights: optional ``(N,)`` weights of the true classes (weighted mean).

    Returns:
        Scalar loss.
    """
    if model_output.ndim != x0.ndim or model_output.shape[0] != x0.shape[0] or model_output.shape[2:] != x0.shape[2:]:
        raise ShapeError(
            f"model_output (B, N, *S) and x0 (B, 1, *S) disagree: {tuple(model_output.shape)} vs {tuple(x0.shape)}."
        )
    log_f = torch.log_softmax(model_output, dim=1)
    nll = -log_f.gather(1, x0.long())[:, 0]
    return _reduce(nll, _weights(x0, class_weights, model_output.shape[1], nll.dtype))


def class_mass_loss(
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    cls: int,
    *,
    class_weights: Sequence[float] | Tensor | None = None,
    near: int = 0,
) -> Tensor:
    """Squared error of the predicted number of hidden voxels of one class, per sample.

    The network's x0 prediction puts probability ``p_v(cls)`` on every voxel ``v`` that ``x_t`` does
    not show as ``cls``; their sum is the number of such voxels it expects in ``x_0``. The true
    number is ``M = #{v : x_0 = cls, x_t != cls}``. Per sample the loss is
    ``(sum_v p_v - M)**2 / (1 + M)``, averaged over the batch. Its optimum is the same as the
    cross-entropy's (the sum of calibrated marginals is the conditional mean of ``M``), but its
    gradient reaches every voxel at once: when ``x_t`` already shows all of a rare class's
    components, probability left anywhere else is penalised as a whole, not as many per-voxel
    terms that are each too small to matter.

    With ``near > 0`` the hidden voxels are split in two regions that are counted apart: those
    within ``near`` voxels (Chebyshev distance) of a voxel that ``x_t`` shows as ``cls``, and the
    rest. The far count is the number of voxels of components that ``x_t`` does not show yet, so
    probability that would start a new component is told apart from probability that grows a
    shown one.

    Args:
        model_output: logits ``(B, N, *S)`` of the x0 prediction.
        x0: clean int label map ``(B, 1, *S)``.
        x_t: noisy int label map ``(B, 1, *S)``.
        cls: the class counted.
        class_weights: the class weights of the other loss terms; ``-log w`` is added to the logits
            first, which undoes the bias a weighted cross-entropy puts into them (its optimum is
            ``p_w(c) ~ w_c p(c)``), so the count uses calibrated probabilities.
        near: width of the region around shown voxels counted apart (0: one region).

    Returns:
        Scalar loss (voxels squared per voxel of ``1 + M``; with ``near``, the sum of both regions).
    """
    if model_output.ndim != x0.ndim or x0.shape != x_t.shape or model_output.shape[2:] != x0.shape[2:]:
        raise ShapeError(
            f"model_output (B, N, *S), x0 and x_t (B, 1, *S) disagree: {tuple(model_output.shape)}, "
            f"{tuple(x0.shape)}, {tuple(x_t.shape)}."
        )
    n = model_output.shape[1]
    if not 0 <= int(cls) < n:
        raise ConfigError(f"cls must be a class index in [0, {n}), got {cls}.")
    logits = model_output
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if w.shape != (n,) or not bool((w > 0).all()):
            raise ConfigError(
                f"class_weights for the mass term must be {n} positive numbers, got shape {tuple(w.shape)}."
            )
        logits = logits - torch.log(w).reshape(1, n, *([1] * (logits.ndim - 2)))
    if near < 0:
        raise ConfigError(f"near must be >= 0, got {near}.")
    p = torch.softmax(logits, dim=1)[:, int(cls)]
    shown = x_t[:, 0] == cls
    target = x0[:, 0] == cls
    regions = [~shown]
    if near > 0:
        if x_t.ndim - 2 not in (1, 2, 3):
            raise ShapeError(f"near needs 1-3 spatial dimensions, got x_t of shape {tuple(x_t.shape)}.")
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[x_t.ndim - 3]
        close = pool(shown[:, None].to(p.dtype), 2 * near + 1, stride=1, padding=near)[:, 0] > 0
        regions = [close & ~shown, ~close]
    loss = p.new_zeros(p.shape[0])
    for region in regions:
        pred = (p * region).flatten(1).sum(1)
        true = (target & region).flatten(1).sum(1).to(p.dtype)
        loss = loss + (pred - true) ** 2 / (1 + true)
    return loss.mean()


@dataclass(frozen=True)
class DiffusionLossOutput:
    """Result of one training loss evaluation.

    Attributes:
        loss: scalar to back-propagate, ``kl_weight * kl + ce_weight * ce + mass_weight * mass``.
        kl: scalar KL term of Eq. 6 (detached).
        ce: scalar cross-entropy on x0 (detached).
        timesteps: the ``(B,)`` timesteps used.
        mass: scalar class-mass term (detached; 0 when off).
    """

    loss: Tensor
    kl: Tensor
    ce: Tensor
    timesteps: Tensor
    mass: Tensor | None = None


class CategoricalDiffusionLoss:
    """Full training objective: sample ``t`` and ``x_t``, run the network, compute Eq. 6.

    Holds no network: call it with the model each step. Pass the ``DistributedDataParallel``
    wrapper itself under DDP; the loss calls it only through ``model(...)``.

    Args:
        kl_weight: weight of the KL term of Eq. 6 (default 1).
        ce_weight: weight of the cross-entropy on the x0 prediction (default 0).
        class_weights: optional ``(N,)`` per-class voxel weights (by the true class).
        timestep_sampling: ``"uniform"`` or ``"power"`` (``P(t) ~ t**power``, authors: 1.5).
        power: exponent for ``"power"``.
        mass_weight: weight of :func:`class_mass_loss` (default 0: off).
        mass_class: the class it counts (required when ``mass_weight > 0``).
        mass_near: ``near`` of :func:`class_mass_loss` (0: one region).
    """

    def __init__(
        self,
        *,
        kl_weight: float = 1.0,
        ce_weight: float = 0.0,
        class_weights: Sequence[float] | None = None,
        timestep_sampling: TimestepSampling = "uniform",
        power: float = 1.5,
        mass_weight: float = 0.0,
        mass_class: int | None = None,
        mass_near: int = 0,
    ) -> None:
        if not mass_weight >= 0 or (mass_weight > 0 and mass_class is None):
            raise ConfigError(
                f"mass_weight must be >= 0 and needs mass_class when > 0, got {mass_weight}, "
                f"{mass_class}."
            )
        if kl_weight < 0 or ce_weight < 0 or kl_weight + ce_weight <= 0:
            raise ConfigError(
                f"kl_weight and ce_weight must be >= 0 and not both 0, got {kl_weight}, {ce_weight}."
            )
        if timestep_sampling not in _SAMPLINGS:
            raise ConfigError(
                f"timestep_sampling must be one of {_SAMPLINGS}, got {timestep_sampling!r}."
                f"{closest(timestep_sampling, _SAMPLINGS)}"
            )
        self.kl_weight = float(kl_weight)
        self.ce_weight = float(ce_weight)
        self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)
        self.timestep_sampling = timestep_sampling
        self.power = float(power)
        self.mass_weight = float(mass_weight)
        self.mass_class = None if mass_class is None else int(mass_class)
        if mass_near < 0:
            raise ConfigError(f"mass_near must be >= 0, got {mass_near}.")
        self.mass_near = int(mass_near)

    def __call__(
        self,
        model: Callable[..., Tensor],
        scheduler: CategoricalScheduler,
        x0: Tensor,
        *,
        context: Any = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> DiffusionLossOutput:
        """Evaluate the loss on a batch of clean label maps.

        Args:
            model: the network or its DDP wrapper, called as
                ``model(x_t_onehot (B, N, *S) float, t (B,) int64, context=context)`` and returning
                logits ``(B, N, *S)``.
            scheduler: the categorical scheduler.
            x0: clean int label map ``(B, 1, *S)`` in ``[0, N)``.
            context: conditioning passed to the model as ``context=`` (a ``(B, L, D)`` tensor or a
                list of per-level tensors); ``None`` for an unconditional model.
            dtype: float dtype of the one-hot input (default: the context's, else float32).
            generator: randomness for ``t`` and ``x_t`` (drawn on its device).

        Returns:
            ``DiffusionLossOutput``.
        """
        scheduler._check_labels(x0, "x0")
        x0 = x0.long()
        t = sample_timesteps(
            x0.shape[0],
            scheduler.num_train_timesteps,
            mode=self.timestep_sampling,
            power=self.power,
            device=x0.device,
            generator=generator,
        )
        x_t = scheduler.add_noise(x0, None, t, generator=generator)
        x_in = scheduler.one_hot(x_t, dtype or _context_dtype(context), check=False)
        logits = model(x_in, t, context=context)
        zero = logits.new_zeros(())
        kl = kl_loss(scheduler, logits, x0, x_t, t, class_weights=self.class_weights) if self.kl_weight else zero
        ce = cross_entropy_loss(logits, x0, class_weights=self.class_weights) if self.ce_weight else zero
        mass = zero
        if self.mass_weight:
            assert self.mass_class is not None
            mass = class_mass_loss(
                logits,
                x0,
                x_t,
                self.mass_class,
                class_weights=self.class_weights,
                near=self.mass_near,
            )
        loss = self.kl_weight * kl + self.ce_weight * ce + self.mass_weight * mass
        return DiffusionLossOutput(
            loss=loss, kl=kl.detach(), ce=ce.detach(), timesteps=t, mass=mass.detach()
        )


def _context_dtype(context: Any) -> torch.dtype:
    """Float dtype of the first context tensor (float32 without one)."""
    items = [context] if isinstance(context, Tensor) else list(context or [])
    for c in items:
        if isinstance(c, Tensor) and c.dtype.is_floating_point:
            return c.dtype
    return torch.float32
