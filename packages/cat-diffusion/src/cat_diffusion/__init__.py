"""Categorical (multinomial) diffusion for 3D label maps, with knowledge injection."""

from importlib.metadata import PackageNotFoundError, version

from ._checkpoint import load_checkpoint, save_checkpoint
from ._injection import KnowledgeInjection
from ._level_unet import LevelContextUNet
from ._losses import (
    CategoricalDiffusionLoss,
    DiffusionLossOutput,
    class_mass_loss,
    cross_entropy_loss,
    kl_loss,
    sample_timesteps,
)
from ._model import PRESETS, SemanticSynthesizer, SynthesizerConfig, get_preset
from ._sampler import CategoricalSampler
from ._scheduler import CategoricalScheduler, CategoricalStepOutput
from ._topology import count_guidance, expected_euler_characteristic

try:
    __version__ = version("cat-diffusion")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "PRESETS",
    "CategoricalDiffusionLoss",
    "CategoricalSampler",
    "CategoricalScheduler",
    "CategoricalStepOutput",
    "DiffusionLossOutput",
    "KnowledgeInjection",
    "LevelContextUNet",
    "SemanticSynthesizer",
    "SynthesizerConfig",
    "__version__",
    "class_mass_loss",
    "count_guidance",
    "cross_entropy_loss",
    "expected_euler_characteristic",
    "get_preset",
    "kl_loss",
    "load_checkpoint",
    "sample_timesteps",
    "save_checkpoint",
]
