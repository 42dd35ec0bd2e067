"""``bench synth|train|run guidegen``: registered, and bad input is one line naming what is allowed."""

from __future__ import annotations

import pytest
from ctsynth_bench.cli.main import build_parser, main


def test_guidegen_joins_the_command_groups() -> None:
    parser = build_parser()
    for group in ("train", "synth", "run"):
        args = parser.parse_args(
            [
                group,
                "guidegen",
                *(["--out", "x"] if group != "synth" else ["--prompt", "p", "--out", "x"]),
            ]
        )
        assert callable(args.func)


def test_bad_prompt_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    bad = (
        "The patient is a 50-year-old white male. In this imaging, the patient's condition is described as "
        "brain cancer, T2 N0 M0, 1 primary tumour, small."
    )
    assert main(["synth", "guidegen", "--prompt", bad, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "site 'brain'" in err and "allowed: sites liver" in err
    assert not (tmp_path / "o").exists()


def test_train_needs_a_budget(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["train", "guidegen", "--out", str(tmp_path / "r")]) == 2
    assert "budget" in capsys.readouterr().err


def test_bad_stage_is_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "guidegen", "--out", "x", "--stages", "tcss,vae"])
