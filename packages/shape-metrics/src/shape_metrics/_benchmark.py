"""Benchmark: shape features here vs pyradiomics-bhklab on the same lesion-like masks."""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy import ndimage

from shape_metrics._shape import shape_features

__all__ = ["benchmark_shape", "random_lesion_masks"]


def random_lesion_masks(n: int, size: int, seed: int) -> list[tuple[np.ndarray, tuple[float, float, float]]]:
    """``n`` irregular blob masks (smoothed thresholded noise around an ellipsoid) with spacings."""
    rng = np.random.default_rng(seed)
    out = []
    g = np.mgrid[:size, :size, :size].astype(np.float64) - (size - 1) / 2
    for _ in range(n):
        radii = rng.uniform(0.15, 0.35, size=3) * size
        ell = ((g / radii[:, None, None, None]) ** 2).sum(0)
        noise = ndimage.gaussian_filter(rng.normal(size=(size,) * 3), sigma=rng.uniform(1.5, 3.0))
        mask = (ell + 4.0 * noise / noise.std() * rng.uniform(0.05, 0.25)) < 1.0
        if not mask.any():
            mask = ell < 1.0
        spacing = (float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.6, 1.0)), float(rng.choice([1.0, 1.5, 2.5])))
        out.append((mask, spacing))
    return out


def benchmark_shape(*, n_masks: int = 100, size: int = 40, seed: int = 0) -> dict[str, float]:
    """Time shape features (no convexity) here and pyradiomics' RadiomicsShape on the same masks.

    Both sides include their own conversion (SimpleITK image construction for pyradiomics).

    Returns:
        Dict with ``ours_s``, ``pyradiomics_s``, ``ratio`` (pyradiomics / ours), and the largest
        absolute sphericity difference and relative volume / diameter differences.

    Raises:
        ImportError: pyradiomics-bhklab (``radiomics``) or SimpleITK is not installed.
    """
    import SimpleITK as sitk
    from radiomics import shape as rshape

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    masks = random_lesion_masks(n_masks, size, seed)

    def pyradiomics_shape(m: np.ndarray, sp: tuple[float, float, float]) -> dict[str, float]:
        img = sitk.GetImageFromArray(m.astype(np.float32).transpose(2, 1, 0))
        img.SetSpacing(sp)
        lab = sitk.GetImageFromArray(m.astype(np.uint8).transpose(2, 1, 0))
        lab.CopyInformation(img)
        ext = rshape.RadiomicsShape(img, lab)
        ext.enableAllFeatures()
        return {k: float(v) for k, v in ext.execute().items()}

    # Warm up both (imports, our one-time triangle table) outside the timed loops.
    shape_features(*masks[0], convexity=False)
    pyradiomics_shape(*masks[0])
    t0 = time.perf_counter()
    ours = [shape_features(m, sp, convexity=False) for m, sp in masks]
    t1 = time.perf_counter()
    ref = [pyradiomics_shape(m, sp) for m, sp in masks]
    t2 = time.perf_counter()
    return {
        "n_masks": float(n_masks),
        "ours_s": t1 - t0,
        "pyradiomics_s": t2 - t1,
        "ratio": (t2 - t1) / (t1 - t0),
        "max_abs_sphericity_diff": max(abs(o["sphericity"] - r["Sphericity"]) for o, r in zip(ours, ref, strict=True)),
        "max_rel_volume_diff": max(
            abs(o["volume_mm3"] - r["MeshVolume"]) / r["MeshVolume"] for o, r in zip(ours, ref, strict=True)
        ),
        "max_rel_diameter_diff": max(
            abs(o["max_3d_diameter_mm"] - r["Maximum3DDiameter"]) / r["Maximum3DDiameter"]
            for o, r in zip(ours, ref, strict=True)
        ),
    }
