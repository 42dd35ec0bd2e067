"""VQ-GAN and anatomy-aware HDR autoencoder for 3D CT, with a tiled codec.

Public API:

- Models: :class:`VQGAN` (LesionDiffusion), :class:`HDRAutoencoder` (GuideGen), both with
  ``encode_stage_2_inputs`` / ``decode_stage_2_outputs`` for MONAI's ``LatentDiffusionInferer``.
- Configs and presets: :class:`VQGANConfig`, :class:`HDRAutoencoderConfig`, :func:`vqgan_preset`,
  :func:`hdr_preset`, :class:`HUWindow`.
- Training: :func:`make_optimizers`, :func:`training_step`, :func:`perceptual_loss_25d`,
  :class:`SliceFeatureExtractor`, :func:`codebook_stats`, :func:`reinit_dead_codes`.
- Tiling: :func:`tiled_encode`, :func:`tiled_decode`, :func:`seam_ratio`.
- Checkpoints: :func:`save_autoencoder`, :func:`load_autoencoder`, :func:`build_model`.
"""

from importlib.metadata import PackageNotFoundError, version

from ._checkpoint import build_model, load_autoencoder, save_autoencoder
from ._codebook import CodebookStats, codebook_stats, reinit_dead_codes
from ._hdr import HDRAutoencoder, HDRAutoencoderOutput, HDRWindow
from ._losses import SliceFeatureExtractor, perceptual_loss_25d, random_slices
from ._tiling import seam_ratio, tile_starts, tiled_decode, tiled_encode
from ._training import Optimizers, make_optimizers, training_step
from ._vqgan import VQGAN, VQGANOutput
from .config import (
    HDR_PRESETS,
    VQGAN_PRESETS,
    HDRAutoencoderConfig,
    VQGANConfig,
    config_from_dict,
    config_to_dict,
    hdr_preset,
    vqgan_preset,
)
from .exceptions import (
    AutoencoderError,
    CheckpointError,
    ConfigError,
    InputShapeError,
    UnknownPresetError,
)
from .normalization import HUWindow

try:
    __version__ = version("ct-autoencoder")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "HDR_PRESETS",
    "VQGAN",
    "VQGAN_PRESETS",
    "AutoencoderError",
    "CheckpointError",
    "CodebookStats",
    "ConfigError",
    "HDRAutoencoder",
    "HDRAutoencoderConfig",
    "HDRAutoencoderOutput",
    "HDRWindow",
    "HUWindow",
    "InputShapeError",
    "Optimizers",
    "SliceFeatureExtractor",
    "UnknownPresetError",
    "VQGANConfig",
    "VQGANOutput",
    "__version__",
    "build_model",
    "codebook_stats",
    "config_from_dict",
    "config_to_dict",
    "hdr_preset",
    "load_autoencoder",
    "make_optimizers",
    "perceptual_loss_25d",
    "random_slices",
    "reinit_dead_codes",
    "save_autoencoder",
    "seam_ratio",
    "tile_starts",
    "tiled_decode",
    "tiled_encode",
    "training_step",
    "vqgan_preset",
]
