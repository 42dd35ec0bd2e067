"""GuideGen's latent generator (Sec. 3.3): whole-volume latent diffusion conditioned on anatomy + text.

The anatomy label map (integer classes ``0 .. num_label_classes - 1``, e.g. the output of
cat-diffusion's categorical sampler) is encoded as the config says, ``"one_hot"``: one channel per
class, area-resampled to the latent grid (each channel holds the class fraction of the latent
voxel), and concatenated to z_t. The text enters by cross-attention, either one context (B, L, D)
for every level or one context per UNet level (knowledge injection, Sec. 3.2; see
:class:`LevelContextUNet`). Loss, Eq. (11)::

    L = E || eps - eps_theta(z_t, t, label, text) ||_2^2

Sampling is DDIM with classifier-free guidance (condition dropout during training).

Training surface: :func:`generator_training_loss` takes the model (or its DDP wrapper) per call and
runs the network only through ``model(x, t, context=ctx)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._diffusion_config import DiffusionConfig
from ._random import draw_randint, draw_randn
from ._sampling import GaussianSampler, drop_context, unwrap_model
from ._unet import Context, UNetConfig, build_unet
from .exceptions import ConfigError, ShapeError

__all__ = [
    "LatentGenerator",
    "LatentGeneratorConfig",
    "generator_loss",
    "generator_training_loss",
    "label_channels",
]

LabelEncoding = Literal["one_hot"]


def generator_loss(eps: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
    """Eq. (11): mean squared error between the true and predicted noise (mean over all elements)."""
    if eps.shape != eps_hat.shape:
        raise ShapeError(f"eps {tuple(eps.shape)} and eps_hat {tuple(eps_hat.shape)} differ")
    return F.mse_loss(eps_hat, eps)


def label_channels(labels: torch.Tensor, num_classes: int, size: tuple[int, ...]) -> torch.Tensor:
    """One-hot a label map and resample it to the latent grid (area average = class fractions).

    Args:
        labels: integer label map (B, 1, *spatial) or (B, *spatial) with values in [0, num_classes).
        num_classes: number of classes including background.
        size: latent spatial size.

    Returns:
        float32 (B, num_classes, *size) with values in [0, 1] that sum to 1 over channels.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ShapeError(f"labels must be an integer label map, got dtype {labels.dtype}")
    if labels.ndim == len(size) + 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != len(size) + 1 or len(size) not in (2, 3):
        raise ShapeError(
            f"labels must be (B, 1, *spatial) or (B, *spatial) with {len(size)} spatial dims (the latent "
            f"size {tuple(size)}), got {tuple(labels.shape)}"
        )
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ShapeError(f"label values must be in [0, {num_classes - 1}] (num_classes={num_classes}), got [{lo}, {hi}]")
    oh = F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()
    if tuple(oh.shape[2:]) == tuple(size):
        return oh
    pool = F.adaptive_avg_pool3d if len(size) == 3 else F.adaptive_avg_pool2d
    return pool(oh, tuple(size))


@dataclass(frozen=True, kw_only=True)
class LatentGeneratorConfig:
    """Latent generator configuration.

    Attributes:
        latent_channels: channels of the autoencoder latent (GuideGen: 8).
        num_label_classes: classes of the anatomy label map, background included (GuideGen's
            label space, and cat-diffusion's presets: 21).
        label_encoding: how the label map becomes condition channels; ``"one_hot"``: one channel
            per class, area-resampled to the latent grid (class fractions).
        unet: the UNet (in = latent_channels + num_label_classes, out = latent_channels).
        diffusion: schedule, DDIM and guidance settings.
    """

    latent_channels: int
    num_label_classes: int
    unet: UNetConfig
    label_encoding: LabelEncoding = "one_hot"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        if self.label_encoding != "one_hot":
            raise ConfigError(f"label_encoding must be 'one_hot', got {self.label_encoding!r}")
        if isinstance(self.num_label_classes, bool) or not isinstance(self.num_label_classes, int) or self.num_label_classes < 2:
            raise ConfigError(f"num_label_classes must be an int >= 2 (background included), got {self.num_label_classes!r}")
        if self.unet.in_channels != self.latent_channels + self.cond_channels:
            raise ConfigError(
                f"UNet in_channels must be latent_channels + num_label_classes (one-hot) = "
                f"{self.latent_channels} + {self.cond_channels} = {self.latent_channels + self.cond_channels}, "
                f"got {self.unet.in_channels}"
            )
        if self.unet.out_channels != self.latent_channels:
            raise ConfigError(f"UNet out_channels must be {self.latent_channels}, got {self.unet.out_channels}")

    @property
    def cond_channels(self) -> int:
        """Channels of the encoded label map (``num_label_classes`` for ``"one_hot"``)."""
        return self.num_label_classes

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "latent_channels": self.latent_channels,
            "num_label_classes": self.num_label_classes,
            "label_encoding": self.label_encoding,
            "unet": self.unet.to_dict(),
            "diffusion": self.diffusion.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatentGeneratorConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            latent_channels=d["latent_channels"],
            num_label_classes=d["num_label_classes"],
            label_encoding=d["label_encoding"],
            unet=UNetConfig.from_dict(d["unet"]),
            diffusion=DiffusionConfig.from_dict(d["diffusion"]),
        )


class LatentGenerator(nn.Module):
    """Whole-volume latent diffusion model; see the module docstring.

    Args:
        config: :class:`LatentGeneratorConfig`.
    """

    def __init__(self, *, config: LatentGeneratorConfig) -> None:
        super().__init__()
        if not isinstance(config, LatentGeneratorConfig):
            raise TypeError(f"config must be a LatentGeneratorConfig, got {type(config).__name__}")
        self.config = config
        self.unet = build_unet(config.unet)
        self.train_scheduler = config.diffusion.ddpm()

    def encode_labels(self, labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """The label-map condition: ``label_channels(labels, num_label_classes, size)``.

        Args:
            labels: integer label map (B, 1, *spatial) or (B, *spatial) in [0, num_label_classes).
            size: latent spatial size.

        Returns:
            float32 (B, num_label_classes, *size).
        """
        return label_channels(labels, self.config.num_label_classes, tuple(size))

    def _check_latent(self, z: torch.Tensor) -> None:
        c = self.config
        if z.ndim != c.unet.spatial_dims + 2 or z.shape[1] != c.latent_channels:
            raise ShapeError(f"latent must be (B, {c.latent_channels}, *spatial), got {tuple(z.shape)}")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Context = None) -> torch.Tensor:
        """The denoiser: ``eps_hat = unet(cat(z_t, labels), t, context)``.

        Args:
            x: (B, latent_channels + num_label_classes, *spatial).
            timesteps: (B,) integers in [0, T-1].
            context: text context (B, L, D) or a per-level list.

        Returns:
            Predicted noise (B, latent_channels, *spatial).
        """
        return self.unet(x, timesteps, context=context)

    def training_loss(
        self,
        z0: torch.Tensor,
        labels: torch.Tensor,
        *,
        context: Context = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``generator_training_loss(self, ...)``; under DDP call the function with the wrapper."""
        return generator_training_loss(self, z0, labels, context=context, generator=generator)

    def sampler(
        self, *, num_inference_steps: int | None = None, guidance_scale: float | None = None
    ) -> GaussianSampler:
        """A DDIM :class:`GaussianSampler` with this model's schedule."""
        return self.config.diffusion.gaussian_sampler(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale
        )

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        *,
        latent_size: tuple[int, ...] | None = None,
        context: Context = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate latents for the given anatomy label maps.

        Args:
            labels: integer label map (B, 1, *spatial) or (B, *spatial) in [0, num_label_classes);
                fixes batch and device.
            latent_size: latent spatial size (default: the label map's own size).
            context: text context (B, L, D), a per-level list, or None.
            guidance_scale: CFG scale (default from the config).
            num_inference_steps: DDIM steps (default from the config).
            dtype: float dtype of the latents.
            generator: random source (drawn on its device).
            progress: tqdm bar.

        Returns:
            Latent (B, latent_channels, *latent_size) on the labels' device.
        """
        nd = self.config.unet.spatial_dims
        size = tuple(labels.shape[-nd:]) if latent_size is None else tuple(int(v) for v in latent_size)
        cond = self.encode_labels(labels, size).to(dtype)
        shape = (cond.shape[0], self.config.latent_channels, *size)
        noise = draw_randn(shape, generator=generator, device=labels.device, dtype=dtype)
        return self.sampler(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale).sample(
            self, noise, cond=cond, context=context, generator=generator, progress=progress
        )

    def save(self, path: str | os.PathLike) -> None:
        """``save_checkpoint(self, path)``: ``model.safetensors`` + ``config.json``, atomically."""
        from ._checkpoint import save_checkpoint

        save_checkpoint(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LatentGenerator:
        """``load_checkpoint(path, device=device)``, checked to hold a LatentGenerator; eval mode."""
        from ._checkpoint import load_checkpoint

        return load_checkpoint(path, device=device, expected=cls)


def generator_training_loss(
    model: nn.Module,
    z0: torch.Tensor,
    labels: torch.Tensor,
    *,
    context: Context = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. (11) on one batch with condition dropout.

    Args:
        model: a :class:`LatentGenerator` or its ``DistributedDataParallel`` wrapper; the network
            runs only through ``model(x, t, context=ctx)``.
        z0: clean latent (B, C, *latent spatial), already multiplied by the autoencoder's
            ``scale_factor``.
        labels: integer label map (B, 1, *spatial) or (B, *spatial), encoded to z0's grid.
        context: text context(s) or None.
        generator: random source of t, eps and dropout (drawn on its device).

    Returns:
        Scalar loss with gradient.
    """
    net = unwrap_model(model)
    if not isinstance(net, LatentGenerator):
        raise TypeError(f"model must be a LatentGenerator (or a DDP wrapper of one), got {type(net).__name__}")
    net._check_latent(z0)
    cond = net.encode_labels(labels, tuple(z0.shape[2:])).to(device=z0.device, dtype=z0.dtype)
    if cond.shape[0] != z0.shape[0]:
        raise ShapeError(f"labels batch {cond.shape[0]} does not match the latent batch {z0.shape[0]}")
    cfg = net.config
    t = draw_randint(0, cfg.diffusion.num_train_timesteps, (z0.shape[0],), generator=generator, device=z0.device)
    noise = draw_randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    zt = net.train_scheduler.add_noise(z0, noise, t)
    ctx = drop_context(context, cfg.diffusion.cond_drop_prob, generator=generator)
    eps_hat = model(torch.cat([zt, cond], dim=1), t, context=ctx)
    return generator_loss(noise, eps_hat)
