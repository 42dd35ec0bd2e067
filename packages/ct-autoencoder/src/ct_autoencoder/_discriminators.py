"""The adversaries of both autoencoders, as one module the caller can wrap in DDP on its own.

- VQ-GAN (LesionDiffusion Eq. 3): one 3D PatchGAN discriminator on the volume.
- HDR autoencoder (GuideGen Eq. 9): a 3D volume discriminator plus a 2D frame discriminator on
  random slices, both fed unwindowed images.

The discriminators are not part of the autoencoder: the generator and the discriminator are
separate ``nn.Module`` objects, each wrapped in ``DistributedDataParallel`` by the caller, and
the losses in :mod:`ct_autoencoder._training` call them only through ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import PatchAdversarialLoss
from torch import nn

from ._losses import make_patch_discriminator, random_slices
from .config import HDRAutoencoderConfig, VQGANConfig
from .exceptions import ConfigError

__all__ = ["DiscriminatorOutput", "Discriminators"]


@dataclass(frozen=True, kw_only=True)
class DiscriminatorOutput:
    """Result of :meth:`Discriminators.forward`.

    Attributes:
        volume: Patch logits of the 3D discriminator ``(B, 1, x, y, z)``.
        frame: Patch logits of the 2D frame discriminator ``(B * num_frames, 1, h, w)``, ordered
            volume by volume (HDR only; None for the VQ-GAN).
    """

    volume: torch.Tensor
    frame: torch.Tensor | None


class Discriminators(nn.Module):
    """PatchGAN discriminator(s) matching an autoencoder config.

    Args:
        config: The autoencoder's config. A :class:`VQGANConfig` gives one volume discriminator;
            an :class:`HDRAutoencoderConfig` adds the frame discriminator (``num_frames`` random
            slices per volume).

    Example:
        >>> disc = Discriminators(config=get_preset("vqgan-demo"))
        >>> disc(torch.zeros(2, 1, 32, 32, 32)).volume.shape[0]
        2
    """

    def __init__(self, *, config: VQGANConfig | HDRAutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, (VQGANConfig, HDRAutoencoderConfig)):
            raise ConfigError(
                f"config must be a VQGANConfig or HDRAutoencoderConfig, got {type(config).__name__}"
            )
        self.config = config
        self.volume = make_patch_discriminator(
            spatial_dims=3, channels=config.disc_channels, layers=config.disc_layers
        )
        self.frame: nn.Module | None = None
        if isinstance(config, HDRAutoencoderConfig):
            self.frame = make_patch_discriminator(
                spatial_dims=2, channels=config.disc_channels, layers=config.disc_layers
            )
        self.adversarial_loss = PatchAdversarialLoss(criterion=config.adversarial_criterion)

    @property
    def num_frames(self) -> int:
        """Random slices per volume shown to the frame discriminator (0 without one)."""
        return self.config.num_frames if isinstance(self.config, HDRAutoencoderConfig) else 0

    def forward(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> DiscriminatorOutput:
        """Score volumes (and random slices of them).

        Args:
            images: ``(B, 1, X, Y, Z)`` in the model range, unwindowed.
            generator: Random source of the slice positions (drawn on its device, else on
                ``images``' device).

        Returns:
            :class:`DiscriminatorOutput`.
        """
        volume = self.volume(images)[-1]
        frame = None
        if self.frame is not None:
            frames, _ = random_slices(images, self.num_frames, generator=generator)
            frame = self.frame(frames)[-1]
        return DiscriminatorOutput(volume=volume, frame=frame)
