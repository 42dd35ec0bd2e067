"""MONAI ``DiffusionModelUNet`` that routes one cross-attention context per resolution level.

Levels are the UNet's resolution levels, ``0`` (full resolution) to ``L - 1`` (coarsest), with
``L = len(channels)``. Level ``l`` covers down block ``l``, up block ``L - 1 - l`` and, for the
coarsest level, the middle block. Its cross-attention layers (where ``attention_levels[l]`` is
True, and always the middle block of a conditioned MONAI UNet) attend to context ``l``
(GuideGen Eq. 3-4: ``K, V`` from ``R_layer^l``).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import Tensor

from .exceptions import ShapeError

__all__ = ["LevelContextUNet"]


class LevelContextUNet(DiffusionModelUNet):
    """3D/2D diffusion UNet whose cross-attention reads a per-level context list.

    Constructor arguments are MONAI's ``DiffusionModelUNet`` arguments, keyword-only.
    ``forward(x, timesteps, context)`` accepts ``context`` as

    * ``None`` (unconditional model only),
    * one ``(B, M, cross_attention_dim)`` tensor shared by every level (plain cross-attention), or
    * a sequence of ``num_levels`` entries, finest level first: a ``(B, M_l, cross_attention_dim)``
      tensor for every level in ``context_levels``; entries of the other levels are ignored and may
      be ``None``.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.num_levels = len(self.block_out_channels)
        levels = [i for i, a in enumerate(self.attention_levels) if a] if self.with_conditioning else []
        if self.with_conditioning and (self.num_levels - 1) not in levels:
            levels.append(self.num_levels - 1)  # MONAI's conditioned middle block always cross-attends
        self.context_levels: tuple[int, ...] = tuple(levels)

    def _per_level(self, context: Tensor | Sequence[Tensor | None] | None, batch: int) -> list[Tensor | None]:
        if context is None:
            if self.with_conditioning:
                raise ShapeError("this UNet is conditional (with_conditioning=True): pass a context.")
            return [None] * self.num_levels
        if not self.with_conditioning:
            raise ShapeError("this UNet is unconditional (with_conditioning=False): pass context=None.")
        if isinstance(context, Tensor):
            contexts: list[Tensor | None] = [context] * self.num_levels
        else:
            contexts = list(context)
            if len(contexts) != self.num_levels:
                raise ShapeError(
                    f"expected {self.num_levels} per-level contexts (one per UNet resolution level, "
                    f"finest first), got {len(contexts)}."
                )
        for lvl in self.context_levels:
            c = contexts[lvl]
            if not isinstance(c, Tensor) or c.ndim != 3 or c.shape[0] != batch:
                got = tuple(c.shape) if isinstance(c, Tensor) else None
                raise ShapeError(f"context for level {lvl} must be a (B={batch}, M, D) tensor, got {got}.")
        return [c if i in self.context_levels else None for i, c in enumerate(contexts)]

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | Sequence[Tensor | None] | None = None,
        class_labels: Tensor | None = None,
    ) -> Tensor:
        """Predict the network output for ``x`` at ``timesteps``.

        Args:
            x: input ``(B, in_channels, *spatial)``.
            timesteps: ``(B,)`` timesteps.
            context: see the class docstring.
            class_labels: ``(B,)`` class ids when ``num_class_embeds`` is set.

        Returns:
            ``(B, out_channels, *spatial)``.
        """
        contexts = self._per_level(context, x.shape[0])
        emb = self.time_embed(get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype))
        if self.num_class_embeds is not None:
            if class_labels is None:
                raise ShapeError("class_labels must be given when num_class_embeds is set.")
            emb = emb + self.class_embedding(class_labels).to(dtype=x.dtype)
        h = self.conv_in(x)
        skips: list[Tensor] = [h]
        for level, block in enumerate(self.down_blocks):
            h, res = block(hidden_states=h, temb=emb, context=contexts[level])
            skips.extend(res)
        h = self.middle_block(hidden_states=h, temb=emb, context=contexts[-1])
        for i, block in enumerate(self.up_blocks):
            level = self.num_levels - 1 - i
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            h = block(hidden_states=h, res_hidden_states_list=res, temb=emb, context=contexts[level])
        out: Tensor = self.out(h)
        return out

