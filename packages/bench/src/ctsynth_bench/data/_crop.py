"""Crops around a lesion box, with the offset that pasting the crop back needs.

Both systems work on a fixed-size crop around a lesion box (LesionDiffusion: 128^3 voxels in the
paper) and paste the result back into the full CT. :func:`crop_around_box` returns the crop and
the voxel index of its first corner in the volume, so that ``volume[..., o0:o0+s0, o1:o1+s1,
o2:o2+s2]`` is the crop and ``lesion_inpaint.paste_back(volume, crop, mask, offset=offset)`` puts
it back where it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from ..exceptions import DataError

T = TypeVar("T")


class BoxLike(Protocol):
    """A box in voxel indices: ``lo`` inclusive, ``hi`` exclusive (``report_bbox.BBox`` is one)."""

    @property
    def lo(self) -> Sequence[int]: ...

    @property
    def hi(self) -> Sequence[int]: ...


def _corners(box: Any) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    if hasattr(box, "lo") and hasattr(box, "hi"):
        lo, hi = box.lo, box.hi
    else:
        try:
            lo, hi = box
        except (TypeError, ValueError):
            raise DataError(
                f"crop_around_box: box must have .lo/.hi (e.g. report_bbox.BBox) or be a (lo, hi) "
                f"pair of 3 voxel indices each, got {box!r}"
            ) from None
    try:
        lo_t = tuple(int(v) for v in lo)
        hi_t = tuple(int(v) for v in hi)
    except (TypeError, ValueError):
        raise DataError(
            f"crop_around_box: box corners must be integers, got lo={lo!r} hi={hi!r}"
        ) from None
    if len(lo_t) != 3 or len(hi_t) != 3 or any(h <= a for a, h in zip(lo_t, hi_t, strict=True)):
        raise DataError(f"crop_around_box: box needs 3 axes with hi > lo, got lo={lo_t} hi={hi_t}")
    return lo_t, hi_t  # type: ignore[return-value]


def crop_around_box(
    volume: T, box: BoxLike | tuple[Sequence[int], Sequence[int]], size: int | Sequence[int]
) -> tuple[T, tuple[int, int, int]]:
    """Cut a ``size`` window centred on ``box``, moved inward where it would leave the volume.

    The window's centre is the box centre (rounded down to a voxel); where the window would cross
    the volume's border it is shifted inward, never shrunk or padded, so the crop always has
    exactly ``size`` voxels and lies inside the volume. The box must fit in the window.

    Args:
        volume: array or tensor whose last three axes are ``(X, Y, Z)``, e.g. a CT ``(X, Y, Z)``
            or a batch ``(B, C, X, Y, Z)``; leading axes are kept whole.
        box: ``lo`` (inclusive) and ``hi`` (exclusive) voxel corners, as a ``report_bbox.BBox``
            or a ``(lo, hi)`` pair, in the volume's last three axes.
        size: crop size in voxels, one int for a cube or three.

    Returns:
        ``(crop, offset)``: ``crop`` is ``volume[..., o0:o0+s0, o1:o1+s1, o2:o2+s2]`` (a view for
        numpy arrays and torch tensors; copy it before writing), ``offset`` the voxel index of
        its first corner in the volume.

    Raises:
        DataError: a volume with fewer than 3 axes, a size that is not positive or larger than the
            volume, a box outside the volume, or a box larger than the window.
    """
    shape = tuple(getattr(volume, "shape", ()))
    if len(shape) < 3:
        raise DataError(
            f"crop_around_box: volume needs at least 3 axes (..., X, Y, Z), got shape {shape}"
        )
    spatial = tuple(int(s) for s in shape[-3:])
    sizes = (int(size),) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sizes) != 3 or any(s < 1 for s in sizes):
        raise DataError(
            f"crop_around_box: size must be a positive int or 3 positive ints, got {size!r}"
        )
    if any(s > n for s, n in zip(sizes, spatial, strict=True)):
        raise DataError(
            f"crop_around_box: crop size {sizes} does not fit in the volume's spatial shape "
            f"{spatial}; "
            "pad the volume first or crop smaller"
        )
    lo, hi = _corners(box)
    if any(a < 0 for a in lo) or any(h > n for h, n in zip(hi, spatial, strict=True)):
        raise DataError(f"crop_around_box: box lo={lo} hi={hi} is not inside the volume {spatial}")
    box_size = tuple(h - a for a, h in zip(lo, hi, strict=True))
    if any(b > s for b, s in zip(box_size, sizes, strict=True)):
        raise DataError(
            f"crop_around_box: box of {box_size} voxels does not fit in a crop of {sizes}"
        )
    offset = []
    for a, h, s, n in zip(lo, hi, sizes, spatial, strict=True):
        start = (a + h - 1) // 2 - (s - 1) // 2  # window centre on the box centre voxel
        offset.append(min(max(start, 0), n - s))
    off = (offset[0], offset[1], offset[2])
    crop = volume[(..., *(slice(o, o + s) for o, s in zip(off, sizes, strict=True)))]  # type: ignore[index]
    return crop, off
