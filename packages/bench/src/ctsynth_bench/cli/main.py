"""The ``bench`` command: a thin argparse shell over the ctsynth-bench Python API.

Each subcommand group lives in its own module of :mod:`ctsynth_bench.cli` with a
``register(subparsers)`` function; :data:`COMMANDS` lists them. Every handler takes the parsed namespace and returns
an exit status. User errors (:class:`ValueError` subclasses, missing files) become one line on
stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__

#: name -> module providing ``register(subparsers)``; order is the order in ``--help``.
COMMANDS: dict[str, str] = {
    "data": "ctsynth_bench.cli.data",
    "systems": "ctsynth_bench.cli.systems",
    "train": "ctsynth_bench.cli.train",
    "synth": "ctsynth_bench.cli.synth",
    "run": "ctsynth_bench.cli.run",
    "perf": "ctsynth_bench.cli.perf",
}

log = logging.getLogger("ctsynth_bench")


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="bench",
        description="ctsynth: text-controlled 3D CT synthesis (LesionDiffusion, GuideGen).",
    )
    parser.add_argument("--version", action="version", version=f"ctsynth-bench {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and results")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bench`` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "func", None)
    if handler is None:
        # A group given without its subcommand ("bench data"): show that group's help.
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"bench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
