"""`bench data ...`: help at every level, exit codes, one-line errors, real runs on bundled data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from ctsynth_bench.cli import main


@pytest.fixture(autouse=True)
def _empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTSYNTH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "fetch", "--help"], ["data", "list", "--help"], ["data", "show", "--help"]])
def test_help_at_every_level(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: bench" in capsys.readouterr().out


def test_group_without_subcommand_shows_help_and_exits_2(capsys):
    assert main(["data"]) == 2
    assert "fetch" in capsys.readouterr().err


def test_list_shows_bundled_cases(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "abdomen" in out and "chest" in out and "bundled" in out
    assert main(["-q", "data", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["where"] for r in rows} == {"abdomen": "bundled", "chest": "bundled"}


def test_show_writes_png(tmp_path, capsys):
    out = tmp_path / "liver.png"
    assert main(["-q", "data", "show", "abdomen", "--label", "5", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["-q", "data", "show", "chest", "--out", str(tmp_path / "chest.png"), "--window", "lung"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "show", "abdomn", "--out", "x.png"], "did you mean 'abdomen'"),
        (["data", "show", "abdomen", "--label", "90", "--out", "x.png"], "label 90 is not present"),
        (["data", "show", "abdomen", "--label", "0", "--out", "x.png"], "has no lesion mask"),
        (["data", "show", "rider", "--out", "x.png"], "run `bench data fetch` first"),
        (["data", "fetch", "--case", "lung3"], "unknown case 'lung3'"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_window_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "show", "abdomen", "--out", "x.png", "--window", "wide"])
    assert exc.value.code == 2
    assert "CENTRE,WIDTH" in capsys.readouterr().err


def test_show_with_dataset_uses_the_report_as_caption(tmp_path):
    root = tmp_path / "ds"
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ct = np.full((16, 16, 8), 40, np.int16)
    ct[:2] = -1000
    les = np.zeros(ct.shape, np.uint8)
    les[6:10, 6:10, 3:5] = 1
    for sub, arr in (("imagesTr/c1_0000", ct), ("labelsTr/c1", les), ("organs/c1", (les * 5).astype(np.uint8))):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, aff), root / f"{sub}.nii.gz")
    (root / "dataset.json").write_text("{}")
    (root / "reports").mkdir()
    (root / "reports" / "c1.json").write_text(json.dumps({"text": "round liver cyst, 8 mm"}))
    out = tmp_path / "c1.png"
    assert main(["-q", "data", "show", "c1", "--dataset", str(root), "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["-q", "data", "show", "c2", "--dataset", str(root), "--out", str(out)]) == 2


def test_fetch_twice_says_nothing_to_do(archive_cache, capsys):
    assert main(["-q", "data", "fetch", "--case", "abdomen", "--cache-dir", str(archive_cache)]) == 0
    assert "fetched abdomen" in capsys.readouterr().out
    assert main(["-q", "data", "fetch", "--case", "abdomen", "--cache-dir", str(archive_cache)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["-q", "data", "list", "--cache-dir", str(archive_cache)]) == 0
    assert "fetched" in capsys.readouterr().out


def _readme() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_offline_data_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [ln.split("#")[0].split() for ln in _readme().splitlines() if ln.startswith("uv run bench data ")]
    offline = [ln[2:] for ln in lines if ln[4] in ("list", "show")]
    assert len(offline) >= 3
    for argv in offline:
        assert main(["-q", *argv[1:]]) == 0, argv
    assert (tmp_path / "liver.png").is_file() and (tmp_path / "chest.png").is_file()


def test_readme_python_example_runs(capsys):
    text = _readme()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    assert "(122, 101, 112)" in capsys.readouterr().out
