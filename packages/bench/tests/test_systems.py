"""The registry of systems that the CLI reads."""

from __future__ import annotations

import json

import pytest
from ctsynth_bench.cli import main
from ctsynth_bench.exceptions import RegistryError
from ctsynth_bench.systems import SYSTEMS, System, get_system, register_system


def test_registered_systems_load_lazily() -> None:
    assert list(SYSTEMS) == ["lesiondiffusion", "guidegen"]
    for name, system in SYSTEMS.items():
        assert get_system(name) is system
        assert system.load().__name__ == system.module


def test_unknown_name_says_did_you_mean() -> None:
    with pytest.raises(RegistryError, match=r"unknown system 'guidgen'.*did you mean 'guidegen'"):
        get_system("guidgen")
    with pytest.raises(RegistryError, match=r"known systems: \[.lesiondiffusion., .guidegen.\]$"):
        get_system("nnunet")


def test_bad_registrations_are_refused(monkeypatch) -> None:
    with pytest.raises(RegistryError, match="lower-case identifier"):
        System(name="Guide Gen", description="x", module="a.b")
    with pytest.raises(RegistryError, match="dotted module path"):
        System(name="x", description="x", module="a..b")
    monkeypatch.setitem(SYSTEMS, "toy", System(name="toy", description="a toy", module="json"))
    assert register_system(System(name="toy", description="a toy", module="json")) == SYSTEMS["toy"]
    with pytest.raises(RegistryError, match="already registered"):
        register_system(System(name="toy", description="another", module="json"))
    assert get_system("toy").load() is json


def test_cli_lists_the_registry(capsys, monkeypatch) -> None:
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("lesiondiffusion") and "guidegen" in out
    monkeypatch.setitem(
        SYSTEMS, "toy", System(name="toy", description="a toy system", module="json")
    )
    assert main(["systems", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1] == {"name": "toy", "module": "json", "description": "a toy system"}
