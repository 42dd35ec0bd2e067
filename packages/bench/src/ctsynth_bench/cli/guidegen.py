"""GuideGen's subcommands: ``bench train guidegen``, ``bench synth guidegen``, ``bench run guidegen``.

Registered after the other command modules: each subcommand joins the existing ``train`` /
``synth`` / ``run`` group when another module made it, and makes the group otherwise.

    bench train guidegen [--data DIR] --preset demo|paper --out RUN [--stages tcss,autoencoder,generator]
                         [--max-steps N | --minutes M] [--resume]
    bench synth guidegen [--run RUN] --prompt "..." [--n K] [--seed S] [--sampler fast|ancestral]
                         [--steps N] --out DIR
    bench run guidegen [--out DIR] [--train] [--minutes M]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _group(
    sub: argparse._SubParsersAction, name: str, help_text: str
) -> argparse._SubParsersAction:
    """The sub-subparsers of group ``name`` (made if no other module has made it)."""
    group = sub.choices.get(name)
    if group is None:
        group = sub.add_parser(name, help=help_text, description=help_text)
        group.set_defaults(group_parser=group)
        return group.add_subparsers(dest="system", metavar="SYSTEM")
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return group.add_subparsers(dest="system", metavar="SYSTEM")


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def _stages(text: str) -> tuple[str, ...]:
    from ..guidegen.training import STAGES

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STAGES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"stages are a comma list of {', '.join(STAGES)}; got {text!r}"
        )
    return names


def _cmd_train(args: argparse.Namespace) -> int:
    from ..guidegen.training import train_guidegen

    report = train_guidegen(
        args.out,
        preset=args.preset,
        data=args.data,
        stages=args.stages,
        max_steps=args.max_steps,
        minutes=args.minutes,
        resume=args.resume,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
        parallel=args.parallel,
    )
    for name, r in report.items():
        print(
            f"{name}: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
            )
        )
    print(f"run folder: {args.out}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from ..guidegen.pipeline import synthesize_to_folder
    from ..guidegen.prompts import parse_prompt
    from ..guidegen.system import load_system

    for p in args.prompt:
        parse_prompt(p)  # a bad prompt fails before any model loads
    system = load_system(args.run)
    t = time.time()
    names = synthesize_to_folder(
        system,
        args.prompt,
        args.out,
        n=args.n,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        progress=not args.quiet,
        redraw_blank=args.redraw_blank,
    )
    kind = "CT + label map" if system.has_ct else "label map"
    print(f"{len(names)} cases ({kind}) in {args.out} ({time.time() - t:.0f} s)")
    blank = [
        n for n in names if json.loads((args.out / "meta" / f"{n}.json").read_text()).get("blank_ct")
    ]
    if blank:
        print(
            f"{len(blank)} blank CT(s) (air where the label map has organs): {', '.join(blank)}; "
            + (
                "--redraw-blank N draws them again from new noise"
                if not args.redraw_blank
                else f"still blank after {args.redraw_blank} redraw(s)"
            )
        )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..guidegen.run import run_guidegen

    out = Path(args.out)
    run = args.run
    if args.train:
        from ..guidegen.training import train_guidegen

        t = time.time()
        train_guidegen(
            out, preset="demo", minutes=args.minutes, progress=not args.quiet, parallel=True
        )
        print(f"trained in {(time.time() - t) / 60:.1f} min")
        run = out
    res = run_guidegen(
        out, run=run, n_per_site=args.n_per_site, n_ancestral=args.n_ancestral, seed=args.seed
    )
    f = res["fast"]
    print(
        f"site in/on prompted organ {f['site_rate']:.2f} (text removed: chance {res['chance_site_rate']:.2f}), "
        f"count {f['count_rate']:.2f}; report: {out / 'report.md'}"
    )
    if args.json:
        print(json.dumps(res))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``guidegen`` to the ``train``, ``synth`` and ``run`` groups."""
    p = _group(sub, "train", "train a full system into a run folder").add_parser(
        "guidegen",
        help="train GuideGen (TCSS, HDR autoencoder, latent generator)",
        description="Train GuideGen's stages on the demo set (real templates, deformed, with prompted tumours) "
        "or a user's set (--data: imagesTr, organs, labelsTr, prompts). The budget applies to each stage.",
    )
    p.add_argument("--data", type=Path, default=None, help="user set (default: the demo set)")
    p.add_argument("--preset", choices=["demo", "paper"], default="demo")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument(
        "--stages",
        type=_stages,
        default=("tcss", "autoencoder", "generator", "segmenter"),
        help="comma list of tcss, autoencoder, generator, segmenter (the alignment check)",
    )
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--parallel",
        action="store_true",
        help="train the TCSS and the CT stages at the same time in two processes (two cores)",
    )
    p.set_defaults(func=_cmd_train)

    p = _group(sub, "synth", "generate synthetic cases with a trained system").add_parser(
        "guidegen",
        help="prompt -> label map -> CT (nnU-Net layout)",
        description="Generate label maps and CTs from prompts in the GuideGen template.",
    )
    p.add_argument(
        "--run", type=Path, default=None, help="run folder (default: the shipped demo system)"
    )
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    p.add_argument("--n", type=int, default=1, help="cases per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=["fast", "ancestral"], default="fast")
    p.add_argument("--steps", type=int, default=None, help="fast-sampler steps")
    p.add_argument(
        "--redraw-blank", type=_non_negative, default=0, metavar="N",
        help="draw a CT that came out blank (air where its map has organs) again, up to N times "
        "(default 0: keep it and name it)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_synth)

    p = _group(sub, "run", "run a system end to end and write its report").add_parser(
        "guidegen",
        help="gallery + prompt-alignment check + report.md",
        description="Gallery of label maps and CTs for prompts varying site and count, the prompt-alignment "
        "check (with and without text, fast vs ancestral sampler, organ HU), DIR/report.md.",
    )
    p.add_argument("--out", type=Path, default=Path("guidegen_run"))
    p.add_argument(
        "--run", type=Path, default=None, help="run folder (default: the shipped demo system)"
    )
    p.add_argument(
        "--train", action="store_true", help="train the demo from scratch into --out first"
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=20.0,
        help="with --train: the TCSS budget, and the budget the CT stages share (both at once)",
    )
    p.add_argument("--n-per-site", type=int, default=8)
    p.add_argument("--n-ancestral", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_run)
