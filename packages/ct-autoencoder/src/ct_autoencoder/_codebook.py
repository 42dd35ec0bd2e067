"""Codebook health for MONAI's EMA vector quantiser: perplexity, dead codes, re-initialisation.

A code is *dead* when its EMA cluster size (the exponentially averaged number of latent vectors
assigned to it per step) falls below a threshold. Dead codes are re-initialised from encoder
outputs of the current batch, the standard remedy for codebook collapse (Dhariwal et al. 2020,
"Jukebox", Sec. 3.2; Zeghidour et al. 2021, "SoundStream").

Under ``torch.distributed`` (DDP) the codebook stays identical on every rank: MONAI's
``EMAQuantizer`` all-reduces the EMA statistics (cluster sizes and summed vectors) inside its
forward when a process group is initialised, so every rank applies the same EMA update and sees
the same dead codes; :func:`reinit_dead_codes` then broadcasts rank 0's replacement vectors, so
the revived codes are the same everywhere. Call it on every rank at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from monai.networks.layers.vector_quantizer import EMAQuantizer

from . import _random

__all__ = ["CodebookStats", "codebook_stats", "reinit_dead_codes"]


@dataclass(frozen=True, kw_only=True)
class CodebookStats:
    """Usage of a codebook on one batch plus its EMA state.

    Attributes:
        perplexity: ``exp(entropy)`` of the batch's code histogram; 1 = one code used,
            ``num_embeddings`` = uniform use.
        used: Distinct codes used by the batch.
        dead: Codes whose EMA cluster size is below the threshold.
        num_embeddings: Codebook size.
    """

    perplexity: float
    used: int
    dead: int
    num_embeddings: int


def codebook_stats(
    quantizer: EMAQuantizer, indices: torch.Tensor, *, dead_threshold: float
) -> CodebookStats:
    """Perplexity and dead-code count.

    Args:
        quantizer: MONAI ``EMAQuantizer``.
        indices: Code indices of a batch, any shape, integer in ``[0, num_embeddings)``.
        dead_threshold: EMA cluster size under which a code counts as dead.

    Returns:
        :class:`CodebookStats`.
    """
    n = quantizer.num_embeddings
    counts = torch.bincount(indices.reshape(-1).long(), minlength=n).double()
    p = counts / counts.sum().clamp_min(1.0)
    nz = p[p > 0]
    perplexity = float(torch.exp(-(nz * nz.log()).sum()))
    dead = int((quantizer.ema_cluster_size < dead_threshold).sum())
    return CodebookStats(perplexity=perplexity, used=int((counts > 0).sum()), dead=dead, num_embeddings=n)


@torch.no_grad()
def reinit_dead_codes(
    quantizer: EMAQuantizer,
    encodings: torch.Tensor,
    *,
    dead_threshold: float,
    generator: torch.Generator | None = None,
) -> int:
    """Replace dead codes by randomly chosen encoder outputs (EMA state kept consistent).

    Args:
        quantizer: MONAI ``EMAQuantizer`` (modified in place).
        encodings: Pre-quantisation encoder outputs ``(B, C, X, Y, Z)``, C = ``embedding_dim``.
        dead_threshold: EMA cluster size under which a code is dead.
        generator: Random source for choosing the replacement vectors (drawn on its device,
            else on ``encodings``' device).

    Returns:
        Number of codes re-initialised.

    Under an initialised ``torch.distributed`` process group, rank 0's
    replacement vectors are broadcast, so every rank writes the same codes (the dead set is
    already the same on every rank because the EMA statistics are all-reduced).
    """
    dead = (quantizer.ema_cluster_size < dead_threshold).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    flat = encodings.detach().float().movedim(1, -1).reshape(-1, quantizer.embedding_dim)
    pick = _random.randint(flat.shape[0], (dead.numel(),), like=flat, generator=generator)
    new = flat[pick].to(quantizer.embedding.weight.dtype).contiguous()
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(new, src=0)
    dead = dead.to(new.device)
    # EMA state: embedding = ema_w / cluster_size, so give each revived code unit mass.
    quantizer.ema_cluster_size[dead] = 1.0
    quantizer.ema_w[dead] = new
    quantizer.embedding.weight[dead] = new
    return int(dead.numel())
