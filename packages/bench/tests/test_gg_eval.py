"""``bench eval guidegen``: all seven sections on the shipped demo at a tiny size, resume, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from ctsynth_bench.eval.guidegen import (
    GGEvalSettings,
    draw_maps,
    evaluate_guidegen,
    fid_25d,
    fvd_volumes,
    lpips_25d,
    tumour_only,
)
from ctsynth_bench.exceptions import BenchError

TINY = GGEvalSettings(
    n_per_site=2, n_real=4, n_sampler=2, baseline_minutes=1, ablation_minutes=1, ae_minutes=1,
    classifier_minutes=1, seg_minutes=1, downstream_sizes=(0, 4), n_real_train=4,
    n_tumour_test=2, n_train=8, max_steps=2, baseline_steps=2, slices_per_axis=1, fvd_clips=1,
)  # fmt: skip


def _finite(tree: object) -> bool:
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_finite(v) for v in tree)
    if isinstance(tree, float):
        return math.isfinite(tree)
    return True


def test_all_seven_sections_measure_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctsynth_bench.guidegen import training

    monkeypatch.setattr(training, "PER_CELL", 1)  # the ablation arms encode 24 prompts, not 480
    out = tmp_path / "eval"
    summary = evaluate_guidegen(None, out=out, settings=TINY, progress=False)
    assert set(summary.results) == {1, 2, 3, 4, 5, 6, 7}
    r = summary.results
    report = summary.report.read_text()
    for head in (
        "## 1. Mask quality", "## 2. Image quality", "## 3. Image-mask alignment",
        "## 4. Prompt alignment", "## 5. Ablations", "## 6. Sampler", "## 7. Downstream",
    ):  # fmt: skip
        assert head in report
    for png in ("masks.png", "cts.png", "downstream.png"):
        assert (out / png).stat().st_size > 1000
    # 1: three sources and the real halves, every value a number
    rows = r[1]["rows"]
    assert len(rows) == 4 and all(
        v["fid_full"] >= 0 and v["lpips_full"] >= 0 for v in rows.values()
    )
    # 2: G, R and real halves with FID, LPIPS and FVD
    assert {"fid", "lpips", "fvd"} <= set(r[2]["rows"]["R (real label maps)"])
    assert r[2]["blank"]["real CTs"] == []  # a real CT always shows its organs
    # 3: Dice per organ for generated CTs and real CTs
    assert r[3]["real_cts"] and r[3]["generated_from_generated_maps"]
    # 4: the shipped system follows its prompt: far above the text-removed rate
    assert r[4]["generated"]["site_rate"] >= r[4]["text_removed"]["site_rate"] + 0.4
    assert 0 <= r[4]["classifier"]["real_accuracy"] <= 1
    # 5: both TCSS arms and three autoencoder arms trained with the same cap
    assert set(r[5]["tcss"]) == {"knowledge injection", "plain cross-attention"}
    assert len(r[5]["autoencoder"]) == 3
    assert all(v["steps"] == TINY.max_steps for v in r[5]["autoencoder"].values())
    # 6: the fast sampler makes 10x fewer calls
    assert r[6]["call_ratio"] >= 10
    # 7: real only, generated only, generated + real
    assert [(x["generated"], x["real"] > 0) for x in r[7]["rows"]] == [
        (0, True), (4, False), (4, True),
    ]  # fmt: skip
    assert all(_finite(v) for v in r.values())
    # resume: everything is read back, nothing recomputed (the cached parts are not rewritten)
    stamp = {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    again = evaluate_guidegen(None, out=out, settings=TINY, progress=False, sections=(1, 6))
    assert again.results[1] == r[1] and again.results[6] == r[6]
    # the report keeps the time each section took when it was computed, not the read-back time
    assert again.seconds == {k: pytest.approx(summary.seconds[k]) for k in (1, 6)}
    assert "section 1: " in again.report.read_text()
    assert {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == stamp
    # other settings in the same folder are refused, not mixed
    with pytest.raises(BenchError, match="other settings"):
        evaluate_guidegen(None, out=out, settings=GGEvalSettings(n_real=8), progress=False)


def test_map_metrics_are_zero_for_identical_sets_and_grow_with_change() -> None:
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 21, size=(4, 16, 16, 16)).astype(np.uint8)
    maps[:, 4:8, 4:8, 4:8] = 20
    grey = draw_maps(maps)
    assert grey.min() >= -1000 and grey.max() <= 1000 and len(np.unique(grey)) > 10
    assert set(np.unique(tumour_only(maps))) == {-1000.0, 1000.0}
    same = lpips_25d(grey, grey, window=(-1000, 1100), slices=2, paired=True)
    other = np.roll(grey, 5, axis=1)
    moved = lpips_25d(grey, other, window=(-1000, 1100), slices=2, paired=True)
    assert same < 1e-6 < moved
    fid_same = fid_25d(grey, grey, window=(-1000, 1100), slices=2)["mean"]
    fid_blank = fid_25d(grey, np.full_like(grey, -1000) + rng.normal(0, 5, grey.shape).astype(np.float32),
                        window=(-1000, 1100), slices=2)["mean"]  # fmt: skip
    assert fid_same < 1e-3 * fid_blank


def test_bad_settings_and_inputs_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="n_real must be an integer >= 2"):
        GGEvalSettings(n_real=1)
    with pytest.raises(BenchError, match="downstream_sizes"):
        GGEvalSettings(downstream_sizes=(-1,))
    with pytest.raises(BenchError, match="sections must be"):
        evaluate_guidegen(None, out=tmp_path / "a", settings=TINY, sections=(8,))
    with pytest.raises(BenchError, match="not a GuideGen run folder"):
        evaluate_guidegen(tmp_path / "nothing", out=tmp_path / "b", settings=TINY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ctsynth_bench.cli.main import main

    for argv, words in (
        (["eval", "guidegen", "--sections", "0,9"], "comma list of 1..7"),
        (["eval", "guidegen", "--downstream-sizes", "a"], "generated-pair counts"),
        (["eval", "guidegen", "--n-real", "1", "--out", str(tmp_path / "x")], "n_real"),
    ):
        try:
            code = main(argv)
        except SystemExit as exc:  # option errors stop in argparse
            code = exc.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_cached_fvd_equals_shape_metrics_fvd() -> None:
    import shape_metrics

    rng = np.random.default_rng(0)
    a = rng.normal(0, 300, (3, 32, 32, 32)).astype(np.float32)
    b = a + rng.normal(0, 200, a.shape).astype(np.float32)
    ours = fvd_volumes(a, b, 1)
    ref = shape_metrics.fvd(a, b, frames=16, clips_per_volume=1, window=(-1000.0, 1000.0))
    assert ours == pytest.approx(ref, rel=1e-9) and ours > 0
    assert fvd_volumes(a, a, 1) == pytest.approx(0.0, abs=1e-6)


def test_section_3_with_nnunet_trains_on_real_cases_and_reads_every_set(tmp_path: Path) -> None:
    """Section 3's nnU-Net v2 path: export of real cases, nnU-Net's own plan and integrity check,
    a capped training, then Dice per organ for each set; a second call reuses the model."""
    import dataclasses

    from ctsynth_bench.eval import guidegen as gg

    s = dataclasses.replace(TINY, segmenter="nnunet", n_train=4, max_steps=2)
    parts = gg._Parts(tmp_path)
    real = gg._real_cases(3, 5)
    sets = {key: (real["labels"], real["ct"]) for key in ("G", "R", "real")}
    said: list[str] = []
    r = gg._nnunet_alignment(s, tmp_path, parts, said.append, sets)
    assert r["nnunet"]["iterations"] == 2 and "nnU-Net v2" in r["segmenter"]
    for key in ("generated_from_generated_maps", "generated_from_real_maps", "real_cts"):
        d = r[key]
        assert {"liver", "spleen"} <= set(d) and "tumour" not in d
        assert all(0.0 <= v <= 1.0 for v in d.values())
    log = next((tmp_path / "nnunet" / "logs").glob("plan_and_preprocess_*.log")).read_text()
    assert "verify_dataset_integrity Done" in log
    record = tmp_path / "nnunet" / "model.json"
    stamp = record.stat().st_mtime_ns
    again = gg._nnunet_alignment(s, tmp_path, parts, said.append, sets)
    assert again == r and record.stat().st_mtime_ns == stamp
    assert sum("nnU-Net v2 on" in line for line in said) == 1  # trained once
    with pytest.raises(BenchError, match="segmenter must be 'run' or 'nnunet'"):
        GGEvalSettings(segmenter="unet")


def test_blank_cts_are_those_that_show_air_where_the_map_has_solid_organs() -> None:
    from ctsynth_bench.eval.guidegen import blank_cts
    from ctsynth_bench.guidegen._labels import class_id

    maps = np.zeros((4, 16, 16, 16), np.uint8)
    maps[:, 4:12, 4:12, 4:12] = class_id("liver")
    maps[:, 2:6, 2:14, 2:14] = class_id("lung")
    ct = np.full((4, 32, 32, 32), -1024.0, np.float32)
    ct[:, 8:24, 8:24, 8:24] = 50.0  # liver on the CT grid (2x the map grid)
    ct[:, 4:12, 4:28, 4:28] = -950.0  # lungs below -900: not what makes a CT blank
    ct[1] = -1024.0  # all air
    ct[2, 8:24, 8:24, 8:15] = -1024.0  # just under half the liver is air: still not blank
    ct[3, 8:24, 8:24, 8:17] = -1024.0  # over half of it is air: blank
    assert blank_cts(ct, maps) == [1, 3]
