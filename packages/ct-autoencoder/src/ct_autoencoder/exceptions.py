"""Errors raised by ct_autoencoder.

Every error says what was wrong, what is allowed and, where it applies, the closest valid value.
"""

from __future__ import annotations

__all__ = [
    "AutoencoderError",
    "CheckpointError",
    "ConfigError",
    "InputShapeError",
    "NonFiniteInputError",
    "UnknownPresetError",
]


class AutoencoderError(ValueError):
    """Base class of every ct_autoencoder error (a ``ValueError``)."""


class ConfigError(AutoencoderError):
    """A configuration value is out of range or inconsistent with another value."""


class UnknownPresetError(ConfigError, KeyError):
    """A preset name is not registered; the message lists the names and the closest match."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class InputShapeError(AutoencoderError):
    """A tensor has the wrong rank, channel count, spatial size or dtype for the model."""


class CheckpointError(AutoencoderError):
    """A checkpoint folder is missing files, is malformed, or does not match the config."""


class NonFiniteInputError(AutoencoderError):
    """An input tensor holds NaN or infinite values (rejected before any computation)."""
