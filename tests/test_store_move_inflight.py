"""A session resumed on another daemon while its owner is alive, a window in flight.

Two daemons (``--store redis``, each in its own process) on one real redis-server;
the bench's resuming client (``bench/resume.py``) streams echoes with a full window
in flight, cuts its transport with a reset and resumes on the other daemon, over and
over; every echo is checked exactly once, in order (ARCHITECTURE.md guarantee 10).

Found by ``python -m bench store --move-cuts``: when the owner saw the reset first,
its handler went on consuming the inbox and echoing while detached; those echoes
were released with the session but the consumed position was the one of the last
append, so the new owner asked the client to replay messages already answered and
echoed them a second time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.core import make_pool
from bench.processes import Pinning, daemon_argv, server
from bench.resume import resume_pass

from .redisserver import RedisServer

UNPINNED = Pinning(None, None, "unpinned: a test")


def test_moves_between_live_daemons_with_a_window_in_flight_are_exactly_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    argv = [*daemon_argv(), "--store", redis_server.url]
    with (
        server("a", argv, UNPINNED, tmp_path) as a,
        server("b", argv, UNPINNED, tmp_path) as b,
    ):
        coroutine = resume_pass(
            a.port,
            make_pool(64),
            40_000,
            1000,
            30,
            90.0,
            1,
            a.cpu_seconds,
            resume_ports=(b.port, a.port),
        )
        result = asyncio.run(asyncio.wait_for(coroutine, 180.0))
    assert result.cuts == 30
    assert result.echo.lost == 0 and result.echo.duplicates == 0, result.echo
    assert result.echo.received == result.echo.messages >= 40_000
