"""Overlap and surface-distance metrics between binary segmentations (MONAI underneath).

HD95 conventions (both offered by name):

* ``"monai"`` (default): the larger of the two directed 95th percentiles,
  ``max(P95(d(pred -> ref)), P95(d(ref -> pred)))`` — MONAI's ``compute_hausdorff_distance``
  with ``percentile=95`` (also the MSD / Metrics Reloaded convention).
* ``"pooled"``: the 95th percentile of both directed distance sets pooled together —
  medpy's ``hd95`` and nnU-Net v1's evaluation.

Surfaces are the mask voxels removed by one binary erosion with the 6-neighbourhood; distances are
Euclidean between voxel centres in mm (exact distance transform with the spacing). Percentiles use
linear interpolation (numpy's default). Surfaces come from MONAI's ``get_mask_edges``; distances
are float64 exact Euclidean distance transforms (scipy), so values equal medpy's to rounding.

Empty masks: both empty -> NaN (nothing to compare); exactly one empty -> ``inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from shape_metrics._validate import as_mask, as_spacing, check_option
from shape_metrics.exceptions import MaskError

__all__ = ["HD95_CONVENTIONS", "dice", "hd95"]

HD95_CONVENTIONS: tuple[str, ...] = ("monai", "pooled")


def _pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p = as_mask(pred, name="pred", allow_empty=True)
    r = as_mask(ref, name="ref", allow_empty=True)
    if p.shape != r.shape:
        raise MaskError(f"pred and ref must have the same shape; got {p.shape} and {r.shape}.")
    return p, r


def dice(pred: Any, ref: Any, *, empty_value: float = float("nan")) -> float:
    """Dice coefficient ``2 |P ∩ R| / (|P| + |R|)``, in float64.

    Args:
        pred: (X, Y, Z) binary array (numpy or torch).
        ref: (X, Y, Z) binary array, same shape.
        empty_value: returned when both masks are empty (default NaN: undefined). When only one
            is empty the Dice is 0.

    Returns:
        Dice in [0, 1], or ``empty_value``.
    """
    p, r = _pair(pred, ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return float(empty_value)
    # Counted in integers, divided in float64 (MONAI's compute_dice returns float32).
    return float(2.0 * np.logical_and(p, r).sum() / total)


def hd95(
    pred: Any,
    ref: Any,
    spacing: Sequence[float],
    *,
    convention: Literal["monai", "pooled"] = "monai",
) -> float:
    """95th-percentile Hausdorff distance in mm.

    Args:
        pred: (X, Y, Z) binary array (numpy or torch).
        ref: (X, Y, Z) binary array, same shape.
        spacing: voxel size in mm, (sx, sy, sz).
        convention: ``"monai"`` (default; max of the two directed 95th percentiles) or
            ``"pooled"`` (95th percentile of both directions pooled; medpy / nnU-Net v1).

    Returns:
        Distance in mm >= 0; NaN when both masks are empty, ``inf`` when exactly one is.

    Raises:
        ConventionError: unknown convention (with a did-you-mean hint).
        MaskError: masks not 3D/binary or shapes differ.
    """
    from monai.metrics.utils import get_mask_edges

    check_option(convention, HD95_CONVENTIONS, name="convention")
    sp = as_spacing(spacing)
    p, r = _pair(pred, ref)
    if not p.any() and not r.any():
        return float("nan")
    if not p.any() or not r.any():
        return float("inf")
    # Surfaces from MONAI (cropped to the union bounding box, which holds every nearest surface
    # voxel, so distances are unchanged); exact float64 distance transforms from scipy.
    edges_p, edges_r = get_mask_edges(p, r, crop=True)
    edges_p = np.asarray(edges_p, dtype=bool)
    edges_r = np.asarray(edges_r, dtype=bool)
    d_pred = ndimage.distance_transform_edt(~edges_r, sampling=sp)[edges_p]  # pred -> ref
    d_ref = ndimage.distance_transform_edt(~edges_p, sampling=sp)[edges_r]  # ref -> pred
    if convention == "monai":
        return float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))
    return float(np.percentile(np.concatenate([d_pred, d_ref]), 95))
