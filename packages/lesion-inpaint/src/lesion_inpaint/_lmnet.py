"""LMNet: Gaussian diffusion on the lesion mask in pixel space (LesionDiffusion Sec. 2.1).

The binary mask m in {0, 1} is diffused as x_0 = 2m - 1 in [-1, 1]. The UNet sees
``cat(x_t, organ_map / organ_id_max, target_organ, bbox)`` (4 channels) and the mask attributes by
cross-attention. ``organ_map`` is the integer label map of the surrounding organs (e.g.
TotalSegmentator ids); its encoding, ids divided by ``LMNetConfig.organ_id_max`` (default 117, the
largest TotalSegmentator v2 id; the authors' code divides by 104, the v1 class count), lives in the
config and out-of-range ids are rejected. Loss, Eq. (2)::

    L = ||eps * B - eps_hat * B||^2 + gamma * ||eps - eps_hat||^2,     gamma = 0.001

Inference: DDIM with classifier-free guidance, then the continuous output becomes a binary mask by
a fixed threshold or by the threshold (swept 0.9 -> 0.3 on (x_0 + 1) / 2, as the authors do) whose
largest connected component has the volume closest to the requested one; only the largest
component is kept; an empty result is retried with fresh noise and finally reported with
:class:`EmptyMaskError`. An empty bbox is rejected before any network call.

Training surface: :func:`lmnet_training_loss` takes the model (or its ``DistributedDataParallel``
wrapper) per call and runs the network only through ``model(x, t, context=ctx)``.
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

from ._diffusion_config import DiffusionConfig
from ._random import draw_randint, draw_randn
from ._sampling import GaussianSampler, drop_context, unwrap_model
from ._unet import Context, UNetConfig, build_unet
from .exceptions import ConfigError, EmptyMaskError, ShapeError

__all__ = ["LMNet", "LMNetConfig", "binarize_mask", "lmnet_loss", "lmnet_training_loss"]

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


@dataclass(frozen=True, kw_only=True)
class LMNetConfig:
    """LMNet configuration.

    Attributes:
        unet: the UNet (in_channels 4: x_t, organ map, target organ, bbox; out_channels 1).
        diffusion: schedule, DDIM and guidance settings.
        gamma: weight of the whole-crop term of Eq. (2) (paper: 0.001).
        threshold: fixed threshold in (0, 1) or ``"volume"`` (match the requested volume).
        max_attempts: sampling attempts before an empty mask is reported.
        organ_id_max: largest organ id the organ map may hold; the map enters the UNet as
            ``ids / organ_id_max`` in [0, 1]. 117 covers TotalSegmentator v2 (the authors used
            104, TotalSegmentator v1).
    """

    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    gamma: float = 0.001
    threshold: float | Literal["volume"] = "volume"
    max_attempts: int = 3
    organ_id_max: int = 117

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
        if isinstance(self.organ_id_max, bool) or not isinstance(self.organ_id_max, int) or self.organ_id_max < 1:
            raise ConfigError(
                f"organ_id_max must be a positive int (the largest organ id, e.g. 117 for "
                f"TotalSegmentator v2), got {self.organ_id_max!r}"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "unet": self.unet.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "gamma": self.gamma,
            "threshold": self.threshold,
            "max_attempts": self.max_attempts,
            "organ_id_max": self.organ_id_max,
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
            organ_id_max=d["organ_id_max"],
        )


class LMNet(nn.Module):
    """Lesion mask diffusion network; see the module docstring.

    Args:
        config: :class:`LMNetConfig`.
    """

    def __init__(self, *, config: LMNetConfig) -> None:
        super().__init__()
        if not isinstance(config, LMNetConfig):
            raise TypeError(f"config must be a LMNetConfig, got {type(config).__name__}")
        self.config = config
        self.unet = build_unet(config.unet)
        self.train_scheduler = config.diffusion.ddpm()

    def _spatial(self, organ_map: torch.Tensor, target_organ: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
        nd = self.config.unet.spatial_dims + 2
        for name, v in (("organ_map", organ_map), ("target_organ", target_organ), ("bbox", bbox)):
            if v.ndim != nd or v.shape[1] != 1 or v.shape != organ_map.shape:
                raise ShapeError(
                    f"{name} must be (B, 1, *spatial) like organ_map {tuple(organ_map.shape)}, got {tuple(v.shape)}"
                )
        return torch.cat([self.encode_organ_map(organ_map), target_organ.float(), bbox.float()], dim=1)

    def encode_organ_map(self, organ_map: torch.Tensor) -> torch.Tensor:
        """The organ-map channel: integer ids divided by ``config.organ_id_max``.

        Args:
            organ_map: integer organ ids (B, 1, *spatial) in [0, organ_id_max] (0 = background).

        Returns:
            float32 (B, 1, *spatial) in [0, 1].
        """
        top = self.config.organ_id_max
        if organ_map.dtype.is_floating_point or organ_map.dtype == torch.bool:
            raise ShapeError(
                f"organ_map must hold integer organ ids in [0, {top}] (e.g. TotalSegmentator ids), got "
                f"dtype {organ_map.dtype}; the encoding (ids / organ_id_max) is done here"
            )
        lo, hi = int(organ_map.min()), int(organ_map.max())
        if lo < 0 or hi > top:
            raise ShapeError(
                f"organ_map holds ids in [{lo}, {hi}], allowed [0, {top}] (LMNetConfig.organ_id_max="
                f"{top}); raise organ_id_max for a label set with larger ids"
            )
        return organ_map.float() / top

    @staticmethod
    def _check_bbox_not_empty(bbox: torch.Tensor) -> None:
        empty = (bbox.flatten(1) > 0).sum(1) == 0
        if bool(empty.any()):
            raise ShapeError(
                f"bbox is empty (no voxel > 0) for batch item(s) {empty.nonzero().flatten().tolist()}; "
                "each sample needs a non-empty lesion box"
            )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Context = None) -> torch.Tensor:
        """The denoiser: ``eps_hat = unet(cat(x_t, organ map, target organ, bbox), t, context)``.

        Args:
            x: (B, 4, *spatial), the noisy mask then the three spatial conditions.
            timesteps: (B,) integers in [0, T-1].
            context: mask-attribute context (B, L, D) or a per-level list.

        Returns:
            Predicted noise (B, 1, *spatial).
        """
        return self.unet(x, timesteps, context=context)

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
        """``lmnet_training_loss(self, ...)``; under DDP call :func:`lmnet_training_loss` with the wrapper."""
        return lmnet_training_loss(
            self, mask, organ_map=organ_map, target_organ=target_organ, bbox=bbox, context=context,
            generator=generator,
        )

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
        self._check_bbox_not_empty(bbox)
        p = next(self.unet.parameters())
        noise = draw_randn(organ_map.shape, generator=generator, device=organ_map.device, dtype=p.dtype)
        x = self.sampler(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale).sample(
            self, noise, cond=cond.to(p.dtype), context=context, generator=generator, progress=progress
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
            organ_map: integer organ ids (B, 1, *spatial) in [0, organ_id_max].
            target_organ: (B, 1, *spatial) in {0, 1}.
            bbox: (B, 1, *spatial) in {0, 1}, at least one voxel per sample.
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
            ShapeError: a bbox is empty or an input is malformed (before any network call).
            EmptyMaskError: a sample stayed empty after ``config.max_attempts`` attempts.
        """
        self._spatial(organ_map, target_organ, bbox)  # shapes and organ ids, before any network call
        self._check_bbox_not_empty(bbox)
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

    def save(self, path: str | os.PathLike) -> None:
        """``save_checkpoint(self, path)``: ``model.safetensors`` + ``config.json``, atomically."""
        from ._checkpoint import save_checkpoint

        save_checkpoint(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LMNet:
        """``load_checkpoint(path, device=device)``, checked to hold an LMNet; eval mode."""
        from ._checkpoint import load_checkpoint

        return load_checkpoint(path, device=device, expected=cls)


def lmnet_training_loss(
    model: nn.Module,
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
        model: an :class:`LMNet` or its ``DistributedDataParallel`` wrapper; the network runs only
            through ``model(x, t, context=ctx)``.
        mask: lesion mask (B, 1, *spatial) in {0, 1}.
        organ_map: integer organ ids (B, 1, *spatial) in [0, organ_id_max].
        target_organ: target organ mask (B, 1, *spatial) in {0, 1}.
        bbox: lesion bbox mask (B, 1, *spatial) in {0, 1}.
        context: mask-attribute context(s) or None.
        generator: random source of t, eps and dropout (drawn on its device).

    Returns:
        Scalar loss with gradient.
    """
    net = unwrap_model(model)
    if not isinstance(net, LMNet):
        raise TypeError(f"model must be an LMNet (or a DDP wrapper of one), got {type(net).__name__}")
    cond = net._spatial(organ_map, target_organ, bbox).to(mask.device)
    if mask.shape != organ_map.shape:
        raise ShapeError(f"mask {tuple(mask.shape)} must match organ_map {tuple(organ_map.shape)}")
    cfg = net.config
    x0 = mask.float() * 2 - 1
    b = x0.shape[0]
    t = draw_randint(0, cfg.diffusion.num_train_timesteps, (b,), generator=generator, device=x0.device)
    noise = draw_randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = net.train_scheduler.add_noise(x0, noise, t)
    ctx = drop_context(context, cfg.diffusion.cond_drop_prob, generator=generator)
    eps_hat = model(torch.cat([xt, cond], dim=1), t, context=ctx)
    return lmnet_loss(noise, eps_hat, bbox, gamma=cfg.gamma)
