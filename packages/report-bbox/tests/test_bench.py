import importlib.util
import logging
from pathlib import Path

import numpy as np
from report_bbox import BBox, Report, bbox_violation, benchmark_bboxes, sample_report

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "abdomen.py"


def _script_main():
    spec = importlib.util.spec_from_file_location("report_bbox_abdomen_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def synthetic_map():
    labels = np.zeros((48, 48, 40), np.uint8)
    x, y, z = np.ogrid[:48, :48, :40]
    labels[((x - 24) / 20) ** 2 + ((y - 24) / 20) ** 2 + ((z - 20) / 16) ** 2 <= 1] = 5  # liver
    labels[((x - 24) / 6) ** 2 + ((y - 24) / 6) ** 2 + ((z - 20) / 6) ** 2 <= 1] = 4  # gallbladder
    return labels


def test_benchmark_rows_and_verification():
    labels = synthetic_map()
    rows = benchmark_bboxes(labels, (2.0, 2.0, 2.0), n_boxes=20, seed=0)
    assert {r.lesion_type for r in rows} == {"liver", "gallbladder"}
    for r in rows:
        assert r.invalid == 0 and r.placed + sum(r.failures.values()) == r.attempts
    assert all(r.placed == r.attempts for r in rows)


def test_benchmark_by_lesion_type():
    rows = benchmark_bboxes(synthetic_map(), (2.0, 2.0, 2.0), n_boxes=10, by="lesion_type")
    assert {r.lesion_type for r in rows} == {
        "liver_cyst",
        "liver_cancer",
        "gallstone",
        "gallbladder_cancer",
    }
    assert all(r.invalid == 0 for r in rows)


def test_violation_detects_bad_boxes():
    labels = synthetic_map()
    rep = Report.from_dict(
        {
            **sample_report(np.random.default_rng(0), lesion_type="liver_cyst").to_dict(),
            "lesion_location": "within the parenchymal organ",
            "size": 6,
        }
    )
    assert bbox_violation(rep, labels, (2, 2, 2), BBox((0, 0, 0), (3, 3, 3))) is not None
    assert bbox_violation(rep, labels, (2, 2, 2), BBox((30, 30, 28), (33, 33, 31))) is None
    assert "leaves the image" in bbox_violation(
        rep, labels, (2, 2, 2), BBox((46, 0, 0), (50, 3, 3))
    )


def test_library_prints_nothing(capsys, caplog):
    with caplog.at_level(logging.DEBUG):
        benchmark_bboxes(synthetic_map(), (2.0, 2.0, 2.0), n_boxes=3, seed=0)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_benchmark_script_on_npy(tmp_path, capsys):
    path = tmp_path / "organs.npy"
    np.save(path, synthetic_map())
    assert _script_main()([str(path), "--spacing", "2", "2", "2", "--n", "5"]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "0 invalid" in out
