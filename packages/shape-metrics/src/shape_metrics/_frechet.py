"""Fréchet distance between two Gaussians (the FID / FVD statistic), stable in float64.

``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``   (Heusel et al. 2017, Eq. 6;
Dowson & Landau 1982).

The trace of the matrix square root is computed without ``sqrtm`` of a non-symmetric product:
with ``A = S1^(1/2)`` (symmetric, from ``eigh``), ``S1 S2`` is similar to the symmetric PSD matrix
``A S2 A``, so ``tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(A S2 A))``. Tiny negative eigenvalues from
rounding are clipped to zero. This needs no ``eps`` offset and stays accurate when covariances are
singular (more features than samples), where ``scipy.linalg.sqrtm(S1 @ S2)`` is the reference the
tests compare against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shape_metrics.exceptions import ShapeMetricsError

__all__ = ["frechet_distance", "gaussian_statistics"]


def _as_np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of features (N, D), N >= 2."""
    f = _as_np(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ShapeMetricsError(f"features must be (N, D) with N >= 2 samples; got shape {f.shape}.")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1: (D,) mean of the first set.
        sigma1: (D, D) symmetric PSD covariance of the first set.
        mu2: (D,) mean of the second set.
        sigma2: (D, D) covariance of the second set.

    Returns:
        The squared Fréchet distance (the number reported as FID/FVD), >= 0, float64.

    Raises:
        ShapeMetricsError: shapes do not match or values are not finite.
    """
    m1, m2, s1, s2 = _as_np(mu1).ravel(), _as_np(mu2).ravel(), _as_np(sigma1), _as_np(sigma2)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ShapeMetricsError(
            f"expected mu (D,) and sigma (D, D) with one D; got mu1 {m1.shape}, sigma1 {s1.shape}, "
            f"mu2 {m2.shape}, sigma2 {s2.shape}."
        )
    if not all(np.isfinite(a).all() for a in (m1, m2, s1, s2)):
        raise ShapeMetricsError("means and covariances must be finite (no NaN or inf).")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root1 @ s2 @ root1
    lam = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_covmean = np.sqrt(np.clip(lam, 0.0, None)).sum()
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)
