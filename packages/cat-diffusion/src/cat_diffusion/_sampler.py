"""Reverse-process samplers: full ancestral loop and the fast categorical skip (DDIM-style) loop.

Both start from ``x_T ~ C(1/N)`` and call the network once per grid timestep. Each step draws
``x_s ~ p_theta(x_s | x_t) = sum_d f_theta(x_t)_d q(x_s | x_t, x_0 = d)`` (GuideGen Eq. 6, with the
skip posterior derived in ``_scheduler``); the last step takes ``argmax f_theta`` ("sample by
probability for timesteps 2..T and take the index with max probability on the final step",
GuideGen Sec. 3.1).

* ``ancestral``: the grid ``T, T-1, ..., 1`` (``T`` network calls).
* ``fast``: an evenly spaced grid of ``num_steps`` entries; the jump ``t -> s`` uses the exact
  posterior ``q(x_s | x_t, x_0)`` of the composed uniform transition ``abar_t / abar_s``.
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


def _model_device_dtype(model: Any) -> tuple[torch.device | None, torch.dtype | None]:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            if p.dtype.is_floating_point:
                return p.device, p.dtype
    return None, None


def _context_device_dtype(context: Any) -> tuple[torch.device | None, torch.dtype | None]:
    if isinstance(context, Tensor):
        return context.device, context.dtype if context.dtype.is_floating_point else None
    if isinstance(context, (list, tuple)):
        for c in context:
            if isinstance(c, Tensor):
                return c.device, c.dtype if c.dtype.is_floating_point else None
    return None, None


class CategoricalSampler:
    """Runs the reverse loop of a ``CategoricalScheduler`` with a network passed in per call.

    The network is any callable ``model(x, t, context=...)`` with ``x`` the one-hot ``x_t``
    ``(B, N, *S)`` float, ``t`` a ``(B,)`` int64 tensor of timesteps in ``[1, T]`` and
    ``context`` a ``(B, L, D)`` tensor or a list of per-level tensors (omitted when ``None``); it
    returns logits ``(B, N, *S)`` of ``f_theta``. MONAI's ``DiffusionModelUNet``,
    ``LevelContextUNet`` and ``SemanticSynthesizer`` all fit.

    Args:
        scheduler: the categorical scheduler (its grid is reset by each call).
    """

    def __init__(self, scheduler: CategoricalScheduler) -> None:
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
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Full ancestral sampling, ``t = T .. 1`` (``T`` network calls).

        Args:
            model: the x0-parameterised network (see the class docstring).
            shape: label-map shape ``(B, 1, *spatial)``.
            context: conditioning for the network, or ``None``.
            x_T: optional start ``(B, 1, *spatial)`` int labels (default: uniform draw).
            device: device of the samples (default: the context's, else the model's, else CPU).
            generator: source of randomness.
            progress: show a tqdm bar.

        Returns:
            int64 label map ``(B, 1, *spatial)`` in ``[0, N)``.
        """
        return self._loop(
            model, self.scheduler.num_train_timesteps, shape=shape, context=context, x_T=x_T,
            device=device, generator=generator, progress=progress,
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
            device: device of the samples (default: the context's, else the model's, else CPU).
            generator: source of randomness.
            progress: show a tqdm bar.

        Returns:
            int64 label map ``(B, 1, *spatial)`` in ``[0, N)``.
        """
        return self._loop(
            model, num_steps, shape=shape, context=context, x_T=x_T, device=device,
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
        generator: torch.Generator | None,
        progress: bool,
    ) -> Tensor:
        sched = self.scheduler
        shape = tuple(int(v) for v in shape)
        if len(shape) < 3 or shape[1] != 1 or any(v < 1 for v in shape):
            raise ShapeError(f"shape must be a label-map shape (B, 1, *spatial) with positive sizes, got {shape}.")
        ctx_dev, ctx_dtype = _context_device_dtype(context)
        mod_dev, mod_dtype = _model_device_dtype(model)
        dev = torch.device(device) if device is not None else (ctx_dev or mod_dev or torch.device("cpu"))
        dtype = mod_dtype or ctx_dtype or torch.float32
        sched.set_timesteps(num_steps)
        if x_T is None:
            x = sched.sample_prior(shape, device=dev, generator=generator)
        else:
            if tuple(x_T.shape) != shape:
                raise ShapeError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}.")
            sched._check_labels(x_T, "x_T")
            x = x_T.to(dev).long()
        logger.debug("categorical sampling: %d steps, shape %s", num_steps, shape)
        for t in tqdm(sched.timesteps.tolist(), disable=not progress, desc="categorical sampling"):
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=dev)
            x_in = sched.one_hot(x, dtype)
            logits = model(x_in, t_batch) if context is None else model(x_in, t_batch, context=context)
            x = sched.step(logits, t, x, generator=generator).prev_sample
        return x
