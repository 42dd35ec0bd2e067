"""LesionDiffusion VQ-GAN (Lei et al., MICCAI 2025, Sec. 2.2 and Eq. 3) on MONAI ``VQVAE``.

Eq. 3: ``L_AE = ||x - x_hat||_2^2 + ||sg(z) - q(z)||^2 + ||sg(q(z)) - z||^2 + log D(x) + log(1 - D(x_hat))``.
With MONAI's EMA codebook the codebook term is replaced by the EMA update (van den Oord et al.
2017, App. A.1) and only the commitment term ``beta ||sg(q(z)) - z||^2`` carries a gradient.

The model is the generator only: its ``forward`` returns everything the losses need, the
discriminator is :class:`~ct_autoencoder.Discriminators`, and the GAN losses are the functions
:func:`~ct_autoencoder.generator_loss` / :func:`~ct_autoencoder.discriminator_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.layers.vector_quantizer import EMAQuantizer
from monai.networks.nets import VQVAE
from torch import nn

from ._codebook import CodebookStats, codebook_stats, reinit_dead_codes
from ._inputs import check_image, check_latent
from ._scale import ScaleFactorMixin
from .config import VQGANConfig
from .exceptions import InputShapeError

__all__ = ["VQGAN", "VQGANOutput"]


@dataclass(frozen=True, kw_only=True)
class VQGANOutput:
    """Result of :meth:`VQGAN.forward`.

    Attributes:
        reconstruction: ``(B, 1, X, Y, Z)`` in the model range.
        quantization_loss: Scalar commitment loss (beta-weighted).
        indices: Code indices ``(B, X/f, Y/f, Z/f)``.
        encodings: Pre-quantisation encoder output ``(B, C, X/f, Y/f, Z/f)``.
    """

    reconstruction: torch.Tensor
    quantization_loss: torch.Tensor
    indices: torch.Tensor
    encodings: torch.Tensor


class VQGAN(ScaleFactorMixin, nn.Module):
    """3D VQ-GAN autoencoder (generator side) with an EMA codebook and an invertible HU window.

    Its adversary is a separate :class:`~ct_autoencoder.Discriminators` module. ``scale_factor``
    (from the config, 1.0 until measured) is the latent scale consumers diffuse with.

    Args:
        config: :class:`~ct_autoencoder.config.VQGANConfig` (see ``get_preset``).

    Example:
        >>> model = VQGAN(config=get_preset("vqgan-demo"))
        >>> z = model.encode_stage_2_inputs(torch.zeros(1, 1, 32, 32, 32))  # (1, 4, 16, 16, 16)
    """

    def __init__(self, *, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        down = tuple((s, 4, 1, 1) if s == 2 else (1, 3, 1, 1) for s in config.strides)
        up = tuple((s, 4, 1, 1, 0) if s == 2 else (1, 3, 1, 1, 0) for s in reversed(config.strides))
        self.vqvae = VQVAE(
            spatial_dims=3, in_channels=1, out_channels=1, channels=config.channels,
            num_res_layers=config.num_res_layers, num_res_channels=config.channels,
            downsample_parameters=down, upsample_parameters=up, num_embeddings=config.num_embeddings,
            embedding_dim=config.embedding_dim, commitment_cost=config.commitment_cost,
            decay=config.ema_decay,
        )

    # ----------------------------------------------------------------- properties
    @property
    def downsample_factor(self) -> int:
        """Image-to-latent downsampling factor."""
        return self.config.downsample_factor

    @property
    def latent_channels(self) -> int:
        """Channels of the latent (``embedding_dim``)."""
        return self.config.embedding_dim

    @property
    def quantizer(self) -> EMAQuantizer:
        """The MONAI EMA quantiser."""
        return self.vqvae.quantizer.quantizer

    def normalize(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> model range [-1, 1] with the config's window."""
        return self.config.window.normalize(hu)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model range -> HU (inverse of :meth:`normalize` inside the window)."""
        return self.config.window.denormalize(x)

    # ----------------------------------------------------------------- codec
    def encode_pre_quant(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output before quantisation.

        Args:
            x: ``(B, 1, X, Y, Z)`` in [-1, 1], sizes divisible by ``downsample_factor``.
            labels: Must be None (the VQ-GAN has no anatomy conditioning).

        Returns:
            ``(B, embedding_dim, X/f, Y/f, Z/f)``.
        """
        if labels is not None:
            raise InputShapeError("VQGAN takes no label map; pass labels=None (HDRAutoencoder takes one)")
        check_image(x, factor=self.downsample_factor)
        return self.vqvae.encode(x)

    def quantize(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-code quantisation without touching the EMA state.

        Args:
            h: Encodings ``(B, C, x, y, z)``.

        Returns:
            ``(z_q, indices)``: codebook vectors of the same shape and indices ``(B, x, y, z)``.
        """
        check_latent(h, channels=self.latent_channels, name="h")
        _, _, idx = self.quantizer.quantize(h)
        return self.quantizer.embed(idx).to(h.dtype), idx

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode (already quantised) latents ``(B, C, x, y, z)`` to images ``(B, 1, f x, f y, f z)``."""
        if labels is not None:
            raise InputShapeError("VQGAN takes no label map; pass labels=None")
        check_latent(z, channels=self.latent_channels)
        return self.vqvae.decode(z)

    def encode_stage_2_inputs(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Quantised latents for a latent diffusion model (MONAI ``LatentDiffusionInferer`` contract).

        The latents are unscaled: a diffusion model works on ``z * scale_factor`` (MONAI's
        ``LatentDiffusionInferer(scale_factor=model.scale_factor)`` does this).

        Args:
            x: ``(B, 1, X, Y, Z)`` in [-1, 1], finite.
            labels: Must be None.

        Returns:
            ``(B, embedding_dim, X/f, Y/f, Z/f)`` codebook vectors.

        Raises:
            InputShapeError: wrong shape or dtype; NonFiniteInputError: NaN or inf in ``x``.
        """
        return self.quantize(self.encode_pre_quant(x, labels))[0]

    def decode_stage_2_outputs(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, *, quantize: bool = True
    ) -> torch.Tensor:
        """Decode latents from a diffusion model (snapped to the codebook first when ``quantize``).

        :func:`~ct_autoencoder.tiled_decode` takes the same ``quantize`` flag with the same
        default, so both decode a given latent the same way. Pass unscaled latents (divide a
        diffusion model's output by ``scale_factor`` first).

        Args:
            z: ``(B, embedding_dim, x, y, z)``, finite.
            labels: Must be None.
            quantize: Snap to the nearest codes before decoding (as MONAI's ``VQVAE`` does).

        Returns:
            ``(B, 1, f x, f y, f z)`` in the model range.
        """
        check_latent(z, channels=self.latent_channels)
        if quantize:
            z = self.quantize(z)[0]
        return self.decode(z, labels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> VQGANOutput:
        """Encode, quantise (EMA update in training mode, all-reduced under DDP) and decode.

        Everything the losses need comes out of here, so a DDP-wrapped model trains correctly.

        Args:
            x: ``(B, 1, X, Y, Z)`` in [-1, 1].
            labels: Must be None.

        Returns:
            :class:`VQGANOutput`.
        """
        h = self.encode_pre_quant(x, labels)
        zq, qloss, idx = self.quantizer(h)
        return VQGANOutput(reconstruction=self.vqvae.decode(zq), quantization_loss=qloss, indices=idx, encodings=h)

    # ----------------------------------------------------------------- codebook health
    def codebook_stats(self, indices: torch.Tensor) -> CodebookStats:
        """Perplexity, used and dead codes for a batch's indices."""
        return codebook_stats(self.quantizer, indices, dead_threshold=self.config.dead_code_threshold)

    def maintain_codebook(
        self, output: VQGANOutput, *, step: int, generator: torch.Generator | None = None
    ) -> int:
        """Re-initialise dead codes from ``output.encodings`` at step 1 and every ``dead_code_interval`` steps.

        Returns:
            Number of codes re-initialised (0 when not due).
        """
        every = self.config.dead_code_interval
        if every <= 0 or step <= 0 or (step % every and step != 1):
            return 0
        return reinit_dead_codes(
            self.quantizer, output.encodings, dead_threshold=self.config.dead_code_threshold, generator=generator
        )
