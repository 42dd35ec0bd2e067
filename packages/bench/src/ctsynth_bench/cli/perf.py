"""``bench perf <system>``: time and memory of a full system (LesionDiffusion)."""

from __future__ import annotations

import argparse
import json


def _cmd_perf_lesiondiffusion(args: argparse.Namespace) -> int:
    from ..lesiondiffusion.pipeline import SynthesisError, check_options
    from .synth import check_run_folder, load_system

    check_options(n=1, seed=0, steps=args.steps, guidance=args.guidance)
    if args.repeats < 1:
        raise SynthesisError(f"--repeats must be >= 1, got {args.repeats}")
    check_run_folder(args.run)
    import torch

    from ..lesiondiffusion.perf import format_table, run_perf

    if args.threads:
        torch.set_num_threads(args.threads)
    system = load_system(args.run, device=args.device)
    result = run_perf(
        system,
        steps=args.steps,
        guidance=args.guidance,
        repeats=args.repeats,
        progress=not args.quiet,
    )
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_table(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench perf <system>`` for each registered system that implements it."""
    from ..systems import SYSTEMS

    parser = sub.add_parser(
        "perf",
        help="time and memory of a full system (lesiondiffusion, guidegen)",
        description="Measure a full system; see 'bench perf SYSTEM -h'.",
    )
    parser.set_defaults(group_parser=parser)
    systems = parser.add_subparsers(dest="system", metavar="SYSTEM")
    if "lesiondiffusion" in SYSTEMS:
        p = systems.add_parser(
            "lesiondiffusion",
            help=SYSTEMS["lesiondiffusion"].description,
            description="Seconds per lesion by stage; synthesis time on a 512x512x300 CT over a 128^3 CT "
            "(same anatomy, same lesion); sampler overhead over the bare networks; peak memory.",
        )
        p.add_argument("--run", help="run folder (default: the shipped demo system)")
        p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
        p.add_argument(
            "--guidance", type=float, default=None, help="guidance scale (default: the preset's)"
        )
        p.add_argument(
            "--repeats", type=int, default=3, help="timed lesions per CT size (default 3)"
        )
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(func=_cmd_perf_lesiondiffusion)
