"""GuideGen anatomy-aware HDR autoencoder (Dai et al., AAAI 2026, Sec. 3.2, Eq. 7-9).

Written from the paper because the authors' code lacks it (authors-code.md 1.5):

- **Pyramidal anatomy conditioning.** The label map is embedded (``nn.Embedding``, equivalent to a
  one-hot map followed by a 1x1 convolution), average-pooled to the resolution of every encoder and
  decoder level and concatenated there. Pooling the embedding equals embedding the pooled one-hot
  map, so each level sees the class fractions of its voxels. Without a map a learned "no map"
  embedding is used; ``label_dropout`` trains that mode.
- **HDR accommodation** (Eq. 7): ``h(x) = k clip((x - w_c + w_r) / (2 w_r), 0, 1) + b`` with the
  window drawn per sample and step from the intensity range of ``x``, learnable ``k`` and ``b``,
  and the L1 reconstruction loss under ``h`` (Eq. 8).
- **Discriminators** on unwindowed images: a 2D frame discriminator on random slices and a 3D
  volume discriminator (:class:`~ct_autoencoder.Discriminators`, a separate module);
  perceptual loss under ``h`` (Eq. 9) through a caller-supplied extractor.
- **Bottleneck**: EMA vector quantiser (the authors' final config) or diagonal Gaussian (KL).

``forward`` returns everything the losses need (reconstruction, regulariser, and both images
under the sampled window ``h``, so the learnable ``k`` and ``b`` are used inside ``forward`` and a
DDP-wrapped model syncs their gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers.vector_quantizer import EMAQuantizer
from torch import nn

from . import _random
from ._codebook import CodebookStats, codebook_stats, reinit_dead_codes
from ._inputs import check_image, check_labels, check_latent
from ._scale import ScaleFactorMixin
from .config import HDRAutoencoderConfig
from .exceptions import ConfigError

__all__ = ["HDRAutoencoder", "HDRAutoencoderOutput", "HDRWindow"]


class HDRWindow(nn.Module):
    """Random intensity window with learnable output affine, Eq. (7) of GuideGen.

    ``k = k_min + softplus(k_raw)`` stays above ``k_min`` (see ``HDRAutoencoderConfig.k_min``);
    ``b`` is unconstrained.

    Args:
        k_init: Initial ``k`` (> k_min).
        k_min: Floor of ``k``.
        b_init: Initial ``b``.
        min_radius: Smallest window radius as a fraction of the sample's intensity range.
    """

    def __init__(self, *, k_init: float, k_min: float, b_init: float, min_radius: float) -> None:
        super().__init__()
        self.k_min = float(k_min)
        self.min_radius = float(min_radius)
        # inverse softplus so that k == k_init at start
        self.k_raw = nn.Parameter(torch.tensor(float(k_init - k_min)).expm1().log())
        self.b = nn.Parameter(torch.tensor(float(b_init)))

    @property
    def k(self) -> torch.Tensor:
        """Current scale ``k`` (scalar tensor, > k_min)."""
        return self.k_min + F.softplus(self.k_raw)

    def sample(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a window centre and radius per sample from its intensity range.

        ``w_c ~ U(min x, max x)`` and ``w_r ~ U(min_radius * R, R / 2)`` with ``R = max x - min x``.

        Args:
            x: ``(B, 1, X, Y, Z)``.
            generator: Random source; drawn on its device, else on ``x``'s device.

        Returns:
            ``(w_c, w_r)``, each ``(B, 1, 1, 1, 1)`` on ``x``'s device and dtype.
        """
        b = x.shape[0]
        flat = x.detach().reshape(b, -1)
        lo, hi = flat.amin(1), flat.amax(1)
        rng = (hi - lo).clamp_min(1e-3)
        u = _random.rand((2, b), like=x, generator=generator)
        w_c = lo + u[0] * (hi - lo)
        w_r = rng * (self.min_radius + u[1] * (0.5 - self.min_radius))
        shape = (b, 1, 1, 1, 1)
        return w_c.reshape(shape), w_r.reshape(shape)

    def forward(self, x: torch.Tensor, w_c: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
        """Apply h (Eq. 7): ``k * clip((x - w_c + w_r) / (2 w_r), 0, 1) + b``; output in [b, k + b]."""
        return self.k * torch.clamp((x - w_c + w_r) / (2.0 * w_r), 0.0, 1.0) + self.b


class _VoxelGroupNorm(nn.Module):
    """GroupNorm whose statistics are taken per voxel over each channel group only.

    Standard GroupNorm pools statistics over the whole volume, so a tile would be normalised
    differently from the same region of the whole volume; per-voxel statistics make the network
    translation-equivariant and tiled decoding consistent with whole-volume decoding.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = x.reshape(b, self.groups, c // self.groups, *x.shape[2:])
        mean = g.mean(2, keepdim=True)
        var = g.var(2, keepdim=True, unbiased=False)
        g = (g - mean) * torch.rsqrt(var + 1e-6)
        shape = (1, c) + (1,) * (x.ndim - 2)
        return g.reshape_as(x) * self.weight.reshape(shape) + self.bias.reshape(shape)


def _group_norm(channels: int, groups: int) -> nn.Module:
    return _VoxelGroupNorm(channels, groups)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(channels, groups)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = _group_norm(channels, groups)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class _Level(nn.Module):
    """Concatenate the level's label features, fuse with a 1x1 conv, then residual blocks."""

    def __init__(self, c_in: int, c_out: int, label_dim: int, blocks: int, groups: int) -> None:
        super().__init__()
        self.fuse = nn.Conv3d(c_in + label_dim, c_out, 1)
        self.blocks = nn.Sequential(*[_ResBlock(c_out, groups) for _ in range(blocks)])

    def forward(self, h: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fuse(torch.cat([h, lab], 1)))


class _Encoder(nn.Module):
    def __init__(self, cfg: HDRAutoencoderConfig, out_channels: int) -> None:
        super().__init__()
        ch, e, g = cfg.channels, cfg.label_embed_dim, cfg.norm_groups
        self.stem = nn.Conv3d(1 + e, ch[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            self.levels.append(_Level(prev, c, e, cfg.num_res_blocks, g))
            if i < len(ch) - 1:
                self.downs.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
            prev = c
        self.mid = _Level(prev, prev, e, 1, g)
        self.norm_out = _group_norm(prev, g)
        self.conv_out = nn.Conv3d(prev, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        h = self.stem(torch.cat([x, pyramid[0]], 1))
        for i, level in enumerate(self.levels):
            h = level(h, pyramid[i])
            if i < len(self.downs):
                h = self.downs[i](h)
        h = self.mid(h, pyramid[-1])
        return self.conv_out(F.silu(self.norm_out(h)))


class _Decoder(nn.Module):
    def __init__(self, cfg: HDRAutoencoderConfig) -> None:
        super().__init__()
        ch, e, g = cfg.channels, cfg.label_embed_dim, cfg.norm_groups
        self.conv_in = nn.Conv3d(cfg.latent_channels + e, ch[-1], 3, padding=1)
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        prev = ch[-1]
        for i in reversed(range(len(ch))):
            self.levels.append(_Level(prev, ch[i], e, cfg.num_res_blocks, g))
            if i > 0:
                self.ups.append(nn.Conv3d(ch[i], ch[i], 3, padding=1))
            prev = ch[i]
        self.norm_out = _group_norm(prev, g)
        self.conv_out = nn.Conv3d(prev + e, 1, 3, padding=1)

    def forward(self, z: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        n = len(pyramid)
        h = self.conv_in(torch.cat([z, pyramid[-1]], 1))
        for j, level in enumerate(self.levels):
            i = n - 1 - j
            h = level(h, pyramid[i])
            if i > 0:
                h = self.ups[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(torch.cat([F.silu(self.norm_out(h)), pyramid[0]], 1))


@dataclass(frozen=True, kw_only=True)
class HDRAutoencoderOutput:
    """Result of :meth:`HDRAutoencoder.forward`.

    Attributes:
        reconstruction: ``(B, 1, X, Y, Z)`` in the model range (unwindowed).
        regularization: Scalar commitment loss (``vq``) or weighted-free KL (``kl``).
        latent: Quantised (``vq``) or sampled (``kl``) latent ``(B, C, X/f, Y/f, Z/f)``.
        encodings: Pre-bottleneck encodings (``vq``: ``(B, C, ...)``; ``kl``: the mean).
        indices: Code indices ``(B, X/f, Y/f, Z/f)`` (``vq``) or None.
        windowed_input: ``h(x)`` under the window sampled in this forward (Eq. 7), ``(B, 1, X, Y, Z)``.
        windowed_reconstruction: ``h(x_hat)`` under the same window.
    """

    reconstruction: torch.Tensor
    regularization: torch.Tensor
    latent: torch.Tensor
    encodings: torch.Tensor
    indices: torch.Tensor | None
    windowed_input: torch.Tensor
    windowed_reconstruction: torch.Tensor


class HDRAutoencoder(ScaleFactorMixin, nn.Module):
    """Anatomy-aware HDR autoencoder with pyramidal label conditioning, VQ or KL bottleneck.

    The generator side only; its adversaries are :class:`~ct_autoencoder.Discriminators`.
    ``scale_factor`` (from the config, 1.0 until measured) is the latent scale consumers use.

    Args:
        config: :class:`~ct_autoencoder.config.HDRAutoencoderConfig` (see ``get_preset``).

    Example:
        >>> model = HDRAutoencoder(config=get_preset("hdr-demo"))
        >>> z = model.encode_stage_2_inputs(torch.zeros(1, 1, 32, 32, 32))  # (1, 4, 8, 8, 8)
    """

    def __init__(self, *, config: HDRAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = _Encoder(config, c if config.bottleneck == "vq" else 2 * c)
        self.decoder = _Decoder(config)
        # ids 0..n-1 are classes; id n is "no map".
        self.label_embedding = nn.Embedding(config.num_label_classes + 1, config.label_embed_dim)
        self.quantizer: EMAQuantizer | None = None
        if config.bottleneck == "vq":
            self.quantizer = EMAQuantizer(
                spatial_dims=3, num_embeddings=config.num_embeddings, embedding_dim=c,
                commitment_cost=config.commitment_cost, decay=config.ema_decay,
            )
        self.window = HDRWindow(
            k_init=config.k_init, k_min=config.k_min, b_init=config.b_init, min_radius=config.min_window_radius
        )

    # ----------------------------------------------------------------- properties
    @property
    def downsample_factor(self) -> int:
        """Image-to-latent downsampling factor."""
        return self.config.downsample_factor

    @property
    def latent_channels(self) -> int:
        """Latent channels."""
        return self.config.latent_channels

    def normalize(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> model range [-1, 1] with the config's window."""
        return self.config.window.normalize(hu)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model range -> HU."""
        return self.config.window.denormalize(x)

    # ----------------------------------------------------------------- label pyramid
    def label_pyramid(
        self,
        labels: torch.Tensor | None,
        image_shape: tuple[int, ...],
        *,
        drop: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Label features at every level (index 0 = full resolution).

        Args:
            labels: ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` integer ids, or None for "no map".
            image_shape: Shape of the image ``(B, 1, X, Y, Z)``.
            drop: Optional bool ``(B,)``: samples whose map is replaced by "no map".

        Returns:
            ``len(channels)`` tensors ``(B, label_embed_dim, X / 2^i, Y / 2^i, Z / 2^i)``.
        """
        b, spatial = image_shape[0], tuple(image_shape[2:])
        n = len(self.config.channels)
        null = self.label_embedding.weight[-1].reshape(1, -1, 1, 1, 1)
        if labels is None:
            return [
                null.expand(b, -1, *(s // 2**i for s in spatial)) for i in range(n)
            ]
        lab = check_labels(labels, like=tuple(image_shape), num_classes=self.config.num_label_classes)
        feat = self.label_embedding(lab).movedim(-1, 1)  # (B, E, X, Y, Z)
        if drop is not None:
            feat = torch.where(drop.reshape(-1, 1, 1, 1, 1).to(feat.device), null.to(feat.dtype), feat)
        out = [feat]
        for _i in range(1, n):
            out.append(F.avg_pool3d(out[-1], kernel_size=2))
        return out

    # ----------------------------------------------------------------- codec
    def encode_pre_quant(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output before the bottleneck.

        Args:
            x: ``(B, 1, X, Y, Z)`` in [-1, 1], sizes divisible by ``downsample_factor``.
            labels: Optional integer label map ``(B, 1, X, Y, Z)``.

        Returns:
            ``(B, C, X/f, Y/f, Z/f)`` (``vq``) or ``(B, 2C, ...)`` mean and log-variance (``kl``).
        """
        check_image(x, factor=self.downsample_factor)
        return self.encoder(x, self.label_pyramid(labels, tuple(x.shape)))

    def _pyramid_for_latent(self, z: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        f = self.downsample_factor
        shape = (z.shape[0], 1, *(s * f for s in z.shape[2:]))
        return self.label_pyramid(labels, shape)

    def quantize(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bottleneck without EMA update: nearest codes (``vq``) or the mean (``kl``).

        Args:
            h: Output of :meth:`encode_pre_quant`, or latents ``(B, C, ...)``.

        Returns:
            ``(z, indices)``; ``indices`` is None for ``kl``.
        """
        if self.quantizer is None:
            if h.shape[1] == 2 * self.latent_channels:
                h = h[:, : self.latent_channels]
            return check_latent(h, channels=self.latent_channels, name="h"), None
        check_latent(h, channels=self.latent_channels, name="h")
        _, _, idx = self.quantizer.quantize(h)
        return self.quantizer.embed(idx).to(h.dtype), idx

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode latents ``(B, C, x, y, z)`` to ``(B, 1, f x, f y, f z)``, conditioned on ``labels``."""
        check_latent(z, channels=self.latent_channels)
        return self.decoder(z, self._pyramid_for_latent(z, labels))

    def encode_stage_2_inputs(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents for a diffusion model: quantised codes (``vq``) or the posterior mean (``kl``).

        Unscaled: a diffusion model works on ``z * scale_factor``.

        Args:
            x: ``(B, 1, X, Y, Z)`` in [-1, 1], finite (NaN or inf raise NonFiniteInputError).
            labels: Optional label map ``(B, 1, X, Y, Z)``.

        Returns:
            ``(B, latent_channels, X/f, Y/f, Z/f)``.
        """
        return self.quantize(self.encode_pre_quant(x, labels))[0]

    def decode_stage_2_outputs(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, *, quantize: bool = True
    ) -> torch.Tensor:
        """Decode diffusion-model latents (snapped to the codebook first for ``vq`` when ``quantize``).

        :func:`~ct_autoencoder.tiled_decode` takes the same ``quantize`` flag and default.

        Args:
            z: Unscaled latents ``(B, latent_channels, x, y, z)`` (divide by ``scale_factor``).
            labels: Optional label map at image resolution.
            quantize: Snap to the nearest codes first (``vq`` only; ignored for ``kl``).

        Returns:
            ``(B, 1, f x, f y, f z)`` in the model range.
        """
        check_latent(z, channels=self.latent_channels)
        if quantize and self.quantizer is not None:
            z = self.quantize(z)[0]
        return self.decode(z, labels)

    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        drop_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> HDRAutoencoderOutput:
        """Encode, bottleneck (EMA update in training mode / reparameterised sample) and decode.

        Also samples the HDR window per sample (Eq. 7) and returns ``h(x)`` and ``h(x_hat)``, so
        the L1 and perceptual terms (Eq. 8-9) need no further call into the model.

        Args:
            x: ``(B, 1, X, Y, Z)`` in [-1, 1].
            labels: Optional label map.
            drop_labels: Optional bool ``(B,)`` selecting samples encoded without their map.
            generator: Random source of the KL sample and the window (drawn on its device, else
                on ``x``'s device).

        Returns:
            :class:`HDRAutoencoderOutput`.
        """
        check_image(x, factor=self.downsample_factor)
        pyr = self.label_pyramid(labels, tuple(x.shape), drop=drop_labels if labels is not None else None)
        h = self.encoder(x, pyr)
        if self.quantizer is not None:
            z, reg, idx = self.quantizer(h)
            enc = h
        else:
            mu, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            if self.training:
                z = mu + torch.exp(0.5 * logvar) * _random.randn(tuple(mu.shape), like=mu, generator=generator)
            else:
                z = mu
            reg = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=(1, 2, 3, 4)).mean()
            enc, idx = mu, None
        rec = self.decoder(z, pyr)
        w_c, w_r = self.window.sample(x, generator=generator)
        return HDRAutoencoderOutput(
            reconstruction=rec, regularization=reg, latent=z, encodings=enc, indices=idx,
            windowed_input=self.window(x, w_c, w_r), windowed_reconstruction=self.window(rec, w_c, w_r),
        )

    # ----------------------------------------------------------------- codebook health
    def codebook_stats(self, indices: torch.Tensor) -> CodebookStats:
        """Perplexity, used and dead codes (``vq`` only)."""
        if self.quantizer is None:
            raise ConfigError("codebook_stats needs bottleneck='vq'; this model uses 'kl'")
        return codebook_stats(self.quantizer, indices, dead_threshold=self.config.dead_code_threshold)

    def maintain_codebook(
        self, output: HDRAutoencoderOutput, *, step: int, generator: torch.Generator | None = None
    ) -> int:
        """Re-initialise dead codes at step 1 and every ``dead_code_interval`` steps (``vq``); returns how many."""
        every = self.config.dead_code_interval
        if self.quantizer is None or every <= 0 or step <= 0 or (step % every and step != 1):
            return 0
        return reinit_dead_codes(
            self.quantizer, output.encodings, dead_threshold=self.config.dead_code_threshold, generator=generator
        )
