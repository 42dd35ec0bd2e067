"""Three orthogonal views of a CT through a label's centre, with the label outlined.

Uses matplotlib's non-interactive Agg canvas (no display needed). Views are drawn with their true
aspect ratio from the voxel spacing, in radiological convention for the axial and coronal views
(patient's right on the image's left), superior up in the coronal and sagittal views.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_file_target
from ..exceptions import BenchError, DataError

#: Named HU windows (centre, width).
WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "mediastinum": (50.0, 350.0),
}


def _centre(label: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if label is None or not label.any():
        return tuple(s // 2 for s in shape)  # type: ignore[return-value]
    idx = np.argwhere(label)
    c = np.rint(idx.mean(axis=0)).astype(int)
    if not label[tuple(c)]:
        # Non-convex label: use the label voxel nearest to its centroid so every view cuts it.
        d = ((idx - idx.mean(axis=0)) ** 2).sum(axis=1)
        c = idx[int(np.argmin(d))]
    return (int(c[0]), int(c[1]), int(c[2]))


def render_views(
    ct: np.ndarray,
    *,
    label: np.ndarray | None = None,
    spacing: tuple[float, float, float],
    window: tuple[float, float] = WINDOWS["soft_tissue"],
    caption: str | None = None,
    out: str | os.PathLike[str],
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Write a PNG with axial, coronal and sagittal slices through the label's centre.

    Args:
        ct: HU volume, shape ``(X, Y, Z)`` in RAS voxel order.
        label: optional mask, same shape (non-zero = inside); its outline is drawn in each view and
            the slices pass through its centre (the volume's centre if ``None`` or empty).
        spacing: voxel size in mm ``(x, y, z)``, for the aspect ratio.
        window: HU window ``(centre, width)``; values map linearly to grey over
            ``[centre - width/2, centre + width/2]``.
        caption: text under the views (wrapped), e.g. a lesion report.
        out: PNG path (parent folders are created).
        title: text above the views.
        dpi: resolution of the PNG.

    Returns:
        The written path.

    Raises:
        DataError: wrong shapes, spacing or window.
    """
    ct = np.asarray(ct)
    if ct.ndim != 3:
        raise DataError(f"render_views: ct must be 3D (X, Y, Z), got shape {ct.shape}")
    if ct.dtype.kind not in "iuf" or not np.all(np.isfinite(ct)):
        raise DataError("render_views: ct must hold finite numbers (HU); found NaN, inf or non-numbers")
    if label is not None:
        label = np.asarray(label) != 0
        if label.shape != ct.shape:
            raise DataError(f"render_views: label shape {label.shape} differs from ct {ct.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DataError(f"render_views: spacing must be 3 positive mm values, got {spacing}")
    centre_hu, width = float(window[0]), float(window[1])
    if not (np.isfinite(centre_hu) and np.isfinite(width)) or width <= 0:
        raise DataError(
            f"render_views: window must be a finite centre and a width > 0 (HU), got {window}"
        )
    try:
        out = check_file_target(out, "render_views: out")
    except BenchError as exc:
        raise DataError(str(exc)) from None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cx, cy, cz = _centre(label, ct.shape)
    sx, sy, sz = (float(s) for s in spacing)
    lo, hi = centre_hu - width / 2, centre_hu + width / 2
    # Each view as (image rows, cols) with origin lower-left; x flipped so patient right is left.
    views = [
        (f"axial z={cz}", ct[:, :, cz].T[:, ::-1], None if label is None else label[:, :, cz].T[:, ::-1], sy / sx),
        (f"coronal y={cy}", ct[:, cy, :].T[:, ::-1], None if label is None else label[:, cy, :].T[:, ::-1], sz / sx),
        (f"sagittal x={cx}", ct[cx, :, :].T, None if label is None else label[cx, :, :].T, sz / sy),
    ]
    fig = Figure(figsize=(12, 5.2 if caption else 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (name, img, lab, aspect) in zip(axes, views, strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
        if lab is not None and lab.any():
            ax.contour(lab.astype(float), levels=[0.5], colors=["#ff3030"], linewidths=1.0, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].text(0.01, 0.01, "R", color="yellow", transform=axes[0].transAxes, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    if caption:
        fig.text(0.5, 0.02, textwrap.fill(caption, 150), ha="center", va="bottom", fontsize=8, wrap=True)
        fig.subplots_adjust(bottom=0.16)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_png_atomically(fig, out, dpi=dpi)
    return out


def _save_png_atomically(fig: Any, out: Path, *, dpi: int) -> None:
    """Write the figure to a temporary PNG beside ``out`` and rename it: never a half-written file."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(out)) from None
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
