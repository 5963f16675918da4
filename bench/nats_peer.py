"""The NATS peer's load generator, nats-py (the server: bench/systems.py's PEERS)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from . import BenchError
from .loadgen import HOST, CpuClock, EchoResult, Share, shares_pass, split
from .pingpong import PingPlan, PingResult, coroutine_pinger, open_all, run_pass

SYSTEM = "nats"

_ids = itertools.count()


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


async def echo(
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
    published and not yet back; every connection subscribed before the clocks start."""
    shares = [Share(SYSTEM, pool, quota, window) for quota in split(messages, sessions)]
    subjects = [_subject() for _ in shares]
    clients: dict[int, Client] = {}

    async def refill(index: int) -> None:
        publish, subject = clients[index].publish, subjects[index]
        for payload in shares[index].batch():  # counted first: callbacks run while it awaits
            await publish(subject, payload)
        shares[index].ended()

    async def open_one(index: int) -> None:
        async def back(msg: Msg) -> None:
            if shares[index].take([msg.data]):
                await refill(index)

        clients[index] = nc = await connect(port)
        await nc.subscribe(subjects[index], cb=back)
        await nc.flush()  # the subscription is in place before the first publish

    async def start() -> None:
        await asyncio.gather(*(refill(index) for index in range(sessions)))

    try:
        await open_all(sessions, open_one)
        # nats-py reads its socket out of sight: reads not measured
        return await shares_pass(SYSTEM, shares, start, server_cpu, time_limit, lambda: None)
    finally:
        await asyncio.gather(*(nc.close() for nc in clients.values()), return_exceptions=True)


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


async def ping(plan: PingPlan, port: int, server_cpu: CpuClock) -> PingResult:
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
