"""The denoising UNet's typed config and builder.

The network itself is :class:`LevelContextUNet` (``_level_unet.py``, the same file as in
cat-diffusion): MONAI's ``DiffusionModelUNet`` that takes one context ``(B, L, D)`` for every level
or one context per resolution level (GuideGen's knowledge injection), finest level first; the
middle block reads the coarsest level's context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._level_unet import Context, LevelContextUNet
from .exceptions import ConfigError

__all__ = ["Context", "LevelContextUNet", "UNetConfig", "build_unet"]


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Keyword arguments of :class:`LevelContextUNet` (a subset of MONAI's, typed).

    Attributes:
        in_channels: channels of the UNet input (noisy sample plus concatenated conditions).
        out_channels: channels of the predicted noise.
        channels: feature channels per level, e.g. (128, 256, 512) for mult (1, 2, 4).
        attention_levels: per level, whether blocks there have (cross-)attention.
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups (must divide every entry of ``channels``).
        context_dim: feature size D of the text context; ``None`` disables cross-attention.
        spatial_dims: 3 for volumes (2 is allowed for tests).
    """

    in_channels: int
    out_channels: int
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    context_dim: int | None = None
    spatial_dims: int = 3

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention_levels):
            raise ConfigError(
                f"channels {self.channels} and attention_levels {self.attention_levels} need the same length"
            )
        for c, att in zip(self.channels, self.attention_levels, strict=True):
            if c % self.norm_num_groups:
                raise ConfigError(
                    f"norm_num_groups={self.norm_num_groups} must divide every channel count {self.channels}"
                )
            if att and c % self.num_head_channels:
                raise ConfigError(
                    f"num_head_channels={self.num_head_channels} must divide the channel count of every "
                    f"attention level, got {c} (channels {self.channels}, attention {self.attention_levels})"
                )
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")

    def unet_kwargs(self) -> dict[str, Any]:
        """The MONAI ``DiffusionModelUNet`` keyword arguments of this config."""
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_res_blocks": self.num_res_blocks,
            "channels": self.channels,
            "attention_levels": self.attention_levels,
            "norm_num_groups": self.norm_num_groups,
            "num_head_channels": self.num_head_channels,
            "with_conditioning": self.context_dim is not None,
            "cross_attention_dim": self.context_dim,
        }

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        for k in ("channels", "attention_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def build_unet(config: UNetConfig) -> LevelContextUNet:
    """Build a :class:`LevelContextUNet` from its config (``LevelContextUNet(**config.unet_kwargs())``)."""
    return LevelContextUNet(**config.unet_kwargs())
