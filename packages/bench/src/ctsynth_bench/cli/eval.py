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


def _gg_sections(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        out = ()
    if not out or any(k not in range(1, 8) for k in out):
        raise argparse.ArgumentTypeError(f"sections are a comma list of 1..7; got {text!r}")
    return out


def _sizes(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        out = ()
    if not out or any(k < 0 for k in out):
        raise argparse.ArgumentTypeError(
            f"sizes are a comma list of generated-pair counts >= 0, e.g. 0,100,200,500; got {text!r}"
        )
    return out


def _cmd_eval_guidegen(args: argparse.Namespace) -> int:
    from ..eval.guidegen import GGEvalSettings, evaluate_guidegen

    kw = {
        name: getattr(args, name)
        for name in (
            "n_per_site",
            "n_real",
            "n_sampler",
            "baseline_minutes",
            "ablation_minutes",
            "ae_minutes",
            "classifier_minutes",
            "seg_minutes",
            "segmenter",
            "nnunet_minutes",
            "downstream_sizes",
            "n_real_train",
            "n_tumour_test",
            "n_train",
            "max_steps",
            "baseline_steps",
            "seed",
        )
        if getattr(args, name) is not None
    }
    summary = evaluate_guidegen(
        args.run,
        out=args.out,
        settings=GGEvalSettings(**kw),
        sections=args.sections,
        progress=not args.quiet,
    )
    total = sum(summary.seconds.values())
    print(f"report: {summary.report} ({total / 60:.1f} min)")
    return 0


def _register_guidegen(systems: argparse._SubParsersAction) -> None:
    p = systems.add_parser(
        "guidegen",
        help="mask and image quality, alignment, prompt alignment, ablations, sampler, downstream",
        description="The GuideGen paper's experiments on a run (default: the shipped demo): (1) "
        "FID/LPIPS of label maps with two baselines, (2) FID/LPIPS/FVD of CTs from generated (G) "
        "and real (R) maps, (3) image-mask Dice per organ, (4) tumour site and count accuracy and a "
        "site classifier, (5) ablations retrained here (plain cross-attention, no anatomy pyramid, "
        "no HDR window), (6) fast vs ancestral sampler, (7) a segmenter trained on generated pairs "
        "with and without real ones. Writes OUT/report.md with PNGs; an interrupted run resumes.",
    )
    p.add_argument("--run", help="run folder (default: the shipped demo system)")
    p.add_argument("--out", default="gg_eval", help="evaluation folder (default gg_eval)")
    p.add_argument(
        "--sections", type=_gg_sections, default=(1, 2, 3, 4, 5, 6, 7),
        help="comma list of sections to run (default 1,2,3,4,5,6,7)",
    )  # fmt: skip
    p.add_argument("--n-per-site", type=int, help="held-out prompts per tumour site (default 8)")
    p.add_argument("--n-real", type=int, help="real cases compared with (default 40)")
    p.add_argument("--n-sampler", type=int, help="prompts of the sampler comparison (default 10)")
    p.add_argument("--baseline-minutes", type=float, help="continuous baseline budget (default 4)")
    p.add_argument("--baseline-steps", type=int, help="continuous baseline DDIM steps (default 50)")
    p.add_argument("--ablation-minutes", type=float, help="budget per TCSS arm (default 4)")
    p.add_argument("--ae-minutes", type=float, help="budget per autoencoder arm (default 2)")
    p.add_argument("--classifier-minutes", type=float, help="site classifier budget (default 1)")
    p.add_argument("--seg-minutes", type=float, help="budget per downstream segmenter (default 1)")
    p.add_argument(
        "--segmenter", choices=("run", "nnunet"),
        help="section 3's segmenter: the run's own (default) or nnU-Net v2 trained here on real "
        "cases (needs the 'nnunet' extra)",
    )  # fmt: skip
    p.add_argument("--nnunet-minutes", type=float, help="section 3's nnU-Net budget (default 10)")
    p.add_argument(
        "--downstream-sizes", type=_sizes, help="generated pairs per arm (default 0,100,200,500)"
    )
    p.add_argument("--n-real-train", type=int, help="real training pairs of section 7 (default 40)")
    p.add_argument("--n-tumour-test", type=int, help="copies of the real tumour case (default 12)")
    p.add_argument("--n-train", type=int, help="real cases the trained baselines use (default 160)")
    p.add_argument("--max-steps", type=int, help="cap on every training's steps (quick runs)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_cmd_eval_guidegen)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench eval lesiondiffusion``."""
    parser = sub.add_parser(
        "eval",
        help="the paper's experiments on a trained system (lesiondiffusion, guidegen)",
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
    _register_guidegen(systems)
