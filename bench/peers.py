"""Windowed echo passes over systems side by side, as ``python -m bench throughput`` runs them.

Every system (:mod:`bench.systems`: the daemon, the client library, the raw
ceiling, mosquitto, NATS; ``python -m bench tls`` adds its own) carries each
message from the load generator to its server and back: up to a window of
messages in flight per session (sent, not yet back), each message checked in
order when it returns, a pass ending once every message sent is back.
:func:`measure_echo` runs every system *repeat* times per payload size, their
order rotated each repetition; :func:`summarise_echo` reduces the passes to the
median and spread of each figure, keeping every repetition."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from .core import make_pool
from .harness import Context, summarise
from .loadgen import EchoResult
from .processes import bound_by
from .results import Json
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


def measure_echo(ctx: Context, plan: EchoPlan, systems: Sequence[System]) -> list[EchoResult]:
    """Every system, *repeat* passes per payload size, their order rotated each repetition."""
    runs: list[EchoResult] = []
    many = f"{plan.sessions} sessions " if plan.sessions > 1 else ""
    for size in plan.sizes:
        pool = make_pool(size)

        def one(system: System, messages: int, pool: list[bytes] = pool) -> EchoResult:
            proc, port = system.proc, system.port or system.proc.port
            # Only a many-session pass names its sessions: an echo function written for
            # one connection (tls's) need not take the argument.
            kwargs = {"sessions": plan.sessions} if plan.sessions > 1 else {}
            coroutine = system.echo(
                port, pool, messages, plan.window, plan.time_limit, proc.cpu_seconds, **kwargs
            )
            result, others = ctx.timed(proc, lambda: ctx.run(coroutine))
            # Every echo function reports under its own name; the tables use the system's.
            return dataclasses.replace(cast(EchoResult, result), system=system.name, others=others)

        def show(result: EchoResult) -> str:
            return (
                f"echo {many}{result.size:>5} B  {result.system:<9} {result.rate:>11,.0f} msg/s  "
                f"server {result.server_cpu / result.seconds:4.0%}  "
                f"loadgen {result.client_cpu / result.seconds:4.0%}  {bound_by(result)}-bound"
            )

        runs += ctx.passes(
            systems,
            lambda system, _rep: one(system, plan.messages),
            plan.repeat,
            warmup=(lambda system: one(system, plan.warmup)) if plan.warmup else None,
            show=show,
        )
    return runs


def summarise_echo(runs: list[EchoResult], names: Sequence[str], sizes: Sequence[int]) -> Json:
    """Per payload size and system: every figure's median and spread, and every repetition."""
    return {
        str(size): {
            name: summarise([run.to_json() for run in mine])
            for name in names
            if (mine := [run for run in runs if run.size == size and run.system == name])
        }
        for size in sizes
    }
