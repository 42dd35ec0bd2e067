"""Knowledge injection (GuideGen Sec. 3.1, Fig. 1(d), Eq. 3-4).

Learnable task-specific queries ``Q`` (``num_queries x dim``) read the encoded prompt
``E_T(p)`` (``(B, L, context_dim)``) through a stack of transformer decoder blocks (self-attention
among the queries, cross-attention to the prompt, MLP). The result is the task response
``R_task`` (``(B, N_q, C)``). A linear map expands it to the layer-wise responses
``R_layer`` (``N_q x (C x L)``), split into ``L`` per-level contexts ``R_layer^l`` (``(B, N_q, C)``
each, layer-normalised). The backbone's cross-attention at level ``l`` attends to
``R_layer^l`` (Eq. 3-4: ``Q = W^q z_{l-1}``, ``K = W^k R_layer^l``, ``V = W^v R_layer^l``).

The authors' release holds only a broken, unused stub of this module; this implementation follows
the paper's description.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .exceptions import ConfigError, ShapeError

__all__ = ["KnowledgeInjection"]


class KnowledgeInjection(nn.Module):
    """Learnable queries -> transformer decoder -> one context per backbone level.

    Args:
        context_dim: feature size ``D`` of the encoded prompt tokens.
        dim: latent size ``C`` of the queries and of every per-level context (the backbone's
            ``cross_attention_dim``).
        num_queries: number of query tokens ``N_q``.
        num_levels: number of per-level contexts ``L`` to produce.
        num_layers: number of transformer decoder blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        mlp_ratio: hidden size of the decoder MLP relative to ``dim``.
        dropout: dropout inside the decoder blocks.
    """

    def __init__(
        self,
        *,
        context_dim: int,
        dim: int,
        num_queries: int = 16,
        num_levels: int,
        num_layers: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, v in (("context_dim", context_dim), ("dim", dim), ("num_queries", num_queries),
                        ("num_levels", num_levels), ("num_layers", num_layers), ("num_heads", num_heads)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive int, got {v!r}.")
        if dim % num_heads:
            divisors = [h for h in range(1, dim + 1) if dim % h == 0]
            near = min(divisors, key=lambda h: abs(h - num_heads))
            raise ConfigError(f"dim={dim} must be divisible by num_heads={num_heads}; closest valid num_heads: {near}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}.")
        self.context_dim = context_dim
        self.dim = dim
        self.num_queries = num_queries
        self.num_levels = num_levels
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.prompt_proj = nn.Sequential(nn.Linear(context_dim, dim), nn.LayerNorm(dim))
        layer = nn.TransformerDecoderLayer(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=int(dim * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=num_layers, norm=nn.LayerNorm(dim))
        self.to_levels = nn.Linear(dim, dim * num_levels)  # R_task -> R_layer (N_q x (C x L))
        self.level_norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_levels)])

    def task_response(self, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """``R_task``: the queries after reading the prompt.

        Args:
            context: encoded prompt ``(B, L, context_dim)``.
            context_mask: optional bool ``(B, L)``, True for real tokens and False for padding.

        Returns:
            ``(B, num_queries, dim)``.
        """
        if not isinstance(context, Tensor) or context.ndim != 3 or context.shape[-1] != self.context_dim:
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ShapeError(f"context must be an encoded prompt (B, L, {self.context_dim}), got {got}.")
        pad = None
        if context_mask is not None:
            if context_mask.shape != context.shape[:2]:
                raise ShapeError(
                    f"context_mask must have shape {tuple(context.shape[:2])} (True = real token), got "
                    f"{tuple(context_mask.shape)}."
                )
            valid = context_mask.bool()
            if not bool(valid.any(dim=1).all()):
                raise ShapeError("every prompt needs at least one real token in context_mask.")
            pad = ~valid
        memory = self.prompt_proj(context)
        q = self.queries.to(memory.dtype).unsqueeze(0).expand(context.shape[0], -1, -1)
        return self.decoder(q, memory, memory_key_padding_mask=pad)

    def forward(self, context: Tensor, context_mask: Tensor | None = None) -> list[Tensor]:
        """Layer-wise responses ``R_layer^l``, one per backbone level.

        Args:
            context: encoded prompt ``(B, L, context_dim)``.
            context_mask: optional bool ``(B, L)``, True for real tokens.

        Returns:
            ``num_levels`` tensors of shape ``(B, num_queries, dim)``, finest level first.
        """
        r_task = self.task_response(context, context_mask)
        b, n, c = r_task.shape
        r_layer = self.to_levels(r_task).view(b, n, self.num_levels, c)
        return [norm(r_layer[:, :, i]) for i, norm in enumerate(self.level_norms)]
