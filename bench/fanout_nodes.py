"""The 2-process case of ``python -m bench fanout`` (issue 17): system ``daemon-2p``.

Two channels daemons (``sessiond serve --app channels --store redis://...``) share one
redis-server started for the run (``/usr/bin/redis-server``, no persistence), so they
are one channels space over the Redis bus (sessiond/channels/bus.py). The first holds
the publisher and half the subscribers (rounded down), the second the rest: each
publish is one ``XADD`` by the first and one ``XREAD`` entry for each daemon, whatever
the number of subscribers behind it. The clients and the checks are those of the
single-process ``daemon`` (bench/fanout.py); the server CPU is the sum of both daemons'
and redis-server's. All three are pinned as every server of the harness (the server
core), so on a 2-core machine this shows what crossing processes costs, not a scale-out.
Off with ``--quick`` unless ``--two-processes`` is given; skipped, saying why, without
redis-server or the ``redis`` extra.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from .harness import Context
from .processes import HOST, ServerProcess, daemon_argv, free_port
from .store import REDIS_SERVER, redis_command

if TYPE_CHECKING:
    from .fanout import FanoutSystem

DAEMON2 = "daemon-2p"
NOTE = (
    "two `sessiond serve --app channels --store redis://` processes sharing one "
    "redis-server (bench/fanout_nodes.py): the publisher and half the subscribers on the "
    "first, the other half on the second; server CPU: both daemons and redis-server"
)


class Servers:
    """Several server processes measured as one: alive if all are, their CPU summed."""

    def __init__(self, procs: Sequence[ServerProcess]) -> None:
        self.procs = procs
        self.name = "+".join(proc.name for proc in procs)
        self.port = procs[0].port

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def cpu_seconds(self) -> float:
        return sum(proc.cpu_seconds() for proc in self.procs)


def missing() -> str | None:
    """Why the case cannot run here, or None."""
    if shutil.which(REDIS_SERVER) is None:
        return f"{DAEMON2}: no {REDIS_SERVER}: `apt-get install redis-server`"
    if importlib.util.find_spec("redis") is None:
        return f"{DAEMON2}: no redis-py: pip install -e '.[redis]'"
    return None


def start(ctx: Context) -> tuple[ServerProcess, ServerProcess, ServerProcess]:
    """redis-server, then the two daemons on it."""
    port = free_port()
    directory = ctx.tmp / "redis-fanout"
    directory.mkdir()
    redis = ctx.process("redis-fanout", redis_command(port, directory), port)
    argv = [*daemon_argv("channels"), "--store", f"redis://{HOST}:{port}/0"]
    return redis, ctx.server("daemon-2p-a", argv), ctx.server("daemon-2p-b", argv)


async def open_two(
    procs: tuple[ServerProcess, ServerProcess, ServerProcess], count: int
) -> FanoutSystem:
    """*count* subscribers over the two daemons, the publisher on the first."""
    from .fanout import open_daemon  # noqa: PLC0415 - fanout imports this module

    redis, first_proc, second_proc = procs
    first = await open_daemon(first_proc, max(1, count // 2))
    rest = count - len(first.subscribers)
    try:
        second = await open_daemon(second_proc, rest) if rest else None
    except BaseException:
        await first.close()
        raise

    close_first = first.close

    async def close() -> None:
        await close_first()
        if second is not None:
            await second.close()

    first.name = DAEMON2
    first.proc = cast(ServerProcess, Servers(procs))
    first.subscribers = [*first.subscribers, *(second.subscribers if second else ())]
    first.close = close
    first.setup_seconds += second.setup_seconds if second else 0.0
    first.notes = [
        f"{DAEMON2}: {len(first.subscribers) - rest:,} + {rest:,} subscribers; "
        + "; ".join(first.notes)
    ]
    _ = redis
    return first
