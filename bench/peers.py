"""Windowed echo passes over systems side by side, as ``python -m bench throughput`` runs them.

Every system (:mod:`bench.systems`: the daemon, the client library, the raw
ceiling, mosquitto, NATS; ``python -m bench tls`` adds its own) carries each
message from the load generator to its server and back: up to a window of
messages in flight per session (sent, not yet back), each message checked in
order when it returns, a pass ending once every message sent is back.
:func:`measure_echo` runs every system *repeat* times per payload size, their
order rotated each repetition; :func:`summarise_echo` reduces the passes to the
median and spread of each figure, keeping every repetition.

(The module is named for where it began, mosquitto and NATS beside sessiond;
the scenarios import it under this name.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import latency
from .core import make_pool
from .daemon import bound_by, client_bound
from .loadgen import EchoResult
from .processes import CoreLoad, timed_pass
from .results import Json, spread
from .systems import (
    CEILING,
    CLIENT,
    DAEMON,
    MOSQUITTO,
    NATS,
    PEERS,
    Peer,
    System,
    binary_version,
    find_binary,
    start_peer,
)

# What other scenarios import from here; the systems themselves are in bench/systems.py.
__all__ = [
    "CEILING",
    "CLIENT",
    "DAEMON",
    "MOSQUITTO",
    "NATS",
    "PEERS",
    "SIZES",
    "EchoPlan",
    "Peer",
    "System",
    "binary_version",
    "find_binary",
    "measure_echo",
    "start_peer",
    "summarise_echo",
]

SIZES = (64, 1024)


@dataclass(frozen=True, slots=True)
class EchoPlan:
    """*messages* per pass (or *time_limit* seconds), shared out over *sessions* sessions,
    each with up to *window* messages in flight."""

    messages: int
    repeat: int
    window: int
    time_limit: float
    warmup: int
    sizes: tuple[int, ...] = SIZES
    sessions: int = 1


def measure_echo(
    runner: asyncio.Runner, plan: EchoPlan, systems: Sequence[System], load: CoreLoad
) -> list[EchoResult]:
    """Every system, *repeat* passes per payload size, their order rotated each repetition."""
    runs: list[EchoResult] = []
    sessions = f"{plan.sessions} sessions  " if plan.sessions > 1 else ""
    for size in plan.sizes:
        pool = make_pool(size)
        for system in systems if plan.warmup else ():  # warm-up: caches, first sessions
            _echo_pass(runner, system, pool, plan.warmup, plan, None)
        for rep in range(plan.repeat):
            shift = rep % len(systems)
            for system in [*systems[shift:], *systems[:shift]]:
                gc.collect()
                result = _echo_pass(runner, system, pool, plan.messages, plan, load)
                runs.append(result)
                print(
                    f"  echo {sessions}{size:>5} B  rep {rep + 1}/{plan.repeat}  "
                    f"{system.name:<9} {result.rate:>11,.0f} msg/s  "
                    f"server {result.server_cpu / result.seconds:4.0%}  "
                    f"loadgen {result.client_cpu / result.seconds:4.0%}  "
                    f"{bound_by(result)}-bound",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def _echo_pass(
    runner: asyncio.Runner,
    system: System,
    pool: list[bytes],
    messages: int,
    plan: EchoPlan,
    load: CoreLoad | None,
) -> EchoResult:
    proc = system.proc
    port = system.port or proc.port
    # Only a many-session pass names its sessions: an echo function written for
    # one connection (tls's) need not take the argument.
    many = {"sessions": plan.sessions} if plan.sessions > 1 else {}
    result, others = timed_pass(
        proc,
        load,
        lambda: runner.run(
            system.echo(
                port, pool, messages, plan.window, plan.time_limit, proc.cpu_seconds, **many
            )
        ),
    )
    # Every echo function reports under its own name; the tables use the system's.
    return dataclasses.replace(result, system=system.name, others=others)


def summarise_echo(runs: list[EchoResult], names: Sequence[str], sizes: Sequence[int]) -> Json:
    """Per payload size and system: every figure's median and spread, and every repetition."""
    by_size: Json = {}
    for size in sizes:
        entry: Json = {}
        for name in names:
            mine = [run for run in runs if run.size == size and run.system == name]
            if not mine:
                continue
            entry[name] = {
                "sessions": mine[0].sessions,
                "window_per_session": mine[0].window,
                "rate": spread([run.rate for run in mine]),
                "seconds": spread([run.seconds for run in mine]),
                "server_cpu_s_per_million": spread(
                    [run.server_cpu * 1e6 / run.received for run in mine]
                ),
                "client_cpu_us_per_message": spread(
                    [run.client_cpu * 1e6 / run.received for run in mine]
                ),
                "server_cpu_share": spread([run.server_cpu / run.seconds for run in mine]),
                "client_cpu_share": spread([run.client_cpu / run.seconds for run in mine]),
                "client_bound": [client_bound(run) for run in mine],
                "other_load_share": latency.other_load([run.others for run in mine]),
                "cores_full": [
                    latency.full_cores(run.server_cpu, run.client_cpu, run.seconds, run.others)
                    for run in mine
                ],
                "bound": [bound_by(run) for run in mine],
                "messages_per_read": None
                if any(run.reads is None for run in mine)
                else spread([run.received / max(1, run.reads or 0) for run in mine]),
                "lost": sum(run.lost for run in mine),
                "duplicates": sum(run.duplicates for run in mine),
                "repetitions": [run.to_json() for run in mine],
            }
        by_size[str(size)] = entry
    return by_size
