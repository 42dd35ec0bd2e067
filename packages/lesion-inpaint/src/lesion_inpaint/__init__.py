"""Gaussian diffusion for lesion masks (LMNet), latent inpainting (LINet) and latent generation."""

from importlib.metadata import PackageNotFoundError, version

from ._checkpoint import load_checkpoint, save_checkpoint
from ._diffusion_config import DiffusionConfig
from ._latent_generator import (
    LatentGenerator,
    LatentGeneratorConfig,
    generator_loss,
    generator_training_loss,
    label_channels,
)
from ._linet import LINet, LINetConfig, linet_loss, linet_training_loss, resize_mask
from ._lmnet import LMNet, LMNetConfig, binarize_mask, lmnet_loss, lmnet_training_loss
from ._paste import blend_weights, paste_back
from ._presets import PRESETS, Preset, get_preset
from ._sampling import GaussianSampler, InpaintingSampler, drop_context, guided_eps, null_context
from ._schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    InpaintingDDIMScheduler,
    SchedulerOutput,
    make_betas,
)
from ._unet import LevelContextUNet, UNetConfig, build_unet
from .exceptions import (
    CheckpointError,
    ConfigError,
    EmptyMaskError,
    LesionInpaintError,
    ShapeError,
)

try:
    __version__ = version("lesion-inpaint")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DDIMScheduler",
    "DDPMScheduler",
    "DiffusionConfig",
    "EmptyMaskError",
    "GaussianSampler",
    "InpaintingDDIMScheduler",
    "InpaintingSampler",
    "LINet",
    "LINetConfig",
    "LMNet",
    "LMNetConfig",
    "LatentGenerator",
    "LatentGeneratorConfig",
    "LesionInpaintError",
    "LevelContextUNet",
    "Preset",
    "SchedulerOutput",
    "ShapeError",
    "UNetConfig",
    "__version__",
    "binarize_mask",
    "blend_weights",
    "build_unet",
    "drop_context",
    "generator_loss",
    "generator_training_loss",
    "get_preset",
    "guided_eps",
    "label_channels",
    "linet_loss",
    "linet_training_loss",
    "lmnet_loss",
    "lmnet_training_loss",
    "load_checkpoint",
    "make_betas",
    "null_context",
    "paste_back",
    "resize_mask",
    "save_checkpoint",
]
