"""A session store's owner killed (or letting go) while its handler is mid-work: input
it was handed and has not answered, input waiting in ``recv()``'s local buffer, replies
waiting for window. Every request is answered exactly once by the next owner
(ARCHITECTURE.md guarantee 10; README "The session store").

A kill -9 is played in process by :func:`crash`: at one instant nothing of the owner
reaches Redis or a socket any more (its writer, TTL refresher, lease renewal and
release listener stop, a commit in flight is cut off, its transports are reset and its
handlers die), and its lease is gone as if its TTL had run out. tests/test_store_daemon.py
and tests/test_workers.py kill real processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sessiond_client.protocol import Params

import sessiond
from sessiond.server import Server, _Entry
from sessiond.session import SessionMoved
from sessiond.store import keys
from sessiond.store.redisstore import RedisStore

from .coreclient import CoreClient
from .redisserver import RedisServer

STALL = b"m5"  # the message a first handler never answers


class App:
    """Echo, one reply per message, taking input with *style*, counting its replies in
    ``session.data``; a handler handed one of *stall* awaits something that never
    comes (the tests clear *stall* before the next owner is handed it again)."""

    def __init__(self, style: str, *stall: bytes) -> None:
        self.style = style
        self.stall = set(stall)
        self.stalled = asyncio.Event()
        self.go = asyncio.Event()  # never set by the crash and move tests
        self.answered: list[int] = []  # what each handler found in data at its start

    async def __call__(self, session: sessiond.Session) -> None:
        self.answered.append(session.data.get("answered", 0))
        try:
            while True:
                if self.style == "recv":
                    payload = await session.recv()
                    await self._hold(session, [payload])
                    await session.send(payload)
                    session.data["answered"] = session.data.get("answered", 0) + 1
                else:
                    batch = await session.recv_many()
                    await self._hold(session, batch)
                    await session.send_many(batch)
                    session.data["answered"] = session.data.get("answered", 0) + len(batch)
        except (SessionMoved, sessiond.SessionLost):
            return

    async def _hold(self, session: sessiond.Session, batch: list[bytes]) -> None:
        if self.stall.intersection(batch):
            self.stalled.set()
            await self.go.wait()


@pytest.fixture
async def start(redis_server: RedisServer) -> AsyncIterator[Callable[[App], Awaitable[Server]]]:
    async with AsyncExitStack() as stack:

        async def make(app: App) -> Server:
            store = RedisStore(redis_server.url, "c:")
            await store.start()
            return await stack.enter_async_context(sessiond.serve(app, "127.0.0.1", 0, store=store))

        yield make


async def crash(server: Server) -> None:
    """``kill -9`` *server*, in process (see the module's docstring)."""
    durable = server.durable
    assert durable is not None
    store = durable.store
    # One synchronous step: nothing of the server runs between these lines.
    for task in (durable._writer, durable._refresher, *store._tasks, *server.tasks):
        task.cancel()
    for task in list(server._handlers):
        task.cancel()
    for listener in server.listeners:
        listener.close()
    for protocol in list(server.protocols):
        if protocol.transport is not None:
            protocol.transport.abort()
    server.durable = None  # its close at the end of the test writes nothing either
    # Its lease runs out (at once here; lease_ttl after a real kill).
    await store.client.delete(keys.lease_key(store.prefix, store.node))
    await store._disconnect()


def port(server: Server) -> int:
    return server.addresses[0][1]


def expected(first: int, count: int) -> list[bytes]:
    return [b"m%d" % n for n in range(first, first + count)]


def send_together(client: CoreClient, payloads: list[bytes]) -> None:
    """Queue *payloads* and write them with one write (the daemon reads them at once)."""
    for payload in payloads:
        client.session.send(payload, client.now())
    client.flush()


async def entry_of(server: Server, client: CoreClient) -> _Entry:
    sid = client.session.id
    assert sid is not None
    entry = server.sessions.find(sid)
    assert entry is not None
    return entry


def answered(client: CoreClient, count: int) -> Callable[[], bool]:
    return lambda: len(client.received) >= count


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not condition():
            await asyncio.sleep(0.005)


async def stalled_mid_work(app: App, a: Server) -> CoreClient:
    """Five requests answered, then five sent at once: the handler is handed m5 and
    stalls; m6-m9 are taken with it (recv: in its local buffer; recv_many: handed)."""
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    send_together(client, expected(0, 5))
    await client.run_until(lambda: len(client.received) >= 5, 20.0)
    send_together(client, expected(5, 5))
    await until(app.stalled.is_set)
    entry = await entry_of(a, client)
    assert not entry.core.messages_waiting  # all of m5-m9 taken from the core
    if app.style == "recv":
        assert len(entry.session._local or ()) == 4  # m6-m9 taken, not handed over
    return client


async def waiting_for_window(app: App, a: Server) -> CoreClient:
    """The client's window (4) is full of replies it does not read: the handler has
    sent four and waits to send the next (recv: one; recv_many: the rest of its batch,
    six when the ten arrived in one read)."""
    client = CoreClient("127.0.0.1", port(a), Params(window_messages=4))
    assert await client.connect()
    send_together(client, expected(0, 10))
    entry = await entry_of(a, client)
    await until(lambda: entry.core.sequence_numbers[0] == 4 and bool(entry.session.unsent))
    return client


SCENARIOS = {"stalled": stalled_mid_work, "window": waiting_for_window}
STALLS = {"stalled": (STALL,), "window": ()}


@pytest.mark.parametrize("style", ["recv", "recv_many"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("how", ["kill -9", "move"])
async def test_work_in_progress_is_answered_once_by_the_next_owner(
    start: Callable[[App], Awaitable[Server]], how: str, scenario: str, style: str
) -> None:
    app = App(style, *STALLS[scenario])
    a, b = await start(app), await start(app)
    client = await SCENARIOS[scenario](app, a)
    if how == "kill -9":
        assert a.durable is not None
        await a.durable.settle()  # what it has done so far is stored (ACKs written)
        await crash(a)
    app.stall = set()  # the next owner answers everything
    await client.kill()
    client.port = port(b)  # move: b asks a, still alive, to let the session go
    async with asyncio.timeout(20):
        while not await client.connect(10.0):  # a's release may still be on its way
            await asyncio.sleep(0.1)
    await client.run_until(lambda: len(client.received) >= 10, 20.0)
    send_together(client, expected(10, 5))
    await client.run_until(lambda: len(client.received) >= 15, 20.0)
    assert client.received == expected(0, 15)  # every request answered, exactly once
    entry = await entry_of(b, client)
    assert entry.session.recovered
    if scenario == "stalled":  # session.data as of the last reply stored, crash or not
        assert app.answered == [0, 5]
    await client.close()


async def test_a_resume_on_the_same_process_keeps_what_the_handler_holds(
    start: Callable[[App], Awaitable[Server]],
) -> None:
    # m5 handed over and m6-m9 taken, none consumed: the WELCOME's received position
    # still covers them (the client does not send them again), and the handler answers
    # them once it goes on.
    app = App("recv", STALL)
    a = await start(app)
    client = await stalled_mid_work(app, a)
    await client.kill()
    assert await client.connect(10.0)
    assert client.conn is not None
    app.go.set()
    await client.run_until(lambda: len(client.received) >= 10, 20.0)
    send_together(client, expected(10, 5))
    await client.run_until(lambda: len(client.received) >= 15, 20.0)
    assert client.received == expected(0, 15)
    await client.close()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    hops=st.lists(
        st.tuples(st.sampled_from(["kill -9", "move"]), st.integers(1, 6), st.booleans()),
        min_size=1,
        max_size=3,
    ),
    style=st.sampled_from(["recv", "recv_many"]),
)
def test_crashes_and_moves_mid_work_keep_exactly_once(
    redis_server: RedisServer, hops: list[tuple[str, int, bool]], style: str
) -> None:
    """Each hop: *count* requests, the last one left unanswered by a stalled handler or
    all answered, then the owner killed (a fresh process takes over) or the session
    moved to the other live one."""

    async def scenario() -> None:
        app = App(style)
        async with AsyncExitStack() as stack:

            async def server() -> Server:
                store = RedisStore(redis_server.url, "p:")
                await store.start()
                return await stack.enter_async_context(
                    sessiond.serve(app, "127.0.0.1", 0, store=store)
                )

            servers = [await server(), await server()]
            client = CoreClient("127.0.0.1", port(servers[0]))
            assert await client.connect()
            sent = 0
            for how, count, stall in hops:
                owner = next(s for s in servers if s.addresses and port(s) == client.port)
                if stall:
                    app.stall = {b"m%d" % (sent + count - 1)}
                    app.stalled.clear()
                send_together(client, expected(sent, count))
                sent += count
                if stall:
                    await until(app.stalled.is_set)
                else:
                    await client.run_until(answered(client, sent), 20.0)
                if how == "kill -9":
                    assert owner.durable is not None
                    await owner.durable.settle()
                    await crash(owner)
                    servers[servers.index(owner)] = await server()
                await client.kill()
                client.port = port(next(s for s in servers if s is not owner))
                async with asyncio.timeout(20):
                    while not await client.connect(10.0):
                        await asyncio.sleep(0.1)
                app.stall = set()
            await client.run_until(lambda: len(client.received) >= sent, 20.0)
            send_together(client, expected(sent, 3))
            await client.run_until(lambda: len(client.received) >= sent + 3, 20.0)
            assert client.received == expected(0, sent + 3)
            await client.close()

    asyncio.run(scenario())
