"""Sessions a process let go of while Redis still names it their owner (its release,
or any write, did not land): a resume at another process must not be refused as
"session busy" for as long as that process lives (ARCHITECTURE.md guarantee 10).

Two in-process servers on one real Redis (tests/redisserver.py); A reaches it through
a fault proxy, and only A's hot-path connection (its commits) is made to fail, so A's
lease and its release channel stay alive the whole time: A stays a live owner in
Redis of a session it no longer holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from sessiond_client.protocol import CloseCode, SessionLostEvent, SessionResumed
from sessiond_client.protocol.frames import Ack

import sessiond
from sessiond.server import Server
from sessiond.session import SessionMoved
from sessiond.store.redisstore import RedisStore

from .coreclient import CoreClient
from .faultproxy import FaultProxy
from .redisserver import RedisServer, proxied
from .test_store_server import Echo, exchange, expected, port

#: A resume at B must succeed within this long once Redis answers A again (before the
#: fix: never, every attempt refused with GOING_AWAY "session busy").
WITHIN = 8.0


@pytest.fixture
async def start(redis_server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    async with AsyncExitStack() as stack:

        async def make(app: Echo, url: str | None = None, **options: float) -> Server:
            store = RedisStore(url or redis_server.url, "t:", **options)  # type: ignore[arg-type]
            await store.start()
            return await stack.enter_async_context(sessiond.serve(app, "127.0.0.1", 0, store=store))

        yield make


@contextlib.asynccontextmanager
async def attached_to_a(
    start: Callable[..., Awaitable[Server]],
    redis_server: RedisServer,
    app: object,
    **options: float,
) -> AsyncIterator[tuple[FaultProxy, Server, Server, CoreClient]]:
    """Node A, its Redis through the fault proxy (a store timeout of 0.3 s unless
    *options* say otherwise), node B on Redis directly, and a client attached to A."""
    async with proxied(redis_server) as proxy:
        host, proxy_port = proxy.address
        a = await start(app, f"redis://{host}:{proxy_port}/0", **{"timeout": 0.3, **options})
        b = await start(app)
        client = CoreClient("127.0.0.1", port(a))
        assert await client.connect()
        yield proxy, a, b, client


def cut_commits(server: Server, proxy: FaultProxy) -> None:
    """Blackhole *server*'s hot-path connection to Redis only (its commits time out;
    its lease, release channel and claims go on): it reconnects by itself afterwards,
    through the proxy, which forwards new connections."""
    assert server.durable is not None
    wire = server.durable.store._wire
    assert wire is not None and wire._writer is not None, "no commit made yet"
    local = wire._writer.get_extra_info("sockname")[:2]
    (conn,) = [c for c in proxy.active if c.client_address == (str(local[0]), int(local[1]))]
    conn.blackhole()


async def resume_within(client: CoreClient, seconds: float) -> float:
    """Resume until it works (each refusal must be the retryable GOING_AWAY); how long
    it took. Fails if still refused after *seconds*."""
    started = time.monotonic()
    refusals = 0
    while not await client.connect(10.0):
        assert client.conn is not None
        assert client.conn.close_code is CloseCode.GOING_AWAY, client.conn.close_code
        refusals += 1
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"still refused after {elapsed:.1f} s ({refusals} refusals)"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def owned_by(server: Server, sid: bytes) -> str:
    assert server.durable is not None
    owner = await server.durable.store.client.hget(f"t:{{{sid.hex()}}}:m", "o")
    return owner.decode() if isinstance(owner, bytes) else ""


async def test_a_release_that_did_not_land_does_not_keep_the_session_busy(
    start: Callable[..., Awaitable[Server]], redis_server: RedisServer
) -> None:
    """Case 1: A is asked to release a detached session and lets it go, but the commit
    carrying the release fails: Redis still says A owns it."""
    app = Echo()
    async with attached_to_a(start, redis_server, app) as (proxy, a, b, client):
        await exchange(client, 0, 20)
        sid = client.session.id
        assert sid is not None
        await client.kill()
        assert a.durable is not None
        async with asyncio.timeout(10):  # A has seen the loss and stored the detach
            while (entry := a.sessions.find(sid)) is None or entry.protocol is not None:
                await asyncio.sleep(0.01)
        await a.durable.settle()
        cut_commits(a, proxy)
        client.port = port(b)
        took = await resume_within(client, WITHIN)
        assert any(isinstance(e, SessionResumed) for e in client.events)
        assert a.sessions.find(sid) is None and b.sessions.find(sid) is not None
        assert await owned_by(b, sid) == b.durable.store.node  # type: ignore[union-attr]
        await exchange(client, 20, 20)
        assert client.received == expected(40)  # exactly once, in order
        assert not any(isinstance(e, SessionLostEvent) for e in client.events)
        print(f"resumed at B {took:.2f} s after the first attempt")
        await client.close()


async def test_sessions_dropped_after_a_failed_commit_can_be_resumed_elsewhere(
    start: Callable[..., Awaitable[Server]], redis_server: RedisServer
) -> None:
    """Case 2: A's commit fails while the session is attached: A drops it (GOING_AWAY)
    without anything landing in Redis; its lease goes on being renewed."""
    app = Echo()
    async with attached_to_a(start, redis_server, app) as (proxy, a, b, client):
        await exchange(client, 0, 20)
        sid = client.session.id
        assert sid is not None
        assert a.durable is not None
        await a.durable.settle()
        cut_commits(a, proxy)
        client.send(b"m20")  # A's commit of its reply fails: A drops the session
        await client.run_until(lambda: not client.attached, 10.0)
        assert client.conn is not None and client.conn.close_code is CloseCode.GOING_AWAY
        assert a.sessions.find(sid) is None
        assert await owned_by(b, sid) == a.durable.store.node  # still A's in Redis
        async with asyncio.timeout(10):  # A's lease is renewed all along
            while not a.durable.accepting:
                await asyncio.sleep(0.05)
        client.port = port(b)
        await resume_within(client, WITHIN)
        await exchange(client, 21, 19)
        assert client.received == expected(40)  # m20 answered once, by B
        assert not any(isinstance(e, SessionLostEvent) for e in client.events)
        await client.close()


async def test_sessions_dropped_when_the_lease_ran_out_can_be_resumed_once_it_is_back(
    start: Callable[..., Awaitable[Server]], redis_aof: RedisServer
) -> None:
    """Redis is down long enough for A to drop every session (its lease ran out), then
    back (with its append-only file) before anyone resumed them elsewhere: A takes its
    lease anew, and Redis names A, alive again, as their owner."""
    app = Echo()
    options = {"lease_ttl": 1.0, "renew_every": 0.2, "timeout": 0.3}
    a = await start(app, redis_aof.url, **options)
    b = await start(app, redis_aof.url, **options)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 20)
    sid = client.session.id
    assert sid is not None and a.durable is not None
    await asyncio.sleep(1.2)  # the append-only file has it (everysec)
    redis_aof.kill()
    await client.run_until(lambda: not client.attached, 10.0)
    assert client.conn is not None and client.conn.close_code is CloseCode.GOING_AWAY
    assert a.sessions.find(sid) is None
    redis_aof.start()
    async with asyncio.timeout(10):
        while not (a.durable.store.healthy and a.durable.accepting):
            await asyncio.sleep(0.05)
    assert await owned_by(b, sid) == a.durable.store.node
    client.port = port(b)
    await resume_within(client, WITHIN)
    await exchange(client, 20, 20)
    assert client.received == expected(40)
    assert not any(isinstance(e, SessionLostEvent) for e in client.events)
    await client.close()


def cut_pool(server: Server, proxy: FaultProxy) -> None:
    """Blackhole *server*'s idle pooled connections to Redis (its ends and saves go
    there; they time out once, and the next one opens a connection through the proxy)."""
    assert server.durable is not None
    pool = server.durable.store.client.connection_pool
    idle = {
        c._writer.get_extra_info("sockname")[:2]
        for c in pool._get_free_connections()
        if c._writer is not None
    }
    assert idle, "no idle pooled connection"
    for conn in proxy.active:
        if conn.client_address in idle:
            conn.blackhole()


async def test_a_session_ended_where_its_end_was_not_stored_is_not_resumed_elsewhere(
    start: Callable[..., Awaitable[Server]], redis_server: RedisServer
) -> None:
    """A's handler ends a detached session while A's writes to Redis fail: its end is
    not stored (Redis still says A owns a live session), A's lease lives on. A resume at
    B then gets the end code within a bound: neither "busy" for as long as A lives, nor
    the ended session resumed."""
    app = Echo()
    async with attached_to_a(start, redis_server, app) as (proxy, a, b, client):
        await exchange(client, 0, 5)
        sid = client.session.id
        assert sid is not None and a.durable is not None
        await client.kill()
        async with asyncio.timeout(10):
            while (entry := a.sessions.find(sid)) is None or entry.protocol is not None:
                await asyncio.sleep(0.01)
        await a.durable.settle()
        cut_pool(a, proxy)
        entry.session.close(CloseCode.SESSION_REVOKED, "admin")
        async with asyncio.timeout(10):  # its end was tried, and failed
            while a.sessions.find(sid) is not None or a.durable._after:
                await asyncio.sleep(0.01)
            await a.durable.settle()
        assert await owned_by(b, sid) == a.durable.store.node  # not ended in Redis
        client.port = port(b)
        started = time.monotonic()
        while True:
            # Answered with a new session and the end code (protocol.md: a resume ends
            # as resumed or as a new session with a reason), or refused as busy.
            opened = await client.connect(10.0)
            if any(isinstance(e, SessionLostEvent) for e in client.events):
                break
            assert not opened  # never the ended session resumed
            assert not any(isinstance(e, SessionResumed) for e in client.events)
            elapsed = time.monotonic() - started
            assert elapsed < WITHIN, f"no end code after {elapsed:.1f} s"
            await asyncio.sleep(0.2)
        lost = [e for e in client.events if isinstance(e, SessionLostEvent)]
        assert lost[0].reason is CloseCode.SESSION_REVOKED


async def test_a_release_channel_cut_without_a_reset_is_reconnected(
    start: Callable[..., Awaitable[Server]], redis_server: RedisServer
) -> None:
    """A's subscribed connection (release requests) goes dead without a reset while its
    lease is renewed on another: A must notice and subscribe again, else every resume
    elsewhere of A's sessions is refused as busy for as long as A lives."""
    app = Echo()
    nodes = attached_to_a(start, redis_server, app, lease_ttl=1.0, renew_every=0.2)
    async with nodes as (proxy, a, b, client):
        await exchange(client, 0, 20)
        assert a.durable is not None
        subscribed = a.durable.store._pubsub.connection
        assert subscribed is not None and subscribed._writer is not None
        local = subscribed._writer.get_extra_info("sockname")[:2]
        (conn,) = [c for c in proxy.active if c.client_address == (local[0], local[1])]
        conn.blackhole()
        await client.kill()
        client.port = port(b)
        await resume_within(client, WITHIN)
        await exchange(client, 20, 20)
        assert client.received == expected(40)
        assert not any(isinstance(e, SessionLostEvent) for e in client.events)
        assert a.durable.store.healthy  # the lease was never lost
        await client.close()


class Tap(asyncio.StreamReader):
    """A client's reader that keeps every byte it read."""

    def __init__(self, inner: asyncio.StreamReader) -> None:
        super().__init__()
        self.inner = inner
        self.seen = bytearray()

    async def read(self, n: int = -1) -> bytes:
        data = await self.inner.read(n)
        self.seen += data
        return data


class Sink:
    """An app that consumes every message and answers none (it is acknowledged on the
    core's ACK timer, in a loop iteration of its own)."""

    def __init__(self) -> None:
        self.got: list[list[bytes]] = []  # per handler
        self.recovered: list[bool] = []

    async def __call__(self, session: sessiond.Session) -> None:
        self.recovered.append(session.recovered)
        got: list[bytes] = []
        self.got.append(got)
        try:
            async for payload in session:
                got.append(payload)
        except (SessionMoved, sessiond.SessionLost):
            pass


async def test_no_ack_leaves_for_a_consumed_position_a_failed_commit_did_not_store(
    start: Callable[..., Awaitable[Server]],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The entry storing a consumed position is in a commit that fails, from an iteration
    with nothing to write (the ACK comes with the ACK timer, later): the session must be
    dropped like those whose output was in the batch, and its ACK never sent (else the
    client forgets a message whose consumption Redis never had: lost on a crash)."""
    app = Sink()
    async with attached_to_a(start, redis_server, app) as (proxy, a, b, client):
        assert client.reader is not None
        client.reader = tap = Tap(client.reader)
        client.send(b"first")
        await client.run_until(lambda: client.session.sequence_numbers[1] == 1, 10.0)
        sid = client.session.id
        assert sid is not None and a.durable is not None and b.durable is not None
        await a.durable.settle()
        cut_commits(a, proxy)
        client.send(b"second")
        # Its consumption is appended with no output (the ACK waits for its timer), which
        # starts no commit; another session's output would: settle() starts it now.
        async with asyncio.timeout(5):
            while not a.durable.store.pending:
                await asyncio.sleep(0)
        await a.durable.settle()
        with contextlib.suppress(TimeoutError):
            await client.run_until(lambda: not client.attached, 2.0)
        acked = client.session.sequence_numbers[1]  # what the client may forget
        stored = (await b.durable.store.load(sid)).positions.consumed
        assert acked <= stored, f"acknowledged {acked}, stored consumed {stored}"
        assert Ack(2).encode() not in tap.seen
        # Nor written after the CLOSE frame and its FIN (which raised in the writer,
        # ending that batch before the other sessions' output and the ends).
        assert not [r for r in caplog.records if "writer failed" in r.getMessage()]
        assert client.conn is not None and client.conn.close_code is CloseCode.GOING_AWAY
        client.port = port(b)
        await resume_within(client, WITHIN)
        client.send(b"third")
        await client.run_until(lambda: client.session.sequence_numbers[1] == 3, 10.0)
        assert app.recovered == [False, True]
        # Crash recovery: what A consumed and Redis did not record is delivered again.
        assert app.got[1] == [b"second", b"third"], app.got
        assert app.got[0] in ([b"first"], [b"first", b"second"]), app.got
        await client.close()
