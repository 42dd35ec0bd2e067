"""``bench data ...`` subcommands (filled in by the data module)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` group to the ``bench`` parser."""
    parser = sub.add_parser("data", help="real CT cases: fetch, list, show")
    parser.set_defaults(group_parser=parser)
    parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
