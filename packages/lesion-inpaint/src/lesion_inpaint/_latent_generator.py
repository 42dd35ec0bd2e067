"""GuideGen's latent generator (Sec. 3.3): whole-volume latent diffusion conditioned on anatomy + text.

The anatomy label map (resampled to the latent grid as one-hot / scaled channels, or encoded by a
separate network) is concatenated to z_t; the text enters by cross-attention, either one context
(B, L, D) for every level or one context per UNet level (knowledge injection, Sec. 3.2; see
:class:`LevelContextUNet`). Loss, Eq. (11)::

    L = E || eps - eps_theta(z_t, t, label, text) ||_2^2

Sampling is DDIM with classifier-free guidance (condition dropout during training).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._checkpoint import load_checkpoint, save_checkpoint
from ._diffusion_config import DiffusionConfig
from ._sampling import GaussianSampler, drop_context
from ._unet import Context, LevelContextUNet, UNetConfig
from .exceptions import ConfigError, ShapeError

__all__ = ["LatentGenerator", "LatentGeneratorConfig", "generator_loss", "label_channels"]


def generator_loss(eps: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
    """Eq. (11): mean squared error between the true and predicted noise (mean over all elements)."""
    if eps.shape != eps_hat.shape:
        raise ShapeError(f"eps {tuple(eps.shape)} and eps_hat {tuple(eps_hat.shape)} differ")
    return F.mse_loss(eps_hat, eps)


def label_channels(labels: torch.Tensor, num_classes: int, size: tuple[int, int, int]) -> torch.Tensor:
    """One-hot a label map and resample it to the latent grid (area average = class fractions).

    Args:
        labels: integer label map (B, X, Y, Z) with values in [0, num_classes).
        num_classes: number of classes including background.
        size: latent spatial size.

    Returns:
        float32 (B, num_classes, *size) with values in [0, 1] that sum to 1 over channels.
    """
    if labels.ndim != 4 or labels.dtype.is_floating_point:
        raise ShapeError(f"labels must be an integer (B, X, Y, Z) tensor, got {labels.dtype} {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ShapeError(f"label values must be in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    oh = F.one_hot(labels.long(), num_classes).permute(0, 4, 1, 2, 3).float()
    return F.adaptive_avg_pool3d(oh, tuple(size)) if tuple(oh.shape[2:]) != tuple(size) else oh


@dataclass(frozen=True)
class LatentGeneratorConfig:
    """Latent generator configuration.

    Attributes:
        latent_channels: channels of the autoencoder latent (GuideGen: 8).
        cond_channels: channels of the label-map condition concatenated to z_t.
        unet: the UNet (in = latent + cond channels, out = latent channels).
        diffusion: schedule, DDIM and guidance settings.
    """

    latent_channels: int
    cond_channels: int
    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        if self.unet.in_channels != self.latent_channels + self.cond_channels:
            raise ConfigError(
                f"UNet in_channels must be latent_channels + cond_channels = "
                f"{self.latent_channels + self.cond_channels}, got {self.unet.in_channels}"
            )
        if self.unet.out_channels != self.latent_channels:
            raise ConfigError(f"UNet out_channels must be {self.latent_channels}, got {self.unet.out_channels}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "latent_channels": self.latent_channels,
            "cond_channels": self.cond_channels,
            "unet": self.unet.to_dict(),
            "diffusion": self.diffusion.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatentGeneratorConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            latent_channels=d["latent_channels"],
            cond_channels=d["cond_channels"],
            unet=UNetConfig.from_dict(d["unet"]),
            diffusion=DiffusionConfig.from_dict(d["diffusion"]),
        )


class LatentGenerator(nn.Module):
    """Whole-volume latent diffusion model; see the module docstring.

    Args:
        config: :class:`LatentGeneratorConfig`.
    """

    kind = "latent_generator"

    def __init__(self, config: LatentGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = LevelContextUNet(config.unet)
        self.train_scheduler = config.diffusion.ddpm()

    def _check(self, z: torch.Tensor, cond: torch.Tensor) -> None:
        c = self.config
        if z.ndim != c.unet.spatial_dims + 2 or z.shape[1] != c.latent_channels:
            raise ShapeError(f"latent must be (B, {c.latent_channels}, *spatial), got {tuple(z.shape)}")
        if cond.shape != (z.shape[0], c.cond_channels, *z.shape[2:]):
            raise ShapeError(
                f"label condition must be (B, {c.cond_channels}, *latent spatial) = "
                f"{(z.shape[0], c.cond_channels, *z.shape[2:])}, got {tuple(cond.shape)}; see label_channels()"
            )

    def training_loss(
        self,
        z0: torch.Tensor,
        cond: torch.Tensor,
        *,
        context: Context = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Eq. (11) on one batch with condition dropout.

        Args:
            z0: clean latent (B, C, *spatial).
            cond: label-map channels on the latent grid (B, C_cond, *spatial).
            context: text context(s) or None.
            generator: random source of t, eps and dropout.
        """
        self._check(z0, cond)
        t = torch.randint(
            0, self.config.diffusion.num_train_timesteps, (z0.shape[0],), generator=generator, device=z0.device
        )
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        zt = self.train_scheduler.add_noise(z0, noise, t)
        ctx = drop_context(context, self.config.diffusion.cond_drop_prob, generator=generator)
        eps_hat = self.unet(torch.cat([zt, cond.to(z0.dtype)], dim=1), t, ctx)
        return generator_loss(noise, eps_hat)

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
        cond: torch.Tensor,
        *,
        context: Context = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate latents for the given label-map condition.

        Args:
            cond: (B, C_cond, *spatial) on the latent grid; fixes batch, device and dtype.
            context: text context (B, L, D), a per-level list, or None.
            guidance_scale: CFG scale (default from the config).
            num_inference_steps: DDIM steps (default from the config).
            generator: random source.
            progress: tqdm bar.

        Returns:
            Latent (B, latent_channels, *spatial).
        """
        shape = (cond.shape[0], self.config.latent_channels, *cond.shape[2:])
        noise = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        self._check(noise, cond)
        return self.sampler(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale).sample(
            self.unet, noise, cond=cond, context=context, generator=generator, progress=progress
        )

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``config.json`` atomically."""
        save_checkpoint(directory, kind=self.kind, config=self.config.to_dict(), state_dict=self.state_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> LatentGenerator:
        """Load a checkpoint written by :meth:`save` (safetensors, no pickle)."""
        cfg, sd = load_checkpoint(directory, kind=cls.kind, device=device)
        model = cls(LatentGeneratorConfig.from_dict(cfg))
        model.load_state_dict(sd)
        return model.to(device)
