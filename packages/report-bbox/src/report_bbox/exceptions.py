"""Errors raised by report_bbox. All subclass ValueError so callers can catch bad input broadly."""

from __future__ import annotations

__all__ = ["BBoxError", "OrganError", "ReportError", "ReportWriterError"]


class ReportError(ValueError):
    """A report value is not in the vocabulary, or the report is inconsistent.

    Attributes:
        field: The attribute at fault (e.g. ``"density"``), or ``None`` for whole-report errors.
        value: The offending value as given.
        allowed: The canonical values that would have been accepted (may be empty).
        suggestion: The closest allowed value, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: object = None,
        allowed: tuple[str, ...] = (),
        suggestion: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.allowed = tuple(allowed)
        self.suggestion = suggestion


class OrganError(ReportError):
    """An organ name or id is unknown, or is not allowed where it was used."""


class BBoxError(ValueError):
    """No bounding box satisfying the report's location rule could be placed; the message says why."""


class ReportWriterError(ValueError):
    """A report writer (e.g. an LLM endpoint) could not produce a valid report within its budget."""
