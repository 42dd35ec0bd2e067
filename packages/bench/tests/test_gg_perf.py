"""``bench perf guidegen``: every stage timed and measured on the shipped demo, JSON, bad input."""

from __future__ import annotations

import json

import pytest
from ctsynth_bench.cli.main import main
from ctsynth_bench.guidegen.perf import STAGES, GuideGenPerf, format_table, run_perf

TCSS_STEPS = 2  # not the preset's 20, so the call count shows that the option reached the sampler


@pytest.fixture(scope="module")
def result() -> GuideGenPerf:
    return run_perf(tcss_steps=TCSS_STEPS, gen_steps=1)


def test_demo_preset_measures_every_stage(result: GuideGenPerf) -> None:
    (p,) = result.presets
    assert p.preset == "demo" and p.weights.startswith("trained") and p.mode == "full"
    assert list(p.stages) == list(STAGES)
    for name, s in p.stages.items():
        assert s.seconds > 0, name
        assert s.peak_bytes is not None and s.peak_bytes > 0, name
        if s.growth_bytes is not None:  # None only where the peak mark cannot be reset
            assert 0 <= s.growth_bytes <= s.peak_bytes, name
    assert p.volume_seconds == pytest.approx(sum(s.seconds for s in p.stages.values()) / p.batch)
    assert p.volume_peak_bytes == max(s.peak_bytes for s in p.stages.values())


def test_fast_sampler_calls_match_the_steps_and_extrapolation_is_labelled(
    result: GuideGenPerf,
) -> None:
    s = result.presets[0].stages
    assert s["tcss"].steps == s["tcss"].calls == TCSS_STEPS
    assert s["tcss"].full_steps == 20 and s["generator"].steps == 1
    assert s["tcss"].seconds_per_call == pytest.approx(s["tcss"].seconds / TCSS_STEPS)
    p = result.presets[0]
    assert p.extrapolated and p.volume_full_seconds > p.volume_seconds
    table = format_table(result)
    assert "EXTRAPOLATED" in table and f"{TCSS_STEPS}/20" in table


def test_json_parses_and_references_need_cuda_on_the_cpu(
    result: GuideGenPerf, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctsynth_bench.guidegen.perf as perf

    seen = {}

    def fake(run, **kw):  # the CLI's own path, without measuring twice
        seen.update(kw)
        return result

    monkeypatch.setattr(perf, "run_perf", fake)
    assert main(["-q", "perf", "guidegen", "--json", "--tcss-steps", str(TCSS_STEPS)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert seen["presets"] == ("demo",) and seen["tcss_steps"] == TCSS_STEPS
    st = d["presets"][0]["stages"]
    assert set(st) == set(STAGES) and st["tcss"]["calls"] == TCSS_STEPS
    assert all(r["status"] == "needs CUDA" for r in d["references"])
    assert "needs CUDA" in format_table(result)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--presets", "demo,huge"], ["'huge'", "allowed: demo, paper"]),
        (["--repeats", "0"], ["--repeats", ">= 1"]),
        (["--tcss-steps", "0"], ["--tcss-steps", ">= 1"]),
        (["--run", "no_such_run_folder"], ["--run no_such_run_folder", "no such folder"]),
        (["--device", "tpu"], ["--device 'tpu'", "cpu and cuda"]),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["perf", "guidegen", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
