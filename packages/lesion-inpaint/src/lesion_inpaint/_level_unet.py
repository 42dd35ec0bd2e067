"""MONAI ``DiffusionModelUNet`` that routes one cross-attention context per resolution level.

The same file lives in lesion-inpaint and cat-diffusion (the libraries do not import each other);
keep the two copies identical. Routing rule:

* Levels are the UNet's resolution levels, ``0`` (full resolution) to ``n - 1`` (coarsest), with
  ``n = len(channels)``. Level ``l`` covers down block ``l`` and up block ``n - 1 - l``; the middle
  block belongs to the coarsest level ``n - 1``.
* ``context`` is ``None`` (unconditional UNets only), one ``(B, M, D)`` tensor used at every level
  (then the network equals MONAI's own ``forward``), or a sequence of ``n`` entries, finest level
  first: a ``(B, M_l, D)`` tensor for every level in :attr:`LevelContextUNet.context_levels` (the
  levels whose blocks cross-attend); entries of the other levels are ignored and may be ``None``.
  GuideGen's knowledge injection (Eq. 3-4) produces such a list.
* ``D`` is the UNet's ``cross_attention_dim``; the lengths ``M_l`` may differ between levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import Tensor

from .exceptions import ShapeError

__all__ = ["Context", "LevelContextUNet"]

Context = Tensor | Sequence[Tensor | None] | None


class LevelContextUNet(DiffusionModelUNet):
    """Diffusion UNet (2D/3D) whose cross-attention reads one context per resolution level.

    Constructor arguments are MONAI's ``DiffusionModelUNet`` arguments, keyword-only
    (``spatial_dims``, ``in_channels``, ``out_channels``, ``channels``, ``attention_levels``,
    ``num_res_blocks``, ``num_head_channels``, ``norm_num_groups``, ``with_conditioning``,
    ``cross_attention_dim``, ...). Call as ``unet(x, timesteps, context=context)``; see the module
    docstring for the routing rule.

    Attributes:
        num_levels: number of resolution levels ``n``.
        context_levels: levels whose blocks cross-attend (the attention levels, plus the coarsest
            level for MONAI's conditioned middle block); empty for an unconditional UNet.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_levels = len(self.block_out_channels)
        self.cross_attention_dim: int | None = kwargs.get("cross_attention_dim")
        levels = (
            [i for i, a in enumerate(self.attention_levels) if a] if self.with_conditioning else []
        )
        if self.with_conditioning and (self.num_levels - 1) not in levels:
            levels.append(
                self.num_levels - 1
            )  # MONAI's conditioned middle block always cross-attends
        self.context_levels: tuple[int, ...] = tuple(levels)

    def route_contexts(self, context: Context, batch: int) -> list[Tensor | None]:
        """Return the context of each level (finest first), checked against the batch size.

        Args:
            context: ``None``, a ``(B, M, D)`` tensor, or a sequence of ``num_levels`` entries.
            batch: the batch size ``B`` of the input.

        Returns:
            ``num_levels`` entries; ``None`` at levels that do not cross-attend.
        """
        if context is None:
            if self.with_conditioning:
                raise ShapeError(
                    "this UNet is conditional (with_conditioning=True): pass context=(B, M, D) or a "
                    f"list of {self.num_levels} per-level contexts."
                )
            return [None] * self.num_levels
        if not self.with_conditioning:
            raise ShapeError(
                "this UNet is unconditional (with_conditioning=False): pass context=None."
            )
        if isinstance(context, Tensor):
            contexts: list[Tensor | None] = [context] * self.num_levels
        else:
            contexts = list(context)
            if len(contexts) != self.num_levels:
                raise ShapeError(
                    f"expected {self.num_levels} per-level contexts (one per UNet resolution level, "
                    f"finest first), got {len(contexts)}."
                )
        d = self.cross_attention_dim
        for lvl in self.context_levels:
            c = contexts[lvl]
            if (
                not isinstance(c, Tensor)
                or c.ndim != 3
                or c.shape[0] != batch
                or (d is not None and c.shape[2] != d)
            ):
                got = tuple(c.shape) if isinstance(c, Tensor) else None
                raise ShapeError(
                    f"context for level {lvl} must be a (B={batch}, M, D={d}) tensor, got {got}."
                )
        return [c if i in self.context_levels else None for i, c in enumerate(contexts)]

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Context = None,
        class_labels: Tensor | None = None,
        down_block_additional_residuals: tuple[Tensor] | None = None,
        mid_block_additional_residual: Tensor | None = None,
    ) -> Tensor:
        """Predict the network output for ``x`` at ``timesteps``.

        Args:
            x: input ``(B, in_channels, *spatial)``.
            timesteps: ``(B,)`` integer timesteps.
            context: see the module docstring (pass it by keyword).
            class_labels: ``(B,)`` class ids when ``num_class_embeds`` is set.
            down_block_additional_residuals: ControlNet residuals, as in MONAI.
            mid_block_additional_residual: ControlNet residual, as in MONAI.

        Returns:
            ``(B, out_channels, *spatial)``.
        """
        if x.ndim != self.conv_in.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"UNet input must be (B, {self.in_channels}, *spatial) with {self.conv_in.spatial_dims} "
                f"spatial dims, got {tuple(x.shape)}."
            )
        contexts = self.route_contexts(context, x.shape[0])
        emb = self.time_embed(
            get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype)
        )
        if self.num_class_embeds is not None:
            if class_labels is None:
                raise ShapeError("class_labels must be given when num_class_embeds is set.")
            emb = emb + self.class_embedding(class_labels).to(dtype=x.dtype)
        h = self.conv_in(x)
        skips: list[Tensor] = [h]
        for level, block in enumerate(self.down_blocks):
            h, res = block(hidden_states=h, temb=emb, context=contexts[level])
            skips.extend(res)
        if down_block_additional_residuals is not None:
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals, strict=True)]
        h = self.middle_block(hidden_states=h, temb=emb, context=contexts[-1])
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual
        for i, block in enumerate(self.up_blocks):
            level = self.num_levels - 1 - i
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            h = block(
                hidden_states=h, res_hidden_states_list=res, temb=emb, context=contexts[level]
            )
        out: Tensor = self.out(h)
        return out
