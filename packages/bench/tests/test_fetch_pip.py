"""pip as the fetch runs it, on a local sdist: the user's pip configuration must not break it.

The fixture sdist mimics pyradiomics 3.1.0 (its metadata names another version, so only pip's
legacy resolver accepts it) and is served from a local folder (``no-index`` + ``find-links`` in a
pip config file), so these tests run offline and exercise the real pip.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

import pytest
from ctsynth_bench.data import _sources
from ctsynth_bench.exceptions import FetchError

BACKEND = """
import os


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "fakepkg-0.9a1.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as fh:
        fh.write("Metadata-Version: 2.1\\nName: fakepkg\\nVersion: 0.9a1\\n")
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("the fetch only downloads")
"""

PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""


def _make_sdist(folder: Path) -> Path:
    """fakepkg-1.0.tar.gz whose metadata says 0.9a1 (as pyradiomics 3.1.0 says 3.0.1a1)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fakepkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [
            ("pyproject.toml", PYPROJECT),
            ("backend.py", BACKEND),
            ("PKG-INFO", "Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.9a1\n"),
        ]:
            data = text.encode()
            info = tarfile.TarInfo(f"fakepkg-1.0/{name}")
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A pip configured like the machines that broke the fetch: a constraint file in its config.

    Returns the Source of the local sdist and the path of the pip config file.
    """
    sdist = _make_sdist(tmp_path / "links")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\ntorchvision<=0.29.1\n")
    config = tmp_path / "pip.conf"
    config.write_text(
        f"[global]\nno-index = true\nfind-links = {tmp_path / 'links'}\n"
        f"constraint = {constraints}\n"
    )
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    source = _sources.Source(
        name="fakepkg",
        version="1.0",
        sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
        archive=sdist.name,
        licence="test fixture",
        pip_args=("--use-deprecated=legacy-resolver",),
    )
    return source, config, constraints


def test_constraint_in_pip_config_does_not_break_the_legacy_resolver_download(
    local_index, tmp_path
):
    source, _, _ = local_index
    got = _sources.obtain_archive(source, tmp_path / "downloads")
    assert got == tmp_path / "downloads" / "fakepkg-1.0.tar.gz"
    assert _sources.sha256_of(got) == source.sha256
    assert sorted(p.name for p in got.parent.iterdir()) == ["fakepkg-1.0.tar.gz"]


def test_constraint_in_pip_constraint_variable_is_neutralised_too(
    local_index, tmp_path, monkeypatch
):
    source, _, constraints = local_index
    monkeypatch.setenv("PIP_CONSTRAINT", str(constraints))
    got = _sources.obtain_archive(source, tmp_path / "downloads")
    assert _sources.sha256_of(got) == source.sha256


def test_the_same_pip_call_with_the_users_constraint_crashes(local_index, tmp_path, monkeypatch):
    # Guards the fixture: it reproduces pip's legacy-resolver crash that the fetch works around.
    source, _, _ = local_index
    monkeypatch.setattr(_sources, "pip_environment", lambda scratch: dict(os.environ))
    with pytest.raises(FetchError, match="pip crashed with AssertionError") as info:
        _sources.obtain_archive(source, tmp_path / "downloads")
    assert "pip config list" in str(info.value) and "fakepkg-1.0.tar.gz" in str(info.value)
    assert not (tmp_path / "downloads" / "fakepkg-1.0.tar.gz").exists()


def test_pip_that_finds_nothing_says_so_and_how_to_work_around(local_index, tmp_path):
    source, config, _ = local_index
    config.write_text(f"[global]\nno-index = true\nfind-links = {tmp_path / 'empty'}\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError) as info:
        _sources.obtain_archive(source, tmp_path / "downloads")
    msg = str(info.value)
    assert "pip download of fakepkg==1.0 failed: pip says:" in msg
    assert "No matching distribution found for fakepkg==1.0" in msg
    assert f"sha256 {source.sha256}" in msg and "Command: " in msg
    assert list((tmp_path / "downloads").iterdir()) == []  # no temporary folder left


def test_download_progress_is_shown_in_bytes(tmp_path, monkeypatch, capsys):
    script = "\n".join(
        ["import pathlib, sys", "dest = pathlib.Path(sys.argv[1])"]
        + [f"print('Progress {n} of 1000', flush=True)" for n in (0, 400, 1000)]
        + ["(dest / 'x-1.tar.gz').write_bytes(b'abc')"]
    )
    source = _sources.Source(
        name="x",
        version="1",
        sha256=hashlib.sha256(b"abc").hexdigest(),
        archive="x-1.tar.gz",
        licence="test",
    )
    monkeypatch.setattr(
        _sources,
        "pip_download_command",
        lambda source, dest, *, progress: [sys.executable, "-c", script, str(dest)],
    )
    _sources.obtain_archive(source, tmp_path / "d", progress=True)
    err = capsys.readouterr().err
    assert "x-1.tar.gz" in err and "1.00k/1.00k" in err
    assert _sources.pip_download_command(source, tmp_path, progress=True)[-4:-2] != ["--quiet"]
