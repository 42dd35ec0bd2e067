"""Lesion shape, segmentation and image-quality metrics for 3D CT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shape-metrics")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
