"""Errors of :mod:`ctsynth_bench.train`.

They subclass :class:`ctsynth_bench.exceptions.BenchError` (a ``ValueError``), so the CLI prints
them as one line.
"""

from __future__ import annotations

from ..exceptions import BenchError


class TrainConfigError(BenchError):
    """A training setting, model or data source is not usable (says what is allowed)."""


class RunFolderError(BenchError):
    """A run folder or one of its files is corrupt, foreign or inconsistent (names the file)."""


class TrainingError(BenchError):
    """Training cannot go on (a non-finite loss); names the stage and step."""
