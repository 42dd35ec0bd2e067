"""``bench data reports``: derive structured reports from lesion masks (datasets without reports)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_reports(args: argparse.Namespace) -> int:
    from ..lesiondiffusion.reports import derive_reports

    summary = derive_reports(
        args.dir, layout=args.layout, organs=args.organs, out=args.out, progress=not args.quiet
    )
    print(
        f"{summary.out}: {len(summary.written)} derived reports, {len(summary.failed)} cases without one"
    )
    for case, why in summary.failed.items():
        print(f"  {case}: {why}", file=sys.stderr)
    return 0 if summary.written else 1


def register(data_sub: argparse._SubParsersAction) -> None:
    """Add ``reports`` to the ``bench data`` subcommands."""
    p = data_sub.add_parser(
        "reports",
        help="derive structured reports from lesion masks, CT and organ map",
        description="For each case, measure the lesion (the measurements of 'bench data lesions --stats') and "
        "write the report attributes they decide (organ, location, size, shape, density, density variations, "
        "margin); what cannot be measured is left out. Each report says it was derived.",
    )
    p.add_argument("dir", type=Path, help="dataset folder")
    p.add_argument(
        "--layout",
        choices=("ours", "nnunet"),
        default="ours",
        help="ours: imagesTr/labelsTr/organs; nnunet: nnU-Net raw or MSD with --organs (default ours)",
    )
    p.add_argument(
        "--organs", type=Path, default=None, help="folder of TotalSegmentator v2 maps <case>.nii.gz"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the reports go (default DIR/derived_reports for ours, DIR/reports for nnunet)",
    )
    p.set_defaults(func=_cmd_reports)
