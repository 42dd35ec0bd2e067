"""LINet: lesion inpainting in the latent space of an image autoencoder (LesionDiffusion Sec. 2.2).

Forward process, Eq. (4)::

    z_t = (sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps) * m' + z_0 * (1 - m'),   m' = Resize(m)

The UNet sees ``cat(z_t, m')`` and the image-attribute text context by cross-attention and
predicts eps. Loss, Eq. (5)::

    L = 1/|B'| * || eps * B' - eps_hat * B' ||_1

Sampling starts from ``z_T = eps * m' + z_0 * (1 - m')`` and re-imposes ``z_0`` outside ``m'`` after
every DDIM step (:class:`InpaintingSampler`), with classifier-free guidance (condition dropout in
training, scale 2.5 by default). The output equals ``z_0`` exactly outside ``m'``.

Training surface: :func:`linet_training_loss` takes the model (or its ``DistributedDataParallel``
wrapper) on every call and runs the network only through ``model(x, t, context=ctx)``, i.e. the
module's ``forward``, so DDP's gradient synchronisation works. :meth:`LINet.training_loss` is a thin
wrapper for single-process use.
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
from ._sampling import InpaintingSampler, drop_context, unwrap_model
from ._unet import Context, UNetConfig, build_unet
from .exceptions import ConfigError, ShapeError

__all__ = ["LINet", "LINetConfig", "linet_loss", "linet_training_loss", "resize_mask"]


def resize_mask(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize a binary mask to the latent grid: a latent voxel is inside if any voxel it covers is.

    Args:
        mask: (B, 1, X, Y, Z) (or 2D) with values in {0, 1} (bool or float).
        size: latent spatial size, e.g. (X/2, Y/2, Z/2).

    Returns:
        Float mask (B, 1, *size) with values in {0, 1}.
    """
    if mask.ndim not in (4, 5) or mask.shape[1] != 1:
        raise ShapeError(f"mask must be (B, 1, *spatial) with 2 or 3 spatial dims, got {tuple(mask.shape)}")
    if len(size) != mask.ndim - 2:
        raise ShapeError(f"size {size} must have {mask.ndim - 2} entries")
    m = mask.float()
    pool = F.adaptive_max_pool3d if mask.ndim == 5 else F.adaptive_max_pool2d
    out = m if tuple(m.shape[2:]) == tuple(size) else pool(m, tuple(size))
    return (out > 0).to(torch.float32)


def linet_loss(
    eps: torch.Tensor,
    eps_hat: torch.Tensor,
    region: torch.Tensor,
    *,
    normaliser: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (5): ``1/|B'| * ||eps * B' - eps_hat * B'||_1``, averaged over the batch.

    Args:
        eps: true noise (B, C, *spatial).
        eps_hat: predicted noise, same shape.
        region: B' as (B, 1, *spatial) in {0, 1}; the L1 norm runs over it (all channels).
        normaliser: region whose voxel count is |B'|; defaults to ``region`` (the authors' code
            sums over the mask and divides by the bbox voxel count).

    Returns:
        Scalar loss.
    """
    if eps.shape != eps_hat.shape:
        raise ShapeError(f"eps {tuple(eps.shape)} and eps_hat {tuple(eps_hat.shape)} differ")
    if region.shape[0] != eps.shape[0] or region.shape[1] != 1 or region.shape[2:] != eps.shape[2:]:
        raise ShapeError(f"region must be (B, 1, *spatial) matching {tuple(eps.shape)}, got {tuple(region.shape)}")
    r = region.to(eps.dtype)
    dims = tuple(range(1, eps.ndim))
    num = (eps * r - eps_hat * r).abs().sum(dim=dims)
    nrm = r if normaliser is None else normaliser.to(eps.dtype)
    if nrm.shape != r.shape:
        raise ShapeError(f"normaliser {tuple(nrm.shape)} must have the region's shape {tuple(r.shape)}")
    den = nrm.sum(dim=dims).clamp_min(1.0)
    return (num / den).mean()


@dataclass(frozen=True, kw_only=True)
class LINetConfig:
    """LINet configuration.

    Attributes:
        latent_channels: channels of the autoencoder latent (LesionDiffusion VQ-GAN: 4).
        unet: the UNet (its ``in_channels`` must be ``latent_channels + 1``, out ``latent_channels``).
        diffusion: schedule, DDIM and guidance settings.
        loss_region: ``"bbox"`` (paper Eq. 5: L1 inside the lesion bbox B') or ``"mask"`` (authors'
            code: inside the resized lesion mask; the bbox is then only the normaliser).
    """

    latent_channels: int
    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss_region: Literal["bbox", "mask"] = "bbox"

    def __post_init__(self) -> None:
        if self.unet.in_channels != self.latent_channels + 1 or self.unet.out_channels != self.latent_channels:
            raise ConfigError(
                f"LINet UNet needs in_channels={self.latent_channels + 1} (latent + mask) and "
                f"out_channels={self.latent_channels}, got {self.unet.in_channels}/{self.unet.out_channels}"
            )
        if self.loss_region not in ("bbox", "mask"):
            raise ConfigError(f"loss_region must be 'bbox' or 'mask', got {self.loss_region!r}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "latent_channels": self.latent_channels,
            "unet": self.unet.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "loss_region": self.loss_region,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LINetConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            latent_channels=d["latent_channels"],
            unet=UNetConfig.from_dict(d["unet"]),
            diffusion=DiffusionConfig.from_dict(d["diffusion"]),
            loss_region=d["loss_region"],
        )


class LINet(nn.Module):
    """Latent inpainting network (UNet + schedule); see the module docstring.

    Args:
        config: :class:`LINetConfig`.
    """

    def __init__(self, *, config: LINetConfig) -> None:
        super().__init__()
        if not isinstance(config, LINetConfig):
            raise TypeError(f"config must be a LINetConfig, got {type(config).__name__}")
        self.config = config
        self.unet = build_unet(config.unet)
        self.train_scheduler = config.diffusion.ddpm()

    def _check(self, z0: torch.Tensor, mask: torch.Tensor) -> None:
        c = self.config.latent_channels
        if z0.ndim != self.config.unet.spatial_dims + 2 or z0.shape[1] != c:
            raise ShapeError(f"latent must be (B, {c}, *spatial), got {tuple(z0.shape)}")
        if mask.shape != (z0.shape[0], 1, *z0.shape[2:]):
            raise ShapeError(
                f"mask must be on the latent grid, (B, 1, *spatial) = {(z0.shape[0], 1, *z0.shape[2:])}, "
                f"got {tuple(mask.shape)}; use resize_mask(mask, latent.shape[2:])"
            )

    def noisy_latent(
        self, z0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Eq. (4): noise only inside the latent-grid mask, clean latent outside.

        Args:
            z0: clean latent (B, C, *spatial).
            mask: (B, 1, *spatial) in {0, 1}.
            noise: standard normal, same shape as ``z0``.
            t: timesteps (B,).
        """
        self._check(z0, mask)
        m = mask.to(z0.dtype)
        return self.train_scheduler.add_noise(z0, noise, t) * m + z0 * (1 - m)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Context = None) -> torch.Tensor:
        """The denoiser: ``eps_hat = unet(cat(z_t, m'), t, context)``.

        Args:
            x: ``cat(z_t, m')`` (B, latent_channels + 1, *spatial).
            timesteps: (B,) integers in [0, T-1].
            context: image-attribute context (B, L, D) or a per-level list.

        Returns:
            Predicted noise (B, latent_channels, *spatial).
        """
        return self.unet(x, timesteps, context=context)

    def training_loss(
        self,
        z0: torch.Tensor,
        mask: torch.Tensor,
        *,
        bbox: torch.Tensor | None = None,
        context: Context = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``linet_training_loss(self, ...)``; under DDP call :func:`linet_training_loss` with the wrapper."""
        return linet_training_loss(self, z0, mask, bbox=bbox, context=context, generator=generator)

    def sampler(
        self, *, num_inference_steps: int | None = None, guidance_scale: float | None = None
    ) -> InpaintingSampler:
        """An :class:`InpaintingSampler` with this model's schedule."""
        return self.config.diffusion.inpainting_sampler(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale
        )

    @torch.no_grad()
    def inpaint(
        self,
        z0: torch.Tensor,
        mask: torch.Tensor,
        *,
        context: Context = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Inpaint the latent inside ``mask`` (DDIM + classifier-free guidance).

        Args:
            z0: latent of the original crop (B, C, *spatial).
            mask: lesion mask on the latent grid (B, 1, *spatial), {0, 1}.
            context: image-attribute context(s) or None.
            guidance_scale: CFG scale (default from the config, paper 2.5).
            num_inference_steps: DDIM steps (default from the config, paper 200).
            generator: random source.
            progress: tqdm bar.

        Returns:
            Latent (B, C, *spatial); equal to ``z0`` bit for bit where ``mask == 0``.
        """
        self._check(z0, mask)
        m = mask.to(z0.dtype)
        return self.sampler(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale).sample(
            self, z0, m, cond=m, context=context, generator=generator, progress=progress
        )

    def save(self, path: str | os.PathLike) -> None:
        """``save_checkpoint(self, path)``: ``model.safetensors`` + ``config.json``, atomically."""
        from ._checkpoint import save_checkpoint

        save_checkpoint(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LINet:
        """``load_checkpoint(path, device=device)``, checked to hold a LINet; eval mode."""
        from ._checkpoint import load_checkpoint

        return load_checkpoint(path, device=device, expected=cls)


def linet_training_loss(
    model: nn.Module,
    z0: torch.Tensor,
    mask: torch.Tensor,
    *,
    bbox: torch.Tensor | None = None,
    context: Context = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One LINet training loss (Eq. 4 forward process, Eq. 5 loss, condition dropout).

    Args:
        model: a :class:`LINet` or its ``DistributedDataParallel`` wrapper; the network runs only
            through ``model(x, t, context=ctx)``.
        z0: clean latent (B, C, *spatial), float.
        mask: lesion mask on the latent grid (B, 1, *spatial), {0, 1}.
        bbox: lesion bbox B' on the latent grid (B, 1, *spatial); defaults to ``mask``.
        context: image-attribute context (B, L, D), per-level list, or None.
        generator: random source of t, eps and condition dropout (drawn on its device).

    Returns:
        Scalar loss with gradient.
    """
    net = unwrap_model(model)
    if not isinstance(net, LINet):
        raise TypeError(f"model must be a LINet (or a DDP wrapper of one), got {type(net).__name__}")
    net._check(z0, mask)
    bbox = mask if bbox is None else bbox
    if bbox.shape != mask.shape:
        raise ShapeError(f"bbox {tuple(bbox.shape)} must have the mask's shape {tuple(mask.shape)}")
    cfg = net.config
    b = z0.shape[0]
    t = draw_randint(0, cfg.diffusion.num_train_timesteps, (b,), generator=generator, device=z0.device)
    noise = draw_randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    zt = net.noisy_latent(z0, mask, noise, t)
    ctx = drop_context(context, cfg.diffusion.cond_drop_prob, generator=generator)
    eps_hat = model(torch.cat([zt, mask.to(z0.dtype)], dim=1), t, context=ctx)
    if cfg.loss_region == "bbox":
        return linet_loss(noise, eps_hat, bbox)
    return linet_loss(noise, eps_hat, mask, normaliser=bbox)
