"""Input checks shared by the metric modules (masks, spacings, option names)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from shape_metrics.exceptions import ConventionError, MaskError, SpacingError

__all__ = ["as_mask", "as_spacing", "check_option"]


def as_mask(mask: Any, *, name: str = "mask", allow_empty: bool = False) -> np.ndarray:
    """Return ``mask`` as a 3D boolean numpy array.

    Accepts numpy arrays and torch tensors (bool, integer or float with values 0/1).

    Raises:
        MaskError: not 3D, values other than 0/1, or empty when ``allow_empty`` is False.
    """
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise MaskError(
            f"{name} must be a 3D array (X, Y, Z); got {arr.ndim} dimensions with shape {arr.shape}. "
            "Squeeze batch/channel axes first (e.g. mask[0, 0])."
        )
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise MaskError(f"{name} must be boolean or numeric 0/1; got dtype {arr.dtype}.")
        bad = (arr != 0) & (arr != 1)
        if np.any(bad):
            vals = np.unique(arr[bad])[:5].tolist()
            raise MaskError(
                f"{name} must be binary (0/1 or bool); found values {vals}. "
                "Threshold it first, e.g. mask > 0.5, or select a label, e.g. labels == 1."
            )
        arr = arr != 0
    if not allow_empty and not arr.any():
        raise MaskError(f"{name} is empty (no foreground voxel); shape metrics need at least one voxel.")
    return arr


def as_spacing(spacing: Any) -> tuple[float, float, float]:
    """Return ``spacing`` as three positive finite floats (mm, same axis order as the mask).

    Raises:
        SpacingError: wrong length or non-positive / non-finite entries.
    """
    if isinstance(spacing, int | float):
        raise SpacingError(
            f"spacing must be three numbers (mm per voxel along x, y, z); got the scalar {spacing}. "
            f"For isotropic voxels pass ({spacing}, {spacing}, {spacing})."
        )
    try:
        vals = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise SpacingError(f"spacing must be a sequence of three numbers; got {spacing!r}.") from exc
    if len(vals) != 3:
        raise SpacingError(f"spacing must have 3 entries (x, y, z in mm); got {len(vals)}: {vals}.")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise SpacingError(f"spacing entries must be positive and finite (mm); got {vals}.")
    return vals  # type: ignore[return-value]


def check_option(value: str, allowed: Sequence[str], *, name: str) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise with a did-you-mean hint.

    Raises:
        ConventionError: ``value`` is not allowed.
    """
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConventionError(f"{name} must be one of {list(allowed)}; got {value!r}.{hint}")
