"""The VQ-GAN stage: train ``ct_autoencoder.VQGAN`` on model crops and judge it on held-out crops.

The issue's bar for the codec: on held-out crops it must beat the non-learned 2x baseline
(average-pool 2x, trilinear upsample) in PSNR and SSIM, and keep the lesion-minus-organ contrast
within 5 HU on held-out lesions, because LINet's density classes differ by 10-40 HU. Everything is
measured in the codec's HU window (-200..300 HU by default), where lesions and organs live.

:func:`evaluate_codec` measures any ``encode``/``decode`` pair (the VQ-GAN, the baseline, the
lossless space-to-depth codec) the same way; :func:`train_vqgan` trains and records both in
``metrics.json`` beside the checkpoint, with a ``passes`` verdict. The system uses the VQ-GAN only if
the preset's codec is ``"vqgan"``; the demo preset uses space-to-depth (see the model card).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .data import CropSet
from .presets import LesionDiffusionPreset
from .stages import vqgan_config

__all__ = ["baseline_roundtrip", "evaluate_codec", "train_vqgan"]

log = logging.getLogger(__name__)

Roundtrip = Callable[[torch.Tensor], torch.Tensor]


def baseline_roundtrip(hu: torch.Tensor) -> torch.Tensor:
    """The non-learned 2x codec: average-pool 2x, trilinear upsample back (HU in, HU out)."""
    low = F.avg_pool3d(hu, 2)
    return F.interpolate(low, size=hu.shape[2:], mode="trilinear", align_corners=False)


def _contrast(hu: np.ndarray, mask: np.ndarray, organ: np.ndarray) -> float | None:
    ring = (
        ndimage.binary_dilation(mask, iterations=3)
        & ~ndimage.binary_dilation(mask, iterations=1)
        & organ
    )
    if mask.sum() < 4 or ring.sum() < 10:
        return None
    return float(np.median(hu[mask]) - np.median(hu[ring]))


@torch.no_grad()
def evaluate_codec(
    roundtrip: Roundtrip, crops: CropSet, *, window: tuple[float, float], batch: int = 8
) -> dict[str, float]:
    """PSNR, SSIM (in the window, scaled to [0, 1]) and lesion contrast error of a codec.

    Args:
        roundtrip: HU (B, 1, S, S, S) -> reconstructed HU, same shape.
        crops: held-out crops (their lesions are the contrast check).
        window: HU window of the comparison.
        batch: crops per call.

    Returns:
        ``{"psnr", "ssim", "contrast_error_hu" (mean |delta_rec - delta_orig|), "contrast_error_max_hu",
        "lesions"}``.
    """
    from monai.metrics import SSIMMetric

    lo, hi = window
    ssim = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=7)
    psnrs, ssims, errs = [], [], []
    for j in range(0, len(crops), batch):
        hu = torch.from_numpy(crops.ct[j : j + batch])[:, None].float()
        rec = roundtrip(hu).float()
        a = (hu.clamp(lo, hi) - lo) / (hi - lo)
        b = (rec.clamp(lo, hi) - lo) / (hi - lo)
        mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.extend((10 * torch.log10(1.0 / mse)).tolist())
        ssims.extend(ssim(b, a).flatten().tolist())
        for k in range(hu.shape[0]):
            i = j + k
            m, organ = crops.mask[i], crops.target[i] & ~crops.mask[i]
            c0 = _contrast(hu[k, 0].clamp(lo, hi).numpy(), m, organ)
            c1 = _contrast(rec[k, 0].clamp(lo, hi).numpy(), m, organ)
            if c0 is not None and c1 is not None:
                errs.append(abs(c1 - c0))
    return {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "contrast_error_hu": float(np.mean(errs)) if errs else float("nan"),
        "contrast_error_max_hu": float(np.max(errs)) if errs else float("nan"),
        "lesions": len(errs),
    }


def train_vqgan(
    crops: CropSet,
    held_out: CropSet,
    *,
    preset: LesionDiffusionPreset,
    out: str | os.PathLike[str],
    minutes: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the VQ-GAN (Eq. 3) on ``crops``, then measure it and the 2x baseline on ``held_out``.

    Writes ``out/vqgan/`` (checkpoint, ``ct_autoencoder`` format) and ``out/vqgan/metrics.json``.

    Returns:
        The metrics dict: ``vqgan``, ``baseline``, ``steps``, ``seconds``, ``passes`` (beats the
        baseline in PSNR and SSIM and keeps contrast within 5 HU on average).
    """
    from ct_autoencoder import (
        VQGAN,
        Discriminators,
        load_checkpoint,
        make_optimizers,
        save_checkpoint,
        training_step,
    )

    if minutes is None and max_steps is None:
        raise ValueError("give minutes or max_steps (the training budget)")
    folder = Path(out) / "vqgan"
    cfg = vqgan_config(preset)
    if resume and (folder / "model.safetensors").is_file():
        model = load_checkpoint(folder)
        prev = (
            json.loads((folder / "metrics.json").read_text())
            if (folder / "metrics.json").is_file()
            else {}
        )
        step = int(prev.get("steps", 0))
    else:
        model, step = VQGAN(config=cfg), 0
    model.train()
    disc = Discriminators(config=model.config)
    opts = make_optimizers(model, disc)
    g = torch.Generator().manual_seed(seed + step)
    t0 = time.monotonic()
    bs = preset.batch_size
    while True:
        idx = torch.randint(0, len(crops), (bs,), generator=g)
        x = model.normalize(torch.from_numpy(crops.ct[idx.numpy()])[:, None].float())
        logs = training_step(model, disc, x, opts, step=step, generator=g)
        step += 1
        if step % 50 == 0:
            log.info(
                "vqgan step %d rec %.5f perplexity %.1f",
                step,
                logs["rec"],
                logs.get("perplexity", float("nan")),
            )
        elapsed = time.monotonic() - t0
        if (max_steps is not None and step >= max_steps) or (
            minutes is not None and elapsed >= 60 * minutes
        ):
            break
    model.eval()
    save_checkpoint(model, folder)

    def vq_roundtrip(hu: torch.Tensor) -> torch.Tensor:
        return model.denormalize(
            model.decode_stage_2_outputs(model.encode_stage_2_inputs(model.normalize(hu)))
        )

    res = {
        "vqgan": evaluate_codec(vq_roundtrip, held_out, window=preset.hu_window),
        "baseline_2x": evaluate_codec(baseline_roundtrip, held_out, window=preset.hu_window),
        "steps": step,
        "seconds": time.monotonic() - t0,
        "held_out_crops": len(held_out),
        "window_hu": list(preset.hu_window),
        "codebook": cfg.num_embeddings,
    }
    v, b = res["vqgan"], res["baseline_2x"]
    res["passes"] = bool(
        v["psnr"] > b["psnr"] and v["ssim"] > b["ssim"] and v["contrast_error_hu"] <= 5.0
    )
    (folder / "metrics.json").write_text(json.dumps(res, indent=1))
    return res
