"""Downstream lesion segmentation (issue 17, section 3): training, scoring, the Tab. 1 runner.

Tiny crop sets (16^3 voxels, bright spheres in noisy soft tissue) keep every test to seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ctsynth_bench.eval import downstream as ds
from ctsynth_bench.eval.sets import LesionCropSet
from ctsynth_bench.exceptions import BenchError

S = 16


def sphere_set(
    n: int, *, seed: int, lesion_type: str = "liver_cancer", source: str = "rule", empty_masks=False
) -> LesionCropSet:
    """``n`` crops: soft tissue (40 +- 15 HU) with a sphere of 140 HU, radius 3-5 voxels, placed
    anywhere in the crop's middle half."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(S)] * 3, indexing="ij")).astype(np.float32)
    ct, les = [], []
    for _ in range(n):
        c = rng.uniform(S * 0.3, S * 0.7, 3)
        r = rng.uniform(3, 5)
        m = ((g - c[:, None, None, None]) ** 2).sum(0) <= r * r
        ct.append(np.where(m, 140.0, 40.0) + rng.normal(0, 15, (S,) * 3))
        les.append(np.zeros_like(m) if empty_masks else m)
    return LesionCropSet(
        ct=np.stack(ct).astype(np.float32),
        lesion=np.stack(les),
        organs=np.zeros((n, S, S, S), np.int16),
        spacing=2.0,
        lesion_type=[lesion_type] * n,
        reports=[{}] * n,
        case=[f"c{seed}_{i}" for i in range(n)],
        source=source,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_perfect_prediction_scores_dice_one_hd95_zero():
    test = sphere_set(4, seed=1)
    s = ds.score_predictions(test.lesion, test)
    assert s["n"] == 4 and s["n_empty_pred"] == 0
    assert s["dice"] == [1.0] * 4 and s["hd95"] == [0.0] * 4
    assert s["dice_mean"] == 1.0 and s["hd95_mean"] == 0.0 and s["dice_std"] == 0.0


def test_empty_and_shifted_predictions_score_low():
    test = sphere_set(4, seed=2)
    empty = ds.score_predictions(np.zeros_like(test.lesion), test)
    cap = math.sqrt(3) * S * 2.0
    assert empty["hd95_cap_mm"] == pytest.approx(cap)
    assert empty["dice"] == [0.0] * 4 and empty["hd95"] == [pytest.approx(cap)] * 4
    assert empty["n_empty_pred"] == 4
    # a mask moved by 4 voxels (8 mm) overlaps less and its HD95 is about the shift
    shifted = ds.score_predictions(np.roll(test.lesion, 4, axis=1), test)
    assert 0.0 <= shifted["dice_mean"] < 0.6
    assert 6.0 <= shifted["hd95_mean"] <= 10.0
    with pytest.raises(BenchError, match="shape"):
        ds.score_predictions(test.lesion[:2], test)


def test_trained_segmenter_finds_spheres_and_one_trained_on_empty_masks_does_not(tmp_path):
    train, test = sphere_set(12, seed=3), sphere_set(6, seed=4)
    kw = dict(max_steps=60, channels=(8, 16), batch_size=4, lr=1e-2)
    seg = ds.train_lesion_segmenter(train, run_dir=tmp_path / "a", **kw)
    good = ds.score_segmenter(seg, test)
    assert good["dice_mean"] > 0.7, good
    assert good["hd95_mean"] < 6.0
    blind = ds.train_lesion_segmenter(
        sphere_set(12, seed=3, empty_masks=True), run_dir=tmp_path / "b", **kw
    )
    bad = ds.score_segmenter(blind, test)
    assert bad["dice_mean"] < 0.2 and bad["hd95_mean"] > 20.0, bad
    # fine-tuning starts from the given weights: zero steps of real data keep its predictions
    ft = ds.train_lesion_segmenter(test, run_dir=tmp_path / "c", init=seg, max_steps=1, lr=1e-9)
    assert ft.config == seg.config
    assert ds.score_segmenter(ft, test)["dice_mean"] == pytest.approx(good["dice_mean"], abs=0.05)


def test_lung_tumor_and_lung_cancer_are_one_type():
    assert ds.canonical_type("lung_tumor") == "lung_cancer"
    assert ds.canonical_type("liver_cyst") == "liver_cyst"


def test_run_downstream_rows_resume_table_and_figure(tmp_path, monkeypatch):
    gen = LesionCropSet.concat(
        [
            sphere_set(4, seed=10, lesion_type="lung_cancer", source="generated"),
            sphere_set(4, seed=11, lesion_type="liver_cyst", source="generated"),
        ]
    )
    rule = sphere_set(4, seed=12, lesion_type="lung_cancer")
    real = sphere_set(4, seed=13, lesion_type="lung_tumor", source="real")
    tests = {
        "real lung": sphere_set(3, seed=14, lesion_type="lung_tumor", source="real"),
        "held-out": LesionCropSet.concat(
            [sphere_set(2, seed=15, lesion_type="liver_cyst"), sphere_set(2, seed=16)]
        ),
    }
    kw = dict(generated=gen, rule=rule, real_train=real, tests=tests, max_steps_per_model=2)
    res = ds.run_downstream(out=tmp_path, **kw)
    got = [(r["type"], r["row"]) for r in res["rows"]]
    assert got == [
        ("lung_cancer", ds.ROW_LD),
        ("lung_cancer", ds.ROW_LD_FT),
        ("lung_cancer", ds.ROW_REAL),
        ("lung_cancer", ds.ROW_RULE),
        ("lung_cancer", ds.ROW_RULE_FT),
        ("liver_cyst", ds.ROW_LD),
    ]
    lung = res["rows"][0]
    assert set(lung["scores"]) == {"real lung"} and lung["scores"]["real lung"]["n"] == 3
    assert lung["steps"] == 2 and lung["train_n"] == 4 and lung["train_seconds"] > 0
    assert res["window"] == list(ds.LESION_WINDOW)
    seg = ds.load_segmenter(tmp_path / "models" / "lung_cancer" / "ld_ft" / "run" / "segmenter")
    assert seg.config.window == ds.LESION_WINDOW  # fine-tuning keeps the base model's window
    assert set(res["rows"][-1]["scores"]) == {"held-out"}
    assert res["rows"][-1]["scores"]["held-out"]["n"] == 2
    assert json.loads((tmp_path / "downstream.json").read_text()) == json.loads(json.dumps(res))

    # a second call reuses every trained model and score
    def no_training(*a, **k):
        raise AssertionError("retrained a finished model")

    monkeypatch.setattr(ds, "train_lesion_segmenter", no_training)
    monkeypatch.setattr(ds, "score_segmenter", no_training)
    assert ds.run_downstream(out=tmp_path, **kw) == res

    md = ds.downstream_table_md(res)
    assert md.count("\n") == 2 + len(res["rows"])
    assert "real only" in md and "real lung: Dice" in md
    png = ds.downstream_figure(res, tmp_path / "fig.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_run_downstream_rejects_bad_inputs(tmp_path):
    gen = sphere_set(2, seed=1, source="generated")
    with pytest.raises(BenchError, match="budget"):
        ds.run_downstream(generated=gen, rule=None, real_train=None, tests={"t": gen}, out=tmp_path)
    with pytest.raises(BenchError, match="not in generated"):
        ds.run_downstream(
            generated=gen,
            rule=None,
            real_train=None,
            tests={"t": gen},
            out=tmp_path,
            max_steps_per_model=1,
            types=["kidney_cyst"],
        )
    with pytest.raises(BenchError, match="segmenter"):
        ds.run_downstream(
            generated=gen,
            rule=None,
            real_train=None,
            tests={"t": gen},
            out=tmp_path,
            max_steps_per_model=1,
            segmenter="unetr",
        )
