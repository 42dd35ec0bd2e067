"""The latent scale an autoencoder owns: ``scale_factor = 1 / std`` of its latents over data.

Diffusion schedules assume data of roughly unit variance; raw codebook vectors or posterior means
have whatever variance training left them with. As with MONAI's ``LatentDiffusionInferer``
(``scale_factor``, measured as ``1 / z.std()`` in MONAI's latent diffusion tutorials) and
diffusers' ``vae.config.scaling_factor``, the autoencoder records one float; consumers diffuse
``z * scale_factor`` and divide by it before decoding. ``1.0`` means "not measured".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .exceptions import ConfigError, InputShapeError

__all__ = ["ScaleFactorMixin", "measure_scale_factor"]


class ScaleFactorMixin:
    """``scale_factor`` property of an autoencoder, stored in (and recorded into) its config."""

    config: Any

    @property
    def scale_factor(self) -> float:
        """Latent scale (``1 / std`` of the latents over data; 1.0 until measured)."""
        return float(self.config.scale_factor)

    @scale_factor.setter
    def scale_factor(self, value: float) -> None:
        # Recorded in the frozen config, so it travels with checkpoints; validated there.
        self.config = dataclasses.replace(self.config, scale_factor=float(value))


@torch.no_grad()
def measure_scale_factor(
    model: Any,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]],
    *,
    progress: bool = False,
) -> float:
    """``1 / std`` of ``model.encode_stage_2_inputs`` over ``batches`` (all latent elements pooled).

    The model is run in eval mode (restored afterwards) and is not changed; record the result
    with ``model.scale_factor = measure_scale_factor(model, batches)``. Under an initialised
    ``torch.distributed`` process group the sums are all-reduced, so every rank gets the value
    of the whole data set.

    Args:
        model: A :class:`~ct_autoencoder.VQGAN` or :class:`~ct_autoencoder.HDRAutoencoder`.
        batches: Images ``(B, 1, X, Y, Z)`` in the model range [-1, 1], or ``(images, labels)``
            pairs for the HDR model.
        progress: Show a tqdm bar.

    Returns:
        The scale factor (float > 0).

    Raises:
        InputShapeError: ``batches`` is empty.
        ConfigError: the latents are constant (std 0), so no scale can be measured.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares
    try:
        for batch in tqdm(batches, disable=not progress, desc="scale factor", leave=False):
            x, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
            z = model.encode_stage_2_inputs(x, labels).double()
            total += torch.stack([torch.tensor(float(z.numel()), dtype=torch.float64),
                                  z.sum().cpu(), z.pow(2).sum().cpu()])
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = total.to(device)
        dist.all_reduce(t)
        total = t.cpu()
    n, s, ss = (float(v) for v in total)
    if n == 0:
        raise InputShapeError("batches is empty; pass at least one batch of images (B, 1, X, Y, Z)")
    var = max(ss / n - (s / n) ** 2, 0.0)
    if not math.isfinite(var) or var <= 0:
        raise ConfigError(f"latents have std {math.sqrt(var) if var >= 0 else var} over the batches; "
                          "cannot measure a scale factor from constant latents")
    return 1.0 / math.sqrt(var)
