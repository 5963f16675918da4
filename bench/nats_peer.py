"""The NATS peer: nats-server's configuration, and nats-py as its load generator.

Server: ``nats-server -c CONFIG`` with a temporary config (:func:`config`):
127.0.0.1:PORT and its defaults otherwise (no JetStream: core NATS, at most
once). Pinned to one core with ``taskset``, the Go runtime sizes GOMAXPROCS to
that one core."""

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
from .loadgen import HOST, CpuClock, EchoResult, split
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
    *,
    sessions: int = 1,
) -> EchoResult:
    """One windowed echo pass over *sessions* connections, each up to *window* messages
    published and not yet back; the *messages* are shared out, every connection
    subscribed before the clocks start."""
    if len(pool) != POOL or not 1 <= window <= POOL // 2:
        raise BenchError(f"window must be 1..{POOL // 2} and the pool {POOL} payloads")
    loop = asyncio.get_running_loop()
    clients = [_EchoClient(loop, pool, quota, window) for quota in split(messages, sessions)]
    try:
        await open_all(sessions, lambda index: clients[index].open(port))
        server0 = server_cpu()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for client in clients:
            client.stop_at = t0 + time_limit
        await asyncio.gather(*(client.refill() for client in clients))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(client.done) for client in clients)),
                time_limit + DRAIN_SECONDS,
            )
        except TimeoutError:
            raise BenchError(
                f"{SYSTEM}: no progress, timed out with {sum(c.sent for c in clients):,} sent, "
                f"{sum(c.checker.taken for c in clients):,} echoed back (lost by the server?)"
            ) from None
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        server = server_cpu() - server0
    finally:
        await asyncio.gather(
            *(client.nc.close() for client in clients if client.nc is not None),
            return_exceptions=True,
        )
    return EchoResult(
        SYSTEM,
        len(pool[0]),
        window,
        sum(client.sent for client in clients),
        sum(client.checker.received for client in clients),
        seconds,
        cpu,
        server,
        None,  # nats-py reads its socket out of sight: not measured
        0,
        0,
        0,
        "time" if any(client.stopped_by == "time" for client in clients) else "count",
        sessions=sessions,
        lost=sum(c.checker.missing + c.sent - c.checker.taken for c in clients),
        duplicates=sum(client.checker.duplicates for client in clients),
    )


class _EchoClient:
    """One connection's share of an echo pass: its subject, window, check and end."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pool: list[bytes], messages: int, window: int
    ) -> None:
        self.checker = Checker(SYSTEM, pool)
        self.ring = pool + pool
        self.window = window
        self.subject = _subject()
        self.sent = 0
        self.limit = messages
        self.stopped_by = "count"
        self.stop_at = 0.0
        self.done: asyncio.Future[None] = loop.create_future()
        self.nc: Client | None = None

    async def open(self, port: int) -> None:
        self.nc = nc = await connect(port)
        await nc.subscribe(self.subject, cb=self.on_message)
        await nc.flush()  # the subscription is in place before the first publish

    async def refill(self) -> None:
        assert self.nc is not None
        sent, limit = self.sent, self.limit
        if sent < limit and time.perf_counter() >= self.stop_at:
            self.limit = limit = sent  # the time bound: drain, send no more
            self.stopped_by = "time"
        room = min(self.window - (sent - self.checker.taken), limit - sent)
        if room > 0:
            start = sent & (POOL - 1)
            batch = self.ring[start : start + room]
            self.sent = sent + room  # counted first: the callback may run while publish awaits
            publish = self.nc.publish
            subject = self.subject
            for payload in batch:
                await publish(subject, payload)
        if self.checker.taken >= self.limit and not self.done.done():
            self.done.set_result(None)

    async def on_message(self, msg: Msg) -> None:
        if self.done.done():
            return
        try:
            self.checker.check([msg.data])
        except BenchError as exc:
            self.done.set_exception(exc)
            return
        if self.checker.taken >= self.limit:
            self.done.set_result(None)
        else:
            await self.refill()


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
