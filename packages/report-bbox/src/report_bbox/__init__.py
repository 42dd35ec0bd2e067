"""Structured lesion reports, organ vocabulary, report-to-bbox rules and an LLM hook."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("report-bbox")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
