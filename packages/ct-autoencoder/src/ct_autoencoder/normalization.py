"""Invertible Hounsfield-unit window that maps CT intensities to the model range [-1, 1].

Each model owns its window in its config (DESIGN.md "Each model owns its normalisation").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .exceptions import ConfigError, NonFiniteInputError

__all__ = ["HUWindow"]


@dataclass(frozen=True, kw_only=True)
class HUWindow:
    """Linear HU window ``[lower, upper] -> [-1, 1]``.

    ``normalize`` clips to the window when ``clip`` is true; ``denormalize`` is its exact inverse on
    ``[lower, upper]`` (values outside the window are lost by the clip, by design).

    Attributes:
        lower: HU mapped to -1.
        upper: HU mapped to +1; must exceed ``lower``.
        clip: Clip normalised values to [-1, 1].
    """

    lower: float = -1000.0
    upper: float = 1000.0
    clip: bool = True

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lower) and np.isfinite(self.upper)):
            raise ConfigError(f"HUWindow bounds must be finite, got lower={self.lower}, upper={self.upper}")
        if self.upper <= self.lower:
            raise ConfigError(
                f"HUWindow needs upper > lower, got lower={self.lower}, upper={self.upper}; "
                f"for example lower={min(self.lower, self.upper)}, upper={max(self.lower, self.upper) + 1}"
            )

    @property
    def center(self) -> float:
        """Window centre in HU."""
        return 0.5 * (self.lower + self.upper)

    @property
    def width(self) -> float:
        """Window width in HU."""
        return self.upper - self.lower

    def normalize(self, hu: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Map HU to the model range.

        Args:
            hu: CT in Hounsfield units, any shape, tensor or array.

        Returns:
            Same type and shape, float, ``2 (hu - lower) / (upper - lower) - 1``, in [-1, 1] if ``clip``.

        Raises:
            NonFiniteInputError: ``hu`` holds NaN or infinite values (clipping would hide them).
        """
        if isinstance(hu, torch.Tensor):
            x = hu.float() if not hu.is_floating_point() else hu
            if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise NonFiniteInputError(
                    f"hu holds {bad} non-finite value(s) (NaN or inf) of {x.numel()}; CT intensities "
                    f"must be finite Hounsfield units (fill or crop missing voxels first)"
                )
            y = (x - self.lower) * (2.0 / self.width) - 1.0
            return y.clamp(-1.0, 1.0) if self.clip else y
        x = np.asarray(hu, dtype=np.float32)
        if not np.isfinite(x).all():
            raise NonFiniteInputError(
                f"hu holds {int((~np.isfinite(x)).sum())} non-finite value(s) (NaN or inf) of {x.size}; "
                f"CT intensities must be finite Hounsfield units (fill or crop missing voxels first)"
            )
        y = (x - np.float32(self.lower)) * np.float32(2.0 / self.width) - np.float32(1.0)
        return np.clip(y, -1.0, 1.0) if self.clip else y

    def denormalize(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Map model-range values back to HU (inverse of :meth:`normalize` on the window).

        Args:
            x: Values in [-1, 1] (others extrapolate linearly), tensor or array.

        Returns:
            HU, same type and shape.
        """
        if isinstance(x, torch.Tensor):
            return (x + 1.0) * (self.width / 2.0) + self.lower
        a = np.asarray(x, dtype=np.float32)
        return (a + np.float32(1.0)) * np.float32(self.width / 2.0) + np.float32(self.lower)
