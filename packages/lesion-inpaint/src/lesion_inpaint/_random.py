"""The package's one rule for random draws (ctsynth convention 1).

Every stochastic function takes ``generator: torch.Generator | None``. With a generator the numbers
are drawn on the generator's device and then moved to the target device, so a CPU generator gives
the same numbers whatever device the tensors live on. Without one, they are drawn directly on the
target device (the device of the tensor the draw belongs to). Nothing here seeds globally or picks
a device on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["draw_rand", "draw_randint", "draw_randn"]


def _source(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


def draw_randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal numbers of ``shape`` on ``device`` (drawn on the generator's device)."""
    out = torch.randn(
        tuple(shape), generator=generator, device=_source(generator, device), dtype=dtype
    )
    return out.to(device)


def draw_rand(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform numbers in [0, 1) of ``shape`` on ``device`` (drawn on the generator's device)."""
    out = torch.rand(
        tuple(shape), generator=generator, device=_source(generator, device), dtype=dtype
    )
    return out.to(device)


def draw_randint(
    low: int,
    high: int,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> torch.Tensor:
    """int64 integers in ``[low, high)`` of ``shape`` on ``device`` (drawn on the generator's device)."""
    out = torch.randint(
        low, high, tuple(shape), generator=generator, device=_source(generator, device)
    )
    return out.to(device)
