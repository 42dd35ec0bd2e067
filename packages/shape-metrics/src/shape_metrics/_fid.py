"""FID and KID on 2.5D slices of CT volumes (Inception-v3 pool features, 2048-d).

FID (Heusel et al. 2017, Eq. 6) is the Fréchet distance between Gaussians fitted to the Inception
features of the two slice sets (mean and unbiased covariance, as pytorch-fid and torchmetrics).
KID (Bińkowski et al. 2018) is the unbiased MMD^2 with the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets (less biased than FID for few
samples). Following MAISI, both are computed separately on slices along each of the three axes
and averaged; per-axis values are reported too. Slice sampling, HU window and resize are described
in :mod:`shape_metrics._slices` (299x299 input here).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from shape_metrics._frechet import frechet_distance
from shape_metrics._slices import AXES, as_volumes, batched, slices_along
from shape_metrics._weights import load_network
from shape_metrics.exceptions import ShapeMetricsError

__all__ = ["fid_2_5d", "inception_features_2_5d", "kid_2_5d", "kid_from_features"]

_SIZE = (299, 299)


def inception_features_2_5d(
    volumes: Any,
    *,
    window: tuple[float, float] = (-1000.0, 1000.0),
    slices_per_axis: int | None = 16,
    central_fraction: float = 0.8,
    batch_size: int = 16,
    cache: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Inception features of slices along each axis.

    Args:
        volumes: (B, X, Y, Z) / (B, 1, X, Y, Z) HU array or tensor, or a list of (X, Y, Z) volumes.
        window: HU window mapped to [-1, 1].
        slices_per_axis: slices per volume and axis (None: all slices of the central part).
        central_fraction: fraction of each axis the slices are drawn from.
        batch_size: slices per network call.
        cache: weights cache dir.
        device: compute device (default: the device of the first volume; CPU for numpy).
        progress: tqdm bar over volumes.

    Returns:
        ``{"x": (N_x, 2048), "y": (N_y, 2048), "z": (N_z, 2048)}`` float64 features.

    Raises:
        WeightsNotInstalledError: the Inception weights are not installed.
    """
    vols = as_volumes(volumes, name="volumes")
    dev = torch.device(device) if device is not None else vols[0].device
    net = load_network("inception", cache=cache, device=dev)
    feats: dict[str, list[np.ndarray]] = {a: [] for a in AXES}
    it = vols
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(vols, desc="inception features")
    with torch.no_grad():
        for vol in it:
            vol = vol.to(dev)
            for axis, name in enumerate(AXES):
                s = slices_along(vol, axis, window=window, count=slices_per_axis, central_fraction=central_fraction, size=_SIZE)
                for chunk in batched(s, batch_size):
                    feats[name].append(net(chunk).double().cpu().numpy())
    return {a: np.concatenate(f) for a, f in feats.items()}


def _fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or len(b) < 2:
        raise ShapeMetricsError(f"FID needs at least 2 slices per set and axis; got {len(a)} and {len(b)}.")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def fid_2_5d(real: Any, fake: Any, **kwargs: Any) -> dict[str, float]:
    """2.5D FID between two sets of CT volumes (HU).

    Args:
        real: first set (see :func:`inception_features_2_5d` for accepted forms).
        fake: second set; volume shapes may differ from ``real``.
        **kwargs: slicing / device options of :func:`inception_features_2_5d`.

    Returns:
        ``{"x": ..., "y": ..., "z": ..., "mean": ...}``: FID per slicing axis and their mean (>= 0;
        about 0 for a set against itself).
    """
    fa = inception_features_2_5d(real, **kwargs)
    fb = fa if fake is real else inception_features_2_5d(fake, **kwargs)
    out = {a: _fid_from_features(fa[a], fb[a]) for a in AXES}
    out["mean"] = float(np.mean([out[a] for a in AXES]))
    return out


def kid_from_features(
    a: np.ndarray,
    b: np.ndarray,
    *,
    subset_size: int = 1000,
    n_subsets: int = 100,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID (mean, std over subsets) between feature sets (N, D) and (M, D).

    Each subset draws ``min(subset_size, N, M)`` rows of each set without replacement (torch
    ``randperm`` with ``generator``) and computes the unbiased MMD^2 with ``(x.y/d + 1)^3``.
    """
    n = min(subset_size, len(a), len(b))
    if n < 2:
        raise ShapeMetricsError(f"KID needs at least 2 samples per set; got {len(a)} and {len(b)}.")
    d = a.shape[1]
    vals = []
    for _ in range(n_subsets):
        x = a[torch.randperm(len(a), generator=generator)[:n].numpy()]
        y = b[torch.randperm(len(b), generator=generator)[:n].numpy()]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def kid_2_5d(
    real: Any,
    fake: Any,
    *,
    subset_size: int = 1000,
    n_subsets: int = 100,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """2.5D KID between two sets of CT volumes (HU).

    Args:
        real: first set.
        fake: second set.
        subset_size: samples per subset (capped by the set sizes).
        n_subsets: number of random subsets.
        generator: torch generator for the subset draws.
        **kwargs: slicing / device options of :func:`inception_features_2_5d`.

    Returns:
        ``{"x", "y", "z", "mean"}`` KID values (unbiased: can be slightly negative near 0).
    """
    fa = inception_features_2_5d(real, **kwargs)
    fb = fa if fake is real else inception_features_2_5d(fake, **kwargs)
    out = {
        a: kid_from_features(fa[a], fb[a], subset_size=subset_size, n_subsets=n_subsets, generator=generator)[0]
        for a in AXES
    }
    out["mean"] = float(np.mean([out[a] for a in AXES]))
    return out
