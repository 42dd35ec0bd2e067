"""``bench data lesions``: build a rule-based synthetic lesion set, or check one against the rules."""

from __future__ import annotations

import argparse
import logging
import math
import sys

log = logging.getLogger("ctsynth_bench")


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``lesions`` to the ``bench data`` subcommands."""
    p = data_subparsers.add_parser(
        "lesions",
        help="synthesize rule-based lesions in real CT templates, or measure a set (--stats)",
        description="Draw a report per case over the 14 lesion types, place it in a real CT template, "
        "write the nnU-Net-style dataset (resumable). With --stats DIR: measure every case and compare each "
        "attribute value with its documented rule.",
    )
    p.add_argument("--n", type=int, help="number of cases to have in --out")
    p.add_argument("--out", help="dataset directory (created; an existing one is resumed)")
    p.add_argument("--types", nargs="+", metavar="TYPE", help="lesion types (default: all 14)")
    p.add_argument("--seed", type=int, default=None, help="base seed (default 0)")
    p.add_argument("--templates", nargs="+", metavar="CASE",
                   help="template case names from 'bench data list' (default: every case with an organ map)")
    p.add_argument("--template-files", nargs="+", metavar="CT:ORGANS",
                   help="extra templates as NIfTI pairs 'ct.nii.gz:organs.nii.gz' (TotalSegmentator v2 ids)")
    p.add_argument("--no-deform", action="store_true", help="no anatomy augmentation (deformation, jitter, flips)")
    p.add_argument("--stats", metavar="DIR", help="measure the set in DIR and print it next to the rules")
    p.add_argument("--gallery", metavar="PNG", help="with --stats: also draw one lesion per type to PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


#: Options of the synthesis run; --stats measures an existing set and takes none of them.
_RUN_OPTIONS = ("n", "out", "types", "templates", "template_files", "no_deform", "seed")


def _given(args: argparse.Namespace, name: str) -> bool:
    return getattr(args, name) not in (None, False)


def _check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no template and no heavy import, before anything is loaded."""
    from .._checks import check_dataset_folder, check_dataset_options, check_file_target
    from ..exceptions import BenchError

    if args.gallery is not None and args.stats is None:
        raise BenchError("--gallery draws a set measured with --stats DIR; add --stats DIR")
    if args.stats is not None:
        if not args.stats.strip():
            raise BenchError("--stats is empty; give the folder of a lesion set")
        extra = [f"--{n.replace('_', '-')}" for n in _RUN_OPTIONS if _given(args, n)]
        if extra:
            raise BenchError(
                f"--stats measures an existing set and takes no {', '.join(extra)}; run the "
                "synthesis and the measurement as two commands"
            )
        if args.gallery is not None:
            check_file_target(args.gallery, "--gallery")
        return
    if args.out is None:
        raise BenchError("bench data lesions needs --out DIR and --n N (or --stats DIR to measure a set)")
    if args.n is None:
        raise BenchError("bench data lesions needs --n N, the number of cases to have in --out")
    if args.seed is None:
        args.seed = 0
    check_dataset_options(
        n=args.n, seed=args.seed, types=args.types,
        names={"n": "--n", "seed": "--seed", "types": "--types"},
    )  # fmt: skip
    check_dataset_folder(args.out, label="--out")
    for pair in args.template_files or []:
        ct, sep, organs = pair.partition(":")
        if not sep or not ct or not organs:
            raise BenchError(f"--template-files takes CT:ORGANS file pairs, got {pair!r}")
    if args.templates:
        twice = sorted({t for t in args.templates if args.templates.count(t) > 1})
        if twice:
            raise BenchError(f"--templates lists {', '.join(twice)} more than once; list each once")


def _templates(args: argparse.Namespace) -> list:
    from ..rulesynth import load_templates, template_from_files
    from ..rulesynth._rules import SynthError

    templates = []
    for pair in args.template_files or []:
        ct, sep, organs = pair.partition(":")
        if not sep:
            raise SynthError(f"--template-files takes CT:ORGANS pairs, got {pair!r}")
        templates.append(template_from_files(ct, organs))
    if args.templates or not templates:
        try:
            templates.extend(load_templates(args.templates))
        except SynthError:
            if not templates:
                raise
    return templates


def run(args: argparse.Namespace) -> int:
    """Handler of ``bench data lesions``."""
    _check_arguments(args)
    from ..rulesynth import (
        check_rules,
        load_and_measure,
        summarize,
        synthesize_dataset,
        type_agreement,
    )
    from ..viz import make_gallery

    progress = not (args.no_progress or args.quiet)
    if args.stats:
        measures = load_and_measure(args.stats, progress=progress)
        checks = check_rules(measures)
        print(f"{len(measures)} cases in {args.stats}")
        print(summarize(checks))
        scored = [c for c in checks if not math.isnan(c.agreement)]
        total = sum(c.agreement * len(c.measured) for c in scored) / max(1, sum(len(c.measured) for c in scored))
        print(f"overall agreement: {100 * total:.1f}%")
        print(f"\n{'lesion type':<22}{'cases':>6}{'checks':>8}  agree")
        for name, (cases, made, passed) in type_agreement(measures).items():
            print(f"{name:<22}{cases:>6}{made:>8}  {100 * passed / max(made, 1):5.1f}%")
        if args.gallery:
            shown = make_gallery(args.stats, args.gallery)
            print(f"gallery: {args.gallery} ({len(shown)} lesion types)")
        return 0
    summary = synthesize_dataset(args.out, n=args.n, templates=_templates(args), types=args.types, seed=args.seed,
                                 deform=not args.no_deform, progress=progress)
    if summary.beyond_n and not summary.written:
        total = summary.skipped_existing + summary.beyond_n
        print(f"{args.out}: holds {total} finished cases, more than --n {args.n}; nothing written, "
              f"nothing deleted (the {summary.beyond_n} beyond the first {args.n} stay; delete them "
              "or pass a larger --n)")
    else:
        print(f"{args.out}: wrote {summary.written}, kept {summary.skipped_existing} finished, "
              f"failed {summary.failed}" + (f"; {summary.beyond_n} more beyond --n left in place"
                                            if summary.beyond_n else ""), file=sys.stdout)
    if summary.unavailable_types:
        print(f"skipped (no template has the organ): {', '.join(summary.unavailable_types)}")
    for name, count in sorted(summary.counts.items()):
        print(f"  {name:<20}{count}")
    return 0
