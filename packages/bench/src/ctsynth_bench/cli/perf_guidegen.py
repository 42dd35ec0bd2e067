"""``bench perf guidegen``: seconds and peak memory per stage and per volume, for each preset.

Joins the ``perf`` group that :mod:`.perf` makes (or makes it), like :mod:`.guidegen`.

    bench perf guidegen [--run RUN] [--presets demo,paper] [--device cpu|cuda] [--batch B]
                        [--repeats N] [--tcss-steps N] [--gen-steps N] [--threads T] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .guidegen import _group


def _presets(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _cmd_perf(args: argparse.Namespace) -> int:
    import torch

    from ..exceptions import BenchError
    from ..guidegen.perf import check_options, format_table, run_perf

    presets = args.presets
    if presets is None:
        presets = ("demo", "paper") if args.device.startswith("cuda") else ("demo",)
    check_options(
        presets,
        device=args.device,
        repeats=args.repeats,
        batch=args.batch,
        tcss_steps=args.tcss_steps,
        gen_steps=args.gen_steps,
    )
    if args.run is not None and not args.run.is_dir():
        raise BenchError(
            f"--run {args.run}: no such folder (give a GuideGen run folder, or leave --run out "
            f"for the shipped demo system)"
        )
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    result = run_perf(
        args.run,
        presets=presets,
        device=args.device,
        batch=args.batch,
        repeats=args.repeats,
        tcss_steps=args.tcss_steps,
        gen_steps=args.gen_steps,
        progress=not args.quiet,
    )
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_table(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``guidegen`` to the ``perf`` group."""
    p = _group(sub, "perf", "time and memory of a full system").add_parser(
        "guidegen",
        help="GuideGen: seconds and peak memory per stage and per volume, per preset",
        description="Seconds and peak memory of prompt encoding, TCSS sampling, latent generator, "
        "HDR decode and NIfTI writing, per stage and per volume, for each preset. The run's preset "
        "uses its weights, the others random ones. On CUDA the paper preset is set against the "
        "paper's 8.9 GB and MAISI's 3 s; on the CPU the paper preset (asked with --presets) runs "
        "one network call per stage and its per-volume time is extrapolated (needs about 8 GiB).",
    )
    p.add_argument(
        "--run", type=Path, default=None, help="run folder (default: the shipped demo system)"
    )
    p.add_argument(
        "--presets",
        type=_presets,
        default=None,
        help="comma list of demo, paper (default: demo on the CPU, demo,paper on CUDA)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--batch", type=int, default=1, help="volumes per batch (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed batches, median (default 1)")
    p.add_argument(
        "--tcss-steps", type=int, default=None, help="fast TCSS steps (default: the preset's)"
    )
    p.add_argument(
        "--gen-steps", type=int, default=None, help="generator DDIM steps (default: the preset's)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_perf)
