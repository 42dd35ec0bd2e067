"""The networks, codecs, losses and training steps of LesionDiffusion's three stages.

- :class:`TextUNet`: lesion-inpaint's ``LevelContextUNet`` plus a second text path. The attribute
  tokens (B, n_attr, D) reach the cross-attention of the attention levels *and*, flattened,
  through a two-layer MLP added to the timestep embedding, so every residual block sees them.
  (Measured in issue 15: cross-attention alone, with unit-norm tokens, carried no signal after
  minutes of CPU training; the added embedding made density control appear in 2 minutes.)
- LMNet (Sec. 2.1): ``TextUNet(4 -> 1)`` on ``cat(x_t, organ map, target organ, bbox)``. The
  forward process is confined to the box: noise only inside the box dilated by one voxel, the
  clean background (-1) outside, exactly as LINet's Eq. (4) does for its mask; sampling uses the
  same inpainting sampler with "background" as the known part, so a mask can never leave its box
  (issue 15 measured 73 % of the mask outside the box without this). Loss Eq. (2).
- LINet (Sec. 2.2): ``TextUNet(C + 1 -> C)`` on a codec latent; Eq. (4) forward process and Eq. (5)
  L1 loss (inside the latent mask, normalised by the latent box, as the authors' code does).
- Codecs: :class:`SpaceToDepthCodec` (lossless 2x rearrangement of HU clipped to the window, 8
  channels) and the VQ-GAN of ``ct_autoencoder`` (:func:`vqgan_config`).
- :class:`EMA` of the weights (sampling uses the averaged weights).

Losses take the (possibly DDP-wrapped) network per call and call it only through ``model(...)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from lesion_inpaint import (
    DiffusionConfig,
    InpaintingSampler,
    LevelContextUNet,
    UNetConfig,
    binarize_mask,
    drop_context,
    linet_loss,
    lmnet_loss,
    resize_mask,
)
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from .presets import LesionDiffusionPreset

__all__ = [
    "EMA",
    "ORGAN_ID_SCALE",
    "SpaceToDepthCodec",
    "TextUNet",
    "box_region",
    "build_linet",
    "build_lmnet",
    "diffusion_config",
    "linet_inputs",
    "linet_sample",
    "linet_stage_loss",
    "lmnet_inputs",
    "lmnet_sample",
    "lmnet_stage_loss",
    "vqgan_config",
]

#: Organ ids are fed to LMNet as ``id / ORGAN_ID_SCALE`` in [0, 1] (TotalSegmentator v2 ids <= 117).
ORGAN_ID_SCALE = 117.0

#: Number of attribute tokens of each network (report_bbox.MASK_ATTRIBUTES / IMAGE_ATTRIBUTES).
NUM_TOKENS = 8


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class TextUNet(LevelContextUNet):
    """``LevelContextUNet`` whose timestep embedding also receives the attribute tokens.

    ``forward(x, timesteps, context)``: ``x`` (B, in_channels, *spatial), ``timesteps`` (B,),
    ``context`` (B, num_tokens, D) standardised tokens (zeros = the null context). Returns
    (B, out_channels, *spatial).

    The timestep path sees the tokens **centred**: minus ``token_mean``, the mean token of each
    attribute slot over the training reports (a buffer, set by :meth:`set_token_mean` before
    training and saved with the weights); a null row stays zero. Standardised MiniLM tokens of
    one slot share most of their direction (``"round-like"`` and ``"irregular"`` differ by about
    0.7 per element on top of a common part of norm ~20), and an MLP fed the raw tokens learned
    to cancel that large common input by driving every SiLU unit negative, after which no value
    of any attribute reached the network (measured on the first shipped weights: 0-1.5 % of
    units active, round-like vs irregular moved the embedding by 1e-5). Centring leaves only
    what tells the values apart, and a LayerNorm keeps half the units active whatever the
    input's scale. Cross-attention keeps the raw tokens.

    Args:
        config: the UNet (``context_dim`` must be set).
        num_tokens: attribute tokens per sample.
    """

    def __init__(self, config: UNetConfig, *, num_tokens: int = NUM_TOKENS) -> None:
        if config.context_dim is None:
            raise ValueError("TextUNet needs config.context_dim (the token width D)")
        super().__init__(**config.unet_kwargs())
        self.config = config
        self.num_tokens = num_tokens
        temb = self.block_out_channels[0] * 4
        self.context_mlp = nn.Sequential(
            nn.Linear(num_tokens * config.context_dim, temb),
            nn.LayerNorm(temb),
            nn.SiLU(),
            nn.Linear(temb, temb),
        )
        self.register_buffer("token_mean", torch.zeros(num_tokens, config.context_dim))

    @torch.no_grad()
    def set_token_mean(self, tokens: torch.Tensor) -> None:
        """Set ``token_mean`` from training tokens (N, num_tokens, D); all-zero (null) rows are skipped."""
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != tuple(self.token_mean.shape):
            raise ValueError(
                f"tokens must be (N, {self.num_tokens}, {self.config.context_dim}), got {tuple(tokens.shape)}"
            )
        have = tokens.flatten(1).abs().amax(1) > 0
        if have.any():
            self.token_mean.copy_(tokens[have].float().mean(0).to(self.token_mean))
        else:
            self.token_mean.zero_()

    def centred_context(self, context: torch.Tensor) -> torch.Tensor:
        """``context`` minus ``token_mean`` per slot; null (all-zero) rows stay zero."""
        is_text = (context.flatten(1).abs().amax(1) > 0).to(context.dtype)
        return (context - self.token_mean.to(context)) * is_text[:, None, None]

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise; see the class docstring."""
        if x.ndim != self.config.spatial_dims + 2 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"input must be (B, {self.config.in_channels}, *spatial), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        if context is None:
            raise ValueError(
                "context is required; pass zeros (B, num_tokens, D) for the null context"
            )
        if context.shape != (b, self.num_tokens, self.config.context_dim):
            raise ValueError(
                f"context must be (B={b}, {self.num_tokens}, {self.config.context_dim}), got {tuple(context.shape)}"
            )
        context = context.to(x.dtype)
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype)
        emb = self.time_embed(t_emb) + self.context_mlp(self.centred_context(context).flatten(1))
        h = self.conv_in(x)
        skips: list[torch.Tensor] = [h]
        for block in self.down_blocks:
            h, res = block(hidden_states=h, temb=emb, context=context)
            skips.extend(res)
        h = self.middle_block(hidden_states=h, temb=emb, context=context)
        for block in self.up_blocks:
            k = -len(block.resnets)
            res_samples, skips = skips[k:], skips[:k]
            h = block(
                hidden_states=h, res_hidden_states_list=res_samples, temb=emb, context=context
            )
        return self.out(h)


def _unet_config(p: LesionDiffusionPreset, which: str, in_ch: int, out_ch: int) -> UNetConfig:
    return UNetConfig(
        in_channels=in_ch,
        out_channels=out_ch,
        channels=getattr(p, f"{which}_channels"),
        attention_levels=getattr(p, f"{which}_attention"),
        num_res_blocks=p.num_res_blocks,
        num_head_channels=p.num_head_channels,
        norm_num_groups=8,
        context_dim=p.context_dim,
        spatial_dims=3,
    )


def build_lmnet(p: LesionDiffusionPreset) -> TextUNet:
    """LMNet's UNet: in ``cat(x_t, organ map, target organ, bbox)`` (4), out eps (1)."""
    return TextUNet(_unet_config(p, "lmnet", 4, 1))


def build_linet(p: LesionDiffusionPreset) -> TextUNet:
    """LINet's UNet: in ``cat(z_t, latent mask)`` (C + 1), out eps (C)."""
    c = p.latent_channels
    return TextUNet(_unet_config(p, "linet", c + 1, c))


def diffusion_config(
    p: LesionDiffusionPreset, *, guidance: float | None = None, clip_sample: float | None = None
) -> DiffusionConfig:
    """The schedule and sampler settings of a preset.

    ``clip_sample`` clamps the predicted x_0 at every sampling step to the data range (LMNet:
    1, the mask's range; LINet on space-to-depth: the scaled latent's range). Without it, the first
    steps of a briefly trained network (x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), with
    sqrt(abar) = 0.012 at t = T) overshoot the range tenfold and the trajectory never recovers
    (measured: lesions saturated at the HU window's edge).
    """
    return DiffusionConfig(
        num_train_timesteps=p.num_train_timesteps,
        schedule=p.schedule,
        num_inference_steps=p.steps,
        eta=p.eta,
        guidance_scale=p.guidance if guidance is None else guidance,
        cond_drop_prob=p.cond_drop_prob,
        clip_sample=clip_sample,
    )


class EMA:
    """Exponential moving average of a module's floating-point state.

    Args:
        model: the trained module (unwrapped).
        decay: per-step decay; the effective decay is ``min(decay, (1 + n) / (10 + n))`` so early
            averages are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for prm in self.shadow.parameters():
            prm.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step from ``model``'s current weights."""
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        src = model.state_dict()
        for k, v in self.shadow.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])


# ---------------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------------


class SpaceToDepthCodec(nn.Module):
    """Lossless 2x latent: HU clipped to ``window``, scaled to [-1, 1], 2x2x2 blocks -> 8 channels.

    ``encode`` (B, 1, X, Y, Z) HU -> (B, 8, X/2, Y/2, Z/2); ``decode`` inverts it exactly for HU
    inside the window. ``scale_factor`` (1 / std of latents on data) is what consumers multiply
    latents by before diffusing.

    Args:
        window: (low, high) HU.
        scale_factor: latent scale (1.0 until measured).
    """

    factor = 2
    latent_channels = 8

    def __init__(self, *, window: tuple[float, float], scale_factor: float = 1.0) -> None:
        super().__init__()
        self.window = (float(window[0]), float(window[1]))
        self.scale_factor = float(scale_factor)

    def normalize(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> [-1, 1] (clipped)."""
        lo, hi = self.window
        return (hu.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> HU."""
        lo, hi = self.window
        return (x.clamp(-1, 1) + 1) / 2 * (hi - lo) + lo

    def encode(self, hu: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) HU -> (B, 8, X/2, Y/2, Z/2), unscaled."""
        if hu.ndim != 5 or hu.shape[1] != 1 or any(s % 2 for s in hu.shape[2:]):
            raise ValueError(f"ct must be (B, 1, X, Y, Z) with even X, Y, Z, got {tuple(hu.shape)}")
        x = self.normalize(hu.float())
        b, _, nx, ny, nz = x.shape
        x = x.reshape(b, nx // 2, 2, ny // 2, 2, nz // 2, 2)
        return x.permute(0, 2, 4, 6, 1, 3, 5).reshape(b, 8, nx // 2, ny // 2, nz // 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: (B, 8, x, y, z) -> (B, 1, 2x, 2y, 2z) HU."""
        if z.ndim != 5 or z.shape[1] != 8:
            raise ValueError(f"latent must be (B, 8, x, y, z), got {tuple(z.shape)}")
        b, _, nx, ny, nz = z.shape
        x = z.reshape(b, 2, 2, 2, nx, ny, nz).permute(0, 4, 1, 5, 2, 6, 3)
        return self.denormalize(x.reshape(b, 1, 2 * nx, 2 * ny, 2 * nz))

    def config(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return {
            "kind": "space_to_depth",
            "window": list(self.window),
            "scale_factor": self.scale_factor,
        }


def vqgan_config(p: LesionDiffusionPreset) -> Any:
    """The ``ct_autoencoder`` VQ-GAN config of a preset (2x, narrow HU window)."""
    from ct_autoencoder import HUWindow, vqgan_preset

    base = vqgan_preset("paper" if p.name == "paper" else "demo")
    return dataclasses.replace(
        base,
        name=f"lesiondiffusion-{p.name}",
        channels=p.vqgan_channels,
        strides=(2,) + (1,) * (len(p.vqgan_channels) - 1),
        num_embeddings=p.vqgan_codes,
        embedding_dim=p.vqgan_latent_channels,
        crop_size=p.crop_size,
        window=HUWindow(lower=p.hu_window[0], upper=p.hu_window[1]),
        learning_rate=p.vqgan_learning_rate,
        adversarial_start=(
            base.adversarial_start
            if p.vqgan_adversarial_start is None
            else p.vqgan_adversarial_start
        ),
    )


# ---------------------------------------------------------------------------------------------
# LMNet
# ---------------------------------------------------------------------------------------------


def box_region(bbox: torch.Tensor, margin: int = 1) -> torch.Tensor:
    """The box dilated by ``margin`` voxels (B, 1, *spatial), float {0, 1}: where LMNet generates."""
    if margin <= 0:
        return (bbox > 0).float()
    return (F.max_pool3d((bbox > 0).float(), 2 * margin + 1, stride=1, padding=margin) > 0).float()


def lmnet_inputs(
    p: LesionDiffusionPreset,
    organs: torch.Tensor,
    target: torch.Tensor,
    bbox: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Crop-grid tensors -> LMNet grid: (cond (B, 3, s, s, s), region (B, 1, s, s, s), x0 or None).

    ``organs`` int ids, ``target``/``bbox``/``mask`` {0, 1}, all (B, 1, S, S, S). With
    ``lmnet_factor`` 2 the organ map is taken by nearest neighbour, the target and the mask by
    average pooling (then > 0.5), the box by max pooling (never smaller than the lesion).
    """
    f = p.lmnet_factor
    org = organs.float() / ORGAN_ID_SCALE
    tgt, box = target.float(), bbox.float()
    m = None if mask is None else mask.float()
    if f > 1:
        org = org[:, :, ::f, ::f, ::f]
        tgt = (F.avg_pool3d(tgt, f) > 0.5).float()
        box = F.max_pool3d(box, f)
        m = None if m is None else (F.avg_pool3d(m, f) >= 0.5).float()
    cond = torch.cat([org.clamp(0, 1), tgt, box], dim=1)
    x0 = None if m is None else m * 2 - 1
    return cond, box_region(box), x0


def lmnet_stage_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    context: torch.Tensor,
    *,
    preset: LesionDiffusionPreset,
    scheduler: Any,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LMNet training loss on one batch: box-confined forward process, Eq. (2), condition dropout.

    Args:
        model: the (possibly DDP-wrapped) :class:`TextUNet`.
        batch: ``organs``, ``target``, ``bbox``, ``mask`` (B, 1, S, S, S) on the model's device.
        context: mask-attribute tokens (B, 8, D) (zeros for crops without a report).
        preset: sizes.
        scheduler: a ``DDPMScheduler`` of the preset's schedule (``add_noise``).
        generator: random source of t, noise and dropout (on the batch's device).
    """
    cond, region, x0 = lmnet_inputs(
        preset, batch["organs"], batch["target"], batch["bbox"], batch["mask"]
    )
    assert x0 is not None
    b = x0.shape[0]
    t = torch.randint(0, preset.num_train_timesteps, (b,), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = scheduler.add_noise(x0, noise, t) * region + x0 * (1 - region)
    ctx = drop_context(context, preset.cond_drop_prob, generator=generator)
    eps_hat = model(torch.cat([xt, cond], dim=1), t, ctx)
    return lmnet_loss(noise, eps_hat, region, gamma=preset.lmnet_gamma)


@torch.no_grad()
def lmnet_sample(
    model: nn.Module,
    *,
    preset: LesionDiffusionPreset,
    organs: torch.Tensor,
    target: torch.Tensor,
    bbox: torch.Tensor,
    context: torch.Tensor,
    noise_generator: torch.Generator | None,
    steps: int | None = None,
    guidance: float | None = None,
) -> torch.Tensor:
    """Continuous LMNet output on the crop grid, (B, 1, S, S, S) in [0, 1], zero outside the box.

    The reverse process runs on the LMNet grid with the background (-1) known outside the box
    region; with ``lmnet_factor`` 2 the result is upsampled trilinearly to the crop grid.
    """
    cond, region, _ = lmnet_inputs(preset, organs, target, bbox)
    dc = diffusion_config(
        preset, guidance=preset.lmnet_guidance if guidance is None else guidance, clip_sample=1.0
    )
    sampler = InpaintingSampler(
        scheduler=dc.inpainting_ddim(),
        num_inference_steps=steps or preset.steps,
        guidance_scale=dc.guidance_scale,
    )
    prm = next(model.parameters())
    known = -torch.ones(region.shape, device=prm.device, dtype=prm.dtype)
    x = sampler.sample(
        model,
        known,
        region.to(prm),
        cond=cond.to(prm),
        context=context.to(prm),
        generator=noise_generator,
    )
    prob = (x.clamp(-1, 1) + 1) / 2
    if preset.lmnet_factor > 1:
        prob = F.interpolate(
            prob, scale_factor=preset.lmnet_factor, mode="trilinear", align_corners=False
        )
    return prob.float() * box_region(bbox.to(prob.device).float())


def binarize(
    prob: torch.Tensor, target_voxels: float, threshold: float | str = "volume"
) -> torch.Tensor:
    """Threshold + largest component of one (1, 1, S, S, S) probability map.

    ``threshold="volume"`` sweeps 0.9 -> 0.3 for the volume closest to ``target_voxels`` (the
    paper's rule); when LMNet's output stays below 0.3 everywhere (tiny boxes), the sweep's limit
    is taken: the ``target_voxels`` highest voxels of the output. A number in (0, 1) is a fixed
    threshold (the network decides the volume).
    """
    th: Any = threshold if threshold == "volume" else float(threshold)
    p = prob[0, 0].cpu().numpy()
    m = binarize_mask(p, threshold=th, target_volume=max(float(target_voxels), 1.0))
    if not m.any() and threshold == "volume" and (p > 0).any():
        # Tiny boxes (a 5 mm gallstone spans about 3 LMNet voxels) can stay below the sweep's
        # lowest threshold. The sweep's limit: the target volume's worth of LMNet's highest voxels.
        import numpy as np

        k = int(min(max(round(float(target_voxels)), 1), int((p > 0).sum())))
        cut = np.partition(p[p > 0], -k)[-k]  # in (0, 0.3): a valid fixed threshold
        below = np.nextafter(cut, np.zeros_like(cut))  # in p's dtype: "> below" is ">= cut"
        m = binarize_mask(p, threshold=float(below))  # largest component, as the sweep keeps
    return torch.from_numpy(m.astype("uint8"))[None, None]


# ---------------------------------------------------------------------------------------------
# LINet
# ---------------------------------------------------------------------------------------------


def linet_inputs(
    codec: nn.Module, ct: torch.Tensor, mask: torch.Tensor, bbox: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled latent (B, C, s, s, s), latent mask and latent box (B, 1, s, s, s) of crop tensors."""
    z = codec.encode(ct) * codec.scale_factor
    size = tuple(z.shape[2:])
    return z, resize_mask(mask.float(), size), resize_mask(bbox.float(), size)


def linet_stage_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    context: torch.Tensor,
    *,
    preset: LesionDiffusionPreset,
    codec: nn.Module,
    scheduler: Any,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LINet training loss on one batch: Eq. (4) forward process, Eq. (5) L1, condition dropout.

    Args:
        model: the (possibly DDP-wrapped) :class:`TextUNet`.
        batch: ``ct`` HU, ``mask``, ``bbox`` (B, 1, S, S, S).
        context: image-attribute tokens (B, 8, D).
        preset: sizes.
        codec: the frozen codec (``encode``, ``scale_factor``).
        scheduler: a ``DDPMScheduler`` (``add_noise``).
        generator: random source.
    """
    with torch.no_grad():
        z0, m, box = linet_inputs(codec, batch["ct"], batch["mask"], batch["bbox"])
    b = z0.shape[0]
    t = torch.randint(0, preset.num_train_timesteps, (b,), generator=generator, device=z0.device)
    noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    zt = scheduler.add_noise(z0, noise, t) * m + z0 * (1 - m)
    ctx = drop_context(context, preset.cond_drop_prob, generator=generator)
    eps_hat = model(torch.cat([zt, m], dim=1), t, ctx)
    return linet_loss(noise, eps_hat, m, normaliser=box)


@torch.no_grad()
def linet_sample(
    model: nn.Module,
    *,
    preset: LesionDiffusionPreset,
    codec: nn.Module,
    ct: torch.Tensor,
    mask: torch.Tensor,
    context: torch.Tensor,
    noise_generator: torch.Generator | None,
    steps: int | None = None,
    guidance: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inpaint a crop: returns (HU crop (B, 1, S, S, S), footprint of the latent mask on the crop grid).

    Outside the footprint the returned crop equals ``ct`` exactly.
    """
    prm = next(model.parameters())
    z0 = codec.encode(ct.to(prm.device)) * codec.scale_factor
    m = resize_mask(mask.to(prm.device).float(), tuple(z0.shape[2:]))
    clip = codec.scale_factor if isinstance(codec, SpaceToDepthCodec) else None
    dc = diffusion_config(preset, guidance=guidance, clip_sample=clip)
    sampler = InpaintingSampler(
        scheduler=dc.inpainting_ddim(),
        num_inference_steps=steps or preset.steps,
        guidance_scale=dc.guidance_scale,
    )
    z = sampler.sample(
        model,
        z0.to(prm.dtype),
        m.to(prm.dtype),
        cond=m.to(prm.dtype),
        context=context.to(prm),
        generator=noise_generator,
    )
    hu = codec.decode(z.float() / codec.scale_factor)
    foot = F.interpolate(m, scale_factor=ct.shape[2] // m.shape[2], mode="nearest") > 0
    out = torch.where(foot, hu, ct.to(hu.device).float())
    return out, foot


def measured_scale(codec: nn.Module, ct: torch.Tensor) -> float:
    """1 / std of the codec's latents of ``ct`` (B, 1, S, S, S) HU."""
    with torch.no_grad():
        std = float(codec.encode(ct).std())
    return 1.0 / max(std, 1e-6) if math.isfinite(std) else 1.0
