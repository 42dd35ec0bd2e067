"""Datasets, text encoders, the LesionDiffusion and GuideGen systems, training, evaluation and the `bench` CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ctsynth-bench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
