"""Frozen model configs and the named presets, looked up with :func:`get_preset`.

Sizes of the ``paper`` presets come from the papers and the authors' configs
(``/shared/reference/authors-code.md`` sections 1.5 and 2.4):

- LesionDiffusion VQ-GAN: 2x downsampling, 128^3 crops -> 4 x 64^3 latents, codebook 2048, width 96,
  one residual block, EMA codebook with beta = 0.25.
- GuideGen HDR autoencoder (``OvO1111/ldm ensemble_vq.yaml``): width 128 at three levels, 4x
  downsampling, 128^3 -> 8 x 32^3, codebook 8192, two residual blocks, window HU -1200..1200.
  ``paper_kl`` follows the shipped ``ae.yaml`` KL variant (widths 96/192/384, 4 latent channels).

``demo`` presets fit a 2-core CPU: 32^3 crops and a few thousand parameters per level.

Preset names: ``vqgan-demo``, ``vqgan-paper``, ``vqgan-demo-soft-tissue``,
``vqgan-paper-soft-tissue``, ``hdr-demo``, ``hdr-demo-kl``, ``hdr-paper``, ``hdr-paper-kl``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .exceptions import ConfigError, UnknownPresetError
from .normalization import HUWindow

__all__ = [
    "PRESETS",
    "HDRAutoencoderConfig",
    "VQGANConfig",
    "config_from_dict",
    "config_to_dict",
    "get_preset",
    "hdr_preset",
    "vqgan_preset",
]

AdversarialCriterion = Literal["bce", "hinge", "least_squares"]


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value}")


def _check_criterion(value: str) -> None:
    allowed = ("bce", "hinge", "least_squares")
    if value not in allowed:
        near = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"adversarial_criterion must be one of {allowed}, got {value!r}{hint}")


def _check_scale_factor(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"scale_factor must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"scale_factor must be finite and > 0 (1 / std of the latents), got {value}")


@dataclass(frozen=True, kw_only=True)
class VQGANConfig:
    """LesionDiffusion VQ-GAN (paper Sec. 2.2, Eq. 3) on MONAI ``VQVAE`` with an EMA codebook.

    Attributes:
        name: Preset name, recorded in checkpoints.
        channels: Encoder width per level (MONAI ``VQVAE.channels``).
        strides: Stride of each level's down/up-sampling convolution, 1 or 2. The product is the
            downsampling factor (2 for the paper).
        num_res_layers: Residual units per level.
        num_embeddings: Codebook size.
        embedding_dim: Latent channels.
        commitment_cost: beta of the commitment term.
        ema_decay: EMA decay of the codebook.
        crop_size: Training crop edge in voxels.
        window: HU window mapping CT to [-1, 1].
        reconstruction_weight: Weight of the L2 term of Eq. 3.
        adversarial_weight: Weight of the generator's adversarial term.
        adversarial_criterion: ``bce`` is Eq. 3's log-loss; ``hinge`` and ``least_squares`` also work.
        adversarial_start: Optimiser step from which the adversarial terms are active.
        perceptual_weight: Weight of the 2.5D perceptual term (used only when a feature extractor
            is given).
        disc_channels: Width of the first discriminator layer.
        disc_layers: Strided layers of the PatchGAN discriminator.
        dead_code_threshold: A code whose EMA cluster size (expected assignments per step) falls
            below this is dead.
        dead_code_interval: Re-initialise dead codes every this many training steps (0: never).
        learning_rate: Adam learning rate of generator and discriminator.
        scale_factor: Latent scale, ``1 / std`` of the latents over training data (see
            :func:`~ct_autoencoder.measure_scale_factor`); 1.0 until measured. Diffusion models
            work on ``z * scale_factor`` and divide by it before decoding.
    """

    name: str
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    num_res_layers: int
    num_embeddings: int
    embedding_dim: int
    commitment_cost: float = 0.25
    ema_decay: float = 0.99
    crop_size: int
    window: HUWindow = field(default_factory=lambda: HUWindow(lower=-1000.0, upper=1000.0))
    reconstruction_weight: float = 1.0
    adversarial_weight: float = 0.01
    adversarial_criterion: AdversarialCriterion = "bce"
    adversarial_start: int = 0
    perceptual_weight: float = 0.0
    disc_channels: int = 32
    disc_layers: int = 3
    dead_code_threshold: float = 1.0
    dead_code_interval: int = 100
    learning_rate: float = 1e-4
    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"channels must be a non-empty tuple of positive ints, got {self.channels}")
        if len(self.strides) != len(self.channels):
            raise ConfigError(
                f"strides needs one entry per level ({len(self.channels)}), got {self.strides}"
            )
        if any(s not in (1, 2) for s in self.strides):
            raise ConfigError(f"each stride must be 1 or 2, got {self.strides}")
        for n in ("num_res_layers", "num_embeddings", "embedding_dim", "crop_size", "disc_channels", "disc_layers"):
            _check_positive(n, getattr(self, n))
        if self.crop_size % self.downsample_factor:
            raise ConfigError(
                f"crop_size {self.crop_size} must be divisible by the downsampling factor "
                f"{self.downsample_factor}; nearest: {self.downsample_factor * max(1, round(self.crop_size / self.downsample_factor))}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        for n in ("commitment_cost", "reconstruction_weight", "adversarial_weight", "perceptual_weight",
                  "dead_code_threshold", "adversarial_start", "dead_code_interval"):
            _check_positive(n, getattr(self, n), allow_zero=True)
        _check_positive("learning_rate", self.learning_rate)
        _check_criterion(self.adversarial_criterion)
        _check_scale_factor(self.scale_factor)

    def adversarial_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at optimiser step ``step``."""
        return self.adversarial_weight > 0 and step >= self.adversarial_start

    @property
    def downsample_factor(self) -> int:
        """Spatial downsampling factor from image to latent."""
        f = 1
        for s in self.strides:
            f *= s
        return f

    def latent_shape(self, spatial: tuple[int, int, int]) -> tuple[int, int, int, int]:
        """Latent shape ``(C, X/f, Y/f, Z/f)`` for an image of spatial size ``spatial``."""
        f = self.downsample_factor
        return (self.embedding_dim, *(s // f for s in spatial))


@dataclass(frozen=True, kw_only=True)
class HDRAutoencoderConfig:
    """GuideGen anatomy-aware HDR autoencoder (paper Sec. 3.2, Eq. 7-9).

    Attributes:
        name: Preset name.
        channels: Width per level; there are ``len(channels) - 1`` stride-2 downsamplings.
        num_res_blocks: Residual blocks per level.
        norm_groups: Groups of the per-voxel group norm; must divide every width and leave at
            least 3 channels per group (it removes each group's mean and scale at every voxel,
            so a 1-channel group carries nothing).
        bottleneck: ``vq`` (EMA codebook, the authors' final config) or ``kl`` (diagonal Gaussian).
        latent_channels: Latent channels.
        num_embeddings: Codebook size (``vq`` only).
        commitment_cost: beta of the commitment term (``vq``).
        ema_decay: Codebook EMA decay (``vq``).
        kl_weight: Weight of the KL term (``kl``).
        num_label_classes: Label ids accepted in the anatomy map are ``0 .. num_label_classes - 1``
            (118 covers TotalSegmentator v2 "total" plus background).
        label_embed_dim: Channels of the label embedding concatenated at every level.
        label_dropout: Probability per sample of training without the map, so plain encoding works.
        crop_size: Training crop edge.
        window: HU window mapping CT to [-1, 1] (authors: -1200..1200).
        k_init: Initial learnable scale ``k`` of h (Eq. 7).
        k_min: Floor of ``k`` (``k = k_min + softplus(raw)``). Under the L1 term of Eq. 8 alone the
            gradient w.r.t. ``k`` is always positive, so an unconstrained ``k`` would shrink to 0
            and switch the loss off; the floor prevents that collapse.
        b_init: Initial learnable offset ``b`` of h (Eq. 7).
        min_window_radius: Smallest sampled window radius, as a fraction of the intensity range.
        reconstruction_weight: Weight of the L1 term under h (Eq. 8).
        plain_l1_weight: Weight of an extra L1 term between reconstruction and input in the model
            range, without the window (0 = the paper's loss). The sampled window clips most voxels
            of a narrow window and passes no gradient there, so absolute intensities are learnt
            slowly; a short CPU run converges much faster with this term on.
        perceptual_weight: Weight of the perceptual term under h (Eq. 9), when a feature extractor
            is given.
        frame_weight: Generator weight of the 2D frame discriminator term.
        volume_weight: Generator weight of the 3D volume discriminator term.
        adversarial_criterion: Discriminator criterion (authors: hinge).
        adversarial_start: Step from which adversarial terms are active.
        num_frames: Random 2D slices per volume shown to the frame discriminator.
        disc_channels: Width of the first layer of both discriminators.
        disc_layers: Strided layers of both discriminators.
        dead_code_threshold: EMA cluster size below which a code is dead (``vq``).
        dead_code_interval: Re-initialise dead codes every this many steps (0: never).
        learning_rate: Adam learning rate.
        scale_factor: Latent scale, ``1 / std`` of the latents over training data; 1.0 until
            measured (see :class:`VQGANConfig`).
    """

    name: str
    channels: tuple[int, ...]
    num_res_blocks: int
    norm_groups: int = 8
    bottleneck: Literal["vq", "kl"] = "vq"
    latent_channels: int
    num_embeddings: int = 8192
    commitment_cost: float = 0.25
    ema_decay: float = 0.99
    kl_weight: float = 1e-6
    num_label_classes: int = 118
    label_embed_dim: int = 8
    label_dropout: float = 0.2
    crop_size: int
    window: HUWindow = field(default_factory=lambda: HUWindow(lower=-1200.0, upper=1200.0))
    k_init: float = 2.0
    k_min: float = 0.5
    b_init: float = -1.0
    min_window_radius: float = 0.05
    reconstruction_weight: float = 1.0
    plain_l1_weight: float = 0.0
    perceptual_weight: float = 1.0
    frame_weight: float = 0.01
    volume_weight: float = 0.01
    adversarial_criterion: AdversarialCriterion = "hinge"
    adversarial_start: int = 0
    num_frames: int = 3
    disc_channels: int = 32
    disc_layers: int = 3
    dead_code_threshold: float = 1.0
    dead_code_interval: int = 100
    learning_rate: float = 1e-4
    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"channels must be a non-empty tuple of positive ints, got {self.channels}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ConfigError(f"norm_groups={self.norm_groups} must divide every width; {bad} do not")
        thin = [c for c in self.channels if c // self.norm_groups < 3]
        if thin:
            ok = [g for g in range(1, min(self.channels) + 1)
                  if all(c % g == 0 and c // g >= 3 for c in self.channels)]
            raise ConfigError(
                f"norm_groups={self.norm_groups} leaves fewer than 3 channels per group at widths {thin}; "
                f"the per-voxel group norm removes each group's mean and scale, so 1 channel per group "
                f"erases the signal and 2 keep only a sign. Use norm_groups in {ok or [1]}"
            )
        if self.bottleneck not in ("vq", "kl"):
            near = difflib.get_close_matches(str(self.bottleneck), ("vq", "kl"), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"bottleneck must be 'vq' or 'kl', got {self.bottleneck!r}{hint}")
        for n in ("num_res_blocks", "norm_groups", "latent_channels", "num_embeddings", "num_label_classes",
                  "label_embed_dim", "crop_size", "num_frames", "disc_channels", "disc_layers"):
            _check_positive(n, getattr(self, n))
        if self.crop_size % self.downsample_factor:
            raise ConfigError(
                f"crop_size {self.crop_size} must be divisible by the downsampling factor "
                f"{self.downsample_factor}; nearest: {self.downsample_factor * max(1, round(self.crop_size / self.downsample_factor))}"
            )
        if not 0.0 < self.k_min < self.k_init:
            raise ConfigError(f"need 0 < k_min < k_init, got k_min={self.k_min}, k_init={self.k_init}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ConfigError(f"label_dropout must be in [0, 1], got {self.label_dropout}")
        if not 0.0 < self.min_window_radius <= 0.5:
            raise ConfigError(f"min_window_radius must be in (0, 0.5], got {self.min_window_radius}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        for n in ("commitment_cost", "kl_weight", "reconstruction_weight", "plain_l1_weight", "perceptual_weight", "frame_weight",
                  "volume_weight", "adversarial_start", "dead_code_threshold", "dead_code_interval"):
            _check_positive(n, getattr(self, n), allow_zero=True)
        _check_positive("learning_rate", self.learning_rate)
        _check_criterion(self.adversarial_criterion)
        _check_scale_factor(self.scale_factor)

    def adversarial_active(self, step: int) -> bool:
        """Whether the frame/volume adversarial terms are on at optimiser step ``step``."""
        return (self.frame_weight > 0 or self.volume_weight > 0) and step >= self.adversarial_start

    @property
    def downsample_factor(self) -> int:
        """Spatial downsampling factor from image to latent (``2 ** (len(channels) - 1)``)."""
        return 2 ** (len(self.channels) - 1)

    def latent_shape(self, spatial: tuple[int, int, int]) -> tuple[int, int, int, int]:
        """Latent shape ``(C, X/f, Y/f, Z/f)`` for an image of spatial size ``spatial``."""
        f = self.downsample_factor
        return (self.latent_channels, *(s // f for s in spatial))


_SOFT_TISSUE = HUWindow(lower=-200.0, upper=300.0)

PRESETS: dict[str, VQGANConfig | HDRAutoencoderConfig] = {
    "vqgan-demo": VQGANConfig(
        name="vqgan-demo", channels=(16, 32), strides=(2, 1), num_res_layers=1, num_embeddings=256,
        embedding_dim=4, crop_size=32, disc_channels=16, disc_layers=2, adversarial_weight=0.005,
        adversarial_start=200, dead_code_interval=50, learning_rate=1e-3,
    ),
    "vqgan-paper": VQGANConfig(
        name="vqgan-paper", channels=(96, 96, 96), strides=(2, 1, 1), num_res_layers=1,
        num_embeddings=2048, embedding_dim=4, crop_size=128, adversarial_weight=0.01,
        adversarial_start=50_000, perceptual_weight=1.0, disc_channels=64, disc_layers=3,
        learning_rate=1e-4,
    ),
    "hdr-demo": HDRAutoencoderConfig(
        name="hdr-demo", channels=(8, 16, 16), num_res_blocks=1, norm_groups=2, latent_channels=4,
        num_embeddings=256, label_embed_dim=4, crop_size=32, disc_channels=16, disc_layers=2,
        num_frames=2, learning_rate=1e-3, adversarial_start=400, dead_code_interval=50,
    ),
    "hdr-demo-kl": HDRAutoencoderConfig(
        name="hdr-demo-kl", channels=(8, 16, 16), num_res_blocks=1, norm_groups=2, bottleneck="kl",
        latent_channels=4, label_embed_dim=4, crop_size=32, disc_channels=16, disc_layers=2,
        num_frames=2, learning_rate=1e-3, adversarial_start=400,
    ),
    "hdr-paper": HDRAutoencoderConfig(
        name="hdr-paper", channels=(128, 128, 128), num_res_blocks=2, norm_groups=32,
        latent_channels=8, num_embeddings=8192, crop_size=128, adversarial_start=20_000,
        disc_channels=64, learning_rate=2e-5,
    ),
    "hdr-paper-kl": HDRAutoencoderConfig(
        name="hdr-paper-kl", channels=(96, 192, 384), num_res_blocks=2, norm_groups=32,
        bottleneck="kl", latent_channels=4, crop_size=128, adversarial_start=20_000,
        disc_channels=64, learning_rate=2e-5,
    ),
}
# Soft-tissue variants for LesionDiffusion's LINet: lesion density classes differ by 10-40 HU,
# so a -200..300 HU window spends the model range on soft tissue. Voxels outside it (air, lung,
# bone) are clipped by ``normalize`` and come back from the decoder at the window edge; paste
# decoded crops back only inside the lesion neighbourhood.
PRESETS["vqgan-demo-soft-tissue"] = dataclasses.replace(
    PRESETS["vqgan-demo"], name="vqgan-demo-soft-tissue", window=_SOFT_TISSUE
)
PRESETS["vqgan-paper-soft-tissue"] = dataclasses.replace(
    PRESETS["vqgan-paper"], name="vqgan-paper-soft-tissue", window=_SOFT_TISSUE
)


def get_preset(name: str, **overrides: Any) -> VQGANConfig | HDRAutoencoderConfig:
    """Return the frozen config of preset ``name`` with ``overrides`` applied.

    Args:
        name: One of :data:`PRESETS` (e.g. ``"vqgan-demo"``, ``"hdr-paper-kl"``).
        **overrides: Config fields to replace (e.g. ``crop_size=64``); the result is validated.

    Returns:
        A :class:`VQGANConfig` or :class:`HDRAutoencoderConfig`.

    Raises:
        UnknownPresetError: ``name`` is not registered (the message suggests the closest name).
        ConfigError: an override key is not a field of the config (the message lists the fields),
            or a value is out of range.
    """
    if not isinstance(name, str):
        raise ConfigError(f"preset name must be a str, got {type(name).__name__}")
    if name not in PRESETS:
        near = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.4)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise UnknownPresetError(f"unknown preset {name!r}; available: {sorted(PRESETS)}{hint}")
    cfg = PRESETS[name]
    if not overrides:
        return cfg
    fields = sorted(f.name for f in dataclasses.fields(cfg))
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown override(s) {unknown} for preset {name!r} ({type(cfg).__name__}); "
            f"allowed: {fields}"
        )
    return dataclasses.replace(cfg, **overrides)


def vqgan_preset(name: str, **overrides: Any) -> VQGANConfig:
    """Same as ``get_preset(f"vqgan-{name}", **overrides)`` (kept for existing callers)."""
    return get_preset("vqgan-" + str(name).replace("_", "-"), **overrides)  # type: ignore[return-value]


def hdr_preset(name: str, **overrides: Any) -> HDRAutoencoderConfig:
    """Same as ``get_preset(f"hdr-{name}", **overrides)`` (kept for existing callers)."""
    return get_preset("hdr-" + str(name).replace("_", "-"), **overrides)  # type: ignore[return-value]


_KINDS: dict[str, type] = {"VQGANConfig": VQGANConfig, "HDRAutoencoderConfig": HDRAutoencoderConfig}


def config_to_dict(config: VQGANConfig | HDRAutoencoderConfig) -> dict[str, Any]:
    """JSON-ready dict of a config, with its class under ``"kind"``."""
    d = dataclasses.asdict(config)
    d["kind"] = type(config).__name__
    return d


def config_from_dict(data: dict[str, Any]) -> VQGANConfig | HDRAutoencoderConfig:
    """Inverse of :func:`config_to_dict`; unknown keys or kinds raise :class:`ConfigError`."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _KINDS:
        raise ConfigError(f"config kind must be one of {sorted(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - names)
    if extra:
        raise ConfigError(f"unknown {kind} fields {extra}; allowed: {sorted(names)}")
    if "window" in data and isinstance(data["window"], dict):
        data["window"] = HUWindow(**data["window"])
    for key in ("channels", "strides"):
        if key in data and isinstance(data[key], list):
            data[key] = tuple(data[key])
    return cls(**data)
