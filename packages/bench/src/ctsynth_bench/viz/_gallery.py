"""Gallery figure of a lesion dataset: one lesion of each type, three views zoomed on it, outlined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import report_bbox

from .._checks import check_file_target, check_lesion_types
from ..data import read_nifti
from ..exceptions import BenchError, DataError
from ._views import _save_png_atomically

_LUNG_WINDOW = (-600.0, 1500.0)
_SOFT_WINDOW = (40.0, 300.0)


def _views(ct: np.ndarray, lab: np.ndarray, spacing: tuple[float, ...], half_mm: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Axial, coronal, sagittal crops through the lesion centre (image, label, aspect)."""
    c = np.round(np.argwhere(lab).mean(0)).astype(int)
    half = [int(np.ceil(half_mm / s)) for s in spacing]

    def window(axis_keep: tuple[int, int]) -> tuple[slice, slice]:
        return tuple(slice(max(0, c[a] - half[a]), min(ct.shape[a], c[a] + half[a] + 1)) for a in axis_keep)  # type: ignore[return-value]

    out = []
    for fixed, keep in ((2, (0, 1)), (1, (0, 2)), (0, (1, 2))):
        sl = [slice(None)] * 3
        sl[fixed] = c[fixed]  # type: ignore[call-overload]
        a, b = window(keep)
        sl[keep[0]], sl[keep[1]] = a, b
        img = ct[tuple(sl)]
        lb = lab[tuple(sl)]
        # Radiological display: rows = second axis (A or S) flipped upward, columns = first axis.
        out.append((np.flipud(img.T), np.flipud(lb.T), spacing[keep[1]] / spacing[keep[0]]))
    return out


def make_gallery(root: str | Path, out: str | Path, *, types: tuple[str, ...] | None = None) -> list[str]:
    """Draw one case per lesion type from a dataset (largest-enough lesion of each type).

    Args:
        root: dataset written by ``synthesize_dataset``.
        out: PNG path.
        types: lesion types to show (default: every type present, in the canonical order).

    Returns:
        The case ids shown, in row order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        out = check_file_target(out, "make_gallery: out")
        check_lesion_types(types, label="make_gallery: types")
    except BenchError as exc:
        raise DataError(str(exc)) from None
    root = Path(root)
    metas = [_read_report(p) for p in sorted((root / "reports").glob("*.json"))]
    if not metas:
        raise DataError(f"{root} holds no reports/*.json; is it a dataset written by 'bench data lesions'?")
    by_type: dict[str, dict] = {}
    for meta in metas:
        t = meta["lesion_type"]
        vox = meta.get("synthesis", {}).get("voxels", 0)
        # Prefer a lesion of moderate size (most legible), else the largest.
        best = by_type.get(t)
        if best is None or abs(np.log((vox + 1) / 300.0)) < abs(np.log((best["synthesis"]["voxels"] + 1) / 300.0)):
            by_type[t] = meta
    order = [t for t in (types or tuple(report_bbox.LESION_TYPES)) if t in by_type]
    per_row = 2  # two lesion types side by side, three views each
    nrows = -(-len(order) // per_row)
    fig, axes = plt.subplots(nrows, 3 * per_row, figsize=(15.0, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    shown = []
    for k, t in enumerate(order):
        row, col0 = divmod(k, per_row)
        col0 *= 3
        meta = by_type[t]
        case = meta["case"]
        ct, affine = read_nifti(root / "imagesTr" / f"{case}_0000.nii.gz")
        ct = ct.astype(np.float32)
        lab = read_nifti(root / "labelsTr" / f"{case}.nii.gz")[0] > 0
        if lab.shape != ct.shape or not lab.any():
            raise DataError(f"{root / 'labelsTr' / (case + '.nii.gz')}: empty, or not on the image's grid")
        spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        ext = np.ptp(np.argwhere(lab), axis=0) * np.asarray(spacing)
        half = float(max(25.0, 1.2 * ext.max()))
        center, width = _LUNG_WINDOW if meta["synthesis"]["spec"]["organ"] == "lung" else _SOFT_WINDOW
        vmin, vmax = center - width / 2, center + width / 2
        for col, (im, lb, aspect) in enumerate(_views(ct, lab, spacing, half)):
            ax = axes[row, col0 + col]
            ax.axis("on")
            ax.imshow(im, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            if lb.any():
                ax.contour(lb.astype(float), levels=[0.5], colors="#ff3030", linewidths=0.6, alpha=0.55)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                spec = meta["synthesis"]["spec"]
                ax.set_ylabel(f"{t}\n{spec['shape']}, {spec['density']}\n{spec['margin']}", fontsize=7)
            if row == 0:
                ax.set_title(("axial", "coronal", "sagittal")[col], fontsize=8)
        shown.append(case)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _save_png_atomically(fig, out, dpi=110)
    finally:
        plt.close(fig)
    return shown


def _read_report(path: Path) -> dict:
    """One ``reports/*.json`` with the fields the gallery reads; errors name the file."""
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not {"case", "lesion_type", "synthesis"} <= set(meta):
        raise DataError(f"{path}: not a report of 'bench data lesions' (case, lesion_type, synthesis)")
    return meta
