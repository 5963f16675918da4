"""The sessiond client library as a load generator: what an application sees.

:mod:`bench.loadgen` and :class:`bench.pingpong.SessionPing` drive the protocol
core directly in an ``asyncio.Protocol``, the leanest client possible. Here the
same daemon is driven through the public API instead, as an application (and as
the peers' own Python clients) would use it: ``sessiond_client.connect(url)``,
``await session.send(payload)`` (which waits while the server's window is full),
``await session.recv()`` and ``session.received()`` (every message already
there, without waiting). Reconnection, the Handoff buffers and the library's
timers are all inside the figures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import sessiond_client

from . import BenchError
from .core import POOL, Checker
from .loadgen import HOST, CpuClock, EchoResult, split
from .pingpong import PingPlan, PingResult, coroutine_pinger, open_all, run_pass

SYSTEM = "client"
#: Waiting for the last echoes, beyond the pass's own time bound.
DRAIN_SECONDS = 30.0


async def client_echo(
    port: int,
    pool: list[bytes],
    messages: int,
    window: int,
    time_limit: float,
    server_cpu: CpuClock,
    system: str = SYSTEM,
    *,
    sessions: int = 1,
) -> EchoResult:
    """One windowed echo pass through *sessions* library sessions, as loadgen's ``echo``."""
    if len(pool) != POOL or not 1 <= window <= POOL // 2:
        raise BenchError(f"window must be 1..{POOL // 2} and the pool {POOL} payloads")
    opened: list[sessiond_client.Session] = []

    async def open_one(index: int) -> None:
        opened.append(await sessiond_client.connect(f"tcp://{HOST}:{port}"))

    try:
        await open_all(sessions, open_one)
        server0 = server_cpu()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        stop_at = t0 + time_limit
        try:
            counts = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        _echo(session, pool, quota, window, stop_at, system)
                        for session, quota in zip(opened, split(messages, sessions), strict=True)
                    )
                ),
                time_limit + DRAIN_SECONDS,
            )
        except TimeoutError:
            raise BenchError(f"{system}: no progress, timed out") from None
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        server = server_cpu() - server0
    finally:
        await asyncio.gather(*(s.close(timeout=5.0) for s in opened), return_exceptions=True)
    return EchoResult(
        system,
        len(pool[0]),
        window,
        sum(count.sent for count in counts),
        sum(count.received for count in counts),
        seconds,
        cpu,
        server,
        sum(count.reads for count in counts),  # batches from recv() + received()
        0,
        0,
        0,
        "time" if any(count.stopped_by == "time" for count in counts) else "count",
        sessions=sessions,
        lost=sum(count.lost for count in counts),
        duplicates=sum(count.duplicates for count in counts),
    )


@dataclass(frozen=True, slots=True)
class _Counts:
    sent: int
    received: int
    reads: int
    stopped_by: str
    lost: int
    duplicates: int


async def _echo(
    session: sessiond_client.Session,
    pool: list[bytes],
    messages: int,
    window: int,
    stop_at: float,
    system: str,
) -> _Counts:
    checker = Checker(system, pool)
    ring = pool + pool
    mask = POOL - 1
    send = session.send
    recv = session.recv
    received = session.received
    limit = messages
    sent = reads = 0
    stopped_by = "count"
    while checker.taken < limit:
        if sent < limit and time.perf_counter() >= stop_at:
            limit = sent  # the time bound: drain what is in flight, send no more
            stopped_by = "time"
        room = min(window - (sent - checker.taken), limit - sent)
        if room > 0:
            start = sent & mask
            for payload in ring[start : start + room]:
                await send(payload)
            sent += room
        if checker.taken >= limit:
            break
        got = [await recv()]
        got += received()
        reads += 1
        checker.check(got)
    lost = checker.missing + sent - checker.taken
    return _Counts(sent, checker.received, reads, stopped_by, lost, checker.duplicates)


async def client_ping(plan: PingPlan, port: int, server_cpu: CpuClock) -> PingResult:
    """One ping-pong pass: a ``sessiond_client.connect`` session per connection."""
    sessions: list[sessiond_client.Session] = []

    async def open_one(index: int) -> None:
        sessions.append(await sessiond_client.connect(f"tcp://{HOST}:{port}"))

    def pinger(index: int, session: sessiond_client.Session) -> asyncio.Future[None]:
        async def receive() -> tuple[bytes, int]:
            payload = await session.recv()
            return payload, time.perf_counter_ns()

        return asyncio.ensure_future(coroutine_pinger(plan, index, session.send, receive))

    try:
        await open_all(plan.connections, open_one)
        plan.begin()
        return await run_pass(
            plan, [pinger(i, session) for i, session in enumerate(sessions)], server_cpu
        )
    finally:
        await asyncio.gather(*(s.close(timeout=5.0) for s in sessions), return_exceptions=True)
