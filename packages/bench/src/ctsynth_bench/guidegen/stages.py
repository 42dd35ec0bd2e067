"""GuideGen's three stages: TCSS, HDR autoencoder, latent generator; training loops and sampling.

* **TCSS** (cat_diffusion, GuideGen Sec. 3.1): ``SemanticSynthesizer`` with knowledge injection.
  Bench adds what makes the rare site cue learnable (chosen by measurement, see the model card):
  a tumour-class weight in the loss (KL of Eq. 6 + x0 cross-entropy), condition dropout (the
  prompt replaced by the null prompt, one zero token) and classifier-free guidance on the x0
  logits at sampling, ``l = l_null + w (l_prompt - l_null)``.
* **HDR autoencoder** (ct_autoencoder, Sec. 3.2, Eq. 7-9) with the label map as its pyramidal
  condition, KL bottleneck; its latent scale is measured on data after training.
* **Latent generator** (lesion_inpaint, Sec. 3.3, Eq. 11): noise prediction on scaled latents with
  the one-hot label map concatenated and the prompt tokens by cross-attention, DDIM + CFG.

Training loops here are plain and bounded (``minutes`` / ``max_steps``); each returns a log.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from cat_diffusion import (
    CategoricalDiffusionLoss,
    CategoricalSampler,
    SemanticSynthesizer,
    count_guidance,
)
from torch import Tensor, nn

from ._labels import NUM_CLASSES, TUMOUR
from .presets import GuideGenPreset, tumour_class_weights
from .prompts import COUNTS, SITES, SIZES, PromptFields

__all__ = [
    "FieldProbe",
    "GuidedTCSS",
    "TCSSNet",
    "field_targets",
    "make_field_probe",
    "null_prompt",
    "perturb_tumours",
    "sample_label_maps",
    "train_tcss",
]

log = logging.getLogger(__name__)


def field_targets(fields: Sequence[PromptFields]) -> Tensor:
    """Class index of each prompt's site, count and size, ``(P, 3)`` int64 (the probe's targets)."""
    return torch.tensor(
        [[list(SITES).index(f.site), f.count - 1, SIZES.index(f.size)] for f in fields],
        dtype=torch.long,
    )


class FieldProbe(nn.Module):
    """Linear read-out of the prompt's site, count and size from the per-level contexts.

    Trained beside the TCSS (``GuideGenPreset.field_weight``): its cross-entropy flows into the
    knowledge-injection module and makes every field reach the contexts the backbone attends to.
    Without it, the injection of the demo learnt to carry the site only: changing the count in a
    prompt moved the contexts by 0.07 % and the network's output not at all.

    Args:
        dim: context size (``cross_attention_dim``).
        levels: number of levels that receive a context.
    """

    def __init__(self, dim: int, levels: int) -> None:
        super().__init__()
        self.sizes = (len(SITES), max(max(c) for c in COUNTS.values()), len(SIZES))
        self.head = nn.Linear(dim * levels, sum(self.sizes))

    def forward(self, levels: list[Tensor | None]) -> list[Tensor]:
        """Logits of each field ``[(B, n_site), (B, n_count), (B, n_size)]``."""
        pooled = torch.cat([lv.mean(1) for lv in levels if lv is not None], dim=-1)
        return list(self.head(pooled).split(self.sizes, dim=-1))

    def loss(self, levels: list[Tensor | None], targets: Tensor, keep: Tensor) -> Tensor:
        """Mean cross-entropy over fields on the samples in ``keep`` (prompted, not dropped)."""
        if not bool(keep.any()):
            return targets.new_zeros((), dtype=torch.float32)
        logits = self(levels)
        return sum(
            F.cross_entropy(lg[keep], targets[keep, i]) for i, lg in enumerate(logits)
        ) / len(logits)


def perturb_tumours(
    x: Tensor, t: Tensor, *, p: float, t_max: int, generator: torch.Generator
) -> Tensor:
    """Add or remove one tumour in some of the inputs ``x_t``; the target ``x_0`` stays the same.

    Why: the sampler draws every voxel on its own, so the number of tumour seeds it starts at high
    noise is random even when the predicted tumour volume is right. Training
    only ever shows the network ``x_t`` made from maps with the right number of tumours, so it never
    learns to remove a surplus tumour or add a missing one. Here, for a sample with probability
    ``p`` and ``t < t_max``, one tumour component of ``x_t`` is turned into its organ, or one
    voxel of that organ, one voxel apart from every tumour, becomes tumour.

    Args:
        x: one-hot ``x_t`` ``(B, N, *S)``.
        t: timesteps ``(B,)``.
        p: probability per sample.
        t_max: only timesteps below this are perturbed.
        generator: CPU generator of the choices.

    Returns:
        The perturbed one-hot input (``x`` itself when nothing changed).
    """
    import numpy as np
    from scipy import ndimage

    s26 = np.ones((3,) * (x.ndim - 2), dtype=bool)
    draws = torch.rand(x.shape[0], 3, generator=generator).numpy()
    pick = [b for b in range(x.shape[0]) if draws[b, 0] < p and int(t[b]) < t_max]
    if not pick:
        return x
    lab = x.argmax(1).cpu().numpy()
    out = x.clone()
    for b in pick:
        tum = lab[b] == TUMOUR
        comp, k = ndimage.label(tum, structure=s26)
        if k == 0:
            continue
        shell = ndimage.binary_dilation(tum, structure=s26) & ~tum
        vals = lab[b][shell]
        vals = vals[(vals != 0) & (vals != TUMOUR)]
        if vals.size == 0:
            continue
        organ = int(np.bincount(vals).argmax())
        new = lab[b].copy()
        if draws[b, 1] < 0.5:  # remove one component (larger ones more likely: they look real)
            sizes = np.bincount(comp.ravel())[1:].astype(np.float64)
            r = draws[b, 2] * sizes.sum()
            i = 1 + min(int(np.searchsorted(np.cumsum(sizes), r, side="right")), k - 1)
            new[comp == i] = organ
        else:  # add one voxel of tumour in the organ, apart from the others
            far = ~ndimage.binary_dilation(tum, structure=s26, iterations=2)
            cand = np.argwhere((lab[b] == organ) & far)
            if len(cand) == 0:
                continue
            new[tuple(cand[int(draws[b, 2] * len(cand)) % len(cand)])] = TUMOUR
        out[b] = F.one_hot(torch.from_numpy(new).long(), x.shape[1]).movedim(-1, 0).to(x)
    return out


class TCSSNet(nn.Module):
    """Calls a ``SemanticSynthesizer`` with ``context=(tokens, mask)`` so the loss passes masks.

    With a probe, ``context=(tokens, mask, field_targets, kept)`` also computes the probe's loss
    on the same per-level contexts in the same forward (so DDP sees one forward per step); it is
    left in :attr:`field_loss`.

    Args:
        synth: the TCSS network.
        probe: optional :class:`FieldProbe` trained beside it (knowledge injection only).
    """

    def __init__(
        self,
        synth: SemanticSynthesizer,
        probe: FieldProbe | None = None,
        *,
        count_augment: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.synth = synth
        self.probe = probe
        self.field_loss: Tensor | None = None
        self.count_augment = float(count_augment)
        self._aug_gen = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor, t: Tensor, context: tuple[Tensor, ...] | None = None) -> Tensor:
        """Logits ``(B, N, *S)`` for one-hot ``x`` ``(B, N, *S)``, ``t`` ``(B,)``, ``(tokens, mask)``."""
        if context is None:
            raise ValueError("TCSSNet needs context=(tokens (B, L, D), mask (B, L) bool)")
        tokens, mask = context[0], context[1]
        if self.training and self.count_augment > 0:
            x = perturb_tumours(
                x,
                t,
                p=self.count_augment,
                t_max=int(0.7 * self.synth.config.num_train_timesteps),
                generator=self._aug_gen,
            )
        if self.synth.config.conditioning != "injection":
            return self.synth(x, t, context=tokens)  # plain cross-attention: padding tokens are 0
        levels = self.synth.encode_context(tokens, mask)
        self.field_loss = None
        if self.probe is not None and len(context) == 4:
            self.field_loss = self.probe.loss(levels, context[2], context[3])
        return self.synth.unet(x, t, context=levels)


def make_field_probe(synth: SemanticSynthesizer, weight: float) -> FieldProbe | None:
    """A probe for ``synth`` when ``weight > 0`` and it uses knowledge injection, else None."""
    cfg = synth.config
    if weight <= 0 or cfg.conditioning != "injection":
        return None
    return FieldProbe(cfg.cross_attention_dim, len(synth.unet.context_levels))


def null_prompt(
    batch: int, dim: int, *, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """The null prompt (text removed): one zero token per sample, ``((B, 1, D), (B, 1))``."""
    return torch.zeros(batch, 1, dim, device=device), torch.ones(
        batch, 1, dtype=torch.bool, device=device
    )


def drop_prompts(
    tokens: Tensor,
    mask: Tensor,
    p: float,
    generator: torch.Generator | None,
    *,
    return_kept: bool = False,
) -> Any:
    """Replace each sample's prompt by the null prompt with probability ``p`` (condition dropout).

    With ``return_kept``, also returns the ``(B,)`` bool of samples that kept their prompt.
    """
    if p <= 0:
        kept = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        return (tokens, mask, kept) if return_kept else (tokens, mask)
    gdev = generator.device if generator is not None else tokens.device
    drop = (torch.rand(tokens.shape[0], generator=generator, device=gdev) < p).to(tokens.device)
    tokens = torch.where(drop[:, None, None], torch.zeros_like(tokens), tokens)
    null_mask = torch.zeros_like(mask)
    null_mask[:, 0] = True
    mask = torch.where(drop[:, None], null_mask, mask)
    return (tokens, mask, ~drop) if return_kept else (tokens, mask)


class GuidedTCSS(nn.Module):
    """The TCSS with fixed per-level contexts and classifier-free guidance, for the samplers.

    ``forward(x, t)`` returns ``l_null + w (l_prompt - l_null)``; with ``guidance == 1`` or no
    null context it returns the prompted logits alone (one network call per step).

    Args:
        synth: the TCSS network.
        levels: per-level contexts of the prompts (``synth.encode_context``).
        null_levels: per-level contexts of the null prompt, or None.
        guidance: guidance scale ``w``.
        logit_bias: added to the guided logits, per class.
        counts: ``(B,)`` prompted tumour counts for the count guidance, or None (off).
        count_weight: weight of :func:`cat_diffusion.count_guidance` on the tumour class: the
            guided, calibrated x0 logits move down the gradient of ``(E[chi] - count)^2``, where
            ``E[chi]`` is the expected number of tumour pieces of a map drawn from them.
        chunk: at most this many samples go through the network at once (0: the prompts and the
            null prompt of the whole batch in one call). It trades speed for memory: the network's
            activations scale with the samples in a call, and on the paper preset one guided call
            on 128^3 peaks at 10.33 GiB batched and 5.49 GiB with ``chunk=1`` (H100). The result is
            the same either way (the network treats samples independently).
    """

    def __init__(
        self,
        synth: SemanticSynthesizer,
        levels: list[Tensor | None],
        null_levels: list[Tensor | None] | None,
        guidance: float,
        logit_bias: Tensor | None = None,
        chunk: int = 0,
        counts: Tensor | None = None,
        count_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.synth = synth
        self.levels = levels
        self.null_levels = null_levels
        self.guidance = float(guidance)
        self.logit_bias = logit_bias
        if chunk < 0:
            raise ValueError(f"chunk must be >= 0 (0 = no chunking), got {chunk}")
        self.chunk = int(chunk)
        self.counts = counts
        self.count_weight = float(count_weight)
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, context: Any = None) -> Tensor:
        out = self._guided(x, t)
        if self.logit_bias is not None:
            out = out + self.logit_bias.to(out).reshape(1, -1, *([1] * (out.ndim - 2)))
        if self.counts is not None and self.count_weight > 0:
            out = count_guidance(out, TUMOUR, self.counts, self.count_weight)
        return out

    def _guided(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        if self.null_levels is None or self.guidance == 1.0:
            return self._unet(x, t, self.levels)
        pairs = list(zip(self.levels, self.null_levels, strict=True))
        if any(a is not None and a.shape[1:] != b.shape[1:] for a, b in pairs):
            # plain cross-attention: prompt and null prompt have different token counts
            cond = self._unet(x, t, self.levels)
            uncond = self._unet(x, t, self.null_levels)
            return uncond + self.guidance * (cond - uncond)
        both = [None if a is None else torch.cat([a, b]) for a, b in pairs]
        out = self._unet(torch.cat([x, x]), torch.cat([t, t]), both)
        cond, uncond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def _unet(self, x: Tensor, t: Tensor, levels: list[Tensor | None]) -> Tensor:
        n = x.shape[0]
        if not self.chunk or n <= self.chunk:
            return self.synth.unet(x, t, context=levels)
        parts = []
        for i in range(0, n, self.chunk):
            sl = slice(i, i + self.chunk)
            ctx = [None if c is None else c[sl] for c in levels]
            parts.append(self.synth.unet(x[sl], t[sl], context=ctx))
        return torch.cat(parts)


@torch.no_grad()
def sample_label_maps(
    synth: SemanticSynthesizer,
    tokens: Tensor | None,
    mask: Tensor | None,
    *,
    guidance: float = 1.0,
    sampler: Literal["fast", "ancestral"] = "fast",
    steps: int | None = None,
    class_weights: tuple[float, ...] | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 0,
    counts: Sequence[int] | None = None,
    count_weight: float = 0.0,
) -> tuple[Tensor, int]:
    """Generate label maps for prompts (or with the text removed).

    Args:
        synth: trained TCSS (eval mode).
        tokens: prompt tokens ``(B, L, D)`` or None for the null prompt (text removed).
        mask: ``(B, L)`` bool or None.
        guidance: classifier-free guidance scale (ignored for the null prompt).
        sampler: ``"fast"`` (skip sampler, ``steps`` calls) or ``"ancestral"`` (``T`` calls).
        steps: fast-sampler steps (default: the config's ``fast_steps``).
        class_weights: the loss's class weights; ``-log w`` is added to the x0 logits, which undoes
            the bias a class-weighted cross-entropy puts into the predicted probabilities (its
            optimum is ``p_w(c) ~ w_c p(c)``), so a tumour weight makes the cue strong in training
            without making tumours larger at sampling.
        generator: randomness (its device is where noise is drawn).
        chunk: samples per network call (:class:`GuidedTCSS`; 0 = all at once). Lowers the peak
            memory; the labels are the same.
        counts: the prompted number of tumours of each sample, for the count guidance (None: off,
            as for the null prompt).
        count_weight: the count guidance's weight (:class:`GuidedTCSS`; 0 = off).

    Returns:
        ``(labels (B, 1, *S) int64, network calls)``; a call is one guided evaluation of the
        whole batch, however it is chunked.
    """
    cfg = synth.config
    device = next(synth.parameters()).device
    if tokens is None:
        raise ValueError(
            "tokens: give prompt tokens; for the text removed pass null_prompt(...) tokens"
        )
    b = tokens.shape[0]
    inj = cfg.conditioning == "injection"
    levels = synth.encode_context(
        tokens.to(device), mask.to(device) if inj and mask is not None else None
    )
    null_t, null_m = null_prompt(b, cfg.context_dim, device=device)
    is_null = bool((tokens == 0).all())
    null_levels = (
        None
        if is_null or guidance == 1.0
        else synth.encode_context(null_t, null_m if inj else None)
    )
    if not inj:  # plain cross-attention: one shared context for every level
        levels = [levels] * synth.unet.num_levels
        null_levels = None if null_levels is None else [null_levels] * synth.unet.num_levels
    bias = (
        None
        if class_weights is None
        else -torch.log(torch.tensor(class_weights, dtype=torch.float32))
    )
    if counts is not None and len(counts) != b:
        raise ValueError(f"counts: {len(counts)} entries for {b} prompts")
    model = GuidedTCSS(
        synth,
        levels,
        null_levels,
        guidance,
        bias,
        chunk,
        counts=None if counts is None or is_null else torch.tensor([float(c) for c in counts]),
        count_weight=count_weight,
    )
    shape = (b, 1, *cfg.spatial_size)
    s = CategoricalSampler(scheduler=synth.make_scheduler())
    if sampler == "fast":
        out = s.fast(
            model,
            num_steps=steps or cfg.fast_steps,
            shape=shape,
            generator=generator,
            device=device,
        )
    elif sampler == "ancestral":
        out = s.ancestral(model, shape=shape, generator=generator, device=device, progress=False)
    else:
        raise ValueError(f"sampler must be 'fast' or 'ancestral', got {sampler!r}")
    return out, model.calls


class EMA:
    """Exponential moving average of a module's parameters (the weights that are sampled)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            e.copy_(b)


@dataclass
class TCSSData:
    """Training data of the TCSS.

    Attributes:
        labels: uint8 ``(N, 1, S, S, S)`` label maps.
        choices: int64 ``(N, K)``: prompt indices each map may be paired with (the demo bank's
            prompts of the map's realised site/count/size, or a user case's own prompt).
        bank_tokens: ``(P, L, D)`` prompt tokens.
        bank_mask: ``(P, L)`` bool.
        bank_fields: ``(P, 3)`` int64 field targets of the prompts (:func:`field_targets`), or
            None (no field probe).
    """

    labels: Tensor
    choices: Tensor
    bank_tokens: Tensor
    bank_mask: Tensor
    bank_fields: Tensor | None = None

    def to(self, device: torch.device | str) -> TCSSData:
        return TCSSData(
            self.labels.to(device),
            self.choices.to(device),
            self.bank_tokens.to(device),
            self.bank_mask.to(device),
            None if self.bank_fields is None else self.bank_fields.to(device),
        )

    def prompts(
        self, choices: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One random prompt per row of ``choices`` ``(B, K)``: tokens ``(B, L, D)``, mask
        ``(B, L)`` and field targets ``(B, 3)`` (None without ``bank_fields``)."""
        col = torch.randint(
            choices.shape[1], (choices.shape[0],), generator=generator, device=generator.device
        )
        p = choices.gather(1, col.to(choices.device)[:, None])[:, 0].to(self.bank_tokens.device)
        fields = None if self.bank_fields is None else self.bank_fields[p]
        return self.bank_tokens[p].float(), self.bank_mask[p], fields

    def batch(
        self, idx: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Label maps ``(B, 1, S, S, S)`` int64 with one of their prompts each (and its fields)."""
        tok, msk, fields = self.prompts(self.choices[idx], generator)
        return self.labels[idx].long(), tok, msk, fields


def train_tcss(
    synth: SemanticSynthesizer,
    data: TCSSData,
    preset: GuideGenPreset,
    *,
    out: str | Path | None = None,
    minutes: float | None = None,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    tumour_weight: float | None = None,
    save_every: int = 250,
    on_log: Callable[[dict[str, float]], None] | None = None,
    start: dict[str, Any] | None = None,
) -> tuple[SemanticSynthesizer, dict[str, Any]]:
    """Train the TCSS with the loss of Eq. 6 (+ x0 CE), tumour weighting and condition dropout.

    Args:
        synth: the network (trained in place).
        data: :class:`TCSSData`.
        preset: system preset (lr, batch size, weights, dropout).
        out: folder; the EMA weights are written to ``out/tcss`` every ``save_every`` steps and at
            the end (cat_diffusion checkpoint), the log to ``out/tcss_log.jsonl``.
        minutes, max_steps: budget (at least one must be given).
        device: where to train.
        seed: randomness of batches, timesteps, noise and dropout.
        tumour_weight: override of the preset's tumour weight (1 = unweighted).
        save_every: checkpoint interval.
        on_log: called with each logged row.
        start: optimizer/EMA state from a previous call (``result["state"]``) to resume.

    Returns:
        ``(EMA network in eval mode, {"steps", "seconds", "log", "state"})``.
    """
    if minutes is None and max_steps is None:
        raise ValueError("give minutes or max_steps")
    from cat_diffusion import save_checkpoint

    device = torch.device(device)
    synth = synth.to(device).train()
    probe = None if data.bank_fields is None else make_field_probe(synth, preset.field_weight)
    net = TCSSNet(synth, probe, count_augment=preset.count_augment, seed=seed).to(device)
    tw = preset.tumour_weight if tumour_weight is None else tumour_weight
    loss_fn = CategoricalDiffusionLoss(
        ce_weight=preset.ce_weight,
        class_weights=tumour_class_weights(tw),
        mass_weight=preset.mass_weight,
        mass_class=TUMOUR if preset.mass_weight > 0 else None,
        mass_near=preset.mass_near,
    )
    sched = synth.make_scheduler()
    opt = torch.optim.AdamW(net.parameters(), lr=preset.lr, weight_decay=1e-4)
    ema = EMA(synth, 0.995)
    step = 0
    if start is not None:
        opt.load_state_dict(start["opt"])
        ema.shadow.load_state_dict(start["ema"])
        step = int(start["step"])
    data = data.to(device)
    g = torch.Generator(device=device).manual_seed(seed + step)
    n = data.labels.shape[0]
    t0 = time.time()
    rows: list[dict[str, float]] = []
    out_dir = Path(out) if out is not None else None
    run_avg = None
    warm = 200
    while True:
        if max_steps is not None and step >= max_steps:
            break
        if minutes is not None and time.time() - t0 > minutes * 60:
            break
        idx = torch.randint(n, (preset.batch_size,), generator=g, device=g.device).to(device)
        x0, tok, msk, fields = data.batch(idx, g)
        tok, msk, kept = drop_prompts(tok, msk, preset.cond_drop, g, return_kept=True)
        for pg in opt.param_groups:
            pg["lr"] = preset.lr * min(1.0, (step + 1) / warm)
        ctx = (tok, msk) if probe is None or fields is None else (tok, msk, fields, kept)
        res = loss_fn(net, sched, x0, context=ctx, generator=g)
        total = res.loss
        fl = net.field_loss
        if fl is not None:
            total = total + preset.field_weight * fl
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(synth, step)
        step += 1
        lv = float(res.loss.detach())
        run_avg = lv if run_avg is None else 0.98 * run_avg + 0.02 * lv
        if step % 100 == 0 or step == 1:
            row = {
                "step": step,
                "loss": lv,
                "loss_avg": run_avg,
                "kl": float(res.kl),
                "ce": float(res.ce),
                "seconds": time.time() - t0,
            }
            if fl is not None:
                row["fields"] = float(fl.detach())
            if preset.mass_weight > 0 and res.mass is not None:
                row["mass"] = float(res.mass)
            rows.append(row)
            if on_log:
                on_log(row)
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                with open(out_dir / "tcss_log.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
        if out_dir is not None and step % save_every == 0:
            save_checkpoint(ema.shadow, out_dir / "tcss")
    if out_dir is not None:
        save_checkpoint(ema.shadow, out_dir / "tcss")
    state = {"opt": opt.state_dict(), "ema": ema.shadow.state_dict(), "step": step}
    return ema.shadow.eval(), {
        "steps": step,
        "seconds": time.time() - t0,
        "log": rows,
        "state": state,
    }


# ---------------------------------------------------------------- CT stages


def labels_to_ct_grid(labels: Tensor, size: int) -> Tensor:
    """Nearest upsampling of ``(B, 1, s, s, s)`` label maps to the CT grid ``(B, 1, size, ...)``."""
    f = size // labels.shape[-1]
    out = labels
    for d in (2, 3, 4):
        out = out.repeat_interleave(f, dim=d)
    return out


def make_autoencoder(preset: GuideGenPreset) -> nn.Module:
    """The demo HDR autoencoder: KL bottleneck, GuideGen classes as its pyramidal condition."""
    import dataclasses

    import ct_autoencoder as ca

    cfg = dataclasses.replace(
        ca.hdr_preset("demo_kl"),
        channels=preset.ae_channels,
        latent_channels=preset.latent_channels,
        num_label_classes=NUM_CLASSES,
        crop_size=preset.ct_size,
        label_embed_dim=4,
        norm_groups=preset.ae_norm_groups,
        plain_l1_weight=preset.ae_plain_l1,
        adversarial_start=preset.ae_adversarial_start,
        learning_rate=preset.ae_lr,
    )
    return ca.HDRAutoencoder(config=cfg)


class _Volumes(torch.utils.data.Dataset):
    """CT volumes with their label maps, item ``i`` is ``(ct[i], labels[i])``."""

    def __init__(self, ct: Tensor, labels: Tensor) -> None:
        if ct.shape[0] != labels.shape[0]:
            raise ValueError(f"{ct.shape[0]} CT volumes but {labels.shape[0]} label maps")
        self.ct, self.labels = ct, labels

    def __len__(self) -> int:
        return int(self.ct.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.ct[i], self.labels[i]


def train_autoencoder(
    ae: nn.Module,
    ct: Tensor,
    labels: Tensor,
    *,
    run_dir: str | Path,
    stage: str = "autoencoder",
    minutes: float | None = None,
    max_steps: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    seed: int = 0,
    resume: bool = False,
    checkpoint_every: int = 250,
    progress: bool = False,
) -> Any:
    """Train the HDR autoencoder (generator + both discriminators, Eq. 7-9) on the training engine.

    Each step is one update of the autoencoder (``ct_autoencoder.generator_loss``), then one of
    the discriminators (``discriminator_loss``, once the adversarial terms start), each with Adam
    (betas 0.5, 0.9, the autoencoder config's learning rate) as the authors train it. The stage
    folder ``run_dir/stage`` holds the autoencoder as a ``ct_autoencoder`` checkpoint, the
    discriminators in ``discriminators/``, the metrics, and the trainer state: ``resume=True``
    continues exactly where a run stopped, and under torchrun both networks train with DDP.

    Args:
        ae: ``HDRAutoencoder`` (trained in place).
        ct: float ``(N, 1, X, Y, Z)`` HU.
        labels: int ``(N, 1, s, s, s)`` GuideGen label maps on the label grid.
        batch_size: Global batch (split over torchrun's processes).
        progress: show a tqdm bar.

    Returns:
        The engine's ``TrainResult`` (``step``, ``seconds``, ``loss``, ``stage_dir``, ...).
    """
    import ct_autoencoder as ca

    from .. import train as engine

    def ae_loss(
        model: nn.Module, batch: Any, g: torch.Generator, disc: nn.Module, step: int
    ) -> tuple[Tensor, dict[str, float], tuple[Tensor, Tensor]]:
        hu, lab = batch
        x = getattr(model, "module", model).normalize(hu.float())
        lab = labels_to_ct_grid(lab.long(), x.shape[-1])
        loss, logs, out = ca.generator_loss(model, disc, x, labels=lab, step=step, generator=g)
        logs.pop("loss", None)  # the engine logs the loss itself
        return loss, logs, (x, out.reconstruction)

    def disc_loss(
        disc: nn.Module, batch: Any, output: tuple[Tensor, Tensor], g: torch.Generator, step: int
    ) -> tuple[Tensor | None, dict[str, float]]:
        x, rec = output
        return ca.discriminator_loss(disc, x, rec, step=step, generator=g)

    rate = ae.config.learning_rate
    return engine.train(
        ae,
        ae_loss,  # type: ignore[arg-type]
        _Volumes(ct, labels),
        run_dir=run_dir,
        stage=stage,
        config=engine.TrainConfig(
            max_steps=max_steps,
            minutes=minutes,
            batch_size=batch_size,
            lr=rate,
            betas=(0.5, 0.9),  # Adam as the authors use it (no weight decay, no clipping)
            weight_decay=0.0,
            grad_clip=None,
            checkpoint_every=checkpoint_every,
            log_every=10,
            seed=seed,
            precision="fp32",
        ),
        save_fn=lambda m, folder: ca.save_checkpoint(m, folder),
        resume=resume,
        device=device,
        progress=progress,
        adversary=engine.Adversary(
            model=ca.Discriminators(config=ae.config),
            loss_fn=disc_loss,  # type: ignore[arg-type]
            name="discriminators",
            save_fn=lambda m, folder: ca.save_checkpoint(m, folder),
        ),
    )


@torch.no_grad()
def autoencode_error(
    ae: nn.Module, ct: Tensor, labels: Tensor, *, batch: int = 8
) -> dict[str, float]:
    """Held-out reconstruction: mean |HU error| of the autoencoder and of a non-learned baseline.

    The baseline keeps as many numbers as the latent (area-downsample the CT to the grid with
    ``latent_channels x latent voxels`` values, trilinear upsample back).
    """
    dev = next(ae.parameters()).device
    errs, base_errs = [], []
    size = ct.shape[-1]
    n_latent = ae.latent_channels * (size // ae.downsample_factor) ** 3
    s = round(n_latent ** (1 / 3))
    body = []
    for i in range(0, ct.shape[0], batch):
        x = ct[i : i + batch].float().to(dev)
        lab = labels_to_ct_grid(labels[i : i + batch].long().to(dev), size)
        z = ae.encode_stage_2_inputs(ae.normalize(x), lab)
        rec = ae.denormalize(ae.decode_stage_2_outputs(z, lab)).clamp(-1024, 3071)
        low = F.interpolate(x, size=(s, s, s), mode="area")
        base = F.interpolate(low, size=x.shape[2:], mode="trilinear", align_corners=False)
        m = (x > -900).float()  # inside the body
        body.append(m.sum())
        errs.append(((rec - x).abs() * m).sum())
        base_errs.append(((base - x).abs() * m).sum())
    tot = float(sum(body))
    return {
        "autoencoder_mae_hu": float(sum(errs)) / tot,
        "baseline_mae_hu": float(sum(base_errs)) / tot,
        "baseline_grid": s,
    }


@torch.no_grad()
def measure_scale(ae: nn.Module, ct: Tensor, labels: Tensor, *, batch: int = 8) -> float:
    """Measure and record ``ae.scale_factor`` (``1 / std`` of its latents on data); returns it."""
    import ct_autoencoder as ca

    dev = next(ae.parameters()).device

    def batches():
        for i in range(0, ct.shape[0], batch):
            x = ae.normalize(ct[i : i + batch].float().to(dev))
            yield x, labels_to_ct_grid(labels[i : i + batch].long().to(dev), x.shape[-1])

    ae.scale_factor = ca.measure_scale_factor(ae, batches())
    return float(ae.scale_factor)


def make_generator(preset: GuideGenPreset) -> nn.Module:
    """The latent generator: latent + one-hot label map in, noise out, prompt tokens by cross-attention."""
    from lesion_inpaint import DiffusionConfig, LatentGenerator, LatentGeneratorConfig, UNetConfig

    unet = UNetConfig(
        in_channels=preset.latent_channels + NUM_CLASSES,
        out_channels=preset.latent_channels,
        channels=preset.gen_channels,
        attention_levels=preset.gen_attention,
        num_head_channels=16,
        norm_num_groups=8,
        context_dim=preset.tcss.context_dim,
    )
    diff = DiffusionConfig(
        num_train_timesteps=1000,
        schedule="scaled_linear_beta",
        num_inference_steps=preset.gen_steps,
        guidance_scale=preset.gen_guidance,
        eta=preset.gen_eta,
        cond_drop_prob=preset.cond_drop,
    )
    return LatentGenerator(
        config=LatentGeneratorConfig(
            latent_channels=preset.latent_channels,
            num_label_classes=NUM_CLASSES,
            unet=unet,
            diffusion=diff,
        )
    )


def label_condition(labels: Tensor, size: int | None = None) -> Tensor:
    """Class fractions ``(B, 21, size, size, size)`` of ``(B, 1, s, s, s)`` label maps on the latent grid.

    One-hot when ``size`` is the label grid (the demo), area-averaged otherwise.
    """
    oh = F.one_hot(labels[:, 0].long(), NUM_CLASSES).movedim(-1, 1).float()
    if size is not None and size != oh.shape[-1]:
        oh = F.adaptive_avg_pool3d(oh, (size, size, size))
    return oh


def train_generator(
    gen: nn.Module,
    z: Tensor,
    labels: Tensor,
    tokens: Tensor,
    *,
    minutes: float | None = None,
    max_steps: int | None = None,
    batch_size: int = 16,
    lr: float = 2e-4,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Train the latent generator (Eq. 11) on scaled latents with condition dropout.

    Args:
        gen: ``LatentGenerator``.
        z: ``(N, C, s, s, s)`` scaled latents.
        labels: ``(N, 1, s, s, s)`` label maps.
        tokens: ``(N, L, D)`` prompt tokens of each case (padding zero).
    """
    device = torch.device(device)
    gen.to(device).train()
    opt = torch.optim.AdamW(gen.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator(device=device).manual_seed(seed)
    z, labels, tokens = z.to(device), labels.to(device), tokens.to(device)
    t0, step, rows, avg = time.time(), 0, [], None
    while (max_steps is None or step < max_steps) and (
        minutes is None or time.time() - t0 < minutes * 60
    ):
        idx = torch.randint(
            z.shape[0], (batch_size,), generator=g, device=device
        )  # g is on `device`
        for pg in opt.param_groups:
            pg["lr"] = lr * min(1.0, (step + 1) / 200)
        loss = gen.training_loss(
            z[idx].float(), labels[idx].long(), context=tokens[idx].float(), generator=g
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        step += 1
        lv = float(loss.detach())
        avg = lv if avg is None else 0.98 * avg + 0.02 * lv
        if step % 100 == 0 or step == 1:
            rows.append({"step": step, "loss": lv, "loss_avg": avg, "seconds": time.time() - t0})
    gen.eval()
    return {"steps": step, "seconds": time.time() - t0, "log": rows}
