"""Errors raised by cat-diffusion.

Every error says what was wrong, what is allowed and, where it applies, the closest valid value.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CatDiffusionError",
    "CheckpointError",
    "ConfigError",
    "ShapeError",
    "closest",
]


class CatDiffusionError(ValueError):
    """Base class of every error raised by cat-diffusion on bad input."""


class ConfigError(CatDiffusionError):
    """A configuration value or option is not allowed."""


class ShapeError(CatDiffusionError):
    """A tensor has the wrong shape, dtype or value range."""


class CheckpointError(CatDiffusionError):
    """A checkpoint folder is missing, incomplete or does not match its config."""


def closest(value: str, allowed: Iterable[str]) -> str:
    """Return a "did you mean" suffix for ``value`` among ``allowed`` (empty if nothing is close)."""
    match = difflib.get_close_matches(str(value), list(allowed), n=1)
    return f" Did you mean {match[0]!r}?" if match else ""
