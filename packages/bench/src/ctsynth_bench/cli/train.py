"""``bench train <system>``: train a full system into a run folder.

``bench train lesiondiffusion --data DIR --preset demo|paper --out RUN [--stages vqgan,lmnet,linet]
[--max-steps N | --minutes M] [--resume] [--text-encoder NAME|PATH] [--no-text]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _stages(text: str) -> tuple[str, ...]:
    from ..lesiondiffusion.training import STAGES

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STAGES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"stages are a comma list of {', '.join(STAGES)}; got {text!r}"
        )
    return names


def _cmd_lesiondiffusion(args: argparse.Namespace) -> int:
    import report_bbox

    unknown = [t for t in args.hold_out or () if t not in report_bbox.LESION_TYPES]
    if unknown:  # before torch loads
        raise ValueError(
            f"--hold-out: unknown lesion type(s) {unknown}; allowed: {', '.join(report_bbox.LESION_TYPES)}"
        )
    from ..lesiondiffusion.presets import get_preset
    from ..lesiondiffusion.training import train_system

    if args.minutes is None and args.max_steps is None:
        raise ValueError("give a training budget: --minutes M or --max-steps N (per stage)")
    preset = get_preset(args.preset)
    report = train_system(
        preset=preset,
        out=args.out,
        data_dir=args.data,
        stages=args.stages,
        minutes=args.minutes,
        max_steps=args.max_steps,
        resume=args.resume,
        text_encoder=args.text_encoder,
        no_text=args.no_text,
        independent=args.independent,
        seed=args.seed,
        progress=not args.quiet,
        parallel=args.parallel,
        templates=args.templates,
        hold_out=tuple(args.hold_out or ()),
    )
    if args.measure:
        from ..lesiondiffusion.control import measure_control
        from ..lesiondiffusion.system import LesionDiffusionSystem

        res = measure_control(LesionDiffusionSystem.load(args.out), n=args.measure, seed=args.seed)
        (Path(args.out) / "control.json").write_text(json.dumps(res.to_dict(), indent=1))
        print(res.summary())
    for name, r in report["stages"].items():
        detail = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in r.items()
            if not isinstance(v, dict)
        )
        print(f"{name}: {detail}")
    print(f"run folder: {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` with one subcommand per trainable system."""
    group = sub.add_parser(
        "train",
        help="train a full system into a run folder",
        description="Train a full system (its stages in order) into a run folder.",
    )
    systems = group.add_subparsers(dest="system", metavar="SYSTEM")
    group.set_defaults(group_parser=group)
    p = systems.add_parser(
        "lesiondiffusion",
        help="train LesionDiffusion (VQ-GAN, LMNet, LINet)",
        description="Train LesionDiffusion's stages on a lesion set (nnU-Net layout with reports, e.g. from "
        "'bench data lesions') plus lesions drawn with independent attributes into the templates. The budget "
        "applies to each stage.",
    )
    p.add_argument("--data", help="lesion set folder (imagesTr, labelsTr, organs, reports)")
    p.add_argument(
        "--preset", default="demo", choices=["demo", "paper"], help="sizes (default demo)"
    )
    p.add_argument("--out", required=True, help="run folder (created; --resume continues it)")
    p.add_argument(
        "--stages",
        type=_stages,
        default=("vqgan", "lmnet", "linet"),
        help="comma list of vqgan,lmnet,linet (default: all)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimizer steps per stage")
    budget.add_argument("--minutes", type=float, help="wall-clock minutes per stage")
    p.add_argument("--resume", action="store_true", help="continue the stages found in --out")
    p.add_argument(
        "--text-encoder", help="text encoder name or local folder (default: the preset's, minilm)"
    )
    p.add_argument(
        "--no-text", action="store_true", help="train with the null context only (ablation)"
    )
    p.add_argument(
        "--independent",
        type=int,
        default=1200,
        help="lesions drawn with independent attributes into the templates (default 1200)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--templates",
        nargs="+",
        metavar="CASE",
        help="template cases from 'bench data list' (default: every case with an organ map)",
    )
    p.add_argument(
        "--hold-out",
        nargs="+",
        metavar="TYPE",
        help="leave the lesion set's cases of these lesion types out (generalisation experiment)",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="train LMNet and LINet at once in two processes of one thread each",
    )
    p.add_argument(
        "--measure",
        type=int,
        default=0,
        metavar="N",
        help="after training, measure text control on N held-out boxes (writes control.json)",
    )
    p.set_defaults(func=_cmd_lesiondiffusion)
