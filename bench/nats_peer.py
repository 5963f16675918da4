"""The NATS peer: nats-server's configuration, and nats-py as its load generator.

Server: ``nats-server -c CONFIG`` with a temporary config (:func:`config`):
127.0.0.1:PORT and its defaults otherwise (no JetStream: core NATS, at most
once). Pinned to one core with ``taskset``, the Go runtime sizes GOMAXPROCS to
that one core.

Client: nats-py on the bench's asyncio loop (uvloop), used as its documentation
shows for throughput: ``await nc.publish(subject, payload)`` (buffered; its
flusher task writes), and a subscription callback ``cb(msg)`` per message. A
connection subscribes to a subject of its own and publishes to it: the server
delivers each message back to the connection that sent it (NATS echoes a
connection's own messages unless ``no_echo``). Nothing is acknowledged:
core NATS is at-most-once, so a message the server drops (slow consumer) would
show as a lost message, which fails the pass.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import deque

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from . import BenchError
from .core import POOL, Checker
from .loadgen import HOST, CpuClock, EchoResult
from .pingpong import PingPlan, PingResult, coroutine_pinger, open_all, run_pass

SYSTEM = "nats"
BINARY = "nats-server"
INSTALL = "apt-get install nats-server (the Debian package `nats-server`)"
DRAIN_SECONDS = 30.0
#: nats-server exits with 1 on SIGTERM, with 0 on SIGINT (both shut it down cleanly).
STOP_SIGNAL = signal.SIGINT

_ids = itertools.count()


def config(port: int) -> str:
    """nats-server's config for one bench run on 127.0.0.1:*port*."""
    return f"host: {HOST}\nport: {port}\n"


def command(binary: str, config_path: str) -> list[str]:
    return [binary, "-c", config_path]


def _subject() -> str:
    return f"bench.{os.getpid()}.{next(_ids)}"


async def connect(port: int) -> Client:
    """A nats-py connection that fails instead of reconnecting."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    try:
        return await nats.connect(
            f"nats://{HOST}:{port}",
            name="sessiond-bench",
            allow_reconnect=False,
            connect_timeout=5,
            error_cb=on_error,
        )
    except Exception as exc:  # nats-py raises its own errors and OSError alike
        raise BenchError(f"{SYSTEM}: cannot connect: {exc!r} {errors}") from None


# ------------------------------------------------------------------- echo


async def nats_echo(
    port: int,
    pool: list[bytes],
    messages: int,
    window: int,
    time_limit: float,
    server_cpu: CpuClock,
) -> EchoResult:
    """One windowed echo pass: up to *window* messages published and not yet back."""
    if len(pool) != POOL or not 1 <= window <= POOL // 2:
        raise BenchError(f"window must be 1..{POOL // 2} and the pool {POOL} payloads")
    loop = asyncio.get_running_loop()
    checker = Checker(SYSTEM, pool)
    ring = pool + pool
    subject = _subject()
    done: asyncio.Future[None] = loop.create_future()
    sent = 0
    limit = messages
    stopped_by = "count"
    stop_at = 0.0
    nc = await connect(port)
    publish = nc.publish

    async def refill() -> None:
        nonlocal sent, limit, stopped_by
        if sent < limit and time.perf_counter() >= stop_at:
            limit = sent  # the time bound: drain, send no more
            stopped_by = "time"
        room = min(window - (sent - checker.taken), limit - sent)
        if room > 0:
            start = sent & (POOL - 1)
            batch = ring[start : start + room]
            sent += room  # counted first: the callback may run while publish awaits
            for payload in batch:
                await publish(subject, payload)

    async def on_message(msg: Msg) -> None:
        if done.done():
            return
        try:
            checker.check([msg.data])
        except BenchError as exc:
            done.set_exception(exc)
            return
        if checker.taken >= limit:
            done.set_result(None)
        else:
            await refill()

    try:
        await nc.subscribe(subject, cb=on_message)
        await nc.flush()  # the subscription is in place before the first publish
        server0 = server_cpu()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        stop_at = t0 + time_limit
        await refill()
        try:
            await asyncio.wait_for(asyncio.shield(done), time_limit + DRAIN_SECONDS)
        except TimeoutError:
            raise BenchError(
                f"{SYSTEM}: no progress, timed out with {sent:,} sent, "
                f"{checker.taken:,} echoed back (lost by the server?)"
            ) from None
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        server = server_cpu() - server0
    finally:
        await nc.close()
    return EchoResult(
        SYSTEM,
        len(pool[0]),
        window,
        sent,
        checker.taken,
        seconds,
        cpu,
        server,
        checker.taken,  # one callback per message
        0,
        0,
        0,
        stopped_by,
    )


# ------------------------------------------------------------------- ping


class _Inbox:
    """What a subscription callback delivered, with the clock read when it ran."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.items: deque[tuple[bytes, int]] = deque()
        self.waiter: asyncio.Future[None] | None = None

    async def deliver(self, msg: Msg) -> None:
        self.items.append((msg.data, time.perf_counter_ns()))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> tuple[bytes, int]:
        while not self.items:
            self.waiter = self.loop.create_future()
            await self.waiter
        return self.items.popleft()


async def nats_ping(plan: PingPlan, port: int, server_cpu: CpuClock) -> PingResult:
    """One ping-pong pass over *plan.connections* nats-py connections."""
    connections: list[tuple[Client, str, _Inbox]] = []

    async def open_one(index: int) -> None:
        nc = await connect(port)
        subject = _subject()
        inbox = _Inbox()
        connections.append((nc, subject, inbox))
        await nc.subscribe(subject, cb=inbox.deliver)
        await nc.flush()

    def pinger(index: int, nc: Client, subject: str, inbox: _Inbox) -> asyncio.Future[None]:
        async def send(payload: bytes) -> None:
            await nc.publish(subject, payload)

        return asyncio.ensure_future(coroutine_pinger(plan, index, send, inbox.receive))

    try:
        await open_all(plan.connections, open_one)
        plan.begin()
        return await run_pass(
            plan,
            [pinger(i, nc, subject, inbox) for i, (nc, subject, inbox) in enumerate(connections)],
            server_cpu,
        )
    finally:
        await asyncio.gather(*(nc.close() for nc, _, _ in connections), return_exceptions=True)
