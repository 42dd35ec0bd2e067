"""``bench systems``: list the registered full systems (:mod:`ctsynth_bench.systems`)."""

from __future__ import annotations

import argparse
import json


def _cmd_systems(args: argparse.Namespace) -> int:
    from ..systems import SYSTEMS

    if args.json:
        rows = [
            {"name": s.name, "module": s.module, "description": s.description}
            for s in SYSTEMS.values()
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len(n) for n in SYSTEMS] + [6])
    for system in SYSTEMS.values():
        print(f"{system.name:<{width}}  {system.description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``systems`` command to the ``bench`` parser."""
    parser = sub.add_parser(
        "systems",
        help="list the full systems (LesionDiffusion, GuideGen)",
        description="List the registered full systems with what each makes.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_cmd_systems)
