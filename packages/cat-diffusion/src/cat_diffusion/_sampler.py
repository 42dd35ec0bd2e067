"""Reverse-process samplers: full ancestral loop and the fast categorical skip (DDIM-style) loop.

Both start from ``x_T ~ C(1/N)`` and call the network once per grid timestep. Each step draws
``x_s ~ p_theta(x_s | x_t) = sum_d f_theta(x_t)_d q(x_s | x_t, x_0 = d)`` (GuideGen Eq. 6, with the
skip posterior derived in ``_scheduler``); the last step takes ``argmax f_theta`` ("sample by
probability for timesteps 2..T and take the index with max probability on the final step",
GuideGen Sec. 3.1).

* ``ancestral``: the grid ``T-1, ..., 0`` (``T`` network calls).
* ``fast``: an evenly spaced grid of ``num_steps`` entries; the jump ``t -> s`` uses the exact
  posterior ``q(x_s | x_t, x_0)`` of the composed uniform transition ``abar_t / abar_s``.

The loop runs over the scheduler's timestep tensor on the sample's device: no host round trip per
step. Inputs (``x_T``, the context) are checked once before the first network call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._scheduler import CategoricalScheduler
from .exceptions import ConfigError, ShapeError

__all__ = ["CategoricalSampler"]

logger = logging.getLogger(__name__)


def _context_device_dtype(context: Any) -> tuple[torch.device | None, torch.dtype | None]:
    if isinstance(context, Tensor):
        return context.device, context.dtype if context.dtype.is_floating_point else None
    if isinstance(context, (list, tuple)):
        for c in context:
            if isinstance(c, Tensor):
                return c.device, c.dtype if c.dtype.is_floating_point else None
    return None, None


def check_finite_context(context: Any) -> None:
    """Raise ``ShapeError`` if the context (a tensor or a per-level list) holds NaN or inf."""
    items = [context] if isinstance(context, Tensor) else list(context or [])
    for i, c in enumerate(items):
        if isinstance(c, Tensor) and c.dtype.is_floating_point and not bool(torch.isfinite(c).all()):
            where = "context" if isinstance(context, Tensor) else f"context[{i}]"
            raise ShapeError(f"{where} holds non-finite values (NaN or inf); all values must be finite.")


class CategoricalSampler:
    """Runs the reverse loop of a ``CategoricalScheduler`` with a network passed in per call.

    The network is any callable ``model(x, t, context=context)`` with ``x`` the one-hot ``x_t``
    ``(B, N, *S)`` float, ``t`` a ``(B,)`` int64 tensor of timesteps in ``[0, T-1]`` and
    ``context`` (always passed by keyword, possibly ``None``) a ``(B, L, D)`` tensor or a list of
    per-level tensors; it returns logits ``(B, N, *S)`` of ``f_theta``. MONAI's
    ``DiffusionModelUNet``, ``LevelContextUNet`` and ``SemanticSynthesizer`` all fit.

    Device and dtype come from the inputs, never from the model: the samples live on ``device``,
    else on ``x_T``'s device, else on the context's, else on the CPU; the one-hot network input has
    ``dtype``, else the context's float dtype, else float32.

    Args:
        scheduler: the categorical scheduler (its grid is reset by each call).
    """

    def __init__(self, *, scheduler: CategoricalScheduler) -> None:
        if not isinstance(scheduler, CategoricalScheduler):
            raise ConfigError(f"scheduler must be a CategoricalScheduler, got {type(scheduler).__name__}.")
        self.scheduler = scheduler

    def ancestral(
        self,
        model: Callable[..., Tensor],
        *,
        shape: Sequence[int],
        context: Any = None,
        x_T: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Full ancestral sampling, ``t = T-1 .. 0`` (``T`` network calls).

        Args:
            model: the x0-parameterised network (see the class docstring).
            shape: label-map shape ``(B, 1, *spatial)``.
            context: conditioning for the network, or ``None``.
            x_T: optional start ``(B, 1, *spatial)`` int labels (default: uniform draw).
            device: device of the samples (default: ``x_T``'s, else the context's, else CPU).
            dtype: float dtype of the one-hot network input (default: the context's, else float32).
            generator: source of randomness.
            progress: show a tqdm bar.

        Returns:
            int64 label map ``(B, 1, *spatial)`` in ``[0, N)``.
        """
        return self._loop(
            model, self.scheduler.num_train_timesteps, shape=shape, context=context, x_T=x_T,
            device=device, dtype=dtype, generator=generator, progress=progress,
        )

    def fast(
        self,
        model: Callable[..., Tensor],
        *,
        num_steps: int,
        shape: Sequence[int],
        context: Any = None,
        x_T: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Categorical skip sampling on an evenly spaced grid of ``num_steps`` timesteps.

        Args:
            model: the x0-parameterised network.
            num_steps: number of network calls, ``1 <= num_steps <= T``.
            shape: label-map shape ``(B, 1, *spatial)``.
            context: conditioning for the network, or ``None``.
            x_T: optional start ``(B, 1, *spatial)`` int labels (default: uniform draw).
            device: device of the samples (default: ``x_T``'s, else the context's, else CPU).
            dtype: float dtype of the one-hot network input (default: the context's, else float32).
            generator: source of randomness.
            progress: show a tqdm bar.

        Returns:
            int64 label map ``(B, 1, *spatial)`` in ``[0, N)``.
        """
        return self._loop(
            model, num_steps, shape=shape, context=context, x_T=x_T, device=device, dtype=dtype,
            generator=generator, progress=progress,
        )

    @torch.no_grad()
    def _loop(
        self,
        model: Callable[..., Tensor],
        num_steps: int,
        *,
        shape: Sequence[int],
        context: Any,
        x_T: Tensor | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        generator: torch.Generator | None,
        progress: bool,
    ) -> Tensor:
        sched = self.scheduler
        shape = tuple(int(v) for v in shape)
        if len(shape) < 3 or shape[1] != 1 or any(v < 1 for v in shape):
            raise ShapeError(f"shape must be a label-map shape (B, 1, *spatial) with positive sizes, got {shape}.")
        check_finite_context(context)
        ctx_dev, ctx_dtype = _context_device_dtype(context)
        xt_dev = x_T.device if isinstance(x_T, Tensor) else None
        dev = torch.device(device) if device is not None else (xt_dev or ctx_dev or torch.device("cpu"))
        dtype = dtype or ctx_dtype or torch.float32
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype must be a floating dtype for the one-hot input, got {dtype}.")
        sched.set_timesteps(num_steps, device=dev)
        if x_T is None:
            x = sched.sample_prior(shape, device=dev, generator=generator)
        else:
            if tuple(x_T.shape) != shape:
                raise ShapeError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}.")
            sched._check_labels(x_T, "x_T")
            x = x_T.to(dev).long()
        logger.debug("categorical sampling: %d steps, shape %s", num_steps, shape)
        for t in tqdm(sched.timesteps, disable=not progress, desc="categorical sampling"):
            t_batch = t.reshape(1).expand(shape[0])
            x_in = sched.one_hot(x, dtype, check=False)
            logits = model(x_in, t_batch, context=context)
            x = sched.step(logits, t, x, generator=generator).prev_sample
        return x
