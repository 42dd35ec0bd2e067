"""``bench perf lesiondiffusion``: the measurement runs and reports every number it promises.

Timing goals are checked by running the benchmark (see the README), not by this test; here the
numbers must exist, be consistent with each other, and come from the right inputs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ctsynth_bench.cli.main import main
from ctsynth_bench.lesiondiffusion.perf import (
    LARGE_SHAPE,
    SMALL_SHAPE,
    format_table,
    make_ct,
    run_perf,
)


def test_make_ct_keeps_the_field_of_view() -> None:
    small = make_ct((64, 60, 56))
    from ctsynth_bench.data import load_case

    case = load_case("abdomen")
    corner = lambda aff, shape: aff @ np.array([*(np.asarray(shape) - 0.5), 1.0])  # noqa: E731
    assert np.allclose(
        corner(small.affine, small.ct.shape), corner(case.affine, case.ct.shape), atol=1e-6
    )
    assert np.allclose(
        small.affine @ [-0.5, -0.5, -0.5, 1], case.affine @ [-0.5, -0.5, -0.5, 1], atol=1e-6
    )
    assert small.ct.dtype == np.int16 and set(np.unique(small.organs)) <= set(
        np.unique(case.organs)
    )


def test_perf_reports_stages_scaling_overhead_and_memory() -> None:
    import torch
    from ctsynth_bench.lesiondiffusion.system import LesionDiffusionSystem

    torch.set_num_threads(1)
    system = LesionDiffusionSystem.from_preset("demo", seed=0)
    r = run_perf(system, steps=1, repeats=1, library_check=False)
    assert r.shapes == {"small": list(SMALL_SHAPE), "large": list(LARGE_SHAPE)}
    for stages in (r.stages_small, r.stages_large):
        assert set(stages) == {"place", "crop", "mask", "inpaint", "paste", "write"}
        assert all(v > 0 for v in stages.values())
    assert r.synth_small_s == pytest.approx(
        sum(v for k, v in r.stages_small.items() if k != "write")
    )
    assert r.ratio == pytest.approx(r.synth_large_s / r.synth_small_s)
    assert r.stages_large["write"] > r.stages_small["write"]  # writing the whole CT does scale
    assert all(v > 0 for v in r.network_s.values())
    assert all(v >= 1.0 and math.isfinite(v) for v in r.sampler_overhead.values())
    assert r.peak_numpy_bytes["large"] > 0 and r.peak_rss_bytes > 0 and r.cuda_peak_bytes is None
    table = format_table(r)
    assert "512x512x300" in table and "goal <= 1.2" in table and "goal <= 1.05" in table
    json.dumps(r.to_dict())


def test_perf_cli_checks_its_options(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["perf", "lesiondiffusion", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err
    assert main(["perf", "lesiondiffusion", "--run", str(tmp_path)]) == 2
    assert "not a LesionDiffusion run" in capsys.readouterr().err
