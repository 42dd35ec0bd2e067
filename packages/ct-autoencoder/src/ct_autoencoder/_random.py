"""Where random numbers are drawn: the package-wide rule, in one place.

Every stochastic function takes ``generator: torch.Generator | None``. With a generator, the draw
is made on the generator's device (a CPU generator draws on the CPU) and the result is moved to
the target tensor's device and dtype; without one, the draw is made directly on the target
tensor's device with the global RNG of that device. Nothing here seeds anything, and no device
is ever assumed: the target tensor decides. So a CPU generator gives the same numbers whether the
model runs on the CPU or a GPU, and a CUDA generator draws on the GPU without a host round trip.
"""

from __future__ import annotations

import torch

__all__ = ["draw_device", "rand", "randint", "randn"]


def draw_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Device the draw is made on: the generator's, else ``like``'s."""
    return generator.device if generator is not None else like.device


def rand(
    shape: tuple[int, ...], *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform [0, 1) of ``shape`` with ``like``'s device and floating dtype (see module rule)."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    u = torch.rand(shape, generator=generator, device=draw_device(generator, like), dtype=dtype)
    return u.to(like.device)


def randn(
    shape: tuple[int, ...], *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard normal of ``shape`` with ``like``'s device and floating dtype (see module rule)."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    e = torch.randn(shape, generator=generator, device=draw_device(generator, like), dtype=dtype)
    return e.to(like.device)


def randint(
    high: int, shape: tuple[int, ...], *, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Integers in ``[0, high)`` of ``shape`` (long) on ``like``'s device (see module rule)."""
    i = torch.randint(0, high, shape, generator=generator, device=draw_device(generator, like))
    return i.to(like.device)
