"""``bench run <system>``: run a full system end to end and write its report (LesionDiffusion)."""

from __future__ import annotations

import argparse


def _cmd_run_lesiondiffusion(args: argparse.Namespace) -> int:
    from ..lesiondiffusion.pipeline import check_options
    from ..lesiondiffusion.run import RunError, check_out

    check_options(n=1, seed=args.seed, steps=args.steps, guidance=None)
    if args.n_control < 1:
        raise RunError(f"--n-control must be >= 1, got {args.n_control}")
    if args.train_minutes is not None and not args.train_minutes > 0:
        raise RunError(f"--train-minutes must be > 0, got {args.train_minutes}")
    if args.train_minutes is not None and not args.train:
        raise RunError("--train-minutes needs --train")
    check_out(args.out)
    import torch

    from ..lesiondiffusion.run import run_lesiondiffusion

    if args.threads:
        torch.set_num_threads(args.threads)
    s = run_lesiondiffusion(
        args.out,
        train=args.train,
        train_minutes=args.train_minutes,
        n_control=args.n_control,
        seed=args.seed,
        steps=args.steps,
        progress=not args.quiet,
    )
    c = s.control
    print(f"system: {s.weights}, run folder {s.out}")
    print(f"report: {s.report}")
    print(
        f"gallery: {s.figures.get('gallery')} ({len(s.gallery)} of 14 lesion types; cases in {s.out / 'cases'})"
    )
    if c:
        print(
            f"text control: shape {'PASS' if c['shape_passes'] else 'FAIL'} (p={c['shape_p']:.2g}), density "
            f"{'PASS' if c['density_passes'] else 'FAIL'}, size {'PASS' if c['size_passes'] else 'FAIL'}, "
            f"ablation {'holds' if c['ablation_holds'] else 'FAILS'}; numbers in {s.out / 'control.json'}"
        )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in s.seconds.items()))
    for name, why in s.failed.items():
        print(f"  not made: {name} ({why})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench run <system>`` for each registered system that implements it."""
    from ..systems import SYSTEMS

    parser = sub.add_parser(
        "run",
        help="run a full system end to end with its report (lesiondiffusion, guidegen)",
        description="Run a full system end to end; see 'bench run SYSTEM -h'.",
    )
    parser.set_defaults(group_parser=parser)
    systems = parser.add_subparsers(dest="system", metavar="SYSTEM")
    if "lesiondiffusion" in SYSTEMS:
        p = systems.add_parser(
            "lesiondiffusion",
            help=SYSTEMS["lesiondiffusion"].description,
            description="With the shipped demo weights (or --train: a demo system trained from scratch): lesions "
            "of all 14 types into the bundled real CTs, the text-control check with its ablation, and "
            "OUT/report.md with figures. OUT is a run folder for 'bench synth/perf lesiondiffusion --run OUT'.",
        )
        p.add_argument(
            "--out",
            default="lesiondiffusion_run",
            help="run folder (default ./lesiondiffusion_run)",
        )
        p.add_argument(
            "--train", action="store_true", help="train the demo system from scratch first"
        )
        p.add_argument(
            "--train-minutes",
            type=float,
            default=None,
            help="with --train: minutes of LMNet and LINet training (default 12)",
        )
        p.add_argument(
            "--n-control",
            type=int,
            default=30,
            help="held-out boxes per control check (default 30)",
        )
        p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
        p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.set_defaults(func=_cmd_run_lesiondiffusion)
