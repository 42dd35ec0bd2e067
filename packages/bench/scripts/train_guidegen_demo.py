"""Train the GuideGen demo system (the shipped weights are made with this script).

Stages (run one per process, so the TCSS variants and the CT stages can share one GPU):

    python train_guidegen_demo.py bank  --out RUN            # prompt bank tokens (MiniLM), CPU
    python train_guidegen_demo.py labels --out RUN --n 2000  # the TCSS training label maps
    python train_guidegen_demo.py tcss  --out RUN --variant shipped --minutes 6 --device cuda
    python train_guidegen_demo.py ct    --out RUN --n 600 --minutes-ae 2.5 --minutes-gen 3 --device cuda

``--variant`` picks the TCSS design being compared (see VARIANTS). Everything is written under
``RUN`` (``RUN/<variant>/tcss`` checkpoints and logs, ``RUN/ct/`` autoencoder and generator).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ctsynth_bench.guidegen.data import build_demo_set
from ctsynth_bench.guidegen.presets import get_preset
from ctsynth_bench.guidegen.prompts import PromptFields, cells, prompt_bank
from ctsynth_bench.train import read_metrics

PER_CELL = 16
BANK_SEED = 0

#: TCSS designs compared by measurement (prompt alignment with and without text).
VARIANTS = {
    # knowledge injection, tumour weight 20, condition dropout (the candidate that ships)
    "shipped": {},
    # the same without tumour weighting
    "noweight": {"tumour_weight": 1.0},
    # without the field probe (the first shipped TCSS: its injection carried the site only)
    "nofields": {"field_weight": 0.0},
    # the paper's uniform noise instead of the demo's tumour-free noise
    "uniform": {"tcss": {"noise_weights": None}},
    # plain cross-attention to the tokens instead of knowledge injection (the paper's ablation)
    "crossattn": {"tcss": {"conditioning": "crossattn"}},
}


def _bank(out: Path) -> None:
    from ctsynth_bench.text import encode_prompts, load_text_encoder
    from safetensors.torch import save_file

    bank = prompt_bank(BANK_SEED, PER_CELL)
    enc = load_text_encoder("minilm")
    tokens, mask = encode_prompts(enc, [f.text for f in bank])
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {"tokens": tokens.half().contiguous(), "mask": mask.contiguous()},
        str(out / "bank.safetensors"),
        metadata={
            "per_cell": str(PER_CELL),
            "seed": str(BANK_SEED),
            "encoder": "minilm",
            "prompts": json.dumps([f.to_dict() for f in bank]),
        },
    )
    print(f"bank: {tokens.shape[0]} prompts, {tokens.shape[1]} tokens", flush=True)


def load_bank(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens, mask and field targets (site, count, size) of the prompt bank."""
    from ctsynth_bench.guidegen.stages import field_targets
    from ctsynth_bench.guidegen.training import bank_fields
    from safetensors.torch import load_file

    d = load_file(str(path))
    return d["tokens"], d["mask"].bool(), field_targets(bank_fields(path))


def cell_of(fields_json: str) -> int:
    f = PromptFields.from_dict(json.loads(fields_json))
    return cells().index((f.site, f.count, f.size))


def _tcss(args: argparse.Namespace) -> None:
    from cat_diffusion import SemanticSynthesizer
    from ctsynth_bench.guidegen.stages import TCSSData, train_tcss

    torch.manual_seed(args.seed)
    over = dict(VARIANTS[args.variant])
    tw = over.pop("tumour_weight", None)
    preset = get_preset("demo", **over)
    if args.batch:
        preset = dataclasses.replace(preset, batch_size=args.batch)
    if args.lr:
        preset = dataclasses.replace(preset, lr=args.lr)
    if args.mass_weight is not None:
        preset = dataclasses.replace(preset, mass_weight=args.mass_weight)
    if args.mass_near is not None:
        preset = dataclasses.replace(preset, mass_near=args.mass_near)
    if args.count_augment is not None:
        preset = dataclasses.replace(preset, count_augment=args.count_augment)
    if args.tumour_noise is not None:  # the tumour's weight in the noise marginal (organs: 1)
        nw = list(preset.tcss.noise_weights or [1.0] * preset.tcss.num_classes)
        nw[-1] = args.tumour_noise
        preset = dataclasses.replace(
            preset, tcss=dataclasses.replace(preset.tcss, noise_weights=tuple(nw))
        )
    src = args.data or args.out
    d = np.load(src / "labels.npz")
    tokens, mask, fields = load_bank(src / "bank.safetensors")
    cell = torch.tensor([cell_of(s) for s in d["fields"]])
    choices = cell[:, None] * PER_CELL + torch.arange(PER_CELL)[None]
    data = TCSSData(
        labels=torch.from_numpy(d["labels"][:, None]),
        choices=choices,
        bank_tokens=tokens,
        bank_mask=mask,
        bank_fields=fields,
    )
    synth = SemanticSynthesizer(config=preset.tcss)
    if args.init is not None:  # warm start from an earlier checkpoint of the same design
        from cat_diffusion import load_checkpoint

        init = load_checkpoint(args.init)
        if dataclasses.replace(init.config, noise_weights=None) != dataclasses.replace(
            preset.tcss, noise_weights=None
        ):
            raise SystemExit(f"--init {args.init}: its TCSS config differs from the variant's")
        # the same network; only the noise may differ (the weights carry over)
        synth.load_state_dict(init.state_dict())
        synth.train()
    out = args.out / args.variant
    out.mkdir(parents=True, exist_ok=True)
    (out / "preset.json").write_text(
        json.dumps({**preset.to_dict(), "tumour_weight": tw or preset.tumour_weight})
    )
    _, res = train_tcss(
        synth,
        data,
        preset,
        out=out,
        minutes=args.minutes,
        max_steps=args.max_steps,
        device=args.device,
        seed=args.seed,
        tumour_weight=tw,
        save_every=args.save_every,
        on_log=lambda r: print(args.variant, json.dumps(r), flush=True),
    )
    (out / "result.json").write_text(json.dumps({"steps": res["steps"], "seconds": res["seconds"]}))


def _ct(args: argparse.Namespace) -> None:
    import ct_autoencoder as ca
    from ctsynth_bench.guidegen.stages import (
        autoencode_error,
        make_autoencoder,
        make_generator,
        measure_scale,
        train_autoencoder,
        train_generator,
    )

    torch.manual_seed(args.seed)
    preset = get_preset("demo")
    path = args.out / "ct.npz"
    if not path.exists():
        t = time.time()
        build_demo_set(path, n=args.n, seed=args.seed + 100, with_ct=True, workers=args.workers)
        print(f"ct set {args.n} in {time.time() - t:.0f}s", flush=True)
    d = np.load(path)
    ct = torch.from_numpy(d["ct"][:, None].astype(np.float32))
    labels = torch.from_numpy(d["labels"][:, None])
    n_hold = max(2, len(ct) // 10)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ae = make_autoencoder(preset)
    r_ae = train_autoencoder(
        ae,
        ct[n_hold:],
        labels[n_hold:],
        run_dir=out,
        minutes=args.minutes_ae,
        max_steps=args.max_steps,
        device=args.device,
        seed=args.seed,
        progress=True,
    )
    ae.eval()
    err = autoencode_error(ae, ct[:n_hold], labels[:n_hold])
    scale = measure_scale(ae, ct[n_hold:], labels[n_hold:])
    print("autoencoder", r_ae.step, err, "scale", scale, flush=True)
    ca.save_autoencoder(ae.cpu(), out / "autoencoder")
    ae.to(args.device)
    dev = torch.device(args.device)
    with torch.no_grad():
        zs = []
        for i in range(0, len(ct), 16):
            x = ae.normalize(ct[i : i + 16].to(dev))
            from ctsynth_bench.guidegen.stages import labels_to_ct_grid

            zs.append(
                ae.encode_stage_2_inputs(
                    x, labels_to_ct_grid(labels[i : i + 16].long().to(dev), x.shape[-1])
                )
                * scale
            )
        z = torch.cat(zs).cpu()
    tokens, _, _ = load_bank(args.out / "bank.safetensors")
    rng = np.random.default_rng(args.seed)
    pick = [cell_of(s) * PER_CELL + int(rng.integers(PER_CELL)) for s in d["fields"]]
    tok = tokens[pick].float()
    gen = make_generator(preset)
    r_gen = train_generator(
        gen,
        z,
        labels,
        tok,
        minutes=args.minutes_gen,
        max_steps=args.max_steps,
        device=args.device,
        seed=args.seed,
    )
    gen.cpu().save(out / "generator")
    (out / "ct_result.json").write_text(
        json.dumps(
            {
                "autoencoder": {
                    "steps": r_ae.step,
                    "seconds": r_ae.seconds,
                    **err,
                    "scale_factor": scale,
                    "held_out": n_hold,
                    "log": read_metrics(out / "autoencoder")[-3:],
                },
                "generator": {
                    "steps": r_gen["steps"],
                    "seconds": r_gen["seconds"],
                    "log": r_gen["log"][-3:],
                },
            },
            indent=1,
        )
    )
    print("generator", r_gen["steps"], r_gen["log"][-1], flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["bank", "labels", "tcss", "ct"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with labels.npz + bank.safetensors (default --out)",
    )
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--init", type=Path, default=None, help="TCSS checkpoint folder to start from")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="shipped")
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--minutes-ae", type=float, default=None)
    p.add_argument("--minutes-gen", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument(
        "--mass-weight", type=float, default=None, help="override of the tumour-mass loss weight"
    )
    p.add_argument("--mass-near", type=int, default=None, help="override of the mass term's near")
    p.add_argument(
        "--count-augment", type=float, default=None, help="override of the preset's count_augment"
    )
    p.add_argument(
        "--tumour-noise",
        type=float,
        default=None,
        help="the tumour's weight in the TCSS noise marginal (each organ: 1; the demo preset: 0)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="TCSS learning rate (default: the preset's)"
    )
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(1)
    if a.stage == "bank":
        _bank(a.out)
    elif a.stage == "labels":
        t = time.time()
        build_demo_set(a.out / "labels.npz", n=a.n, seed=a.seed, with_ct=False, workers=a.workers)
        print(f"labels {a.n} in {time.time() - t:.0f}s", flush=True)
    elif a.stage == "tcss":
        _tcss(a)
    else:
        _ct(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
