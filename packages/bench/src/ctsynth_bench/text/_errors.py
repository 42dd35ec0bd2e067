"""Errors of :mod:`ctsynth_bench.text`.

They subclass :class:`ctsynth_bench.exceptions.BenchError` (a ``ValueError``), so the CLI prints
them as one line.
"""

from __future__ import annotations

from ..exceptions import BenchError


class TextEncoderError(BenchError):
    """A text encoder cannot be found or loaded, or its input is not valid text."""


class MissingPackageError(TextEncoderError):
    """A package a text encoder needs is not installed; the message holds the install line."""
