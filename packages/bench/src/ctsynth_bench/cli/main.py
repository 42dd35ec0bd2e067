"""The ``bench`` command: a thin argparse shell over the ctsynth-bench Python API.

Each subcommand group lives in its own module of :mod:`ctsynth_bench.cli` with a
``register(subparsers)`` function; :data:`COMMANDS` lists them. Every handler takes the parsed namespace and returns
an exit status. Expected failures become one line on stderr and exit status 2: bad input
(:class:`ValueError` subclasses, the package's errors), operating-system errors (a read-only or
full disk, a path that is a folder or below a file: any :class:`OSError`, named with its path),
a closed output pipe (``bench data list --json | head``), and option errors from argparse. Only a
real bug shows a traceback; ``--debug`` shows it for every error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__

#: name -> module providing ``register(subparsers)``; order is the order in ``--help``.
COMMANDS: dict[str, str] = {
    "data": "ctsynth_bench.cli.data",
    "systems": "ctsynth_bench.cli.systems",
    "train": "ctsynth_bench.cli.train",
    "synth": "ctsynth_bench.cli.synth",
    "run": "ctsynth_bench.cli.run",
    "perf": "ctsynth_bench.cli.perf",
    "eval": "ctsynth_bench.cli.eval",
    "guidegen": "ctsynth_bench.cli.guidegen",  # last: joins the train/synth/run groups
    "text2lesion": "ctsynth_bench.cli.text2lesion",  # joins the synth group
    "perf_guidegen": "ctsynth_bench.cli.perf_guidegen",  # joins the perf group
}

log = logging.getLogger("ctsynth_bench")


class _Parser(argparse.ArgumentParser):
    """argparse with option errors on one line (``bench: error: ...``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"bench: error: {self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every registered subcommand."""
    parser = _Parser(
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


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        return f"{where}: {exc.strerror}" if where else exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _stdout_closed() -> int:
    # The reader went away (`bench data list --json | head`): say so once, and keep Python's
    # final flush of stdout from printing a second complaint.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    print("bench: error: the output was closed before it was all written (broken pipe)", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bench`` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # --help/--version exit 0; option errors exit 2 (one line)
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
        code = int(handler(args) or 0)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if args.debug:
            raise
        return _stdout_closed()
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"bench: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
