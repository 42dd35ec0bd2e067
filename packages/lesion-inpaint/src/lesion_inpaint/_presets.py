"""Named presets: ``demo`` (2-core CPU, minutes) and ``paper`` (the published sizes, GPU).

``paper`` follows the authors' configs (authors-code.md Sec. 1.6, 2.3, 2.5): LMNet is the tiny
16-channel UNet with mult (1, 2, 4); LINet and the latent generator use 128 channels, mult
(1, 2, 4), 2 residual blocks, attention at the coarsest level(s); T = 1000 with the scaled-linear
0.0015-0.0195 schedule, 200 DDIM steps (eta 1) and guidance 2.5. The context size defaults to the
text encoder the paper used (BiomedCLIP 512 for LesionDiffusion, ERNIE-health 768 for GuideGen);
pass ``context_dim`` for another encoder (e.g. 384 for all-MiniLM-L6-v2, the ``demo`` default).

The latent generator's label map has 21 classes (GuideGen's label space, the same as
cat-diffusion's presets), one-hot encoded on the latent grid; LMNet's organ map takes ids up to 117
(TotalSegmentator v2).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ._diffusion_config import DiffusionConfig
from ._latent_generator import LatentGeneratorConfig
from ._linet import LINetConfig
from ._lmnet import LMNetConfig
from ._unet import UNetConfig
from .exceptions import ConfigError, did_you_mean

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A whole-system size preset.

    Attributes:
        name: ``"demo"`` or ``"paper"``.
        lmnet: LMNet config.
        linet: LINet config.
        latent_generator: GuideGen latent generator config.
        mask_crop: LMNet crop size in voxels (X, Y, Z).
        inpaint_latent: LINet latent crop size (X, Y, Z).
        generator_latent: latent size of the whole-volume generator (X, Y, Z).
    """

    name: str
    lmnet: LMNetConfig
    linet: LINetConfig
    latent_generator: LatentGeneratorConfig
    mask_crop: tuple[int, int, int]
    inpaint_latent: tuple[int, int, int]
    generator_latent: tuple[int, int, int]


def _demo() -> Preset:
    diff = DiffusionConfig(num_inference_steps=20, eta=1.0, guidance_scale=2.5, cond_drop_prob=0.15)
    small = {"channels": (16, 32, 64), "attention_levels": (False, False, True), "num_res_blocks": 1,
             "num_head_channels": 16, "norm_num_groups": 8, "context_dim": 384}
    return Preset(
        name="demo",
        lmnet=LMNetConfig(
            unet=UNetConfig(in_channels=4, out_channels=1, **{**small, "channels": (8, 16, 32), "num_head_channels": 8,
                                                             "norm_num_groups": 4}),
            diffusion=diff,
            organ_id_max=117,
        ),
        linet=LINetConfig(latent_channels=4, unet=UNetConfig(in_channels=5, out_channels=4, **small), diffusion=diff),
        latent_generator=LatentGeneratorConfig(
            latent_channels=4, num_label_classes=21, unet=UNetConfig(in_channels=25, out_channels=4, **small),
            diffusion=diff,
        ),
        mask_crop=(32, 32, 32),
        inpaint_latent=(16, 16, 16),
        generator_latent=(16, 16, 16),
    )


def _paper() -> Preset:
    diff = DiffusionConfig(num_inference_steps=200, eta=1.0, guidance_scale=2.5, cond_drop_prob=0.15)
    big = {"channels": (128, 256, 512), "num_res_blocks": 2, "num_head_channels": 64, "norm_num_groups": 32}
    return Preset(
        name="paper",
        lmnet=LMNetConfig(
            unet=UNetConfig(
                in_channels=4, out_channels=1, channels=(16, 32, 64), attention_levels=(False, False, True),
                num_res_blocks=1, num_head_channels=32, norm_num_groups=8, context_dim=512,
            ),
            diffusion=diff,
            gamma=0.001,
            organ_id_max=117,
        ),
        linet=LINetConfig(
            latent_channels=4,
            unet=UNetConfig(in_channels=5, out_channels=4, attention_levels=(False, False, True), context_dim=512, **big),
            diffusion=diff,
        ),
        latent_generator=LatentGeneratorConfig(
            latent_channels=8,
            num_label_classes=21,
            unet=UNetConfig(in_channels=29, out_channels=8, attention_levels=(False, True, True), context_dim=768, **big),
            diffusion=diff,
        ),
        mask_crop=(64, 152, 152),
        inpaint_latent=(64, 64, 64),
        generator_latent=(32, 32, 32),
    )


PRESETS = {"demo": _demo, "paper": _paper}


def get_preset(name: str, **overrides: Any) -> Preset:
    """Look up a preset by name, optionally overriding some of its fields.

    Args:
        name: ``"demo"`` or ``"paper"``.
        **overrides: ``context_dim`` (the text-context size D of all three UNets) and/or any
            :class:`Preset` field except ``name`` (``lmnet``, ``linet``, ``latent_generator``,
            ``mask_crop``, ``inpaint_latent``, ``generator_latent``).

    Returns:
        The frozen :class:`Preset`.

    Raises:
        ConfigError: unknown name (with a suggestion) or unknown override keys (listing the allowed
            ones).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}." + did_you_mean(name, PRESETS))
    allowed = ["context_dim", *(f.name for f in fields(Preset) if f.name != "name")]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown preset override(s) {unknown}; allowed: {allowed}." + did_you_mean(unknown[0], allowed)
        )
    context_dim = overrides.pop("context_dim", None)
    p = replace(PRESETS[name](), **overrides)
    if context_dim is None:
        return p
    if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
        raise ConfigError(f"context_dim must be a positive integer, got {context_dim!r}")
    return replace(
        p,
        lmnet=replace(p.lmnet, unet=replace(p.lmnet.unet, context_dim=context_dim)),
        linet=replace(p.linet, unet=replace(p.linet.unet, context_dim=context_dim)),
        latent_generator=replace(
            p.latent_generator, unet=replace(p.latent_generator.unet, context_dim=context_dim)
        ),
    )
