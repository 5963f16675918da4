"""``python -m bench [SCENARIO] [options]``: run one benchmark scenario.

Every scenario takes ``--quick``, ``--messages``, ``--repeat`` and ``--out`` and
adds its own options. Without a scenario, ``core`` runs. To add a scenario, write
a module with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and list
it in :data:`SCENARIOS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from . import BenchError, core, daemon, latency, peers


class Scenario(Protocol):
    """What ``python -m bench`` needs from a scenario module."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


SCENARIOS: dict[str, Scenario] = {
    "core": core,
    "daemon": daemon,
    "latency": latency,
    "peers": peers,
}
DEFAULT = "core"


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes, a few seconds; JSON to bench/results/quick/, RESULTS.md untouched",
    )
    common.add_argument("--messages", type=int, metavar="N", help="messages per pass")
    common.add_argument("--repeat", type=int, metavar="K", help="passes per system and size")
    common.add_argument("--out", type=Path, metavar="DIR", help="directory for the results JSON")
    return common


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m bench",
        description="sessiond benchmarks; run from the repository root.",
        epilog=f"Without a scenario, `{DEFAULT}` runs.",
    )
    commands = top.add_subparsers(dest="scenario", metavar="SCENARIO")
    common = _common_options()
    for name, scenario in SCENARIOS.items():
        sub = commands.add_parser(name, parents=[common], help=scenario.HELP)
        scenario.add_arguments(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, DEFAULT)
    args = parser().parse_args(args_list)
    try:
        return SCENARIOS[args.scenario].run(args)
    except BenchError as exc:
        print(f"bench {args.scenario}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
