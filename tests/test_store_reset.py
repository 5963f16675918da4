"""A client that resets its transport while the Redis store commits its messages.

The daemon with ``--store redis`` writes a batch's replies once Redis has stored
them, after an ``await``: a client may have reset its connection meanwhile. uvloop
then raises RuntimeError (not OSError) for the write to the closed transport; that
stopped the batch halfway, so the other sessions' output of that batch (a WELCOME,
echoes) was never written and their handshakes timed out. Reproduced as a user
would, with the bench's resuming client (``bench/resume.py``: cuts with a reset,
resumes at once, every echo checked in order) against the daemon in its own process
on a real redis-server; the daemon must not log that its store writer failed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.core import make_pool
from bench.processes import Pinning, daemon_argv, server
from bench.resume import resume_pass

from .redisserver import RedisServer

UNPINNED = Pinning(None, None, "unpinned: a test")


def test_resets_during_commits_lose_nothing_and_keep_the_writer(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    argv = [*daemon_argv(), "--store", redis_server.url]
    with server("daemon", argv, UNPINNED, tmp_path) as daemon:
        coroutine = resume_pass(
            daemon.port, make_pool(64), 20_000, 1000, 20, 60.0, 1, daemon.cpu_seconds
        )
        result = asyncio.run(asyncio.wait_for(coroutine, 120.0))
        log = daemon.log_path.read_text(encoding="utf-8", errors="replace")
    assert result.cuts == 20
    assert result.echo.received == result.echo.messages >= 20_000
    assert result.echo.lost == 0 and result.echo.duplicates == 0
    assert "writer failed" not in log, log
