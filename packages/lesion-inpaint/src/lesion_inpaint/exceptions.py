"""Errors raised by lesion-inpaint. All subclass ValueError or TypeError."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EmptyMaskError",
    "LesionInpaintError",
    "ShapeError",
    "did_you_mean",
]


class LesionInpaintError(ValueError):
    """Base class of every value error raised by this package."""


class ConfigError(LesionInpaintError):
    """A configuration value (preset name, schedule, step count, scale ...) is not allowed."""


class ShapeError(LesionInpaintError):
    """A tensor has the wrong shape, dtype or value range for the call."""


class EmptyMaskError(LesionInpaintError):
    """LMNet produced an empty mask after every allowed attempt."""


class CheckpointError(LesionInpaintError):
    """A checkpoint directory is missing files or holds an unknown or inconsistent config."""


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return a ``" Did you mean 'x'?"`` suffix for the closest allowed string, or ``""``."""
    close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""
