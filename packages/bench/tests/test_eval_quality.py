"""Image quality of lesion crops (``eval.quality``): FID, KID and LPIPS can tell sets apart.

Crops of the bundled chest case's real lung tumour (four offset crops of one lesion); the
"different" set is the same crops with strong Gaussian noise (sd 300 HU). The Inception and
LPIPS weights come from the shape-metrics cache (``shape-metrics weights install``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import shape_metrics
import torch
from ctsynth_bench.eval.quality import (
    frechet_distance_samples,
    measure_quality,
    quality_figure,
    quality_table_md,
)
from ctsynth_bench.eval.sets import real_lesion_crops


@pytest.fixture(scope="module")
def crops():
    torch.set_num_threads(1)
    a = real_lesion_crops(["chest"], size=32, per_lesion=4, jitter=0.1)
    noise = np.random.default_rng(0).normal(0.0, 300.0, a.ct.shape).astype(np.float32)
    return a, dataclasses.replace(a, ct=a.ct + noise)


@pytest.fixture(scope="module")
def result(crops) -> dict:
    a, noisy = crops
    return measure_quality(a, {"same": a, "noisy": noisy}, slices_per_axis=2)


def test_fid_in_sample_space_equals_shape_metrics() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 40)), rng.normal(size=(5, 40)) + 0.3
    ref = shape_metrics.frechet_distance(
        *shape_metrics.gaussian_statistics(x), *shape_metrics.gaussian_statistics(y)
    )
    assert frechet_distance_samples(x, y) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance_samples(x, x) == pytest.approx(0.0, abs=1e-9)


def test_identical_sets_score_zero_and_different_sets_do_not(result: dict) -> None:
    rows = {(r["a"], r["b"]): r for r in result["rows"]}
    same, noisy = rows[("generated", "same")], rows[("generated", "noisy")]
    assert same["n_a"] == 4 and same["slices_a"] == 8
    assert same["fid"]["mean"] < 1e-6
    assert same["lpips_nearest"]["mean"] < 1e-6
    assert noisy["fid"]["mean"] > 20.0
    assert noisy["lpips_nearest"]["mean"] > 0.1
    # KID of a set against itself is slightly negative at small n (unbiased estimator); a
    # different set is clearly above it
    assert noisy["kid"]["mean"] > same["kid"]["mean"] + 0.05
    assert noisy["lpips_random"]["mean"] > same["lpips_random"]["mean"]


def test_reference_rows_and_report(result: dict, crops, tmp_path: Path) -> None:
    kinds = [r["kind"] for r in result["rows"]]
    assert kinds.count("generated vs reference") == 2
    assert "same set, two halves" in kinds  # one lesion: alternate crops
    ref = next(r for r in result["rows"] if r["kind"] == "reference vs reference")
    assert (ref["a"], ref["b"]) == ("same", "noisy") and ref["fid"]["mean"] > 20.0
    assert result["sets"]["noisy"]["n"] == 4
    md = quality_table_md(result)
    assert "| generated vs noisy |" in md and "KID" in md
    a, noisy = crops
    png = quality_figure(a, {"noisy": noisy}, tmp_path / "q.png", n=3)
    assert png.stat().st_size > 10_000


def test_sets_too_small_or_on_another_grid(crops) -> None:
    a, _ = crops
    with pytest.raises(ValueError, match="at least 2"):
        measure_quality(a, {"one": a.select([0])})
    other = real_lesion_crops(["chest"], size=24, per_lesion=2, jitter=0.1)
    with pytest.raises(ValueError, match="grid"):
        measure_quality(a, {"other": other})
    with pytest.raises(ValueError, match="reference"):
        measure_quality(a, {})
