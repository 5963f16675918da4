"""The bench's echo client ends a time-bounded pass however the last echoes arrive.

A pass bounded by ``time_limit`` stops sending at the deadline and ends once every
message in flight is back. When one read brought back the whole window (always so
with a window of one) just as the deadline passed, the client stopped sending and
never looked at the end again: the pass hung until the 30 s guard failed it ("no
progress, timed out with N sent, N echoed back"), which ``python -m bench store``
hit at 100 sessions. Real servers on 127.0.0.1 (the raw ceiling and the daemon);
never checks a timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.core import make_pool
from bench.loadgen import echo
from bench.processes import Pinning, ServerProcess, ceiling_argv, daemon_argv, server

UNPINNED = Pinning(None, None, "unpinned: a test")


@pytest.fixture(scope="module", params=["ceiling", "daemon"])
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    name: str = request.param
    argv = ceiling_argv() if name == "ceiling" else daemon_argv()
    with server(name, argv, UNPINNED, tmp_path_factory.mktemp(name)) as proc:
        yield name, proc


@pytest.mark.parametrize("sessions", [1, 3])
def test_a_time_bounded_pass_with_a_window_of_one_ends(
    system: tuple[str, ServerProcess], sessions: int
) -> None:
    name, proc = system
    pass_ = echo(name, proc.port, make_pool(64), 10**9, 1, 0.2, proc.cpu_seconds, sessions=sessions)
    result = asyncio.run(asyncio.wait_for(pass_, 25.0))
    assert result.stopped_by == "time"
    assert result.received == result.messages > 0
    assert result.lost == 0 and result.duplicates == 0
