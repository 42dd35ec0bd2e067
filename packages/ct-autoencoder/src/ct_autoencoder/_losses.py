"""Loss pieces shared by both autoencoders: 2.5D perceptual loss, random slices, discriminators.

The perceptual network is never downloaded here: callers pass any object satisfying
:class:`SliceFeatureExtractor` (for example a VGG/LPIPS trunk whose weights they loaded from a
local file). Without one the perceptual terms are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from monai.networks.nets import PatchDiscriminator

from . import _random

__all__ = [
    "SliceFeatureExtractor",
    "make_patch_discriminator",
    "perceptual_loss_25d",
    "random_slices",
]


@runtime_checkable
class SliceFeatureExtractor(Protocol):
    """Anything that maps 2D images to a list of feature maps.

    ``__call__(images)`` takes ``(N, 1, H, W)`` float images in [-1, 1] (the model range) and
    returns a sequence of feature maps ``(N, C_l, H_l, W_l)``. It must be differentiable w.r.t. the
    input; its own parameters are treated as frozen by the losses.
    """

    def __call__(self, images: torch.Tensor) -> Sequence[torch.Tensor]: ...


def random_slices(
    x: torch.Tensor, num: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Take ``num`` random planar slices per volume along one random axis per volume.

    Args:
        x: Volumes ``(B, C, X, Y, Z)``.
        num: Slices per volume.
        generator: Random source; draws follow the package rule (on the generator's device, else
            on ``x``'s device).

    Returns:
        ``(slices, picks)``: slices ``(B * num, C, H, W)`` and ``(axis, index)`` per slice. For cubic
        volumes each volume draws its own axis; otherwise one axis is drawn for the whole batch so
        that all slices share a shape.
    """
    b = x.shape[0]
    spatial = x.shape[2:]
    cubic = len(set(spatial)) == 1
    shared_axis = int(_random.randint(3, (1,), like=x, generator=generator))
    out, picks = [], []
    for i in range(b):
        axis = int(_random.randint(3, (1,), like=x, generator=generator)) if cubic else shared_axis
        idx = _random.randint(spatial[axis], (num,), like=x, generator=generator).tolist()
        for j in idx:
            out.append(x[i].select(axis + 1, j))
            picks.append((axis, j))
    return torch.stack(out, 0), picks


def perceptual_loss_25d(
    x: torch.Tensor,
    y: torch.Tensor,
    features: SliceFeatureExtractor,
    *,
    num_slices: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """2.5D perceptual distance: feature distance on random slices along each of the three axes.

    For each axis, ``num_slices`` slice positions are drawn and the same positions are cut from
    ``x`` and ``y``. Per layer the features are unit-normalised over channels and the squared
    difference is averaged (LPIPS without its learned linear heads, Zhang et al. 2018, Eq. 1).

    Args:
        x: Volumes ``(B, 1, X, Y, Z)`` (e.g. the reconstruction).
        y: Volumes of the same shape (the target); gradients flow only through ``x`` if ``y`` is
            detached by the caller.
        features: Feature extractor (see :class:`SliceFeatureExtractor`).
        num_slices: Slices per axis per volume.
        generator: Random source for slice positions (drawn on its device, else on ``x``'s).

    Returns:
        Scalar loss (>= 0).
    """
    total = x.new_zeros(())
    for axis in range(3):
        idx = _random.randint(x.shape[axis + 2], (num_slices,), like=x, generator=generator)
        xs = x.index_select(axis + 2, idx).movedim(axis + 2, 1).reshape(-1, 1, *_other(x.shape, axis))
        ys = y.index_select(axis + 2, idx).movedim(axis + 2, 1).reshape(-1, 1, *_other(y.shape, axis))
        fx, fy = features(xs), features(ys)
        layer_terms = []
        for a, b in zip(fx, fy, strict=True):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            layer_terms.append((a - b).pow(2).sum(1).mean())
        total = total + torch.stack(layer_terms).sum()
    return total / 3.0


def _other(shape: torch.Size, axis: int) -> tuple[int, int]:
    s = list(shape[2:])
    del s[axis]
    return s[0], s[1]


def make_patch_discriminator(*, spatial_dims: int, channels: int, layers: int) -> PatchDiscriminator:
    """MONAI PatchGAN discriminator on one-channel images (2D frames or 3D volumes).

    Args:
        spatial_dims: 2 for the frame discriminator, 3 for the volume discriminator.
        channels: Width of the first layer.
        layers: Number of strided layers.

    Returns:
        ``PatchDiscriminator`` whose forward returns a list of features, the last being the logits.
    """
    return PatchDiscriminator(
        spatial_dims=spatial_dims, num_layers_d=layers, channels=channels, in_channels=1, out_channels=1,
        norm="INSTANCE",
    )
