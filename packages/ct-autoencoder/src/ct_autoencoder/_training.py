"""GAN training surface of both autoencoders: loss functions that take the modules per call.

The autoencoder (:class:`VQGAN` or :class:`HDRAutoencoder`) and its adversary
(:class:`Discriminators`) are separate modules; a caller may wrap each in
``DistributedDataParallel``. :func:`generator_loss` and :func:`discriminator_loss` take the
(possibly wrapped) modules and call them only through ``forward``, so DDP's gradient
synchronisation sees every parameter that is used; configuration is read from the unwrapped
module. :func:`training_step` is the convenience loop body: one generator update, then one
discriminator update, then codebook maintenance.

Under DDP the codebook stays identical on every rank (EMA statistics are all-reduced inside the
quantiser's forward, revived codes are broadcast from rank 0; see :mod:`ct_autoencoder._codebook`),
so :func:`training_step` can be called on every rank with that rank's batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import _random
from ._discriminators import Discriminators
from ._hdr import HDRAutoencoder, HDRAutoencoderOutput
from ._losses import SliceFeatureExtractor, perceptual_loss_25d
from ._vqgan import VQGAN, VQGANOutput
from .config import HDRAutoencoderConfig, VQGANConfig
from .exceptions import ConfigError

__all__ = ["Optimizers", "discriminator_loss", "generator_loss", "make_optimizers", "training_step"]


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or itself)."""
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return module.module
    return module


def _autoencoder(model: nn.Module) -> VQGAN | HDRAutoencoder:
    ae = _unwrap(model)
    if not isinstance(ae, (VQGAN, HDRAutoencoder)):
        raise ConfigError(
            f"model must be a VQGAN or HDRAutoencoder (optionally DDP-wrapped), got {type(ae).__name__}"
        )
    return ae


def _discriminators(discriminator: nn.Module, config: VQGANConfig | HDRAutoencoderConfig) -> Discriminators:
    disc = _unwrap(discriminator)
    if not isinstance(disc, Discriminators):
        raise ConfigError(
            f"discriminator must be ct_autoencoder.Discriminators (optionally DDP-wrapped), "
            f"got {type(disc).__name__}"
        )
    if type(disc.config) is not type(config):
        raise ConfigError(
            f"discriminator was built for a {type(disc.config).__name__}, the model has a "
            f"{type(config).__name__}; build it with Discriminators(config=model.config)"
        )
    return disc


@dataclass(kw_only=True)
class Optimizers:
    """Generator and discriminator optimisers."""

    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer


def make_optimizers(
    model: nn.Module,
    discriminator: nn.Module,
    *,
    lr: float | None = None,
    betas: tuple[float, float] = (0.5, 0.9),
) -> Optimizers:
    """Adam optimisers for both sides (authors: Adam, betas (0.5, 0.9)).

    Args:
        model: VQGAN or HDRAutoencoder, optionally DDP-wrapped. Its trainable parameters are
            optimised (the EMA codebook has ``requires_grad=False`` and is left out).
        discriminator: :class:`Discriminators`, optionally DDP-wrapped.
        lr: Learning rate; defaults to the model config's ``learning_rate``.
        betas: Adam betas.

    Returns:
        :class:`Optimizers`.
    """
    rate = _autoencoder(model).config.learning_rate if lr is None else lr
    return Optimizers(
        generator=torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=rate, betas=betas),
        discriminator=torch.optim.Adam(
            [p for p in discriminator.parameters() if p.requires_grad], lr=rate, betas=betas
        ),
    )


def generator_loss(
    model: nn.Module,
    discriminator: nn.Module | None,
    x: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    step: int,
    features: SliceFeatureExtractor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float], VQGANOutput | HDRAutoencoderOutput]:
    """Generator side of the GAN objective, one forward of the model (and of the discriminator).

    - VQ-GAN (LesionDiffusion Eq. 3): ``w_rec ||x - x_hat||^2 + beta ||sg(q(z)) - z||^2
      + w_adv L_adv(D(x_hat), real)`` plus ``w_perc`` times the 2.5D perceptual term when
      ``features`` is given.
    - HDR autoencoder (GuideGen Eq. 8-9): ``w_rec |h(x_hat) - h(x)|_1 + reg + w_perc L_perc(h(x_hat), h(x))
      + w_f L_adv(D_f(frames of x_hat)) + w_v L_adv(D_v(x_hat))``, with ``h`` sampled in the
      model's forward and ``reg`` the commitment loss (``vq``) or ``kl_weight * KL`` (``kl``). In
      training mode each sample's label map is dropped with probability ``label_dropout``.

    Args:
        model: VQGAN or HDRAutoencoder, optionally DDP-wrapped (called only through forward).
        discriminator: :class:`Discriminators`, optionally DDP-wrapped; may be None only while
            the adversarial terms are off (``step < adversarial_start`` or zero weights).
        x: ``(B, 1, X, Y, Z)`` in [-1, 1].
        labels: Optional label map ``(B, 1, X, Y, Z)`` (HDR model only).
        step: Optimiser step (gates the adversarial terms).
        features: Optional 2D feature extractor for the perceptual term.
        generator: Random source (label dropout, window, KL sample, slices); draws follow the
            package rule (on its device, else on ``x``'s device).

    Returns:
        ``(loss, logs, output)``: scalar loss, float logs (``loss``, ``rec``, ``quant``/``reg``,
        ``adv``/``adv_frame``/``adv_volume`` when active, ``perc``, ``perplexity`` and
        ``dead_codes`` for VQ models, ``k`` and ``b`` for HDR) and the model's output.

    Raises:
        ConfigError: wrong module types, or adversarial terms active without a discriminator.
    """
    ae = _autoencoder(model)
    cfg = ae.config
    active = cfg.adversarial_active(step)
    disc = None
    if active:
        if discriminator is None:
            raise ConfigError(
                f"adversarial terms are active at step {step} (adversarial_start={cfg.adversarial_start}); "
                f"pass discriminator=Discriminators(config=model.config)"
            )
        disc = _discriminators(discriminator, cfg)
    if isinstance(ae, VQGAN):
        out = model(x, labels)
        rec = torch.mean((out.reconstruction - x) ** 2)  # Eq. 3, first term
        loss = cfg.reconstruction_weight * rec + out.quantization_loss
        logs = {"rec": float(rec.detach()), "quant": float(out.quantization_loss.detach())}
        if features is not None and cfg.perceptual_weight > 0:
            perc = perceptual_loss_25d(out.reconstruction, x.detach(), features, generator=generator)
            loss = loss + cfg.perceptual_weight * perc
            logs["perc"] = float(perc.detach())
        if active:
            d = discriminator(out.reconstruction, generator=generator)
            adv = disc.adversarial_loss(d.volume, target_is_real=True, for_discriminator=False)
            loss = loss + cfg.adversarial_weight * adv
            logs["adv"] = float(adv.detach())
    else:
        drop = None
        if labels is not None and ae.training and cfg.label_dropout > 0:
            drop = _random.rand((x.shape[0],), like=x, generator=generator) < cfg.label_dropout
        out = model(x, labels, drop_labels=drop, generator=generator)
        hx, hr = out.windowed_input, out.windowed_reconstruction
        rec = torch.mean(torch.abs(hr - hx))  # Eq. (8)
        reg = out.regularization if ae.quantizer is not None else cfg.kl_weight * out.regularization
        loss = cfg.reconstruction_weight * rec + reg
        logs = {"rec": float(rec.detach()), "reg": float(out.regularization.detach()),
                "k": float(ae.window.k.detach()), "b": float(ae.window.b.detach())}
        if cfg.plain_l1_weight > 0:
            plain = torch.mean(torch.abs(out.reconstruction - x))
            loss = loss + cfg.plain_l1_weight * plain
            logs["plain_l1"] = float(plain.detach())
        if features is not None and cfg.perceptual_weight > 0:
            perc = perceptual_loss_25d(hr, hx, features, generator=generator)  # Eq. (9)
            loss = loss + cfg.perceptual_weight * perc
            logs["perc"] = float(perc.detach())
        if active:
            d = discriminator(out.reconstruction, generator=generator)
            crit = disc.adversarial_loss
            adv_f = crit(d.frame, target_is_real=True, for_discriminator=False)
            adv_v = crit(d.volume, target_is_real=True, for_discriminator=False)
            loss = loss + cfg.frame_weight * adv_f + cfg.volume_weight * adv_v
            logs.update(adv_frame=float(adv_f.detach()), adv_volume=float(adv_v.detach()))
    if out.indices is not None:
        stats = ae.codebook_stats(out.indices)
        logs.update(perplexity=stats.perplexity, dead_codes=float(stats.dead))
    logs["loss"] = float(loss.detach())
    return loss, logs, out


def discriminator_loss(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    step: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Discriminator side: ``0.5 (L_adv(D(real), real) + L_adv(D(sg(fake)), fake))`` per discriminator.

    Real and fake are scored in one forward (concatenated on the batch axis; the instance-norm
    PatchGANs treat samples independently), so a DDP-wrapped discriminator runs once per step.

    Args:
        discriminator: :class:`Discriminators`, optionally DDP-wrapped.
        real: ``(B, 1, X, Y, Z)`` training images (detached here).
        fake: Reconstructions of the same shape (detached here).
        step: Optimiser step (gates the loss).
        generator: Random source of the frame slices.

    Returns:
        ``(loss, logs)``; loss is None while the adversarial terms are off. Logs: ``disc`` (VQ-GAN)
        or ``disc_frame`` and ``disc_volume`` (HDR).
    """
    disc = _unwrap(discriminator)
    if not isinstance(disc, Discriminators):
        raise ConfigError(f"discriminator must be ct_autoencoder.Discriminators, got {type(disc).__name__}")
    if real.shape != fake.shape:
        raise ConfigError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if not disc.config.adversarial_active(step):
        return None, {}
    b = real.shape[0]
    d = discriminator(torch.cat([real.detach(), fake.detach()], 0), generator=generator)
    crit = disc.adversarial_loss

    def halves(logits: torch.Tensor, n: int) -> torch.Tensor:
        return 0.5 * (crit(logits[:n], target_is_real=True, for_discriminator=True)
                      + crit(logits[n:], target_is_real=False, for_discriminator=True))

    loss_v = halves(d.volume, b)
    if d.frame is None:
        return loss_v, {"disc": float(loss_v.detach())}
    loss_f = halves(d.frame, b * disc.num_frames)
    loss = loss_f + loss_v
    return loss, {"disc_frame": float(loss_f.detach()), "disc_volume": float(loss_v.detach())}


def training_step(
    model: nn.Module,
    discriminator: nn.Module,
    x: torch.Tensor,
    optimizers: Optimizers,
    *,
    step: int,
    labels: torch.Tensor | None = None,
    features: SliceFeatureExtractor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One generator update, then (when active) one discriminator update, then codebook upkeep.

    Args:
        model: VQGAN or HDRAutoencoder in training mode, optionally DDP-wrapped.
        discriminator: :class:`Discriminators`, optionally DDP-wrapped.
        x: Batch ``(B, 1, X, Y, Z)`` in [-1, 1].
        optimizers: From :func:`make_optimizers`.
        step: Global step (gates the adversarial terms and codebook maintenance).
        labels: Optional label map (HDR model).
        features: Optional 2D feature extractor for perceptual terms.
        generator: Random source for every stochastic choice in the step.

    Returns:
        Logged scalars (those of :func:`generator_loss` and :func:`discriminator_loss`, plus
        ``revived_codes`` for VQ models).
    """
    optimizers.generator.zero_grad(set_to_none=True)
    loss, logs, out = generator_loss(
        model, discriminator, x, labels=labels, step=step, features=features, generator=generator
    )
    loss.backward()
    optimizers.generator.step()
    optimizers.discriminator.zero_grad(set_to_none=True)
    d_loss, d_logs = discriminator_loss(discriminator, x, out.reconstruction, step=step, generator=generator)
    if d_loss is not None:
        d_loss.backward()
        optimizers.discriminator.step()
    logs.update(d_logs)
    if out.indices is not None:
        revived = _autoencoder(model).maintain_codebook(out, step=step, generator=generator)
        logs["revived_codes"] = float(revived)
    return logs
