"""Errors raised by ctsynth-bench for bad user input.

Every error says what is wrong, what is allowed and, where it can, what was probably meant. The
CLI turns these into one line on stderr and exit status 2.
"""

from __future__ import annotations


class BenchError(ValueError):
    """Base class of every user-facing error in ctsynth-bench."""


class DataError(BenchError):
    """A data file, case or dataset layout is missing, unreadable or inconsistent."""


class FetchError(BenchError):
    """Obtaining or converting a real-data source failed (download, hash, extraction)."""


class RegistryError(BenchError):
    """An unknown system name, or an invalid registration, in ``ctsynth_bench.systems``."""
