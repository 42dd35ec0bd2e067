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
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--templates", nargs="+", metavar="CASE",
                   help="template case names from 'bench data list' (default: every case with an organ map)")
    p.add_argument("--template-files", nargs="+", metavar="CT:ORGANS",
                   help="extra templates as NIfTI pairs 'ct.nii.gz:organs.nii.gz' (TotalSegmentator v2 ids)")
    p.add_argument("--no-deform", action="store_true", help="no anatomy augmentation (deformation, jitter, flips)")
    p.add_argument("--stats", metavar="DIR", help="measure the set in DIR and print it next to the rules")
    p.add_argument("--gallery", metavar="PNG", help="with --stats: also draw one lesion per type to PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


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
    from ..rulesynth import (
        check_rules,
        load_and_measure,
        summarize,
        synthesize_dataset,
        type_agreement,
    )
    from ..rulesynth._rules import SynthError
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
    if args.n is None or args.out is None:
        raise SynthError("bench data lesions needs --n and --out (or --stats DIR to measure a set)")
    summary = synthesize_dataset(args.out, n=args.n, templates=_templates(args), types=args.types, seed=args.seed,
                                 deform=not args.no_deform, progress=progress)
    print(f"{args.out}: wrote {summary.written}, kept {summary.skipped_existing} finished, "
          f"failed {summary.failed}", file=sys.stdout)
    if summary.unavailable_types:
        print(f"skipped (no template has the organ): {', '.join(summary.unavailable_types)}")
    for name, count in sorted(summary.counts.items()):
        print(f"  {name:<20}{count}")
    return 0
