"""VQ-GAN and anatomy-aware HDR autoencoder for 3D CT, with a tiled codec.

Public API:

- Models: :class:`VQGAN` (LesionDiffusion), :class:`HDRAutoencoder` (GuideGen), both with
  ``encode_stage_2_inputs`` / ``decode_stage_2_outputs`` for MONAI's ``LatentDiffusionInferer``
  and a ``scale_factor`` (latent scale; :func:`measure_scale_factor`).
- Configs and presets: :func:`get_preset`, :data:`PRESETS`, :class:`VQGANConfig`,
  :class:`HDRAutoencoderConfig`, :class:`HUWindow` (``vqgan_preset`` / ``hdr_preset`` delegate to
  ``get_preset``).
- Training: :class:`Discriminators`, :func:`generator_loss`, :func:`discriminator_loss`,
  :func:`make_optimizers`, :func:`training_step`, :func:`perceptual_loss_25d`,
  :class:`SliceFeatureExtractor`, :func:`codebook_stats`, :func:`reinit_dead_codes`.
- Tiling: :func:`tiled_encode`, :func:`tiled_decode`, :func:`seam_ratio`.
- Checkpoints: :func:`save_checkpoint`, :func:`load_checkpoint` (aliases ``save_autoencoder`` /
  ``load_autoencoder``), :func:`build_model`.
"""

from importlib.metadata import PackageNotFoundError, version

from ._checkpoint import (
    build_model,
    load_autoencoder,
    load_checkpoint,
    save_autoencoder,
    save_checkpoint,
)
from ._codebook import CodebookStats, codebook_stats, reinit_dead_codes
from ._discriminators import DiscriminatorOutput, Discriminators
from ._hdr import HDRAutoencoder, HDRAutoencoderOutput, HDRWindow
from ._losses import SliceFeatureExtractor, perceptual_loss_25d, random_slices
from ._scale import measure_scale_factor
from ._tiling import seam_ratio, tile_starts, tiled_decode, tiled_encode
from ._training import (
    Optimizers,
    discriminator_loss,
    generator_loss,
    make_optimizers,
    training_step,
)
from ._vqgan import VQGAN, VQGANOutput
from .config import (
    PRESETS,
    HDRAutoencoderConfig,
    VQGANConfig,
    config_from_dict,
    config_to_dict,
    get_preset,
    hdr_preset,
    vqgan_preset,
)
from .exceptions import (
    AutoencoderError,
    CheckpointError,
    ConfigError,
    InputShapeError,
    NonFiniteInputError,
    UnknownPresetError,
)
from .normalization import HUWindow

try:
    __version__ = version("ct-autoencoder")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "PRESETS",
    "VQGAN",
    "AutoencoderError",
    "CheckpointError",
    "CodebookStats",
    "ConfigError",
    "DiscriminatorOutput",
    "Discriminators",
    "HDRAutoencoder",
    "HDRAutoencoderConfig",
    "HDRAutoencoderOutput",
    "HDRWindow",
    "HUWindow",
    "InputShapeError",
    "NonFiniteInputError",
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
    "discriminator_loss",
    "generator_loss",
    "get_preset",
    "hdr_preset",
    "load_autoencoder",
    "load_checkpoint",
    "make_optimizers",
    "measure_scale_factor",
    "perceptual_loss_25d",
    "random_slices",
    "reinit_dead_codes",
    "save_autoencoder",
    "save_checkpoint",
    "seam_ratio",
    "tile_starts",
    "tiled_decode",
    "tiled_encode",
    "training_step",
    "vqgan_preset",
]
