"""Training LesionDiffusion's stages on model-space crops, on the shared training engine.

:func:`train_diffusion_stage` trains LMNet or LINet with ``ctsynth_bench.train.train`` (AdamW,
EMA, gradient clipping, step/time budgets, exact resume, DDP under ``torchrun``): the stage folder
``RUN/<stage>/`` holds ``model.safetensors`` + ``config.json`` (raw weights), ``ema.safetensors``
(the averaged weights, which :class:`~.system.LesionDiffusionSystem` samples with), the trainer
state and ``metrics.jsonl``. :func:`train_system` builds the crops and runs the stages in order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import report_bbox
import torch

from .data import CropSet, LesionCropDataset
from .presets import LesionDiffusionPreset
from .stages import TextUNet, diffusion_config, linet_stage_loss, lmnet_stage_loss

__all__ = ["STAGES", "build_training_crops", "crop_tokens", "train_diffusion_stage", "train_system"]

log = logging.getLogger(__name__)

Stage = Literal["lmnet", "linet"]
_SPATIAL = ("ct", "organs", "target", "bbox", "mask")


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


class _TokenCrops(torch.utils.data.Dataset):
    """Crops with their attribute tokens: items of tensors only (engine-collatable, deterministic)."""

    def __init__(self, crops: CropSet, tokens: torch.Tensor) -> None:
        if tokens.shape[0] != len(crops):
            raise ValueError(f"tokens hold {tokens.shape[0]} rows for {len(crops)} crops")
        self.view = LesionCropDataset(crops, flip=False)
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.view[i]
        out = {k: item[k] for k in _SPATIAL}
        out["context"] = self.tokens[i]
        return out


def _flip(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Flip the batch's volumes along random axes (drawn from ``generator``)."""
    dims = [
        d + 2
        for d in range(3)
        if bool(torch.rand((), generator=generator, device=generator.device) < 0.5)
    ]
    if not dims:
        return batch
    return {k: (v.flip(dims) if k in _SPATIAL else v) for k, v in batch.items()}


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
    checkpoint_every: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """Train LMNet or LINet on the engine; returns ``{"steps", "seconds", "loss", "stopped_by"}``.

    Args:
        stage: ``"lmnet"`` or ``"linet"``.
        net: the network (trained in place).
        crops: training crops.
        tokens: (N, 8, D) tokens of the crops (:func:`crop_tokens`; zeros = no text).
        preset: sizes, learning rate, batch size, EMA decay.
        out: the run folder (the stage writes ``out/<stage>/``).
        codec: LINet's codec.
        minutes: wall-clock budget of this call.
        max_steps: step budget (counted over resumes).
        seed: data order, noise, dropout and flips.
        resume: continue the stage's trainer state in ``out`` if there is one.
        checkpoint_every: steps between checkpoints.
        progress: tqdm bar.
    """
    from ..train import TrainConfig, train
    from .system import _save_net

    if stage not in ("lmnet", "linet"):
        raise ValueError(f"stage must be 'lmnet' or 'linet', got {stage!r}")
    if stage == "linet" and codec is None:
        raise ValueError("the linet stage needs the codec")
    scheduler = diffusion_config(preset).ddpm()
    net.set_token_mean(tokens)  # a function of the data: the same on resume

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor], g: torch.Generator):
        batch = _flip(batch, g)
        if stage == "lmnet":
            loss = lmnet_stage_loss(
                model, batch, batch["context"], preset=preset, scheduler=scheduler, generator=g
            )
        else:
            loss = linet_stage_loss(
                model,
                batch,
                batch["context"],
                preset=preset,
                codec=codec,
                scheduler=scheduler,
                generator=g,
            )
        return loss, {}

    config = TrainConfig(
        max_steps=max_steps,
        minutes=minutes,
        batch_size=preset.batch_size,
        lr=preset.learning_rate,
        weight_decay=0.0,
        ema_decay=preset.ema_decay,
        grad_clip=1.0,
        checkpoint_every=checkpoint_every,
        log_every=10,
        seed=seed,
    )
    res = train(
        net,
        loss_fn,
        _TokenCrops(crops, tokens),
        run_dir=out,
        stage=stage,
        config=config,
        save_fn=lambda m, folder: _save_net(m, Path(folder), role=stage),
        resume=resume,
        progress=progress,
    )
    net.eval()
    return {
        "steps": res.step,
        "seconds": res.seconds,
        "loss": res.loss,
        "stopped_by": res.stopped_by,
    }


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
    hold_out: Sequence[str] = (),
) -> CropSet:
    """The training crops: a lesion set in our layout, independent-attribute crops, template lesions.

    Args:
        data_dir: a lesion set (``bench data lesions``) or None.
        preset: the model grid.
        independent: number of independent-attribute crops (:func:`~.data.independent_crops`).
        seed: their seed.
        templates: templates for the independent crops and the real lesions (default: every
            available case with an organ map, bundled and fetched).
        hold_out: lesion types whose cases of the lesion set are left out (the generalisation
            experiment: the system never sees a report of these types).
    """
    from ..rulesynth import load_templates
    from .data import crops_from_dataset, independent_crops, template_lesion_crops

    tmpl = templates if templates is not None else load_templates()
    parts: list[CropSet] = []
    if independent > 0:
        parts.append(independent_crops(tmpl, preset, independent, seed=seed))
    if data_dir is not None:
        ds = crops_from_dataset(data_dir, preset)
        if hold_out:
            keep = [i for i, m in enumerate(ds.meta) if m.get("lesion_type") not in set(hold_out)]
            log.info("held out %s: %d of %d dataset crops kept", list(hold_out), len(keep), len(ds))
            if not keep:
                raise ValueError(f"holding out {list(hold_out)} leaves no crop of {data_dir}")
            ds = ds.subset(keep)
        parts.append(ds)
    real = template_lesion_crops(tmpl, preset)
    if real:  # few real lesions: each is repeated 8 times (random flips make the copies differ)
        parts.append(CropSet.stack(real * 8))
    if not parts:
        raise ValueError("no training crops: give --data or a positive number of independent crops")
    crops = parts[0]
    for extra in parts[1:]:
        crops = crops.concat(extra)
    return crops


def _stage_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Train one diffusion stage (``job`` from :func:`train_system`); runs in or out of process."""
    from ..text import load_text_encoder
    from .data import load_crops
    from .stages import build_linet, build_lmnet
    from .system import _make_codec

    if "threads" in job:
        torch.set_num_threads(job["threads"])
    out, stage, preset = Path(job["out"]), job["stage"], job["preset"]
    crops = job.get("crops")
    if crops is None:
        crops = load_crops(out / "crops.npz")
    codec = job.get("codec")
    if codec is None:
        codec = _make_codec(preset, job["codec_config"], folder=out)
    encoder = job.get("encoder")  # loaded once by the caller when the stages run in process
    if encoder is None and job["enc_name"] is not None:
        encoder = load_text_encoder(job["enc_name"])
    kind = "mask" if stage == "lmnet" else "image"
    tokens = (
        torch.zeros(len(crops), 8, preset.context_dim)
        if encoder is None
        else crop_tokens(encoder, crops, kind)
    )
    torch.manual_seed(job["seed"])  # the initial weights depend on the seed only, in any process
    net = build_lmnet(preset) if stage == "lmnet" else build_linet(preset)
    return train_diffusion_stage(
        stage,
        net,
        crops,
        tokens,
        preset=preset,
        out=out,
        codec=codec,
        minutes=job["minutes"],
        max_steps=job["max_steps"],
        seed=job["seed"],
        resume=job["resume"],
        progress=job["progress"],
    )


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
    parallel: bool = False,
    templates: Sequence[str] | None = None,
    hold_out: Sequence[str] = (),
) -> dict[str, Any]:
    """Train the stages of a LesionDiffusion system into the run folder ``out``.

    The crops are built once and kept in ``out/crops.npz`` (reused on resume). Each stage gets the
    budget (``minutes`` or ``max_steps``) on its own. After each diffusion stage the run folder holds
    a loadable system (``LesionDiffusionSystem.load(out)``) once both networks exist. With
    ``parallel`` LMNet and LINet train at the same time in two spawned processes of one thread
    each (the same training as one after the other, on two cores at once).

    ``templates`` names the template cases (default: every available case with an organ map);
    ``hold_out`` leaves the lesion set's cases of these lesion types out (see
    :func:`build_training_crops`); both are recorded in the manifest.

    Returns:
        ``{"stages": {name: {...}}, "crops": n, "seconds": total}``.
    """
    from .codec_stage import train_vqgan
    from .data import independent_crops, load_crops, save_crops
    from .stages import measured_scale
    from .system import MANIFEST, _atomic_json, _codec_config, _make_codec

    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; allowed: {', '.join(STAGES)}")
    unknown = [t for t in hold_out if t not in report_bbox.LESION_TYPES]
    if unknown:
        raise ValueError(
            f"unknown lesion type(s) to hold out {unknown}; allowed: {', '.join(report_bbox.LESION_TYPES)}"
        )
    from ..rulesynth import load_templates

    tmpl = load_templates(list(templates) if templates is not None else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    crop_path = out / "crops.npz"
    if resume and crop_path.is_file():
        crops = load_crops(crop_path)
    else:
        crops = build_training_crops(
            data_dir, preset, independent=independent, seed=seed, templates=tmpl, hold_out=hold_out
        )
        save_crops(crops, crop_path)
    log.info("%d training crops", len(crops))
    report: dict[str, Any] = {"stages": {}, "crops": len(crops)}
    enc_name = text_encoder or preset.text_encoder
    codec = _make_codec(preset, {"kind": preset.codec, "scale_factor": 1.0}, folder=out)
    if "vqgan" in stages:
        held = independent_crops(tmpl, preset, 48, seed=seed + 1_000_003)
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
    jobs = [
        dict(
            stage=stage,
            out=str(out),
            preset=preset,
            codec_config=_codec_config(codec),
            enc_name=None if no_text else enc_name,
            minutes=minutes,
            max_steps=max_steps,
            seed=seed,
            resume=resume,
            progress=progress,
        )
        for stage in ("lmnet", "linet")
        if stage in stages
    ]
    if parallel and len(jobs) > 1:
        # One process and one thread per network: on a 2-core machine this nearly halves the wall
        # clock of two sequential stages. Each worker reloads the crops from ``out/crops.npz``.
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_stage_worker, dict(job, threads=1)) for job in jobs]
            results = [f.result() for f in futures]
    else:
        from ..text import load_text_encoder

        encoder = None if no_text or not jobs else load_text_encoder(enc_name)
        results = [
            _stage_worker(dict(job, crops=crops, codec=codec, encoder=encoder)) for job in jobs
        ]
    for job, res in zip(jobs, results, strict=True):
        report["stages"][job["stage"]] = dict(res, text=not no_text)
    manifest = {
        "format": "ctsynth-lesiondiffusion",
        "format_version": 1,
        "preset": preset.to_dict(),
        "text_encoder": enc_name,
        "text": not no_text,
        "codec": _codec_config(codec),
        "templates": [t.name for t in tmpl],
        "hold_out": list(hold_out),
    }
    _atomic_json(out / MANIFEST, manifest)
    report["seconds"] = time.monotonic() - t0
    log_path = out / "train_log.json"
    prev = json.loads(log_path.read_text()) if log_path.is_file() else {}
    prev.setdefault("runs", []).append(report)
    _atomic_json(log_path, prev)
    return report
