"""Presets of the LesionDiffusion system: crop grid, networks, codec, diffusion and training sizes.

Two presets, looked up by name with :func:`get_preset`:

- ``demo``: runs on a 2-core CPU. 32^3 model crops; LMNet on a 16^3 grid (the crop at half
  resolution); LINet on a lossless space-to-depth latent (2x, 8 channels) of HU clipped to
  -200..300; small UNets; 25 DDIM steps.
- ``paper``: the published sizes (LesionDiffusion, MICCAI 2025): 128^3 crops, a 2x VQ-GAN with
  2048 codes, cosine schedule with T = 1000, 200 DDIM steps, guidance 2.5. Needs a GPU.

**Model grid.** A lesion box of any size is resampled so that its longest side covers
``box_fill`` of the crop edge (never finer than ``base_spacing_mm``): every lesion fills a similar
fraction of the grid, so the networks see shape at the same resolution whatever the lesion's size
(:meth:`LesionDiffusionPreset.model_spacing`).

**Text.** Both networks get the report's attributes as one standardised token per attribute
(``ctsynth_bench.text.encode_attributes``), in two ways at once: by cross-attention at the
attention levels, and through a small MLP of the flattened attribute tokens added to the timestep
embedding (so every residual block of every level sees it). Condition dropout ``cond_drop_prob``
trains the null context used by classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Literal

from ..exceptions import BenchError

__all__ = ["PRESETS", "LesionDiffusionPreset", "PresetError", "get_preset"]


class PresetError(BenchError):
    """An unknown preset name, an unknown override or an inconsistent preset."""


Codec = Literal["space_to_depth", "vqgan"]
Schedule = Literal["scaled_linear_beta", "cosine"]


@dataclass(frozen=True)
class LesionDiffusionPreset:
    """All sizes of one LesionDiffusion system (frozen; build variants with :func:`get_preset`).

    Attributes:
        name: preset name.
        crop_size: model crop edge S in voxels (a cube), divisible by 2 and by ``lmnet_factor``.
        base_spacing_mm: finest isotropic model spacing in mm.
        box_fill: fraction of the crop edge that the lesion box's longest side covers.
        lmnet_factor: LMNet runs on the crop downsampled by this factor (1 or 2).
        lmnet_channels: LMNet UNet channels per level.
        lmnet_attention: LMNet levels with (cross-)attention.
        linet_channels: LINet UNet channels per level.
        linet_attention: LINet levels with (cross-)attention.
        num_res_blocks: residual blocks per UNet level.
        num_head_channels: channels per attention head.
        codec: ``"space_to_depth"`` (lossless 2x rearrangement of the windowed HU) or ``"vqgan"``
            (the trained VQ-GAN stage).
        hu_window: HU range the codec keeps (values outside are clipped before encoding).
        vqgan_codes: VQ-GAN codebook size.
        vqgan_channels: VQ-GAN encoder channels per level (the first level downsamples 2x).
        vqgan_latent_channels: VQ-GAN latent channels.
        context_dim: width D of the text tokens (384: all-MiniLM-L6-v2).
        text_encoder: default text encoder (a ``ctsynth_bench.text`` name or a local folder).
        num_train_timesteps: T.
        schedule: noise schedule.
        steps: DDIM steps at sampling.
        eta: DDIM eta.
        guidance: classifier-free guidance scale of LINet.
        lmnet_guidance: classifier-free guidance scale of LMNet.
        lmnet_threshold: ``"volume"`` (threshold swept for the volume of the ellipsoid inscribed
            in the box, the paper's rule) or a fixed threshold in (0, 1) on LMNet's output.
        cond_drop_prob: condition dropout in training.
        lmnet_gamma: weight of the whole-crop term of Eq. (2).
        batch_size: training batch size per process.
        learning_rate: AdamW learning rate of the diffusion stages.
        vqgan_learning_rate: learning rate of the VQ-GAN stage.
        vqgan_adversarial_start: VQ-GAN step from which the adversarial term is on (None: the
            ``ct_autoencoder`` preset's). The demo starts it at step 5000, after its CPU budget: a
            VQ-GAN trained on reconstruction first beat the 2x baseline after 500 steps (33.3 vs
            32.1 dB on held-out crops), one with the adversarial term from step 200 did not after
            238 (28.8 dB).
        ema_decay: decay of the exponential moving average of the diffusion weights.
    """

    name: str
    crop_size: int
    base_spacing_mm: float
    box_fill: float
    lmnet_factor: int
    lmnet_channels: tuple[int, ...]
    lmnet_attention: tuple[bool, ...]
    linet_channels: tuple[int, ...]
    linet_attention: tuple[bool, ...]
    num_res_blocks: int
    num_head_channels: int
    codec: Codec
    hu_window: tuple[float, float] = (-200.0, 300.0)
    vqgan_codes: int = 512
    vqgan_channels: tuple[int, ...] = (32, 64)
    vqgan_latent_channels: int = 8
    context_dim: int = 384
    text_encoder: str = "minilm"
    num_train_timesteps: int = 1000
    schedule: Schedule = "scaled_linear_beta"
    steps: int = 25
    eta: float = 0.0
    guidance: float = 2.5
    lmnet_guidance: float = 3.0
    lmnet_threshold: float | str = "volume"
    cond_drop_prob: float = 0.15
    lmnet_gamma: float = 0.001
    batch_size: int = 8
    learning_rate: float = 5e-4
    vqgan_learning_rate: float = 2e-4
    vqgan_adversarial_start: int | None = None
    ema_decay: float = 0.995

    def __post_init__(self) -> None:
        if self.crop_size < 8 or self.crop_size % (2 * self.lmnet_factor * 4):
            raise PresetError(
                f"crop_size must be >= 8 and divisible by {8 * self.lmnet_factor} "
                f"(2x codec, lmnet_factor {self.lmnet_factor}, two UNet downsamplings), got {self.crop_size}"
            )
        if self.lmnet_factor not in (1, 2):
            raise PresetError(f"lmnet_factor must be 1 or 2, got {self.lmnet_factor}")
        if not 0.1 <= self.box_fill <= 0.9:
            raise PresetError(f"box_fill must be in [0.1, 0.9], got {self.box_fill}")
        if self.base_spacing_mm <= 0:
            raise PresetError(f"base_spacing_mm must be > 0, got {self.base_spacing_mm}")
        lo, hi = self.hu_window
        if not hi > lo:
            raise PresetError(
                f"hu_window must be (low, high) with high > low, got {self.hu_window}"
            )
        if self.codec not in ("space_to_depth", "vqgan"):
            raise PresetError(f"codec must be 'space_to_depth' or 'vqgan', got {self.codec!r}")
        if self.schedule not in ("scaled_linear_beta", "cosine"):
            raise PresetError(
                f"schedule must be 'scaled_linear_beta' or 'cosine', got {self.schedule!r}"
            )
        if not 1 <= self.steps <= self.num_train_timesteps:
            raise PresetError(f"steps must be in [1, {self.num_train_timesteps}], got {self.steps}")
        if self.lmnet_threshold != "volume" and not (
            isinstance(self.lmnet_threshold, float) and 0.0 < self.lmnet_threshold < 1.0
        ):
            raise PresetError(
                f"lmnet_threshold must be 'volume' or a number in (0, 1), got {self.lmnet_threshold!r}"
            )
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise PresetError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        for name in ("lmnet", "linet"):
            ch, att = getattr(self, f"{name}_channels"), getattr(self, f"{name}_attention")
            if len(ch) != len(att):
                raise PresetError(
                    f"{name}_channels {ch} and {name}_attention {att} need the same length"
                )

    # ------------------------------------------------------------------ geometry
    @property
    def lmnet_size(self) -> int:
        """Edge of LMNet's grid in voxels."""
        return self.crop_size // self.lmnet_factor

    @property
    def latent_size(self) -> int:
        """Edge of LINet's latent grid (the codec downsamples 2x)."""
        return self.crop_size // 2

    @property
    def latent_channels(self) -> int:
        """Channels of the codec latent."""
        return 8 if self.codec == "space_to_depth" else self.vqgan_latent_channels

    def model_spacing(self, box_extent_mm: tuple[float, float, float]) -> float:
        """Isotropic mm per model voxel for a lesion box of this extent.

        The box's longest side covers ``box_fill`` of the crop edge, but the spacing is never finer
        than ``base_spacing_mm``: ``max(base, max(extent) / (box_fill * crop_size))``.

        Args:
            box_extent_mm: the box's extent (x, y, z) in mm, each > 0.

        Returns:
            Spacing in mm.
        """
        ext = tuple(float(v) for v in box_extent_mm)
        if len(ext) != 3 or any(not v > 0 for v in ext):
            raise PresetError(
                f"box_extent_mm must be three positive sizes in mm, got {box_extent_mm!r}"
            )
        return max(self.base_spacing_mm, max(ext) / (self.box_fill * self.crop_size))

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict) -> LesionDiffusionPreset:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`PresetError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise PresetError(f"unknown preset fields {extra}; allowed: {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


PRESETS: dict[str, LesionDiffusionPreset] = {
    "demo": LesionDiffusionPreset(
        name="demo",
        crop_size=32,
        base_spacing_mm=1.0,
        box_fill=0.6,
        lmnet_factor=2,
        lmnet_channels=(16, 32, 48),
        lmnet_attention=(False, False, True),
        linet_channels=(16, 32, 48),
        linet_attention=(False, False, True),
        num_res_blocks=1,
        num_head_channels=16,
        codec="space_to_depth",
        steps=25,
        eta=1.0,
        batch_size=8,
        learning_rate=1e-3,
        vqgan_learning_rate=1e-3,
        vqgan_adversarial_start=5000,
    ),
    "paper": LesionDiffusionPreset(
        name="paper",
        crop_size=128,
        base_spacing_mm=1.0,
        box_fill=0.6,
        lmnet_factor=1,
        lmnet_channels=(16, 32, 64, 128),
        lmnet_attention=(False, False, True, True),
        linet_channels=(128, 256, 512),
        linet_attention=(False, True, True),
        num_res_blocks=2,
        num_head_channels=32,
        codec="vqgan",
        vqgan_codes=2048,
        vqgan_channels=(64, 128),
        vqgan_latent_channels=8,
        schedule="cosine",
        steps=200,
        eta=1.0,
        guidance=2.5,
        lmnet_guidance=2.5,
        batch_size=2,
        learning_rate=1e-4,
        vqgan_learning_rate=1e-4,
        ema_decay=0.9999,
    ),
}


def get_preset(name: str, **overrides: object) -> LesionDiffusionPreset:
    """Return the preset ``name`` with ``overrides`` applied.

    Args:
        name: ``"demo"`` or ``"paper"``.
        **overrides: any :class:`LesionDiffusionPreset` field, e.g. ``context_dim=512``.

    Raises:
        PresetError: unknown name (with the closest match) or unknown override keys (with the
            allowed ones).
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PresetError(
            f"unknown LesionDiffusion preset {name!r}; allowed: {sorted(PRESETS)}{hint}"
        )
    names = {f.name for f in dataclasses.fields(LesionDiffusionPreset)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise PresetError(f"unknown preset override(s) {bad}; allowed: {sorted(names - {'name'})}")
    return dataclasses.replace(PRESETS[name], **overrides)  # type: ignore[arg-type]
