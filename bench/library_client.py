"""The sessiond client library as a load generator: what an application sees.

The ``daemon`` system drives the protocol core directly (:class:`bench.loadgen.Driver`);
the ``client`` system drives the same daemon through the public API, as an application
(and the peers' own Python clients) would: ``sessiond_client.connect(url)``, ``await
session.send(payload)`` (which waits while the server's window is full), ``await
session.recv()`` and ``session.received()`` (every message already there, without
waiting). Reconnection, the Handoff buffers and the library's timers are in the figures.
"""

from __future__ import annotations

import asyncio
import time

import sessiond_client

from .loadgen import HOST, CpuClock, EchoResult, Share, shares_pass, split
from .pingpong import PingPlan, PingResult, coroutine_pinger, open_all, run_pass

SYSTEM = "client"


async def _connect_all(port: int, count: int) -> list[sessiond_client.Session]:
    sessions: list[sessiond_client.Session] = []

    async def open_one(_index: int) -> None:
        sessions.append(await sessiond_client.connect(f"tcp://{HOST}:{port}"))

    try:
        await open_all(count, open_one)
    except BaseException:
        await _close_all(sessions)
        raise
    return sessions


async def _close_all(sessions: list[sessiond_client.Session]) -> None:
    await asyncio.gather(*(s.close(timeout=5.0) for s in sessions), return_exceptions=True)


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
    shares = [Share(system, pool, quota, window) for quota in split(messages, sessions)]
    reads = 0  # batches from recv() + received()

    async def echo(session: sessiond_client.Session, share: Share) -> None:
        nonlocal reads
        send, recv, received = session.send, session.recv, session.received
        try:
            while True:
                for payload in share.batch():
                    await send(payload)
                if share.ended():
                    return
                got = [await recv()]
                got += received()
                reads += 1
                if not share.take(got):
                    return
        except Exception as exc:  # a library error ends the pass with its reason
            if not share.done.done():
                share.done.set_exception(exc)

    opened = await _connect_all(port, sessions)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        tasks.extend(
            loop.create_task(echo(s, share)) for s, share in zip(opened, shares, strict=True)
        )

    try:
        return await shares_pass(system, shares, start, server_cpu, time_limit, lambda: reads)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close_all(opened)


async def client_ping(plan: PingPlan, port: int, server_cpu: CpuClock) -> PingResult:
    """One ping-pong pass: a ``sessiond_client.connect`` session per connection."""
    sessions = await _connect_all(port, plan.connections)

    def pinger(index: int, session: sessiond_client.Session) -> asyncio.Future[None]:
        async def receive() -> tuple[bytes, int]:
            payload = await session.recv()
            return payload, time.perf_counter_ns()

        return asyncio.ensure_future(coroutine_pinger(plan, index, session.send, receive))

    try:
        plan.begin()
        return await run_pass(plan, [pinger(i, s) for i, s in enumerate(sessions)], server_cpu)
    finally:
        await _close_all(sessions)
