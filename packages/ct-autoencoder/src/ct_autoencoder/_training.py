"""One optimisation step for either autoencoder: generator update, then discriminator update.

The ``bench`` trainer (or any loop) builds :class:`Optimizers` once with :func:`make_optimizers`
and calls :func:`training_step` per batch. Both models expose the same pieces:
``generator_loss``, ``discriminator_loss``, ``maintain_codebook``, ``generator_parameters`` and
``discriminator_parameters``; this module only orders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ._losses import SliceFeatureExtractor

__all__ = ["Optimizers", "TrainableAutoencoder", "make_optimizers", "training_step"]


class TrainableAutoencoder(Protocol):
    """The training surface shared by :class:`VQGAN` and :class:`HDRAutoencoder`."""

    config: Any

    def generator_parameters(self) -> list[torch.nn.Parameter]: ...
    def discriminator_parameters(self) -> list[torch.nn.Parameter]: ...
    def generator_loss(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, *, step: int = 0,
        features: SliceFeatureExtractor | None = None, generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float], Any]: ...
    def discriminator_loss(self, x: torch.Tensor, reconstruction: torch.Tensor, **kwargs: Any
                           ) -> tuple[torch.Tensor | None, dict[str, float]]: ...
    def maintain_codebook(self, output: Any, *, step: int, generator: torch.Generator | None = None) -> int: ...


@dataclass
class Optimizers:
    """Generator and discriminator optimisers of one model."""

    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer


def make_optimizers(
    model: TrainableAutoencoder, *, lr: float | None = None, betas: tuple[float, float] = (0.5, 0.9)
) -> Optimizers:
    """Adam optimisers for both sides (authors: Adam, betas (0.5, 0.9)).

    Args:
        model: VQGAN or HDRAutoencoder.
        lr: Learning rate; defaults to ``model.config.learning_rate``.
        betas: Adam betas.

    Returns:
        :class:`Optimizers`.
    """
    rate = model.config.learning_rate if lr is None else lr
    return Optimizers(
        generator=torch.optim.Adam(model.generator_parameters(), lr=rate, betas=betas),
        discriminator=torch.optim.Adam(model.discriminator_parameters(), lr=rate, betas=betas),
    )


def training_step(
    model: TrainableAutoencoder,
    x: torch.Tensor,
    optimizers: Optimizers,
    *,
    step: int,
    labels: torch.Tensor | None = None,
    features: SliceFeatureExtractor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One generator update then (when active) one discriminator update.

    Args:
        model: VQGAN or HDRAutoencoder, in training mode.
        x: Batch ``(B, 1, X, Y, Z)`` in [-1, 1].
        optimizers: From :func:`make_optimizers`.
        step: Global step (gates the adversarial terms and codebook maintenance).
        labels: Optional label map (HDR model).
        features: Optional 2D feature extractor for perceptual terms.
        generator: Random source for every stochastic choice in the step.

    Returns:
        Logged scalars (``loss``, ``rec``, ... and ``revived_codes`` for VQ models).
    """
    optimizers.generator.zero_grad(set_to_none=True)
    loss, logs, out = model.generator_loss(x, labels, step=step, features=features, generator=generator)
    loss.backward()
    optimizers.generator.step()
    kwargs: dict[str, Any] = {"step": step}
    if "generator" in model.discriminator_loss.__code__.co_varnames:
        kwargs["generator"] = generator
    optimizers.discriminator.zero_grad(set_to_none=True)
    d_loss, d_logs = model.discriminator_loss(x, out.reconstruction, **kwargs)
    if d_loss is not None:
        d_loss.backward()
        optimizers.discriminator.step()
    logs.update(d_logs)
    if getattr(out, "indices", None) is not None:
        logs["revived_codes"] = float(model.maintain_codebook(out, step=step, generator=generator))
    return logs
