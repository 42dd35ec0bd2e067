"""``bench train guidegen``: the demo set (or a user's set), then TCSS, autoencoder, generator.

Every stage trains on the shared engine (:func:`ctsynth_bench.train.train`: budgets, EMA,
resume, DDP under torchrun, run folder). The HDR autoencoder uses the engine's adversary: each
step updates the autoencoder, then its two discriminators, with an optimiser each
(:func:`.stages.train_autoencoder`); its held-out error against the non-learned baseline is
recorded in ``guidegen.json``.

A user's set (``--data DIR``) holds ``imagesTr/<case>_0000.nii.gz`` (CT), ``organs/<case>.nii.gz``
(TotalSegmentator v1/v2 ids), optional ``labelsTr/<case>.nii.gz`` (tumour mask) and
``prompts/<case>.json`` with either ``{"prompt": "..."}`` in the template or the fields.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..exceptions import BenchError
from .data import build_demo_set
from .presets import GuideGenPreset, get_preset, tumour_class_weights
from .prompts import PromptFields, cells, parse_prompt, prompt_bank
from .system import write_manifest

__all__ = ["STAGES", "bank_fields", "prepare_data", "train_guidegen"]

log = logging.getLogger(__name__)
STAGES = ("tcss", "autoencoder", "generator", "segmenter")
PER_CELL = 16
#: Shares of ``minutes`` the CT stages take when they run together (the TCSS gets all of it). The
#: alignment segmenter is a check, not a product: 6 min of one CPU thread (1,428 steps) reached
#: held-out real-CT Dice liver 0.90, lung 0.92, spleen 0.82.
CT_SHARES = {"autoencoder": 0.45, "generator": 0.40, "segmenter": 0.15}


def bank_fields(path: Path) -> list[PromptFields]:
    """The prompt fields stored in a bank's metadata (one per row of its tokens)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    if "prompts" not in meta:
        raise BenchError(
            f"{path}: the prompt bank has no stored prompt fields; delete it to remake it"
        )
    return [PromptFields.from_dict(f) for f in json.loads(meta["prompts"])]


def _encode_bank(fields: Sequence[PromptFields], path: Path) -> None:
    from safetensors.torch import save_file

    from ..text import encode_prompts, load_text_encoder

    tokens, mask = encode_prompts(load_text_encoder("minilm"), [f.text for f in fields])
    save_file(
        {"tokens": tokens.half().contiguous(), "mask": mask.contiguous()},
        str(path),
        metadata={"prompts": json.dumps([f.to_dict() for f in fields])},
    )


def _user_set(src: Path, out: Path, *, n: int, seed: int, with_ct: bool) -> None:
    """Deformed copies of a user's cases, with their own tumours and prompts."""
    from .. import data as bdata
    from ._labels import map_organs
    from .data import GGTemplate, _resample

    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (src / "imagesTr").glob("*_0000.nii.gz"))
    if not cases:
        raise BenchError(f"--data {src}: no imagesTr/<case>_0000.nii.gz found")
    temps, fields = [], []
    for c in cases:
        organs_p, prompt_p = src / "organs" / f"{c}.nii.gz", src / "prompts" / f"{c}.json"
        for need in (organs_p, prompt_p):
            if not need.exists():
                raise BenchError(f"--data {src}: case {c} has no {need.relative_to(src)}")
        ct, aff = bdata.read_nifti(src / "imagesTr" / f"{c}_0000.nii.gz")[:2]
        org = bdata.read_nifti(organs_p)[0]
        les_p = src / "labelsTr" / f"{c}.nii.gz"
        les = bdata.read_nifti(les_p)[0] > 0 if les_p.exists() else None
        lab = map_organs(np.asarray(org).astype(np.int64), les)
        p = json.loads(prompt_p.read_text())
        f = parse_prompt(p["prompt"]) if "prompt" in p else PromptFields.from_dict(p)
        body = np.argwhere(np.asarray(ct) > -500)
        centre = (np.asarray(aff) @ np.r_[body.mean(axis=0), 1.0])[:3]
        temps.append(
            GGTemplate(
                name=c,
                ct=np.asarray(ct, np.float32),
                labels=lab,
                affine=np.asarray(aff),
                centre=centre,
                sites=(f.site,),
            )
        )
        fields.append(f)
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(cases), size=n)
    labels, cts = [], []
    for i in idx:
        lab, ct = _resample(temps[i], rng, with_ct)
        labels.append(lab)
        if with_ct:
            cts.append(np.clip(np.round(ct), -1024, 3071).astype(np.int16))
    arrays = {
        "labels": np.stack(labels),
        "fields": np.array([json.dumps(fields[i].to_dict()) for i in idx]),
        "template": np.array([cases[i] for i in idx]),
        "prompt_index": idx,
    }
    if with_ct:
        arrays["ct"] = np.stack(cts)
    np.savez_compressed(out / ("ct.npz" if with_ct else "labels.npz"), **arrays)
    if not (out / "bank.safetensors").exists():
        _encode_bank(fields, out / "bank.safetensors")


def prepare_data(
    out: Path, *, data: Path | None, n_labels: int, n_ct: int, seed: int, workers: int = 1
) -> Path:
    """Make (or reuse) ``out/data/{labels.npz, ct.npz, bank.safetensors}``."""
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    if data is not None:
        if not (d / "labels.npz").exists():
            _user_set(Path(data), d, n=n_labels, seed=seed, with_ct=False)
        if not (d / "ct.npz").exists():
            _user_set(Path(data), d, n=n_ct, seed=seed + 1, with_ct=True)
        return d
    if not (d / "bank.safetensors").exists():
        _encode_bank(prompt_bank(0, PER_CELL), d / "bank.safetensors")
    if not (d / "labels.npz").exists():
        build_demo_set(d / "labels.npz", n=n_labels, seed=seed, with_ct=False, workers=workers)
    if not (d / "ct.npz").exists():
        build_demo_set(d / "ct.npz", n=n_ct, seed=seed + 100, with_ct=True, workers=workers)
    return d


def _choices(npz: Any) -> torch.Tensor:
    if "prompt_index" in npz:  # a user's set: each case its own prompt
        return torch.from_numpy(np.asarray(npz["prompt_index"], dtype=np.int64))[:, None]
    cell = torch.tensor(
        [
            cells().index((f["site"], f["count"], f["size"]))
            for f in (json.loads(s) for s in npz["fields"])
        ]
    )
    return cell[:, None] * PER_CELL + torch.arange(PER_CELL)[None]


class _Pairs(Dataset):
    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)


def train_alignment_segmenter(
    out: Path,
    ct: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_hold: int,
    minutes: float | None,
    max_steps: int | None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the image-mask alignment segmenter on real CTs (``out/segmenter``).

    It learns the GuideGen classes from the real (deformed template) CTs of the run's CT set,
    cases ``n_hold..``; its Dice on the held-out real cases ``..n_hold`` is the ceiling that the
    generated CTs are compared with.
    """
    from ..segment import dice_per_class, predict, train_segmenter
    from ._labels import GUIDEGEN_CLASSES, NUM_CLASSES
    from .stages import labels_to_ct_grid

    lab = labels_to_ct_grid(labels.long(), ct.shape[-1])[:, 0]
    seg = train_segmenter(
        ct[n_hold:],
        lab[n_hold:],
        num_classes=NUM_CLASSES,
        run_dir=out,
        stage="segmenter",
        minutes=minutes,
        max_steps=max_steps,
        resume=resume,
        device=device,
        seed=seed,
        progress=progress,
    )
    d = dice_per_class(predict(seg, ct[:n_hold]), lab[:n_hold], num_classes=NUM_CLASSES)
    return {
        "held_out": n_hold,
        "real_dice": {GUIDEGEN_CLASSES[i + 1]: float(v) for i, v in enumerate(d) if np.isfinite(v)},
    }


def _train_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One process of a parallel :func:`train_guidegen` (one torch thread)."""
    torch.set_num_threads(1)
    return train_guidegen(**job)


def train_guidegen(
    out: str | Path,
    *,
    preset: str | GuideGenPreset = "demo",
    data: str | Path | None = None,
    stages: Sequence[str] = STAGES,
    max_steps: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    device: str | None = None,
    seed: int = 0,
    n_labels: int = 1500,
    n_ct: int = 300,
    workers: int = 1,
    progress: bool = True,
    parallel: bool = False,
) -> dict[str, Any]:
    """Train the chosen stages into the run folder ``out``; returns what each stage reached.

    ``minutes`` is the budget of the TCSS, and the budget the CT stages share (:data:`CT_SHARES`;
    a CT stage that runs alone gets all of it). With ``parallel`` the TCSS trains in one spawned
    process and the CT stages, one after the other, in a second (one thread each), so the whole
    system takes about ``minutes`` on two cores instead of twice that.
    """
    from cat_diffusion import CategoricalDiffusionLoss, SemanticSynthesizer, save_checkpoint
    from safetensors.torch import load_file

    from .. import train as engine
    from .stages import (
        TCSSData,
        TCSSNet,
        autoencode_error,
        drop_prompts,
        field_targets,
        labels_to_ct_grid,
        make_autoencoder,
        make_field_probe,
        make_generator,
        measure_scale,
        train_autoencoder,
    )

    bad = sorted(set(stages) - set(STAGES))
    if bad:
        raise BenchError(f"unknown GuideGen stages {bad}; allowed: {list(STAGES)}")
    if max_steps is None and minutes is None:
        raise BenchError("give a budget: --max-steps N and/or --minutes M")
    out = Path(out)
    p = preset if isinstance(preset, GuideGenPreset) else get_preset(preset)
    if not isinstance(preset, str):
        if parallel:
            raise BenchError("parallel training takes a preset name, not a preset object")
        preset = p.name
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d = prepare_data(
        out,
        data=Path(data) if data else None,
        n_labels=n_labels,
        n_ct=n_ct,
        seed=seed,
        workers=workers,
    )
    rest = tuple(s for s in stages if s != "tcss")
    if parallel and "tcss" in stages and rest:  # each worker finds the data made above
        job = dict(
            out=str(out),
            preset=preset,
            data=data,
            max_steps=max_steps,
            minutes=minutes,
            resume=resume,
            device=device,
            seed=seed,
            n_labels=n_labels,
            n_ct=n_ct,
        )
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # the TCSS shows its bar; the CT chain logs each stage's result when it ends
        jobs = [
            dict(job, stages=("tcss",), progress=progress),
            dict(job, stages=rest, progress=False),
        ]
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            reports = [f.result() for f in [pool.submit(_train_worker, j) for j in jobs]]
        merged: dict[str, Any] = {}
        for r in reports:
            merged.update(r)
        write_manifest(out, p, stages=merged)
        return merged
    bank = load_file(str(d / "bank.safetensors"))
    tokens, mask = bank["tokens"].float(), bank["mask"].bool()
    engine.start_run(
        out,
        system="guidegen",
        preset=preset,
        data={
            "source": str(data) if data else "demo",
            "labels": n_labels,
            "ct": n_ct,
            "label_grid": p.tcss.spatial_size[0],
            "ct_grid": p.ct_size,
        },
        seeds={"train": seed},
        device=str(dev),
    )
    write_manifest(out, p)
    report: dict[str, Any] = {}
    if "tcss" in stages:
        fields = field_targets(bank_fields(d / "bank.safetensors"))
        lab = np.load(d / "labels.npz")
        tdata = TCSSData(
            labels=torch.from_numpy(lab["labels"][:, None]),
            choices=_choices(lab),
            bank_tokens=tokens,
            bank_mask=mask,
        )
        loss = CategoricalDiffusionLoss(
            ce_weight=p.ce_weight, class_weights=tumour_class_weights(p.tumour_weight)
        )
        sched = SemanticSynthesizer(config=p.tcss).make_scheduler()
        on_dev: dict[str, TCSSData] = {}

        def tcss_loss(
            model: Any, batch: Any, g: torch.Generator
        ) -> tuple[torch.Tensor, dict[str, float]]:
            x0, ch = batch
            td = on_dev.setdefault(
                str(x0.device),
                TCSSData(
                    tdata.labels[:0],
                    tdata.choices[:0],
                    tokens.to(x0.device),
                    mask.to(x0.device),
                    fields.to(x0.device),
                ),
            )
            tok, msk, fld = td.prompts(ch.to(x0.device), g)
            tok, msk, kept = drop_prompts(tok, msk, p.cond_drop, g, return_kept=True)
            r = loss(model, sched, x0.long(), context=(tok, msk, fld, kept), generator=g)
            logs = {"kl": float(r.kl), "ce": float(r.ce)}
            total = r.loss
            fl = getattr(model, "module", model).field_loss  # DDP wraps the TCSSNet
            if fl is not None:
                total = total + p.field_weight * fl
                logs["fields"] = float(fl.detach())
            return total, logs

        synth0 = SemanticSynthesizer(config=p.tcss)
        net = TCSSNet(
            synth0,
            make_field_probe(synth0, p.field_weight),
            count_augment=p.count_augment,
            seed=seed,
        )
        res = engine.train(
            net,
            tcss_loss,
            _Pairs(tdata.labels, tdata.choices),
            run_dir=out,
            stage="tcss",
            config=engine.TrainConfig(
                max_steps=max_steps,
                minutes=minutes,
                batch_size=p.batch_size,
                lr=p.lr,
                ema_decay=0.995,
                weight_decay=1e-4,
                checkpoint_every=250,
                log_every=50,
                seed=seed,
            ),
            save_fn=lambda m, folder: save_checkpoint(m.synth, folder),
            resume=resume,
            device=dev,
            progress=progress,
        )
        # The engine keeps the EMA of the wrapper (keys "synth.*"); store it under the TCSS's own keys,
        # so tcss/ loads as a cat_diffusion checkpoint with its EMA weights.
        from safetensors.torch import save_file

        ema_path = res.stage_dir / "ema.safetensors"
        if ema_path.exists():
            ema = load_file(str(ema_path))
            if any(k.startswith("synth.") for k in ema):  # the probe's weights are left out
                save_file(
                    {k[len("synth.") :]: v for k, v in ema.items() if k.startswith("synth.")},
                    str(ema_path.with_suffix(".tmp")),
                )
                ema_path.with_suffix(".tmp").replace(ema_path)
        report["tcss"] = {"steps": res.step, "seconds": res.seconds, "loss": res.loss}
    if any(s in stages for s in ("autoencoder", "generator", "segmenter")):
        import ct_autoencoder as ca

        c = np.load(d / "ct.npz")
        ct = torch.from_numpy(c["ct"][:, None].astype(np.float32))
        clab = torch.from_numpy(c["labels"][:, None])
        n_hold = max(2, len(ct) // 10)
        chain = [s for s in CT_SHARES if s in stages]

        def share(stage: str) -> float | None:
            if minutes is None:
                return None
            return minutes * CT_SHARES[stage] / sum(CT_SHARES[s] for s in chain)

        if "autoencoder" in stages:
            ae = make_autoencoder(p)
            r = train_autoencoder(
                ae,
                ct[n_hold:],
                clab[n_hold:],
                run_dir=out,
                minutes=share("autoencoder"),
                max_steps=max_steps,
                batch_size=p.ae_batch_size,
                device=dev,
                seed=seed,
                resume=resume,
                progress=progress,
            )
            ae.eval()
            err = autoencode_error(ae, ct[:n_hold], clab[:n_hold])
            measure_scale(ae, ct[n_hold:], clab[n_hold:])
            if engine.dist_info().is_main:  # now with its scale factor
                ca.save_autoencoder(ae.cpu(), out / "autoencoder")
            if torch.distributed.is_initialized():  # the generator stage reads it on every rank
                torch.distributed.barrier()
            report["autoencoder"] = {
                "steps": r.step,
                "seconds": r.seconds,
                "loss": r.loss,
                "held_out": n_hold,
                **err,
                "scale_factor": float(ae.scale_factor),
            }
            log.info(
                "autoencoder: %d steps, held-out MAE %.1f HU (baseline %.1f HU)",
                r.step,
                err["autoencoder_mae_hu"],
                err["baseline_mae_hu"],
            )
        if "generator" in stages:
            ae = ca.load_autoencoder(out / "autoencoder", device=dev)
            with torch.no_grad():
                z = torch.cat(
                    [
                        ae.encode_stage_2_inputs(
                            ae.normalize(ct[i : i + 16].to(dev)),
                            labels_to_ct_grid(clab[i : i + 16].long().to(dev), p.ct_size),
                        )
                        * ae.scale_factor
                        for i in range(0, len(ct), 16)
                    ]
                ).cpu()
            pick = _choices(c)[:, 0]
            gen = make_generator(p)

            def gen_loss(
                model: Any, batch: Any, g: torch.Generator
            ) -> tuple[torch.Tensor, dict[str, float]]:
                from lesion_inpaint import generator_training_loss

                zb, lb, pb = batch
                ctx = tokens.to(zb.device)[pb.to(zb.device)]
                loss = generator_training_loss(model, zb, lb.long(), context=ctx, generator=g)
                return loss, {}

            res = engine.train(
                gen,
                gen_loss,
                _Pairs(z, clab, pick),
                run_dir=out,
                stage="generator",
                config=engine.TrainConfig(
                    max_steps=max_steps,
                    minutes=share("generator"),
                    batch_size=p.gen_batch_size,
                    lr=p.gen_lr,
                    warmup_steps=100,
                    ema_decay=0.995,
                    checkpoint_every=250,
                    log_every=50,
                    seed=seed,
                ),
                save_fn=lambda m, folder: m.save(folder),
                resume=resume,
                device=dev,
                progress=progress,
            )
            report["generator"] = {"steps": res.step, "seconds": res.seconds, "loss": res.loss}
        if "segmenter" in stages:
            report["segmenter"] = train_alignment_segmenter(
                out,
                ct,
                clab,
                n_hold=n_hold,
                max_steps=max_steps,
                minutes=share("segmenter"),
                resume=resume,
                device=dev,
                seed=seed,
                progress=progress,
            )
    write_manifest(out, p, stages=report)
    return report
