"""2.5D views of CT volumes: HU window, slice sampling along the three axes, resize to a network.

Conventions used by FID / KID / LPIPS 2.5D (stated once here):

* HU window: intensities are clipped to ``window = (low, high)`` HU (default ``(-1000, 1000)``)
  and mapped linearly to [-1, 1]; the grey slice is repeated to 3 channels.
* Slices: along each axis ``a`` in (0, 1, 2) = (x, y, z) — sagittal, coronal and axial for RAS
  volumes — ``slices_per_axis`` indices evenly spaced (``numpy.linspace``, rounded) over the
  central ``central_fraction`` of that axis (default 0.8, which skips the mostly empty borders);
  ``slices_per_axis=None`` takes every slice of that central part. Sampling is deterministic.
* Resize: each slice is resized to the network's input size with bilinear interpolation
  (``torch.nn.functional.interpolate``, ``align_corners=False``, ``antialias=True``), ignoring the
  voxel spacing (the anisotropy of the slice is not corrected).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shape_metrics.exceptions import MaskError, ShapeMetricsError

__all__ = ["AXES", "as_volumes", "hu_to_unit", "slice_indices", "slices_along"]

AXES: tuple[str, str, str] = ("x", "y", "z")


def as_volumes(volumes: Any, *, name: str) -> list[torch.Tensor]:
    """Normalise input to a list of (X, Y, Z) float32 tensors.

    Accepts a (B, X, Y, Z) or (B, 1, X, Y, Z) array/tensor, or a sequence of (X, Y, Z) arrays.
    """
    if isinstance(volumes, torch.Tensor | np.ndarray):
        t = torch.as_tensor(volumes)
        if t.ndim == 5 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4:
            raise MaskError(f"{name} must be (B, X, Y, Z), (B, 1, X, Y, Z) or a list of (X, Y, Z); got shape {tuple(t.shape)}.")
        vols = list(t)
    else:
        vols = [torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in volumes]
    if not vols:
        raise MaskError(f"{name} is empty; pass at least one volume.")
    for i, v in enumerate(vols):
        if v.ndim != 3:
            raise MaskError(f"{name}[{i}] must be a 3D volume (X, Y, Z); got shape {tuple(v.shape)}.")
        if min(v.shape) < 2:
            raise MaskError(f"{name}[{i}] has shape {tuple(v.shape)}; every axis needs at least 2 voxels.")
    return [v.float() for v in vols]


def hu_to_unit(x: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Clip to the HU window and map it linearly to [-1, 1]."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ShapeMetricsError(f"window must be (low, high) HU with high > low; got {window}.")
    return (x.clamp(lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def slice_indices(n: int, count: int | None, central_fraction: float) -> np.ndarray:
    """Evenly spaced slice indices over the central ``central_fraction`` of ``n`` slices."""
    if not 0.0 < central_fraction <= 1.0:
        raise ShapeMetricsError(f"central_fraction must be in (0, 1]; got {central_fraction}.")
    margin = (1.0 - central_fraction) / 2.0 * (n - 1)
    lo, hi = int(np.ceil(margin)), int(np.floor(n - 1 - margin))
    if count is None:
        return np.arange(lo, hi + 1)
    if count < 1:
        raise ShapeMetricsError(f"slices_per_axis must be >= 1 or None; got {count}.")
    return np.unique(np.round(np.linspace(lo, hi, count)).astype(np.intp))


def slices_along(
    vol: torch.Tensor,
    axis: int,
    *,
    window: tuple[float, float],
    count: int | None,
    central_fraction: float,
    size: Sequence[int],
) -> torch.Tensor:
    """(N, 3, H, W) float32 slices of one volume along ``axis``, windowed to [-1, 1] and resized."""
    idx = torch.as_tensor(slice_indices(vol.shape[axis], count, central_fraction), device=vol.device)
    s = torch.index_select(vol, axis, idx).movedim(axis, 0)  # (N, A, B)
    s = hu_to_unit(s, window)[:, None]
    s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return s.expand(-1, 3, -1, -1).contiguous()


def batched(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Split along dim 0 into chunks of at most ``batch_size``."""
    if batch_size < 1:
        raise ShapeMetricsError(f"batch_size must be >= 1; got {batch_size}.")
    yield from torch.split(x, batch_size)
