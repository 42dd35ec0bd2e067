"""LMNet: Gaussian diffusion on the lesion mask in pixel space (LesionDiffusion Sec. 2.1).

The binary mask m in {0, 1} is diffused as x_0 = 2m - 1 in [-1, 1]. The UNet sees
``cat(x_t, organ_map, target_organ, bbox)`` (4 channels; ``organ_map`` is the surrounding organ
label map scaled to [0, 1], e.g. TotalSegmentator ids / 104) and the mask attributes by
cross-attention. Loss, Eq. (2)::

    L = ||eps * B - eps_hat * B||^2 + gamma * ||eps - eps_hat||^2,     gamma = 0.001

Inference: DDIM with classifier-free guidance, then the continuous output becomes a binary mask by
a fixed threshold or by the threshold (swept 0.9 -> 0.3 on (x_0 + 1) / 2, as the authors do) whose
largest connected component has the volume closest to the requested one; only the largest
component is kept; an empty result is retried with fresh noise and finally reported with
:class:`EmptyMaskError`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ._checkpoint import load_checkpoint, save_checkpoint
from ._diffusion_config import DiffusionConfig
from ._sampling import GaussianSampler, drop_context
from ._unet import Context, LevelContextUNet, UNetConfig
from .exceptions import ConfigError, EmptyMaskError, ShapeError

__all__ = ["LMNet", "LMNetConfig", "binarize_mask", "lmnet_loss"]

logger = logging.getLogger(__name__)

_SWEEP = tuple(np.round(np.arange(0.9, 0.2999, -0.05), 2))


def lmnet_loss(
    eps: torch.Tensor,
    eps_hat: torch.Tensor,
    bbox: torch.Tensor,
    *,
    gamma: float = 0.001,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Eq. (2): ``||eps*B - eps_hat*B||^2 + gamma*||eps - eps_hat||^2`` per sample, batch-averaged.

    Args:
        eps: true noise (B, 1, *spatial).
        eps_hat: predicted noise, same shape.
        bbox: B, (B, 1, *spatial) in {0, 1}.
        gamma: weight of the whole-crop term (paper: 0.001).
        reduction: ``"sum"`` is the squared norms exactly; ``"mean"`` divides them by the number
            of elements per sample (a constant rescaling that keeps the loss size-independent).

    Returns:
        Scalar loss.
    """
    if eps.shape != eps_hat.shape:
        raise ShapeError(f"eps {tuple(eps.shape)} and eps_hat {tuple(eps_hat.shape)} differ")
    if bbox.shape[0] != eps.shape[0] or bbox.shape[2:] != eps.shape[2:] or bbox.shape[1] not in (1, eps.shape[1]):
        raise ShapeError(f"bbox must be (B, 1, *spatial) matching {tuple(eps.shape)}, got {tuple(bbox.shape)}")
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    b = bbox.to(eps.dtype)
    dims = tuple(range(1, eps.ndim))
    per = ((eps * b - eps_hat * b) ** 2).sum(dim=dims) + gamma * ((eps - eps_hat) ** 2).sum(dim=dims)
    if reduction == "mean":
        per = per / eps[0].numel()
    return per.mean()


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def binarize_mask(
    prob: np.ndarray,
    *,
    threshold: float | Literal["volume"] = 0.5,
    target_volume: float | None = None,
) -> np.ndarray:
    """Turn a continuous mask in [0, 1] into its largest connected component.

    Args:
        prob: (X, Y, Z) values in [0, 1] (LMNet output mapped by (x + 1) / 2).
        threshold: a fixed threshold in (0, 1), or ``"volume"``: sweep 0.9 -> 0.3 and keep the
            threshold whose largest component's voxel count is closest to ``target_volume``.
        target_volume: requested lesion volume in voxels (needed for ``"volume"``).

    Returns:
        bool array of ``prob``'s shape (may be empty).
    """
    if threshold == "volume":
        if target_volume is None or target_volume <= 0:
            raise ConfigError("threshold='volume' needs a positive target_volume (voxels)")
        best, best_err = np.zeros(prob.shape, bool), math.inf
        for th in _SWEEP:
            cand = _largest_component(prob > th) if (prob > th).any() else np.zeros(prob.shape, bool)
            err = abs(int(cand.sum()) - target_volume)
            if cand.any() and err < best_err:
                best, best_err = cand, err
        return best
    if isinstance(threshold, str) or not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"threshold must be a number in (0, 1) or 'volume', got {threshold!r}")
    m = prob > float(threshold)
    return _largest_component(m) if m.any() else m


@dataclass(frozen=True)
class LMNetConfig:
    """LMNet configuration.

    Attributes:
        unet: the UNet (in_channels 4: x_t, organ map, target organ, bbox; out_channels 1).
        diffusion: schedule, DDIM and guidance settings.
        gamma: weight of the whole-crop term of Eq. (2) (paper: 0.001).
        threshold: fixed threshold in (0, 1) or ``"volume"`` (match the requested volume).
        max_attempts: sampling attempts before an empty mask is reported.
    """

    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    gamma: float = 0.001
    threshold: float | Literal["volume"] = "volume"
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.unet.in_channels != 4 or self.unet.out_channels != 1:
            raise ConfigError(
                f"LMNet UNet needs in_channels=4 (x_t, organ map, target organ, bbox) and out_channels=1, "
                f"got {self.unet.in_channels}/{self.unet.out_channels}"
            )
        if self.gamma < 0:
            raise ConfigError(f"gamma must be >= 0, got {self.gamma}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "unet": self.unet.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "gamma": self.gamma,
            "threshold": self.threshold,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LMNetConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            unet=UNetConfig.from_dict(d["unet"]),
            diffusion=DiffusionConfig.from_dict(d["diffusion"]),
            gamma=d["gamma"],
            threshold=d["threshold"],
            max_attempts=d["max_attempts"],
        )


class LMNet(nn.Module):
    """Lesion mask diffusion network; see the module docstring.

    Args:
        config: :class:`LMNetConfig`.
    """

    kind = "lmnet"

    def __init__(self, config: LMNetConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = LevelContextUNet(config.unet)
        self.train_scheduler = config.diffusion.ddpm()

    def _spatial(self, organ_map: torch.Tensor, target_organ: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
        nd = self.config.unet.spatial_dims + 2
        for name, v in (("organ_map", organ_map), ("target_organ", target_organ), ("bbox", bbox)):
            if v.ndim != nd or v.shape[1] != 1 or v.shape != organ_map.shape:
                raise ShapeError(
                    f"{name} must be (B, 1, *spatial) like organ_map {tuple(organ_map.shape)}, got {tuple(v.shape)}"
                )
        if float(organ_map.min()) < 0 or float(organ_map.max()) > 1:
            raise ShapeError("organ_map must be scaled to [0, 1] (e.g. TotalSegmentator ids / 104)")
        return torch.cat([organ_map, target_organ, bbox], dim=1).float()

    def training_loss(
        self,
        mask: torch.Tensor,
        *,
        organ_map: torch.Tensor,
        target_organ: torch.Tensor,
        bbox: torch.Tensor,
        context: Context = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Eq. (2) on one batch, with condition dropout.

        Args:
            mask: lesion mask (B, 1, *spatial) in {0, 1}.
            organ_map: surrounding organ map (B, 1, *spatial) in [0, 1].
            target_organ: target organ mask (B, 1, *spatial) in {0, 1}.
            bbox: lesion bbox mask (B, 1, *spatial) in {0, 1}.
            context: mask-attribute context(s) or None.
            generator: random source of t, eps and dropout.
        """
        cond = self._spatial(organ_map, target_organ, bbox).to(mask.device)
        if mask.shape != organ_map.shape:
            raise ShapeError(f"mask {tuple(mask.shape)} must match organ_map {tuple(organ_map.shape)}")
        x0 = mask.float() * 2 - 1
        b = x0.shape[0]
        t = torch.randint(0, self.config.diffusion.num_train_timesteps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xt = self.train_scheduler.add_noise(x0, noise, t)
        ctx = drop_context(context, self.config.diffusion.cond_drop_prob, generator=generator)
        eps_hat = self.unet(torch.cat([xt, cond], dim=1), t, ctx)
        return lmnet_loss(noise, eps_hat, bbox, gamma=self.config.gamma)

    def sampler(
        self, *, num_inference_steps: int | None = None, guidance_scale: float | None = None
    ) -> GaussianSampler:
        """A DDIM :class:`GaussianSampler` with this model's schedule."""
        return self.config.diffusion.gaussian_sampler(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale
        )

    @torch.no_grad()
    def sample_continuous(
        self,
        *,
        organ_map: torch.Tensor,
        target_organ: torch.Tensor,
        bbox: torch.Tensor,
        context: Context = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """The raw DDIM output mapped to [0, 1], shape (B, 1, *spatial)."""
        cond = self._spatial(organ_map, target_organ, bbox)
        p = next(self.unet.parameters())
        noise = torch.randn(organ_map.shape, generator=generator, device=organ_map.device, dtype=p.dtype)
        x = self.sampler(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale).sample(
            self.unet, noise, cond=cond.to(p.dtype), context=context, generator=generator, progress=progress
        )
        return ((x.clamp(-1, 1) + 1) / 2).float()

    @torch.no_grad()
    def sample(
        self,
        *,
        organ_map: torch.Tensor,
        target_organ: torch.Tensor,
        bbox: torch.Tensor,
        context: Context = None,
        target_volume: float | torch.Tensor | None = None,
        threshold: float | Literal["volume"] | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate binary lesion masks.

        Args:
            organ_map: (B, 1, *spatial) in [0, 1].
            target_organ: (B, 1, *spatial) in {0, 1}.
            bbox: (B, 1, *spatial) in {0, 1}.
            context: mask-attribute context (B, L, D), a per-level list, or None.
            target_volume: requested voxels per sample (scalar or (B,)); default: the volume of
                the ellipsoid inscribed in each bbox (pi/6 of the box).
            threshold: overrides the config (fixed value in (0, 1) or ``"volume"``).
            guidance_scale: CFG scale (default from the config).
            num_inference_steps: DDIM steps (default from the config, paper 200).
            generator: random source; each retry draws fresh noise from it.
            progress: tqdm bar.

        Returns:
            uint8 masks (B, 1, *spatial), one connected component each.

        Raises:
            EmptyMaskError: a sample stayed empty after ``config.max_attempts`` attempts.
        """
        th = self.config.threshold if threshold is None else threshold
        b = organ_map.shape[0]
        if target_volume is None:
            vols = (bbox.flatten(1).float().sum(1) * math.pi / 6).tolist()
        else:
            vols = torch.as_tensor(target_volume, dtype=torch.float64).expand(b).tolist()
        out = torch.zeros(organ_map.shape, dtype=torch.uint8, device=organ_map.device)
        pending = list(range(b))
        for attempt in range(1, self.config.max_attempts + 1):
            idx = torch.tensor(pending, device=organ_map.device)
            ctx = None
            if context is not None:
                ctx = context[idx] if isinstance(context, torch.Tensor) else [c[idx] for c in context]
            prob = self.sample_continuous(
                organ_map=organ_map[idx], target_organ=target_organ[idx], bbox=bbox[idx], context=ctx,
                guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                generator=generator, progress=progress,
            ).cpu().numpy()
            still = []
            for j, i in enumerate(pending):
                m = binarize_mask(prob[j, 0], threshold=th, target_volume=vols[i])
                if m.any():
                    out[i, 0] = torch.from_numpy(m.astype(np.uint8)).to(out.device)
                else:
                    still.append(i)
            if not still:
                return out
            logger.info("LMNet attempt %d: %d empty mask(s), retrying with fresh noise", attempt, len(still))
            pending = still
        raise EmptyMaskError(
            f"LMNet produced an empty mask for batch item(s) {pending} after {self.config.max_attempts} "
            "attempts; check that the bbox lies inside the target organ, raise max_attempts, or lower the threshold"
        )

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``config.json`` atomically."""
        save_checkpoint(directory, kind=self.kind, config=self.config.to_dict(), state_dict=self.state_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> LMNet:
        """Load a checkpoint written by :meth:`save` (safetensors, no pickle)."""
        cfg, sd = load_checkpoint(directory, kind=cls.kind, device=device)
        model = cls(LMNetConfig.from_dict(cfg))
        model.load_state_dict(sd)
        return model.to(device)
