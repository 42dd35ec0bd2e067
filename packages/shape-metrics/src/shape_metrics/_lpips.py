"""LPIPS 2.5D: perceptual distance between paired CT volumes on slices along the three axes.

For each axis, the same slice indices of both volumes (see :mod:`shape_metrics._slices` for the
window and sampling; slices resized to ``size``, default 224x224) go through LPIPS (Zhang et al.
2018, Eq. 1; AlexNet by default, VGG16 optional) and the distances are averaged; the result holds
the per-axis means and their mean.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch

from shape_metrics._slices import AXES, as_volumes, batched, slices_along
from shape_metrics._validate import check_option
from shape_metrics._weights import load_network
from shape_metrics.exceptions import MaskError

__all__ = ["lpips_2_5d"]


def lpips_2_5d(
    pred: Any,
    ref: Any,
    *,
    net: Literal["alexnet", "vgg16"] = "alexnet",
    window: tuple[float, float] = (-1000.0, 1000.0),
    slices_per_axis: int | None = 16,
    central_fraction: float = 0.8,
    size: tuple[int, int] = (224, 224),
    batch_size: int = 16,
    cache: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean LPIPS between paired volumes, per slicing axis and overall.

    Args:
        pred: (B, X, Y, Z) / (B, 1, X, Y, Z) HU volumes or a list of (X, Y, Z).
        ref: the same number of volumes, each with the shape of its partner in ``pred``.
        net: LPIPS trunk.
        window: HU window mapped to [-1, 1].
        slices_per_axis: slices per volume and axis (None: all of the central part).
        central_fraction: fraction of each axis the slices come from.
        size: slice size fed to the network.
        batch_size: slice pairs per call.
        cache: weights cache dir.
        device: compute device (default: that of the first volume).

    Returns:
        ``{"x", "y", "z", "mean"}`` LPIPS values >= 0 (0 for identical volumes).

    Raises:
        WeightsNotInstalledError: the LPIPS weights are not installed.
        MaskError: the sets are not paired (count or shapes differ).
    """
    check_option(net, ("alexnet", "vgg16"), name="net")
    a = as_volumes(pred, name="pred")
    b = as_volumes(ref, name="ref")
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=False)):
        raise MaskError(
            "pred and ref must be paired volumes of equal shapes; got "
            f"{[tuple(x.shape) for x in a]} and {[tuple(y.shape) for y in b]}."
        )
    dev = torch.device(device) if device is not None else a[0].device
    model = load_network(f"lpips_{net}", cache=cache, device=dev)  # type: ignore[arg-type]
    per_axis: dict[str, list[float]] = {ax: [] for ax in AXES}
    opts = {"window": window, "count": slices_per_axis, "central_fraction": central_fraction, "size": size}
    with torch.no_grad():
        for x, y in zip(a, b, strict=True):
            for axis, name in enumerate(AXES):
                sx = slices_along(x.to(dev), axis, **opts)
                sy = slices_along(y.to(dev), axis, **opts)
                for cx, cy in zip(batched(sx, batch_size), batched(sy, batch_size), strict=True):
                    per_axis[name].extend(model(cx, cy).double().cpu().tolist())
    out = {ax: float(np.mean(v)) for ax, v in per_axis.items()}
    out["mean"] = float(np.mean([out[ax] for ax in AXES]))
    return out
