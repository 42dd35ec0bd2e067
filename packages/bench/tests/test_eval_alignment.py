"""Text alignment in CT (``eval.alignment``): the measurement sees what the text changes.

The networks are replaced by ``FakeLesionSystem`` (tests/ld_fake_system.py): "irregular" makes
a bumpy mask, hypo-/hyperdense shift the lesion by -40/+40 HU, and the null context ignores the
report. Its other attributes (variation, margin) do nothing, so with the same noise their arms
must come out identical: the design, not luck, makes a gap zero.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ctsynth_bench.eval.alignment import (
    alignment_figures,
    alignment_table_md,
    boundary_sharpness,
    contrasts_for,
    measure_alignment,
)
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from ld_fake_system import FakeLesionSystem


@pytest.fixture(scope="module")
def result() -> dict:
    torch.set_num_threads(1)
    return measure_alignment(FakeLesionSystem(), types=["kidney_cancer"], n_per_type=3, seed=1)


def test_contrasts_follow_the_vocabulary() -> None:
    assert contrasts_for("liver_cancer") == {
        "shape": ("round-like", "irregular"),
        "density": ("hypodense", "isodense", "hyperdense"),
        "variation": ("homogeneous", "heterogeneous"),
        "margin": ("well-defined margin", "ill-defined margin"),
    }
    assert contrasts_for("pancreas_cancer")["density"] == ("hypodense", "isodense")
    assert "margin" not in contrasts_for("pancreas_cancer")  # only ill-defined is allowed
    assert contrasts_for("colon_cancer") == {"variation": ("homogeneous", "heterogeneous")}
    assert contrasts_for("gallstone") == {}
    with pytest.raises(ValueError):
        contrasts_for("brain_tumour")


def test_text_effects_are_measured_and_vanish_without_text(result: dict) -> None:
    t = result["types"]["kidney_cancer"]
    assert t["n"] == 3 and not result["failed"]
    sph, conv = t["shape"]
    assert sph["metric"] == "sphericity" and conv["metric"] == "convexity"
    # "irregular" bumps the mask in every pair (same box, same noise)
    assert sph["in_order"] == 1.0 and sph["gap"] > 0.02
    assert conv["in_order"] == 1.0 and conv["gap"] > 0.01
    assert abs(sph["null"]["gap"]) < sph["gap"] / 3
    # density: +-40 HU offsets -> hypo < iso < hyper in every case, ~40 HU apart
    dens = {r["order"]: r for r in t["density"]}
    for order in ("isodense > hypodense", "hyperdense > isodense"):
        assert dens[order]["in_order"] == 1.0
        assert 25 < dens[order]["gap"] < 55
        assert abs(dens[order]["null"]["gap"]) < 10
    # attributes the system ignores: identical arms under the same noise, exactly zero gap
    assert t["variation"][0]["gap"] == 0.0 and t["margin"][0]["gap"] == 0.0
    assert t["variation"][0]["null"]["gap"] != 0.0  # independent noise in the ablation
    # size and location are measured on every case
    assert t["size"]["n"] == 3 and t["size"]["mean_error"] < 0.3
    assert t["location"]["inside_fraction"] > 0.5
    case = result["cases"][0]
    assert set(case["text"]) == {"shape", "density", "variation", "margin"}
    assert case["base"]["location_requested"] in ("within", "protruding")
    json.dumps(result)  # JSON-ready


def test_pooled_rows_and_report(result: dict, tmp_path: Path) -> None:
    assert result["all"]["density"][0]["n"] == 3
    md = alignment_table_md(result)
    assert "**all types**" in md and "sphericity" in md and "text removed" in md
    figs = alignment_figures(result, tmp_path)
    assert set(figs) == {"fig4a_shape", "fig4b_density", "fig4c_variation"}
    for p in figs.values():
        assert p.stat().st_size > 10_000


def test_without_text_the_arms_differ_only_by_noise() -> None:
    r = measure_alignment(
        FakeLesionSystem(), types=["kidney_cancer"], n_per_type=2, seed=1, text=False
    )
    dens = r["types"]["kidney_cancer"]["density"][2]  # hyper > hypo
    assert dens["order"] == "hyperdense > hypodense" and abs(dens["gap"]) < 10
    assert r["cases"][0]["null"] == {}  # no separate ablation without text


def test_boundary_sharpness_falls_with_blur() -> None:
    g = np.indices((40, 40, 40)) - 20
    m = (g**2).sum(0) <= 8**2
    sharp = np.where(m, 80.0, 20.0)
    blurred = ndimage.gaussian_filter(sharp, 2.0)
    s1 = boundary_sharpness(sharp, m, (1.0, 1.0, 1.0))
    s2 = boundary_sharpness(blurred, m, (1.0, 1.0, 1.0))
    assert s1 > 1.5 * s2 > 0
    # contrast-normalised: the same edge at twice the contrast has the same sharpness
    assert boundary_sharpness(2 * sharp, m, (1.0, 1.0, 1.0)) == pytest.approx(s1, rel=1e-6)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="n_per_type"):
        measure_alignment(FakeLesionSystem(), types=["kidney_cancer"], n_per_type=0)
