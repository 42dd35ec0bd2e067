"""``bench eval <system>``: the paper's experiments on a trained system, as a Markdown report."""

from __future__ import annotations

import argparse


def _types(text: str) -> tuple[str, ...]:
    import report_bbox

    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in report_bbox.LESION_TYPES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"lesion types are a comma list of {', '.join(report_bbox.LESION_TYPES)}; got {text!r}"
        )
    return names


def _sections(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        out = ()
    if not out or any(k not in (1, 2, 3, 4, 5) for k in out):
        raise argparse.ArgumentTypeError(f"sections are a comma list of 1..5; got {text!r}")
    return out


def _cmd_eval_lesiondiffusion(args: argparse.Namespace) -> int:
    from ..eval.lesiondiffusion import EvalSettings, evaluate_lesiondiffusion
    from .synth import check_run_folder

    run = check_run_folder(args.run)
    kw = {}
    if args.types:
        kw["types"] = args.types
    if args.align_types:
        kw["align_types"] = args.align_types
    for name in (
        "n_align",
        "n_generated",
        "n_rule_train",
        "n_rule_test",
        "n_control",
        "n_held_out",
        "seed",
        "steps",
    ):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.seg_minutes is not None:
        kw["seg_minutes"] = args.seg_minutes
    if args.train_minutes is not None or args.train_steps is not None:
        kw["train_minutes"] = args.train_minutes
        kw["train_max_steps"] = args.train_steps
    if args.held_out_type:
        kw["held_out_type"] = args.held_out_type
    settings = EvalSettings(segmenter=args.segmenter, **kw)
    out = args.out or "ld_eval"
    summary = evaluate_lesiondiffusion(
        run,
        out=out,
        data=args.data,
        settings=settings,
        reference_run=args.reference_run,
        no_text_run=args.no_text_run,
        held_out_run=args.held_out_run,
        sections=args.sections,
        progress=not args.quiet,
    )
    total = sum(summary.seconds.values())
    print(f"report: {summary.report} ({total / 60:.1f} min)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench eval lesiondiffusion``."""
    parser = sub.add_parser(
        "eval",
        help="the paper's experiments on a trained system (lesiondiffusion)",
        description="Evaluate a trained system; see 'bench eval SYSTEM -h'.",
    )
    parser.set_defaults(group_parser=parser)
    systems = parser.add_subparsers(dest="system", metavar="SYSTEM")
    p = systems.add_parser(
        "lesiondiffusion",
        help="text alignment, image quality, downstream segmentation, ablation, unseen type",
        description="The LesionDiffusion paper's experiments on a run: (1) text alignment per lesion "
        "type (Fig. 4), (2) FID/KID/LPIPS of lesion crops, (3) downstream segmentation (Tab. 1) with "
        "a small UNet or nnU-Net v2, (4) the system retrained without text (Tab. 2), (5) a lesion "
        "type held out in training (Fig. 3). Writes OUT/report.md with PNGs; an interrupted run "
        "resumes. Needs the real lung tumours of 'bench data fetch'.",
    )
    p.add_argument("--run", help="run folder (default: the shipped demo system)")
    p.add_argument("--data", help="lesion set to train on instead of a rule-based set made here")
    p.add_argument(
        "--segmenter",
        choices=("unet", "nnunet"),
        default="unet",
        help="downstream segmenter (default unet; nnunet needs the 'nnunet' extra)",
    )
    p.add_argument("--out", help="evaluation folder (default ld_eval)")
    p.add_argument(
        "--sections",
        type=_sections,
        default=(1, 2, 3, 4, 5),
        help="comma list of sections to run (default 1,2,3,4,5)",
    )
    p.add_argument(
        "--types",
        type=_types,
        help="lesion types of the downstream experiments "
        "(default lung_cancer,liver_cancer,kidney_cancer)",
    )
    p.add_argument(
        "--align-types", type=_types, help="lesion types of the alignment check (default: all)"
    )
    p.add_argument(
        "--held-out-type", help="lesion type held out in section 5 (default bladder_cancer)"
    )
    p.add_argument(
        "--reference-run", help="section 4/5: a system trained with text on the same set"
    )
    p.add_argument("--no-text-run", help="section 4: a system trained with --no-text")
    p.add_argument("--held-out-run", help="section 5: a system trained with --hold-out TYPE")
    p.add_argument(
        "--train-steps",
        type=int,
        help="optimizer steps per stage of the systems trained here for sections 4/5 (default 1200)",
    )
    p.add_argument(
        "--train-minutes",
        type=float,
        help="or minutes per stage (with --train-steps: whichever ends first)",
    )
    p.add_argument("--seg-minutes", type=float, help="minutes per segmenter (default 1)")
    p.add_argument("--n-align", type=int, help="boxes per type in section 1 (default 4)")
    p.add_argument("--n-generated", type=int, help="lesions per type for sections 2-4 (default 8)")
    p.add_argument("--n-rule-train", type=int, help="rule-based training cases (default 140)")
    p.add_argument("--n-rule-test", type=int, help="rule-based test cases (default 42)")
    p.add_argument(
        "--n-control", type=int, help="boxes of the section 4 control check (default 20)"
    )
    p.add_argument("--n-held-out", type=int, help="lesions per arm in section 5 (default 12)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the preset's)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_cmd_eval_lesiondiffusion)
