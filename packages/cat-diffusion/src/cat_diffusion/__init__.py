"""Categorical (multinomial) diffusion for 3D label maps, with knowledge injection."""

from importlib.metadata import PackageNotFoundError, version

from ._losses import (
    CategoricalDiffusionLoss,
    DiffusionLossOutput,
    cross_entropy_loss,
    kl_loss,
    sample_timesteps,
)
from ._scheduler import CategoricalScheduler, CategoricalStepOutput

try:
    __version__ = version("cat-diffusion")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "CategoricalDiffusionLoss",
    "CategoricalScheduler",
    "CategoricalStepOutput",
    "DiffusionLossOutput",
    "__version__",
    "cross_entropy_loss",
    "kl_loss",
    "sample_timesteps",
]
