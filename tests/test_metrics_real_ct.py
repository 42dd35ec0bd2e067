"""Image-quality metrics (shape-metrics) on real CT volumes (the bundled cases of ctsynth-bench).

shape-metrics' own tests use CT-like phantoms because that library cannot depend on the bench
data; this cross-package test runs FID, KID, FVD and LPIPS on crops of the real abdomen and chest
CT: a set against an exact copy of itself gives (about) zero, and the distance grows as Gaussian
noise is added, and is large between different anatomy.
"""

from __future__ import annotations

import numpy as np
import pytest
import shape_metrics as sm
from ctsynth_bench.data import load_case

pytestmark = pytest.mark.skipif(
    not all(sm.weights_status().values()),
    reason="feature-network weights not installed (shape-metrics weights install)",
)

CROP = 48
SLICES = {"slices_per_axis": 3}
VOLUMES = 3
CLIPS = {"clips_per_volume": 2}


def _crops(ct: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random CROP^3 crops from the central body region of a HU volume."""
    body = np.argwhere(ct > -300)
    lo = np.maximum(body.min(0), 0)
    hi = np.minimum(body.max(0) + 1, ct.shape) - CROP
    out = []
    for _ in range(n):
        start = [int(rng.integers(lo[a], max(hi[a], lo[a] + 1))) for a in range(3)]
        out.append(ct[start[0]:start[0] + CROP, start[1]:start[1] + CROP, start[2]:start[2] + CROP].copy())
    return out


@pytest.fixture(scope="module")
def sets() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    abdomen = _crops(load_case("abdomen").ct.astype(np.float32), VOLUMES, rng)
    chest = _crops(load_case("chest").ct.astype(np.float32), VOLUMES, rng)
    noisy = {
        sigma: [(c + rng.normal(0.0, sigma, c.shape)).astype(np.float32) for c in abdomen]
        for sigma in (40.0, 160.0)
    }
    return {
        "abdomen": abdomen,
        "copy": [c.copy() for c in abdomen],
        "noise40": noisy[40.0],
        "noise160": noisy[160.0],
        "chest": chest,
    }


def test_fid_kid_on_real_ct(sets: dict[str, list[np.ndarray]]) -> None:
    feats = {k: sm.inception_features_2_5d(v, **SLICES) for k, v in sets.items()}
    fid = {}
    for k in ("copy", "noise40", "noise160", "chest"):
        per_axis = [sm.frechet_distance(
            feats["abdomen"][a].mean(0), np.cov(feats["abdomen"][a], rowvar=False),
            feats[k][a].mean(0), np.cov(feats[k][a], rowvar=False),
        ) for a in ("x", "y", "z")]
        fid[k] = float(np.mean(per_axis))
    assert all(np.isfinite(list(fid.values())))
    assert fid["copy"] < 1e-3
    assert fid["noise40"] > 1.0
    assert fid["noise160"] > fid["noise40"]
    assert fid["chest"] > fid["noise40"]

    kid = {k: np.mean([sm.kid_from_features(feats["abdomen"][a], feats[k][a], n_subsets=20)[0]
                       for a in ("x", "y", "z")]) for k in ("copy", "noise40", "noise160")}
    assert kid["copy"] <= 0.0 < kid["noise40"] < kid["noise160"]


def test_fvd_on_real_ct(sets: dict[str, list[np.ndarray]]) -> None:
    self_fvd = sm.fvd(sets["abdomen"], sets["copy"], **CLIPS)
    low = sm.fvd(sets["abdomen"], sets["noise40"], **CLIPS)
    high = sm.fvd(sets["abdomen"], sets["noise160"], **CLIPS)
    assert np.isfinite([self_fvd, low, high]).all()
    assert abs(self_fvd) < 1e-3
    assert 1.0 < low < high


def test_lpips_on_real_ct(sets: dict[str, list[np.ndarray]]) -> None:
    same = sm.lpips_2_5d(sets["abdomen"], sets["copy"], **SLICES)["mean"]
    low = sm.lpips_2_5d(sets["noise40"], sets["abdomen"], **SLICES)["mean"]
    high = sm.lpips_2_5d(sets["noise160"], sets["abdomen"], **SLICES)["mean"]
    assert same == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < low < high < 1.5
