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
            losses.append(float(loss))
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
