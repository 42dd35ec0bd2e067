"""``bench eval lesiondiffusion``: settings, bad inputs, the held-out type, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ctsynth_bench.cli import main
from ctsynth_bench.eval.lesiondiffusion import EvalError, EvalSettings
from ctsynth_bench.eval.sets import (
    LesionCropSet,
    crops_from_folder,
    load_crop_set,
    real_lesion_crops,
    save_crop_set,
)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"types": ("liver_cancer", "lung_tumour")}, "lung_tumour"),
        ({"held_out_type": "brain_cancer"}, "brain_cancer"),
        ({"segmenter": "swin"}, "swin"),
        ({"n_generated": 0}, "n_generated"),
        ({"real_train": ("chest",), "real_test": ("lung2", "rider")}, "lung2"),
        ({"seg_minutes": None}, "seg_max_steps"),
    ],
)
def test_settings_refuse_bad_values(kw, words):
    with pytest.raises(EvalError, match=words):
        EvalSettings(**kw)


def _cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--types", "liver_cancer,lungs"], "lungs"),
        (["--sections", "1,6"], "1..5"),
        (["--run", "no/such/run"], "does not exist"),
        (["--held-out-type", "brain"], "brain"),
        (["--n-generated", "0"], "n_generated"),
    ],
)
def test_cli_bad_input_one_line_nothing_written(argv, words, tmp_path, capsys):
    out = tmp_path / "ev"
    assert _cli(["eval", "lesiondiffusion", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not out.exists()


def test_out_holding_something_else_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert _cli(["eval", "lesiondiffusion", "--out", str(out), "--sections", "5"]) == 2
    assert "not an evaluation" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


@pytest.fixture(scope="module")
def tiny_rule_set(tmp_path_factory) -> Path:
    from ctsynth_bench.rulesynth import load_templates, synthesize_dataset

    root = tmp_path_factory.mktemp("rule") / "set"
    synthesize_dataset(
        root,
        n=4,
        templates=load_templates(["abdomen"]),
        types=["liver_cyst", "kidney_cyst"],
        seed=3,
    )
    return root


def test_hold_out_removes_the_type_from_training(tiny_rule_set):
    from ctsynth_bench.lesiondiffusion.presets import get_preset
    from ctsynth_bench.lesiondiffusion.training import build_training_crops
    from ctsynth_bench.rulesynth import load_templates

    tmpl = load_templates(["abdomen"])
    p = get_preset("demo")
    full = build_training_crops(tiny_rule_set, p, independent=0, seed=0, templates=tmpl)
    held = build_training_crops(
        tiny_rule_set, p, independent=0, seed=0, templates=tmpl, hold_out=["kidney_cyst"]
    )
    types = lambda c: [m.get("lesion_type") for m in c.meta]  # noqa: E731
    assert types(full).count("kidney_cyst") == 2 and types(full).count("liver_cyst") == 2
    assert "kidney_cyst" not in types(held) and types(held).count("liver_cyst") == 2
    with pytest.raises(ValueError, match="no crop"):
        build_training_crops(
            tiny_rule_set,
            p,
            independent=0,
            seed=0,
            templates=tmpl,
            hold_out=["kidney_cyst", "liver_cyst"],
        )


def test_crop_sets_from_folder_and_real_cases(tiny_rule_set, real_lesion_cache, tmp_path):
    s = crops_from_folder(tiny_rule_set, source="rule", size=24, spacing=2.0, per_lesion=2)
    assert (
        len(s) == 8
        and s.ct.shape == (8, 24, 24, 24)
        and sorted(s.types()) == ["kidney_cyst", "liver_cyst"]
    )
    centred = s.lesion[:, 10:14, 10:14, 10:14].any(axis=(1, 2, 3))
    assert centred.all()  # no jitter: the lesion covers the centre
    assert all(s.lesion.reshape(8, -1).any(1))
    real = real_lesion_crops(["lung1", "rider"], size=32, spacing=1.5, jitter=0.25, per_lesion=3)
    assert real.case == ["lung1"] * 3 + ["rider"] * 3 and real.types() == ["lung_cancer"]
    # a real lung tumour is soft tissue inside lung: its median HU is far above the lung's
    for ct, m in zip(real.ct, real.lesion, strict=True):
        assert m.sum() > 50 and np.median(ct[m]) > -300 and np.median(ct[~m]) < np.median(ct[m])
    assert not np.array_equal(real.ct[0], real.ct[1])  # offsets differ per crop
    save_crop_set(real, tmp_path / "r.npz")
    back = load_crop_set(tmp_path / "r.npz")
    assert np.array_equal(back.ct, real.ct) and back.case == real.case and back.spacing == 1.5
    both = LesionCropSet.concat([s, s.select([0, 1])])
    assert len(both) == 10


def test_all_sections_end_to_end_tiny(tiny_rule_set, real_lesion_cache, tmp_path):
    """The whole evaluation on a tiny budget: every section fills the report with measured values,
    the no-text and held-out systems are trained here (one step), and a second call resumes
    without recomputing anything."""
    from ctsynth_bench.eval.lesiondiffusion import evaluate_lesiondiffusion
    from ctsynth_bench.lesiondiffusion.system import shipped_weights_dir

    s = EvalSettings(
        types=("kidney_cyst",),
        align_types=("liver_cancer",),
        n_align=1,
        n_generated=2,
        n_rule_test=5,  # 14 types cycled: the fifth is kidney_cyst
        crops_per_lesion=1,
        seg_minutes=None,
        seg_max_steps=2,
        n_control=1,
        held_out_type="kidney_cyst",
        n_held_out=1,
        train_minutes=None,
        train_max_steps=1,
        train_independent=4,
        train_parallel=False,
    )
    out = tmp_path / "ev"
    ship = shipped_weights_dir()

    def snapshot() -> dict[str, str]:
        import hashlib

        return {
            str(f.relative_to(ship)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(ship.rglob("*"))
            if f.is_file()
        }

    before = snapshot()
    kw = dict(out=out, data=tiny_rule_set, settings=s, reference_run=ship)
    summ = evaluate_lesiondiffusion(ship, **kw)
    assert snapshot() == before  # a given system is read, never trained or written
    text = summ.report.read_text()
    for head in (
        "## 1. Text alignment",
        "## 2. Image quality",
        "## 3. Downstream segmentation",
        "## 4. Ablation without text",
        "## 5. Generalisation",
    ):
        assert head in text
    for name in ("fig4a_shape", "downstream", "quality_gallery"):
        assert summ.figures[name].is_file() and summ.figures[name].stat().st_size > 5000
    # the quality rows are measured numbers, not placeholders
    q = summ.parts["quality"]["lung_cancer"]
    assert q and "real lung tumours" in json.dumps(q)
    rows = summ.parts["downstream"]["rows"]
    assert {r["row"] for r in rows} >= {"LesionDiffusion synthetic only"}
    for r in rows:
        for sc in r["scores"].values():
            assert 0.0 <= sc["dice_mean"] <= 1.0 and sc["n"] >= 1
    abl = summ.parts["ablation"]
    assert set(abl) == {"with text", "text removed"}
    assert abl["text removed"]["system"]["text"] is False
    # the no-text system gives the same lesion whatever the prompt: its gaps are exactly zero
    assert abl["text removed"]["control"]["sphericity_gap"] == 0.0
    man = json.loads(
        (out / "systems" / "held_out_kidney_cyst" / "lesiondiffusion.json").read_text()
    )
    assert man["hold_out"] == ["kidney_cyst"] and man["templates"] == ["abdomen", "chest"]
    g = summ.parts["generalisation"]
    assert set(g["rows"]) == {"kidney_cyst held out", "kidney_cyst seen", "rule-based synthesizer"}
    for row in g["rows"].values():
        assert row["agreement"]["n"] == 1 and row["agreement"]["rule_checks"] > 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    again = evaluate_lesiondiffusion(ship, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == stamps
    assert again.parts["generalisation"] == g
    with pytest.raises(EvalError, match="other settings"):
        evaluate_lesiondiffusion(
            ship, **dict(kw, settings=EvalSettings(held_out_type="liver_cyst", train_max_steps=1))
        )


def test_missing_real_lesions_named_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CTSYNTH_CACHE", str(tmp_path / "empty_cache"))
    out = tmp_path / "ev"
    assert _cli(["eval", "lesiondiffusion", "--out", str(out), "--sections", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lung1" in err[0] and "bench data fetch" in err[0]
    assert not out.exists()
