"""Cheap checks of options and output paths, made before anything heavy is imported or loaded.

Each check names the option or argument (``--out``, ``out``...), what is wrong and what is allowed,
so a command fails in well under a second instead of after loading its templates, and nothing is
half-written. This module imports no numerical library; the CLI calls it first and the Python API
calls it again (``rulesynth.synthesize_dataset``), so both give the same answer.
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
from pathlib import Path

from .exceptions import BenchError

#: Largest number of cases of a synthetic set: case ids carry five digits.
MAX_CASES = 99_999
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _whole(value: object) -> bool:
    """A Python or NumPy integer (not a bool, not a float that happens to be whole)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_lesion_types(types: object, *, label: str = "types") -> None:
    """Lesion type names: a list of known names, each once."""
    if types is None:
        return
    if isinstance(types, str) or not all(isinstance(t, str) for t in types):  # type: ignore[attr-defined]
        raise BenchError(f"{label} must be a list of lesion type names, got {types!r}")
    from report_bbox import LESION_TYPES

    listed = list(types)  # type: ignore[call-overload]
    for name in listed:
        if name not in LESION_TYPES:
            close = difflib.get_close_matches(name, list(LESION_TYPES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BenchError(
                f"{label}: unknown lesion type {name!r}; allowed: {', '.join(LESION_TYPES)}{hint}"
            )
    twice = sorted({t for t in listed if listed.count(t) > 1})
    if twice:
        raise BenchError(f"{label} lists {', '.join(twice)} more than once; each type counts once")


def check_dataset_options(
    *,
    n: object,
    seed: object = 0,
    types: object = None,
    prefix: object = "synth_",
    names: dict[str, str] | None = None,
) -> None:
    """The options of a synthetic lesion set that need no template (no I/O).

    Args:
        n, seed, types, prefix: as for ``rulesynth.synthesize_dataset``.
        names: how to call each option in messages (the CLI passes ``{"n": "--n", ...}``).

    Raises:
        BenchError: naming the option, what is wrong and what is allowed.
    """
    label = {"n": "n", "seed": "seed", "types": "types", "prefix": "prefix", **(names or {})}
    if not _whole(n) or not 1 <= n <= MAX_CASES:  # type: ignore[operator]
        raise BenchError(f"{label['n']} must be a whole number from 1 to {MAX_CASES}, got {n!r}")
    if not _whole(seed) or seed < 0:  # type: ignore[operator]
        raise BenchError(f"{label['seed']} must be a whole number >= 0, got {seed!r}")
    check_lesion_types(types, label=label["types"])
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or ".." in prefix:
        raise BenchError(
            f"{label['prefix']} must be letters, digits, '_', '-' or '.' (no path), got {prefix!r}"
        )


def _parents_are_folders(path: Path, label: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BenchError(
                    f"{label} {path}: {parent} is a file, so nothing can be created below it"
                )
            return


def check_folder_target(path: str | os.PathLike[str], label: str) -> Path:
    """A folder to create or reuse: not empty, not a file or device, not below a file.

    Raises:
        BenchError: naming ``label`` and the path.
    """
    if not str(path).strip():
        raise BenchError(f"{label} is empty; give a folder path")
    p = Path(path)
    if p.exists() and not p.is_dir():
        kind = "a file" if p.is_file() else "not a folder (a device or pipe)"
        raise BenchError(f"{label} {p} is {kind}; give a folder (new, or one to resume)")
    _parents_are_folders(p, label)
    return p


def check_file_target(path: str | os.PathLike[str], label: str, *, suffix: str = ".png") -> Path:
    """A file to create or replace: named ``*suffix``, not a folder or device, not below a file.

    Raises:
        BenchError: naming ``label`` and the path.
    """
    if not str(path).strip():
        raise BenchError(f"{label} is empty; give a file name ending in {suffix}")
    p = Path(path)
    if p.is_dir():
        raise BenchError(f"{label} {p} is a folder; give a file name ending in {suffix}")
    if p.exists() and not p.is_file():
        raise BenchError(
            f"{label} {p} is not a regular file (a device or pipe); give a file name ending in "
            f"{suffix}"
        )
    if p.suffix.lower() != suffix:
        raise BenchError(f"{label} {p} must be a file name ending in {suffix}")
    _parents_are_folders(p, label)
    return p


def check_dataset_folder(out: str | os.PathLike[str], *, label: str = "out") -> Path:
    """A lesion-set folder, checked before anything is written into it.

    It may be new, empty, or a set written by ``rulesynth.synthesize_dataset`` (a readable
    ``synth.json`` present); a folder holding other files is refused, so a mistyped path never
    fills someone's folder.

    Raises:
        BenchError: naming ``label``: a file, below a file, a foreign non-empty folder, or a
            ``synth.json`` that is not a JSON object.
    """
    root = check_folder_target(out, label)
    if not root.is_dir():
        return root
    manifest = root / "synth.json"
    if manifest.is_file():
        import json

        try:
            settings = json.loads(manifest.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BenchError(
                f"{manifest}: not valid JSON ({exc}); delete it or use another {label}"
            ) from None
        if not isinstance(settings, dict):
            raise BenchError(
                f"{manifest}: the JSON must be an object, found {type(settings).__name__}"
            )
        return root
    entries = sorted(p.name for p in root.iterdir())
    if entries:
        raise BenchError(
            f"{label} {root} holds {len(entries)} entries ({', '.join(entries[:3])}"
            f"{', ...' if len(entries) > 3 else ''}) but no synth.json, so it is not a lesion set "
            "to resume; give a new or empty folder"
        )
    return root
