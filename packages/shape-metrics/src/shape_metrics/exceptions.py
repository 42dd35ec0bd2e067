"""Errors raised by shape-metrics.

Every error says what was wrong, what is allowed and, where it applies, the closest valid value.
"""

from __future__ import annotations

__all__ = [
    "ConventionError",
    "MaskError",
    "ShapeMetricsError",
    "SpacingError",
    "WeightsError",
    "WeightsNotInstalledError",
]


class ShapeMetricsError(ValueError):
    """Base class for invalid input to a shape-metrics function."""


class MaskError(ShapeMetricsError):
    """A mask has the wrong dimensionality, dtype, shape, or is empty where that is not allowed."""


class SpacingError(ShapeMetricsError):
    """A voxel spacing is not three positive finite numbers."""


class ConventionError(ShapeMetricsError):
    """An option string (convention, axis, network name, ...) is not one of the allowed names."""


class WeightsError(ShapeMetricsError):
    """A weight file failed its hash check or does not have the expected tensors."""


class WeightsNotInstalledError(FileNotFoundError):
    """Feature-network weights are missing from the cache.

    The message gives the command that installs them (``shape-metrics weights install``).
    """
