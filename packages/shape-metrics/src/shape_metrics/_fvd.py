"""FVD of CT volumes: runs of axial slices as video frames through I3D (Kinetics-400).

Conventions (StyleGAN-V's FVD, Skorokhodov et al. 2022, which follows Unterthiner et al. 2018):

* A clip is ``frames`` consecutive axial slices (axis 2, z) — default 16 as in StyleGAN-V,
  at least 9 (the I3D head needs two temporal positions after 8x downsampling). Per volume,
  ``clips_per_volume`` clip starts are evenly spaced over the volume (deterministic).
* Frames: HU window mapped to [-1, 1], grey repeated to RGB, resized to 224x224 (bilinear,
  ``align_corners=False``, antialias), as StyleGAN-V feeds I3D with ``rescale=False, resize=False``
  after its own resize to 224.
* Embedding: the 400-d Kinetics logits averaged over time (the features StyleGAN-V's I3D returns
  with ``return_features=True``).
* Statistics: mean and the *biased* covariance ``E[f f^T] - mu mu^T`` (StyleGAN-V's
  ``FeatureStats.get_mean_cov``, normalised by N, not N-1), then the Fréchet distance.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shape_metrics._frechet import frechet_distance
from shape_metrics._i3d import MIN_FRAMES
from shape_metrics._slices import as_volumes, batched, hu_to_unit
from shape_metrics._weights import load_network
from shape_metrics.exceptions import ShapeMetricsError

__all__ = ["fvd", "i3d_features"]


def _clips(vol: torch.Tensor, frames: int, clips_per_volume: int, window: tuple[float, float]) -> torch.Tensor:
    z = vol.shape[2]
    if z < frames:
        raise ShapeMetricsError(
            f"a volume has {z} axial slices but a clip needs frames={frames}; use frames <= {z} "
            f"(at least {MIN_FRAMES}) or longer volumes."
        )
    starts = np.unique(np.round(np.linspace(0, z - frames, clips_per_volume)).astype(np.intp))
    out = []
    for s in starts:
        clip = vol[:, :, s : s + frames].permute(2, 0, 1)[:, None]  # (T, 1, X, Y)
        clip = F.interpolate(hu_to_unit(clip, window), size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        out.append(clip[:, 0].expand(3, -1, -1, -1))  # (3, T, 224, 224)
    return torch.stack(out)


def i3d_features(
    volumes: Any,
    *,
    frames: int = 16,
    clips_per_volume: int = 4,
    window: tuple[float, float] = (-1000.0, 1000.0),
    batch_size: int = 2,
    cache: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """I3D embeddings (N_clips, 400) float64 of axial-slice clips of CT volumes (HU)."""
    if frames < MIN_FRAMES:
        raise ShapeMetricsError(f"frames must be >= {MIN_FRAMES} for I3D; got {frames}.")
    if clips_per_volume < 1:
        raise ShapeMetricsError(f"clips_per_volume must be >= 1; got {clips_per_volume}.")
    vols = as_volumes(volumes, name="volumes")
    dev = torch.device(device) if device is not None else vols[0].device
    net = load_network("i3d", cache=cache, device=dev)
    feats = []
    it = vols
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(vols, desc="I3D features")
    with torch.no_grad():
        for vol in it:
            clips = _clips(vol.to(dev), frames, clips_per_volume, window)
            for chunk in batched(clips, batch_size):
                feats.append(net(chunk).double().cpu().numpy())
    return np.concatenate(feats)


def _biased_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = f.mean(axis=0)
    return mu, f.T @ f / len(f) - np.outer(mu, mu)


def fvd(real: Any, fake: Any, **kwargs: Any) -> float:
    """Fréchet Video Distance between two sets of CT volumes, axial slices as frames.

    Args:
        real: (B, X, Y, Z) / (B, 1, X, Y, Z) HU volumes or a list of (X, Y, Z); Z >= ``frames``.
        fake: second set.
        **kwargs: ``frames`` (default 16, >= 9), ``clips_per_volume`` (4), ``window``
            ((-1000, 1000) HU), ``batch_size``, ``cache``, ``device``, ``progress``.

    Returns:
        FVD >= 0 (about 0 for a set against itself).

    Raises:
        WeightsNotInstalledError: the I3D weights are not installed.
    """
    fa = i3d_features(real, **kwargs)
    fb = fa if fake is real else i3d_features(fake, **kwargs)
    if len(fa) < 2 or len(fb) < 2:
        raise ShapeMetricsError(f"FVD needs at least 2 clips per set; got {len(fa)} and {len(fb)}.")
    return frechet_distance(*_biased_stats(fa), *_biased_stats(fb))
