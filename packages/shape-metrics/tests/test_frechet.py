"""Fréchet distance against the scipy.linalg.sqrtm reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import shape_metrics as sm
from shape_metrics._frechet import gaussian_statistics


def _reference(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize(("n", "d"), [(200, 16), (64, 64), (20, 48), (10, 128)])
def test_matches_scipy_reference(n, d):
    rng = np.random.default_rng(n * 1000 + d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
    mu1, s1 = gaussian_statistics(a)
    mu2, s2 = gaussian_statistics(b)
    ours = sm.frechet_distance(mu1, s1, mu2, s2)
    ref = _reference(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_identity_and_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 40))  # more features than samples: singular covariance
    mu, s = gaussian_statistics(x)
    assert sm.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    # Diagonal covariances: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a = np.diag([1.0, 4.0, 9.0])
    b = np.diag([4.0, 1.0, 0.0])
    expected = 3.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0) ** 2
    assert sm.frechet_distance(np.zeros(3), a, np.ones(3), b) == pytest.approx(expected)


def test_bad_shapes():
    with pytest.raises(sm.ShapeMetricsError, match="expected mu"):
        sm.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(sm.ShapeMetricsError, match="finite"):
        sm.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
