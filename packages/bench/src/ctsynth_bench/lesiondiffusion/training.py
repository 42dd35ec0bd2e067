"""Training the LMNet and LINet stages on a :class:`~.data.CropSet` (single process, time-bounded).

:func:`train_diffusion_stage` runs AdamW with an EMA of the weights until ``max_steps`` or
``minutes`` is reached, saving the EMA network (the one sampling uses) and the trainer state
(``trainer.safetensors``: raw weights, optimizer moments, step) into ``out`` so a later call with
``resume=True`` continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import CropSet, LesionCropDataset, collate
from .presets import LesionDiffusionPreset
from .stages import EMA, TextUNet, diffusion_config, linet_stage_loss, lmnet_stage_loss

__all__ = ["crop_tokens", "train_diffusion_stage"]

log = logging.getLogger(__name__)

Stage = Literal["lmnet", "linet"]


def crop_tokens(
    encoder: Any, crops: CropSet, kind: Literal["mask", "image"], *, chunk: int = 64
) -> torch.Tensor:
    """Attribute tokens of every crop, (N, 8, D) float32 on the CPU; zeros for crops without a report."""
    from ..text import encode_attributes

    rows = crops.mask_attrs if kind == "mask" else crops.image_attrs
    out = torch.zeros(len(rows), 8, encoder.dim)
    have = [i for i, r in enumerate(rows) if r]
    for j in range(0, len(have), chunk):
        idx = have[j : j + chunk]
        out[idx] = encode_attributes(encoder, [rows[i] for i in idx]).float().cpu()
    return out


def _optim_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for pi, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            flat[f"opt.{pi}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return flat


def _load_optim_state(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        _, pi, k = key.split(".", 2)
        state.setdefault(int(pi), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def train_diffusion_stage(
    stage: Stage,
    net: TextUNet,
    crops: CropSet,
    tokens: torch.Tensor,
    *,
    preset: LesionDiffusionPreset,
    out: str | os.PathLike[str],
    codec: torch.nn.Module | None = None,
    minutes: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    save_every_s: float = 300.0,
    on_save: Callable[[TextUNet, int], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one diffusion stage; returns ``{"steps", "seconds", "loss"}`` (mean of the last 100).

    Args:
        stage: ``"lmnet"`` or ``"linet"``.
        net: the network (trained in place; its EMA copy is what gets saved).
        crops: training crops.
        tokens: (N, 8, D) tokens of the crops (:func:`crop_tokens`; zeros = no text).
        preset: sizes, learning rate, batch size, EMA decay.
        out: folder for ``<stage>/`` (EMA network) and ``<stage>_trainer.safetensors``.
        codec: LINet's codec.
        minutes: wall-clock budget.
        max_steps: step budget (total, counting resumed steps).
        seed: data order, noise and dropout.
        resume: continue from the trainer state in ``out`` if present.
        save_every_s: checkpoint interval.
        on_save: called with the EMA network and the step after each checkpoint.
        progress: log every 50 steps at INFO.
    """
    from .system import _save_net

    if minutes is None and max_steps is None:
        raise ValueError("give minutes or max_steps (the training budget)")
    if stage == "linet" and codec is None:
        raise ValueError("the linet stage needs the codec")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = next(net.parameters()).device
    opt = torch.optim.AdamW(net.parameters(), lr=preset.learning_rate, weight_decay=0.0)
    ema = EMA(net, decay=preset.ema_decay)
    step = 0
    state_path = out / f"{stage}_trainer.safetensors"
    if resume and state_path.is_file():
        st = load_file(str(state_path))
        net.load_state_dict({k[4:]: v for k, v in st.items() if k.startswith("net.")})
        ema.shadow.load_state_dict({k[4:]: v for k, v in st.items() if k.startswith("ema.")})
        _load_optim_state(opt, {k: v for k, v in st.items() if k.startswith("opt.")})
        step = int(st["step"].item())
        ema.num_updates = step
        log.info("%s: resumed at step %d", stage, step)
    ds = LesionCropDataset(crops, flip=True, seed=seed)
    scheduler = diffusion_config(preset).ddpm()
    g = torch.Generator(device="cpu").manual_seed(seed * 7919 + step)
    losses: list[float] = []
    t0 = last_save = time.monotonic()

    def save() -> None:
        _save_net(ema.shadow, out / stage, role=stage)
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        tensors.update(
            {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.shadow.state_dict().items()}
        )
        tensors.update({k: v.cpu().contiguous() for k, v in _optim_state(opt).items()})
        tensors["step"] = torch.tensor(step)
        tmp = state_path.with_name(state_path.name + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, state_path)
        (out / f"{stage}_log.json").write_text(
            json.dumps(
                {
                    "step": step,
                    "loss": float(np.mean(losses[-100:]) if losses else "nan"),
                    "seconds": time.monotonic() - t0,
                }
            )
        )
        if on_save is not None:
            on_save(ema.shadow, step)

    net.train()
    epoch = 0
    while True:
        ds.epoch = epoch
        order = torch.randperm(len(ds), generator=g).tolist()
        for j in range(0, len(order) - preset.batch_size + 1, preset.batch_size):
            idx = order[j : j + preset.batch_size]
            batch = collate([ds[i] for i in idx])
            tens = {
                k: v.to(dev)
                for k, v in batch.items()
                if isinstance(v, torch.Tensor) and k != "index"
            }
            ctx = tokens[idx].to(dev)
            if stage == "lmnet":
                loss = lmnet_stage_loss(
                    net, tens, ctx, preset=preset, scheduler=scheduler, generator=g
                )
            else:
                loss = linet_stage_loss(
                    net, tens, ctx, preset=preset, codec=codec, scheduler=scheduler, generator=g
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            ema.update(net)
            step += 1
            losses.append(float(loss.detach()))
            if progress and step % 50 == 0:
                log.info(
                    "%s step %d loss %.4f (%.0f s)",
                    stage,
                    step,
                    np.mean(losses[-50:]),
                    time.monotonic() - t0,
                )
            elapsed = time.monotonic() - t0
            done = (max_steps is not None and step >= max_steps) or (
                minutes is not None and elapsed >= 60 * minutes
            )
            if done or time.monotonic() - last_save >= save_every_s:
                save()
                last_save = time.monotonic()
            if done:
                net.eval()
                return {"steps": step, "seconds": elapsed, "loss": float(np.mean(losses[-100:]))}
        epoch += 1


# ---------------------------------------------------------------------------------------------
# The whole system
# ---------------------------------------------------------------------------------------------

STAGES: tuple[str, ...] = ("vqgan", "lmnet", "linet")


def build_training_crops(
    data_dir: str | os.PathLike[str] | None,
    preset: LesionDiffusionPreset,
    *,
    independent: int,
    seed: int,
    templates: list[Any] | None = None,
) -> CropSet:
    """The training crops: a lesion set in our layout, independent-attribute crops, template lesions.

    Args:
        data_dir: a lesion set (``bench data lesions``) or None.
        preset: the model grid.
        independent: number of independent-attribute crops (:func:`~.data.independent_crops`).
        seed: their seed.
        templates: templates for the independent crops and the real lesions (default: every
            available case with an organ map, bundled and fetched).
    """
    from ..rulesynth import load_templates
    from .data import crops_from_dataset, independent_crops, template_lesion_crops

    tmpl = templates if templates is not None else load_templates()
    parts: list[CropSet] = []
    if independent > 0:
        parts.append(independent_crops(tmpl, preset, independent, seed=seed))
    if data_dir is not None:
        parts.append(crops_from_dataset(data_dir, preset))
    real = template_lesion_crops(tmpl, preset)
    if real:  # few real lesions: repeat them so flips show each one several times per epoch
        parts.append(CropSet.stack(real * max(1, len(parts[0]) // 200 if parts else 1)))
    if not parts:
        raise ValueError("no training crops: give --data or a positive number of independent crops")
    crops = parts[0]
    for extra in parts[1:]:
        crops = crops.concat(extra)
    return crops


def train_system(
    *,
    preset: LesionDiffusionPreset,
    out: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None,
    stages: tuple[str, ...] = STAGES,
    minutes: float | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    text_encoder: str | None = None,
    no_text: bool = False,
    independent: int = 1200,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the stages of a LesionDiffusion system into the run folder ``out``.

    The crops are built once and kept in ``out/crops.npz`` (reused on resume). Each stage gets the
    budget (``minutes`` or ``max_steps``) on its own. After each diffusion stage the run folder holds
    a loadable system (``LesionDiffusionSystem.load(out)``) once both networks exist.

    Returns:
        ``{"stages": {name: {...}}, "crops": n, "seconds": total}``.
    """
    from ..text import load_text_encoder
    from .codec_stage import train_vqgan
    from .data import independent_crops, load_crops, save_crops
    from .stages import build_linet, build_lmnet, measured_scale
    from .system import MANIFEST, _atomic_json, _codec_config, _make_codec

    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; allowed: {', '.join(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    crop_path = out / "crops.npz"
    if resume and crop_path.is_file():
        crops = load_crops(crop_path)
    else:
        crops = build_training_crops(data_dir, preset, independent=independent, seed=seed)
        save_crops(crops, crop_path)
    log.info("%d training crops", len(crops))
    report: dict[str, Any] = {"stages": {}, "crops": len(crops)}
    enc_name = text_encoder or preset.text_encoder
    codec = _make_codec(preset, {"kind": preset.codec, "scale_factor": 1.0}, folder=out)
    if "vqgan" in stages:
        from ..rulesynth import load_templates

        held = independent_crops(load_templates(), preset, 48, seed=seed + 1_000_003)
        report["stages"]["vqgan"] = train_vqgan(
            crops,
            held,
            preset=preset,
            out=out,
            minutes=minutes,
            max_steps=max_steps,
            seed=seed,
            resume=resume,
        )
        if preset.codec == "vqgan":
            codec = _make_codec(preset, {"kind": "vqgan", "scale_factor": 1.0}, folder=out)
    codec.scale_factor = measured_scale(codec, torch.from_numpy(crops.ct[:64])[:, None].float())
    encoder = None if no_text else load_text_encoder(enc_name)
    for stage in ("lmnet", "linet"):
        if stage not in stages:
            continue
        kind = "mask" if stage == "lmnet" else "image"
        tokens = (
            torch.zeros(len(crops), 8, preset.context_dim)
            if encoder is None
            else crop_tokens(encoder, crops, kind)
        )
        net = build_lmnet(preset) if stage == "lmnet" else build_linet(preset)
        torch.manual_seed(seed)
        report["stages"][stage] = train_diffusion_stage(
            stage,
            net,
            crops,
            tokens,
            preset=preset,
            out=out,
            codec=codec,
            minutes=minutes,
            max_steps=max_steps,
            seed=seed,
            resume=resume,
            progress=progress,
        )
        report["stages"][stage]["text"] = not no_text
    manifest = {
        "format": "ctsynth-lesiondiffusion",
        "format_version": 1,
        "preset": preset.to_dict(),
        "text_encoder": enc_name,
        "text": not no_text,
        "codec": _codec_config(codec),
    }
    _atomic_json(out / MANIFEST, manifest)
    report["seconds"] = time.monotonic() - t0
    log_path = out / "train_log.json"
    prev = json.loads(log_path.read_text()) if log_path.is_file() else {}
    prev.setdefault("runs", []).append(report)
    _atomic_json(log_path, prev)
    return report
