"""``python -m bench [SCENARIO ...] [options]``: run every benchmark scenario, or those named.

Without a scenario, every scenario runs in :data:`ORDER` (then any other registered one,
except those :data:`ON_DEMAND`); :mod:`bench.runner` runs them, sums up and plots. A
scenario is a module with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
(optionally ``headlines`` and ``targets``, see :mod:`bench.summary`), listed in
:data:`SCENARIOS`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import core, fanout, idle, latency, resume, store, storm, throughput, tls
from .runner import Registry, Scenario, run

SCENARIOS: dict[str, Scenario] = {
    "throughput": throughput,
    "latency": latency,
    "idle": idle,
    "core": core,
    "resume": resume,
    "storm": storm,
    "tls": tls,
    "fanout": fanout,
    "store": store,
}
#: The order of a default run: the steady-state figures first, on a machine not yet
#: warmed by the heavier scenarios; storm (10,000 sessions cut at once) after resume.
ORDER = ("throughput", "latency", "resume", "storm", "idle", "tls", "fanout")
#: Registered but run only when named. `core` measures the protocol core alone, in one
#: process without sockets: a tool for the hot path, not one of issue 5's end-to-end
#: comparisons (no system to compare it with), and a minute of a full run. `store` needs
#: redis-server and the `redis` extra; tests/test_bench_store.py runs its --quick.
ON_DEMAND = ("core", "store")
#: The names of earlier scenarios, which are now split across these.
ALIASES = {"daemon": ("throughput", "idle"), "peers": ("throughput", "latency")}

REGISTRY = Registry(SCENARIOS, ORDER, ON_DEMAND, ALIASES)


def main(argv: Sequence[str] | None = None) -> int:
    return run(list(sys.argv[1:] if argv is None else argv), REGISTRY)


if __name__ == "__main__":
    sys.exit(main())
