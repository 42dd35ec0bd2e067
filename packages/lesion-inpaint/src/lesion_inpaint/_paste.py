"""Paste a decoded lesion crop back into the original CT, only near the lesion.

The authors' v2 inference saves the whole VQ reconstruction, so every voxel of the CT changes. Here
the decoded crop is blended into the original HU volume with weight

    w = 1                                       inside the lesion mask dilated by ``dilation`` voxels
    w = 1 - d / (feather + 1)                   at distance d in (0, feather] voxels beyond that
    w = 0                                       elsewhere

and every voxel with w = 0 is copied bit for bit from the input.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .exceptions import ShapeError

__all__ = ["blend_weights", "paste_back"]


def blend_weights(mask: np.ndarray, *, dilation: int = 1, feather: int = 2) -> np.ndarray:
    """Feathered blending weights around a lesion mask.

    Args:
        mask: (X, Y, Z) lesion mask (nonzero = lesion).
        dilation: voxels of full weight around the mask.
        feather: voxels over which the weight falls linearly to 0.

    Returns:
        float32 weights in [0, 1] with the mask's shape.
    """
    if dilation < 0 or feather < 0:
        raise ShapeError(f"dilation and feather must be >= 0, got {dilation}, {feather}")
    core = mask.astype(bool)
    if dilation:
        core = ndimage.binary_dilation(core, ndimage.generate_binary_structure(mask.ndim, mask.ndim), iterations=dilation)
    if not core.any():
        return np.zeros(mask.shape, np.float32)
    d = ndimage.distance_transform_edt(~core)
    w = np.clip(1.0 - d / (feather + 1.0), 0.0, 1.0)
    return w.astype(np.float32)


def paste_back(
    volume: np.ndarray,
    crop: np.ndarray,
    mask: np.ndarray,
    *,
    offset: tuple[int, int, int],
    dilation: int = 1,
    feather: int = 2,
) -> np.ndarray:
    """Blend ``crop`` into ``volume`` at ``offset`` only inside a feathered dilation of ``mask``.

    Args:
        volume: original CT (X, Y, Z) in HU (any float dtype; the output keeps it).
        crop: decoded crop (x, y, z) in HU.
        mask: lesion mask for the crop (x, y, z), nonzero = lesion.
        offset: voxel index of the crop's first corner in ``volume``; the crop must fit inside.
        dilation: voxels of full weight around the mask.
        feather: voxels of linear fall-off beyond that.

    Returns:
        A new array; voxels where the weight is 0 are bit-identical to ``volume``.

    Raises:
        ShapeError: shapes disagree, the crop does not fit, or ``volume`` / ``crop`` holds NaN or
            infinite values.
    """
    if volume.ndim != 3 or crop.ndim != 3 or mask.shape != crop.shape:
        raise ShapeError(
            f"need a 3D volume and crop/mask of equal 3D shape, got {volume.shape}, {crop.shape}, {mask.shape}"
        )
    for name, arr in (("volume", volume), ("crop", crop)):
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ShapeError(f"{name} must be a real-valued array in HU, got dtype {arr.dtype}")
        finite = np.isfinite(arr)
        if not finite.all():
            raise ShapeError(
                f"{name} holds {int(arr.size - finite.sum())} non-finite voxel(s) (NaN or inf); paste_back "
                "needs finite HU values in both the CT and the decoded crop"
            )
    lo = tuple(int(o) for o in offset)
    hi = tuple(o + s for o, s in zip(lo, crop.shape, strict=True))
    if any(o < 0 for o in lo) or any(h > s for h, s in zip(hi, volume.shape, strict=True)):
        raise ShapeError(f"crop {crop.shape} at offset {lo} does not fit inside volume {volume.shape}")
    w = blend_weights(mask, dilation=dilation, feather=feather)
    out = volume.copy()
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    region = out[sl]
    sel = w > 0
    blended = w[sel] * crop[sel].astype(np.float64) + (1.0 - w[sel]) * region[sel].astype(np.float64)
    region[sel] = blended.astype(volume.dtype)
    return out
