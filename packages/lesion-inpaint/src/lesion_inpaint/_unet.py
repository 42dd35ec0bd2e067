"""The denoising UNet: MONAI's ``DiffusionModelUNet`` with one text context per UNet level.

MONAI's UNet passes the same ``context`` to every cross-attention block. GuideGen's knowledge
injection (Sec. 3.2) produces one context per UNet level, so :class:`LevelContextUNet` accepts
either one tensor ``(B, L, D)`` (used everywhere, identical to MONAI) or a list of tensors routed
level by level:

- a list of ``n`` tensors (``n = len(channels)``): down block ``i`` and the up block at the same
  resolution get context ``i``; the middle block gets the coarsest, ``n - 1``;
- a list of ``2n + 1`` tensors: one per block, in execution order (``n`` down blocks, the middle
  block, ``n`` up blocks from coarse to fine).

All contexts share the feature size ``D = cross_attention_dim``; their lengths ``L`` may differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

from .exceptions import ConfigError, ShapeError

__all__ = ["Context", "LevelContextUNet", "UNetConfig", "build_unet"]

Context = torch.Tensor | Sequence[torch.Tensor] | None


@dataclass(frozen=True)
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


class LevelContextUNet(DiffusionModelUNet):
    """MONAI ``DiffusionModelUNet`` whose cross-attention blocks can take one context per level.

    Call as ``unet(x, timesteps, context)`` with ``x`` (B, in_channels, *spatial), ``timesteps``
    (B,) integers in [0, T), ``context`` None, (B, L, D) or a list (see module docstring).
    Returns the predicted noise (B, out_channels, *spatial).
    """

    def __init__(self, config: UNetConfig) -> None:
        cond = config.context_dim is not None
        super().__init__(
            spatial_dims=config.spatial_dims,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            num_res_blocks=config.num_res_blocks,
            channels=config.channels,
            attention_levels=config.attention_levels,
            norm_num_groups=config.norm_num_groups,
            num_head_channels=config.num_head_channels,
            with_conditioning=cond,
            cross_attention_dim=config.context_dim,
        )
        self.config = config
        self.num_levels = len(config.channels)

    def route_contexts(self, context: Context) -> list[torch.Tensor | None]:
        """Return the context of each block in execution order (n down, middle, n up)."""
        n = self.num_levels
        if context is None or isinstance(context, torch.Tensor):
            return [context] * (2 * n + 1)
        ctx = list(context)
        if len(ctx) == n:
            return [*ctx, ctx[n - 1], *reversed(ctx)]
        if len(ctx) == 2 * n + 1:
            return ctx
        raise ShapeError(
            f"a list of contexts must have {n} entries (one per UNet level) or {2 * n + 1} "
            f"(one per block), got {len(ctx)}"
        )

    def _check_context(self, ctx: torch.Tensor | None, batch: int) -> None:
        if ctx is None:
            return
        if self.config.context_dim is None:
            raise ShapeError("this UNet has no cross-attention (context_dim=None); pass context=None")
        if ctx.ndim != 3 or ctx.shape[0] != batch or ctx.shape[2] != self.config.context_dim:
            raise ShapeError(
                f"context must be (B={batch}, L, D={self.config.context_dim}), got {tuple(ctx.shape)}"
            )

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: Context = None,
        class_labels: torch.Tensor | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise; see the class docstring for shapes."""
        if x.ndim != self.config.spatial_dims + 2 or x.shape[1] != self.config.in_channels:
            raise ShapeError(
                f"UNet input must be (B, {self.config.in_channels}, *{self.config.spatial_dims} spatial dims), "
                f"got {tuple(x.shape)}"
            )
        ctxs = self.route_contexts(context)
        for c in ctxs:
            self._check_context(c, x.shape[0])
        n = self.num_levels
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype)
        emb = self.time_embed(t_emb)
        if self.num_class_embeds is not None:
            if class_labels is None:
                raise ShapeError("class_labels must be given when num_class_embeds is set")
            emb = emb + self.class_embedding(class_labels).to(dtype=x.dtype)
        h = self.conv_in(x)
        skips: list[torch.Tensor] = [h]
        for i, block in enumerate(self.down_blocks):
            h, res = block(hidden_states=h, temb=emb, context=ctxs[i])
            skips.extend(res)
        if down_block_additional_residuals is not None:
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals, strict=True)]
        h = self.middle_block(hidden_states=h, temb=emb, context=ctxs[n])
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual
        for j, block in enumerate(self.up_blocks):
            k = -len(block.resnets)
            res_samples, skips = skips[k:], skips[:k]
            h = block(hidden_states=h, res_hidden_states_list=res_samples, temb=emb, context=ctxs[n + 1 + j])
        return self.out(h)


def build_unet(config: UNetConfig) -> LevelContextUNet:
    """Build a :class:`LevelContextUNet` from its config."""
    return LevelContextUNet(config)
