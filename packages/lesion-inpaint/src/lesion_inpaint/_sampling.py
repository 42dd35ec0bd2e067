"""Samplers: the unrolled reverse loop with classifier-free guidance, model passed per call.

A sampler is built with a scheduler (which holds no model) and runs::

    x = x_T
    for t in scheduler.timesteps:
        eps = eps_u + s * (eps_c - eps_u)          # classifier-free guidance, Ho & Salimans 2022
        x = scheduler.step(eps, t, x, generator=generator).prev_sample

The model is any callable ``model(x, timesteps, context=context) -> eps`` (e.g.
:class:`LevelContextUNet`), called with ``context`` as a keyword (possibly ``None``). Spatial
conditions are a separate ``cond=`` input of the sampler; it concatenates them to the noisy sample
along channels, so ``x`` is ``cat(x_t, cond)``. ``timesteps`` is a ``(B,)`` int64 tensor. The loop
iterates over the scheduler's timestep tensor on the sample's device and makes no host round trip
per step; inputs are checked once (shapes, finiteness) before the first network call. The
unconditional branch uses :func:`null_context` (zeros of the context's shape), the same null that
:func:`drop_context` substitutes during training. With ``guidance_scale == 1`` (or no context) only
the conditional branch is evaluated, so the result is exactly the plain conditional output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ._random import draw_rand
from ._schedulers import DDIMScheduler, DDPMScheduler, InpaintingDDIMScheduler
from ._unet import Context
from .exceptions import ConfigError, ShapeError

__all__ = [
    "EpsModel",
    "GaussianSampler",
    "InpaintingSampler",
    "check_finite",
    "drop_context",
    "guided_eps",
    "null_context",
    "unwrap_model",
]

EpsModel = Callable[..., torch.Tensor]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or ``model``).

    Training losses read the config from it; they call the network only through ``model(...)``.
    """
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def null_context(context: Context) -> Context:
    """The unconditional context: zeros with the same structure/shape as ``context``."""
    if context is None:
        return None
    if isinstance(context, torch.Tensor):
        return torch.zeros_like(context)
    return [torch.zeros_like(c) for c in context]


def drop_context(
    context: Context, drop_prob: float, *, generator: torch.Generator | None = None
) -> Context:
    """Condition dropout for classifier-free guidance training.

    Each sample's context (all levels together) is replaced by the null context with probability
    ``drop_prob``.

    Args:
        context: (B, L, D) tensor, list of them, or None.
        drop_prob: probability in [0, 1).
        generator: random source (drawn on its device, then moved to the context's device).
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ConfigError(f"condition drop probability must be in [0, 1), got {drop_prob}")
    if context is None or drop_prob == 0.0:
        return context
    first = context if isinstance(context, torch.Tensor) else context[0]
    b = first.shape[0]
    keep = draw_rand((b,), generator=generator, device=first.device) >= drop_prob
    if isinstance(context, torch.Tensor):
        return context * keep.reshape(b, 1, 1).to(context.dtype)
    return [c * keep.reshape(b, 1, 1).to(c.dtype) for c in context]


def _cat_context(a: Context, b: Context) -> Context:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b], dim=0)  # type: ignore[list-item]
    return [torch.cat([x, y], dim=0) for x, y in zip(a, b, strict=True)]  # type: ignore[arg-type]


def guided_eps(
    model: EpsModel,
    x: torch.Tensor,
    t: int | torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    context: Context = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Noise prediction with classifier-free guidance.

    Args:
        model: ``model(x, timesteps, context=context) -> eps``.
        x: noisy sample (B, C, *spatial).
        t: integer timestep for the whole batch (int or 0-d tensor), or a (B,) tensor.
        cond: spatial conditions (B, C_cond, *spatial) concatenated after ``x``, or None.
        context: text context(s) or None.
        guidance_scale: s in ``eps_u + s (eps_c - eps_u)``; 1 means no guidance (one forward).

    Returns:
        eps (B, C, *spatial).
    """
    inp = x if cond is None else torch.cat([x, cond], dim=1)
    ts = torch.as_tensor(t, device=x.device).long().reshape(-1).expand(x.shape[0])
    if context is None or guidance_scale == 1.0:
        return model(inp, ts, context=context)
    both = model(torch.cat([inp, inp], dim=0), ts.repeat(2), context=_cat_context(context, null_context(context)))
    eps_c, eps_u = both.chunk(2, dim=0)
    return eps_u + guidance_scale * (eps_c - eps_u)


def _check_cond(x: torch.Tensor, cond: torch.Tensor | None) -> None:
    if cond is not None and (cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]):
        raise ShapeError(
            f"spatial condition {tuple(cond.shape)} must be (B, C, *spatial) matching sample {tuple(x.shape)}"
        )


def check_finite(**inputs: torch.Tensor | Sequence[torch.Tensor | None] | None) -> None:
    """Raise :class:`ShapeError` naming the first input that holds NaN or infinite values.

    Args:
        **inputs: tensors, lists of tensors (per-level contexts) or None, by name.
    """
    for name, value in inputs.items():
        items = [value] if value is None or isinstance(value, torch.Tensor) else list(value)
        for i, v in enumerate(items):
            if isinstance(v, torch.Tensor) and v.dtype.is_floating_point and not bool(torch.isfinite(v).all()):
                where = name if len(items) == 1 and isinstance(value, torch.Tensor) else f"{name}[{i}]"
                bad = int((~torch.isfinite(v)).sum())
                raise ShapeError(f"{where} holds {bad} non-finite value(s) (NaN or inf); all values must be finite")


class GaussianSampler:
    """Reverse loop for a :class:`DDPMScheduler` or :class:`DDIMScheduler`.

    Args:
        scheduler: the scheduler (its timestep grid is reset by every :meth:`sample`).
        num_inference_steps: steps of the loop (the paper: 200 DDIM steps).
        guidance_scale: default classifier-free guidance scale (1 = off).
    """

    def __init__(
        self,
        *,
        scheduler: DDPMScheduler | DDIMScheduler,
        num_inference_steps: int = 200,
        guidance_scale: float = 1.0,
    ) -> None:
        if guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {guidance_scale}")
        self.scheduler = scheduler
        scheduler.set_timesteps(num_inference_steps)  # validates the step count early
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)

    @torch.no_grad()
    def sample(
        self,
        model: EpsModel,
        noise: torch.Tensor,
        *,
        cond: torch.Tensor | None = None,
        context: Context = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Run the reverse process from ``x_T = noise``.

        Args:
            model: ``model(x, timesteps, context=context) -> eps``.
            noise: x_T (B, C, *spatial), standard normal.
            cond: spatial conditions concatenated to x_t at every step, (B, C_cond, *spatial).
            context: (B, L, D), a list of per-level contexts, or None.
            guidance_scale: overrides the sampler's default.
            generator: random source of the stochastic steps (DDPM, DDIM with eta > 0).
            progress: show a tqdm bar.

        Returns:
            x_0 (B, C, *spatial), same dtype/device as ``noise``.
        """
        _check_cond(noise, cond)
        check_finite(noise=noise, cond=cond, context=context)
        s = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        self.scheduler.set_timesteps(self.num_inference_steps, device=noise.device)
        x = noise
        for t in tqdm(self.scheduler.timesteps, disable=not progress, desc="sampling"):
            eps = guided_eps(model, x, t, cond=cond, context=context, guidance_scale=s)
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        return x


class InpaintingSampler:
    """LINet reverse loop: z_T = eps*m + z_0*(1-m), known latent re-imposed after every step.

    Args:
        scheduler: an :class:`InpaintingDDIMScheduler`.
        num_inference_steps: DDIM steps (paper: 200).
        guidance_scale: default classifier-free guidance scale (paper: 2.5).
    """

    def __init__(
        self,
        *,
        scheduler: InpaintingDDIMScheduler,
        num_inference_steps: int = 200,
        guidance_scale: float = 2.5,
    ) -> None:
        if not isinstance(scheduler, InpaintingDDIMScheduler):
            raise TypeError(
                f"InpaintingSampler needs an InpaintingDDIMScheduler, got {type(scheduler).__name__}"
            )
        if guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {guidance_scale}")
        self.scheduler = scheduler
        scheduler.set_timesteps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)

    @torch.no_grad()
    def sample(
        self,
        model: EpsModel,
        known: torch.Tensor,
        mask: torch.Tensor,
        *,
        cond: torch.Tensor | Sequence[torch.Tensor] | None = None,
        context: Context = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Inpaint ``known`` inside ``mask``.

        Args:
            model: ``model(x, timesteps, context=context) -> eps``.
            known: clean latent z_0 (B, C, *spatial).
            mask: binary (B, 1, *spatial), 1 = generate. Outside it the output equals ``known``
                exactly.
            cond: spatial conditions concatenated to z_t (LINet passes the mask itself).
            context: text context(s) or None.
            guidance_scale: overrides the default.
            generator: random source of z_T and of eta > 0 steps.
            progress: show a tqdm bar.

        Returns:
            Inpainted latent (B, C, *spatial).
        """
        if isinstance(cond, Sequence):
            cond = torch.cat(list(cond), dim=1)
        _check_cond(known, cond)
        check_finite(known=known, mask=mask, cond=cond, context=context)
        s = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        sch = self.scheduler
        sch.set_timesteps(self.num_inference_steps, device=known.device)
        mask = mask.to(dtype=known.dtype)
        x = sch.initial_sample(known, mask, generator=generator)
        for t in tqdm(sch.timesteps, disable=not progress, desc="inpainting"):
            eps = guided_eps(model, x, t, cond=cond, context=context, guidance_scale=s)
            x = sch.step(eps, t, x, known=known, mask=mask, generator=generator).prev_sample
        return x
