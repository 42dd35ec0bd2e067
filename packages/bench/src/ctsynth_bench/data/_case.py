"""The in-memory CT case that every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CTCase:
    """One CT with its masks, in RAS voxel order.

    Attributes:
        name: case name.
        ct: float32 HU, shape ``(X, Y, Z)``.
        organs: integer TotalSegmentator v2 "total" ids, shape ``(X, Y, Z)``, or ``None``.
        lesion: uint8 0/1 lesion mask, shape ``(X, Y, Z)``, or ``None``.
        affine: 4x4 float64 voxel -> RAS world (mm).
        spacing: voxel size in mm, ``(x, y, z)``.
        body: uint8 0/1 body mask where the case has one (derived chest cases), else ``None``.
    """

    name: str
    ct: np.ndarray
    organs: np.ndarray | None
    lesion: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    body: np.ndarray | None = None
