"""The text-conditional semantic synthesizer network (GuideGen TCSS, Sec. 3.1) and its presets.

``SemanticSynthesizer`` = optional ``KnowledgeInjection`` (prompt -> per-level contexts) + a
``LevelContextUNet`` with ``N`` input channels (one-hot ``x_t``) and ``N`` output channels (logits
of ``f_theta(x_t, p)``, the x0-parameterisation of Sec. 3.1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._injection import KnowledgeInjection
from ._level_unet import LevelContextUNet
from ._scheduler import CategoricalScheduler
from .exceptions import ConfigError, ShapeError, closest

__all__ = ["PRESETS", "SemanticSynthesizer", "SynthesizerConfig", "get_preset"]

Conditioning = Literal["injection", "crossattn", "none"]
_CONDITIONINGS = ("injection", "crossattn", "none")


@dataclass(frozen=True, kw_only=True)
class SynthesizerConfig:
    """Everything needed to rebuild a synthesizer and its scheduler.

    Attributes:
        num_classes: number of label classes ``N`` (background included).
        spatial_size: label-map size ``(X, Y, Z)`` (or ``(X, Y)`` for 2D); each side must be
            divisible by ``2 ** (len(channels) - 1)``.
        num_train_timesteps: ``T``.
        schedule: ``"cosine"`` or ``"linear"``.
        channels: UNet channels per resolution level.
        attention_levels: which levels have (cross-)attention.
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups (divides every entry of ``channels``).
        transformer_num_layers: transformer layers per attention block.
        conditioning: ``"injection"`` (knowledge injection, Eq. 3-4), ``"crossattn"`` (plain
            cross-attention on the prompt tokens, the paper's ablation) or ``"none"``.
        context_dim: feature size of the encoded prompt tokens.
        cross_attention_dim: latent size ``C`` of the per-level contexts (``"injection"`` only;
            with ``"crossattn"`` the UNet attends to ``context_dim`` directly).
        num_queries: knowledge-injection query tokens.
        injection_layers: transformer decoder blocks in knowledge injection.
        injection_heads: attention heads in knowledge injection.
        fast_steps: default number of steps of the fast sampler.
        noise_weights: relative weight of each class in the forward process's noise (``None``:
            uniform, the paper's); see :class:`CategoricalScheduler`.
    """

    num_classes: int = 21
    spatial_size: tuple[int, ...] = (32, 32, 32)
    num_train_timesteps: int = 1000
    schedule: Literal["cosine", "linear"] = "cosine"
    channels: tuple[int, ...] = (16, 32, 32)
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    transformer_num_layers: int = 1
    conditioning: Conditioning = "injection"
    context_dim: int = 384
    cross_attention_dim: int = 64
    num_queries: int = 8
    injection_layers: int = 2
    injection_heads: int = 4
    fast_steps: int = 50
    noise_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial_size", tuple(int(v) for v in self.spatial_size))
        object.__setattr__(self, "channels", tuple(int(v) for v in self.channels))
        object.__setattr__(self, "attention_levels", tuple(bool(v) for v in self.attention_levels))
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}.")
        if len(self.spatial_size) not in (2, 3):
            raise ConfigError(f"spatial_size must have 2 or 3 entries, got {self.spatial_size}.")
        if self.conditioning not in _CONDITIONINGS:
            raise ConfigError(
                f"conditioning must be one of {_CONDITIONINGS}, got {self.conditioning!r}."
                f"{closest(self.conditioning, _CONDITIONINGS)}"
            )
        if len(self.attention_levels) != len(self.channels) or not self.channels:
            raise ConfigError(
                f"attention_levels ({len(self.attention_levels)}) must have one entry per level of "
                f"channels ({len(self.channels)})."
            )
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"every entry of channels must be divisible by norm_num_groups={self.norm_num_groups}; {bad} are not.")
        factor = 2 ** (len(self.channels) - 1)
        if any(s % factor for s in self.spatial_size):
            near = tuple(max(factor, round(s / factor) * factor) for s in self.spatial_size)
            raise ConfigError(
                f"spatial_size {self.spatial_size} must be divisible by {factor} for {len(self.channels)} "
                f"levels; closest valid size: {near}."
            )
        if self.noise_weights is not None:
            object.__setattr__(self, "noise_weights", tuple(float(v) for v in self.noise_weights))
            CategoricalScheduler(**self.make_scheduler_args())  # raises on bad weights
        if not 1 <= self.fast_steps <= self.num_train_timesteps:
            raise ConfigError(f"fast_steps must be in [1, {self.num_train_timesteps}], got {self.fast_steps}.")

    def make_scheduler_args(self) -> dict[str, Any]:
        """Keyword arguments of the :class:`CategoricalScheduler` this configuration trains with."""
        args: dict[str, Any] = dict(
            num_classes=self.num_classes,
            num_train_timesteps=self.num_train_timesteps,
            schedule=self.schedule,
        )
        if self.noise_weights is not None:
            args["noise_weights"] = self.noise_weights
        return args

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthesizerConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ConfigError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; allowed: {sorted(names)}.{closest(unknown[0], names)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


PRESETS: dict[str, SynthesizerConfig] = {
    # CPU-sized: 21 classes (GuideGen's label space) at 32^3, three levels.
    "demo": SynthesizerConfig(),
    # The paper's semantic synthesizer: 21 classes at 128^3, 64 base channels, five levels with
    # attention at the two coarsest (downsampling 8 and 16), one res block, 32-channel heads,
    # 768-d prompt tokens (ERNIE-health in the authors' code).
    "paper": SynthesizerConfig(
        num_classes=21,
        spatial_size=(128, 128, 128),
        num_train_timesteps=1000,
        channels=(64, 64, 128, 128, 256),
        attention_levels=(False, False, False, True, True),
        num_res_blocks=1,
        num_head_channels=32,
        norm_num_groups=32,
        context_dim=768,
        cross_attention_dim=512,
        num_queries=16,
        injection_layers=3,
        injection_heads=8,
        fast_steps=100,
    ),
}


def get_preset(name: str, **overrides: Any) -> SynthesizerConfig:
    """Look up a preset (``"demo"`` or ``"paper"``) by name, optionally overriding fields.

    Args:
        name: preset name.
        **overrides: any ``SynthesizerConfig`` field, e.g. ``context_dim=512`` for another text
            encoder or ``num_classes=...`` for another label set.

    Returns:
        The frozen ``SynthesizerConfig`` (validated again after the overrides).

    Raises:
        ConfigError: unknown name (with a suggestion) or unknown override keys (listing the allowed
            ones).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}.{closest(name, PRESETS)}")
    allowed = [f.name for f in fields(SynthesizerConfig)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown preset override(s) {unknown}; allowed: {allowed}.{closest(unknown[0], allowed)}"
        )
    return replace(PRESETS[name], **overrides)


class SemanticSynthesizer(nn.Module):
    """x0-parameterised network ``f_theta(x_t, p)`` with knowledge injection.

    Args:
        config: a ``SynthesizerConfig`` (e.g. ``get_preset("demo")``).
    """

    def __init__(self, *, config: SynthesizerConfig) -> None:
        super().__init__()
        if not isinstance(config, SynthesizerConfig):
            raise ConfigError(f"config must be a SynthesizerConfig, got {type(config).__name__}.")
        self.config = config
        conditioned = config.conditioning != "none"
        if config.conditioning == "injection":
            cross_dim: int | None = config.cross_attention_dim
        elif config.conditioning == "crossattn":
            cross_dim = config.context_dim
        else:
            cross_dim = None
        self.unet = LevelContextUNet(
            spatial_dims=config.spatial_dims,
            in_channels=config.num_classes,
            out_channels=config.num_classes,
            num_res_blocks=config.num_res_blocks,
            channels=config.channels,
            attention_levels=config.attention_levels,
            norm_num_groups=config.norm_num_groups,
            num_head_channels=config.num_head_channels,
            with_conditioning=conditioned,
            transformer_num_layers=config.transformer_num_layers,
            cross_attention_dim=cross_dim,
        )
        self.injection: KnowledgeInjection | None = None
        if config.conditioning == "injection":
            self.injection = KnowledgeInjection(
                context_dim=config.context_dim,
                dim=config.cross_attention_dim,
                num_queries=config.num_queries,
                num_levels=len(self.unet.context_levels),
                num_layers=config.injection_layers,
                num_heads=config.injection_heads,
            )

    def make_scheduler(self) -> CategoricalScheduler:
        """The scheduler this network was configured for."""
        return CategoricalScheduler(**self.config.make_scheduler_args())

    def encode_context(self, context: Tensor | None, context_mask: Tensor | None = None) -> Any:
        """Turn encoded prompt tokens into what the UNet attends to.

        Args:
            context: encoded prompt ``(B, L, context_dim)`` or ``None`` (unconditional).
            context_mask: optional bool ``(B, L)``, True for real tokens (injection only).

        Returns:
            With knowledge injection, a list of ``num_levels`` per-level contexts
            ``(B, num_queries, cross_attention_dim)`` (``None`` at levels without attention);
            otherwise the context unchanged. Pass it as ``context`` to ``forward`` (or to a
            sampler) to skip recomputing the injection at every step.
        """
        if self.config.conditioning == "none":
            if context is not None:
                raise ShapeError("this synthesizer is unconditional (conditioning='none'): pass context=None.")
            return None
        if context is None:
            raise ShapeError(f"this synthesizer is conditional (conditioning={self.config.conditioning!r}): pass a context.")
        if self.injection is None:
            if context_mask is not None:
                raise ShapeError("context_mask is only supported with conditioning='injection'.")
            return context
        responses = iter(self.injection(context, context_mask))
        levels = set(self.unet.context_levels)
        return [next(responses) if i in levels else None for i in range(self.unet.num_levels)]

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | Sequence[Tensor | None] | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits of ``f_theta(x_t, p)``; called as ``model(x, t, context=context)``.

        Args:
            x: one-hot ``x_t`` ``(B, N, *spatial)`` float.
            timesteps: ``(B,)`` int64 in ``[0, T-1]``.
            context: encoded prompt ``(B, L, context_dim)``, or the output of ``encode_context``
                (a list of per-level contexts), or ``None`` for ``conditioning="none"``.
            context_mask: optional bool ``(B, L)`` for a raw prompt (True = real token).

        Returns:
            Logits ``(B, N, *spatial)``.
        """
        if x.ndim != self.config.spatial_dims + 2 or x.shape[1] != self.config.num_classes:
            raise ShapeError(
                f"x must be one-hot x_t of shape (B, {self.config.num_classes}, *spatial) with "
                f"{self.config.spatial_dims} spatial dims, got {tuple(x.shape)}."
            )
        levels = context if isinstance(context, (list, tuple)) else self.encode_context(context, context_mask)
        return self.unet(x, timesteps, context=levels)

    def save(self, path: str | os.PathLike[str]) -> None:
        """``save_checkpoint(self, path)``: ``model.safetensors`` + ``config.json``, atomically."""
        from ._checkpoint import save_checkpoint

        save_checkpoint(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> SemanticSynthesizer:
        """``load_checkpoint(path, device=device)``: the synthesizer in eval mode."""
        from ._checkpoint import load_checkpoint

        return load_checkpoint(path, device=device)
