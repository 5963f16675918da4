"""A server closing while one of its resumes claims a session from the store: the
session is either resumed by this server and released by its close(), or left where it
was; never claimed for a server that has closed, nor dropped there without a release
(protocol.md: a session is resumed exactly once or reported lost, never silently
dropped; ARCHITECTURE.md guarantee 10).

In-process servers on a real Redis (tests/redisserver.py), some through a fault proxy;
events are ordered by holding a Redis connection (``stall``) or by counting loop
iterations, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

import sessiond
from sessiond.server import Server
from sessiond.store import keys
from sessiond.store.redisstore import RedisStore

from .coreclient import CoreClient
from .faultproxy import FaultProxy, ProxyConnection
from .redisserver import RedisServer, proxied
from .test_store_server import Echo, exchange, expected, port

Start = Callable[..., Awaitable[Server]]


class Running(Echo):
    """The echo app, counting the handlers still running."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0

    async def __call__(self, session: sessiond.Session) -> None:
        self.running += 1
        try:
            await super().__call__(session)
        finally:
            self.running -= 1


@pytest.fixture
async def start(redis_server: RedisServer) -> AsyncIterator[Start]:
    """Servers closed at the end unless the test closed them (close() runs once)."""
    async with AsyncExitStack() as stack:

        async def make(app: Echo, url: str | None = None, **options: float) -> Server:
            store = RedisStore(url or redis_server.url, "t:", **options)  # type: ignore[arg-type]
            await store.start()
            return await stack.enter_async_context(sessiond.serve(app, "127.0.0.1", 0, store=store))

        yield make


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def owner(redis: Redis, sid: bytes) -> str:
    """The node Redis names as the session's owner ("" once released)."""
    value = await redis.hget(keys.meta_key("t:", sid), keys.OWNER)
    return value.decode() if isinstance(value, bytes) else ""


def node(server: Server) -> str:
    assert server.durable is not None
    return server.durable.store.node


def commits(server: Server, proxy: FaultProxy) -> ProxyConnection:
    """*server*'s hot-path connection to Redis (its commits, and the releases they carry)."""
    assert server.durable is not None
    wire = server.durable.store._wire
    assert wire is not None and wire._writer is not None, "no commit made yet"
    local = wire._writer.get_extra_info("sockname")[:2]
    (conn,) = [c for c in proxy.active if c.client_address == (str(local[0]), int(local[1]))]
    return conn


async def until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the loop run until ``done()``: each turn is one loop iteration."""
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0)


async def test_a_claim_that_completes_while_the_server_closes_is_released_not_dropped(
    start: Start, redis_server: RedisServer, redis: Redis
) -> None:
    """B's resume of a session A holds waits for A's release; B's close() begins (its own
    session's release waiting in a commit held by the proxy); then A's release lands.
    Before the fix B's resume claimed the session while close() waited for that commit,
    registered it after the sessions had been released and dropped it with the rest:
    Redis named a closed process its owner, and only the end of that process's lease
    let another resume it. Now close() ends its resumes before it releases: the session
    is released by A, owned by nobody, and resumed at A at once, exactly once."""
    app = Running()
    async with proxied(redis_server) as proxy:
        host, proxy_port = proxy.address
        url = f"redis://{host}:{proxy_port}/0"
        a, b = await start(app, url, timeout=5.0), await start(app, url, timeout=5.0)
        own = CoreClient("127.0.0.1", port(b))  # B's own session: close() stores its release
        assert await own.connect()
        await exchange(own, 0, 3)
        moving = CoreClient("127.0.0.1", port(a))
        assert await moving.connect()
        await exchange(moving, 0, 3)
        sid = moving.session.id
        assert sid is not None
        held_a, held_b = commits(a, proxy), commits(b, proxy)
        held_a.stall("c2s")  # A's release, riding its next commit, waits here
        await moving.kill()
        moving.port = port(b)
        resuming = asyncio.create_task(moving.connect(10.0))
        await until(lambda: a.sessions.find(sid) is None)  # A let go; B's resume waits
        assert b.tasks, "B's resume is in flight"
        held_b.stall("c2s")  # B's close() will wait in settle() for this commit
        closing = asyncio.create_task(b.close())
        await until(lambda: b.closing)  # its release_all has released B's own session
        held_a.unstall()  # A's release lands: a resume still running at B claims now
        await until(lambda: not b.tasks)
        held_b.unstall()
        async with asyncio.timeout(10.0):
            await closing
        assert not await resuming  # refused: the server was shutting down
        assert b.sessions.find(sid) is None
        assert await owner(redis, sid) != node(b), "claimed for a server that has closed"
        assert await owner(redis, sid) == ""  # released by A: anyone may take it now
        moving.port = port(a)
        assert await moving.connect(10.0)
        await exchange(moving, 3, 3)
        assert moving.received == expected(6)
        await moving.close()
        await own.close()


async def test_a_claim_in_flight_when_the_server_closes_is_held_and_released(
    start: Start, redis_server: RedisServer, redis: Redis
) -> None:
    """B's claim has been sent (its answer held by the proxy) when B's close() begins.
    Before the fix close() cancelled the resume once, mid-claim: Redis made B the owner
    and B never knew it (no release; the session waited for B's lease to end). Now
    close() ends its resumes before it releases, a claim on its way is finished, and
    the session it brings is released with the others."""
    app = Running()
    async with proxied(redis_server) as proxy:
        host, proxy_port = proxy.address
        url = f"redis://{host}:{proxy_port}/0"
        a, b = await start(app, url, timeout=5.0), await start(app, url, timeout=5.0)
        moving = CoreClient("127.0.0.1", port(a))
        assert await moving.connect()
        await exchange(moving, 0, 3)
        sid = moving.session.id
        assert sid is not None and b.durable is not None
        store = b.durable.store
        held_a = commits(a, proxy)
        held_a.stall("c2s")  # A's release, riding its next commit, waits here
        await moving.kill()
        moving.port = port(b)
        before = store.round_trips
        resuming = asyncio.create_task(moving.connect(10.0))
        await until(lambda: a.sessions.find(sid) is None)  # A let go; B's resume waits
        assert store._claims is not None
        (wire,) = store._claims._all  # the resume's connection: the claim's too
        assert wire._writer is not None
        local = wire._writer.get_extra_info("sockname")[:2]
        (claims,) = [c for c in proxy.active if c.client_address == (local[0], local[1])]
        claims.stall("s2c")  # the claim's answer will wait here
        held_a.unstall()  # A's release lands; B sends its claim
        await until(lambda: store.round_trips >= before + 2)
        closing = asyncio.create_task(b.close())
        await until(lambda: b.closing)
        for _ in range(8):  # close() is under way, the claim's answer still held
            await asyncio.sleep(0)
        claims.unstall()
        async with asyncio.timeout(10.0):
            await closing
        assert not await resuming  # refused: the server was shutting down
        assert b.sessions.find(sid) is None and not b.tasks
        assert await owner(redis, sid) != node(b), "claimed by B and never released"
        assert await owner(redis, sid) == ""  # released by B's close()
        moving.port = port(a)
        assert await moving.connect(10.0)
        await exchange(moving, 3, 3)
        assert moving.received == expected(6)
        await moving.close()


async def test_a_resume_whose_cancel_is_lost_in_redis_py_does_not_claim_for_a_closed_server(
    start: Start, redis_server: RedisServer, redis: Redis
) -> None:
    """``Server.close()`` cancels a resume that checks a dead owner's lease (``PTTL``
    through redis-py, whose ``send_packed_command`` uses ``asyncio.wait_for``: on 3.11 a
    cancel arriving as the write completes is lost, python/cpython#86296). The cancel
    comes 0-15 loop iterations after that round trip began. Before the fix, where it
    was lost the resume went on: it claimed the session for the closed server, and
    started a handler that nothing ended. Now the session stays with its dead owner
    (claimable at once elsewhere) and no handler runs."""
    offsets = range(16)
    app, app_b = Echo(), Running()
    async with proxied(redis_server) as proxy:
        host, proxy_port = proxy.address
        a = await start(
            app,
            f"redis://{host}:{proxy_port}/0",
            lease_ttl=1.0,
            renew_every=0.2,
            timeout=0.3,
        )
        clients = []
        for _ in offsets:
            client = CoreClient("127.0.0.1", port(a))
            assert await client.connect()
            await exchange(client, 0, 1)
            clients.append(client)
        # A dies as far as Redis can tell: its lease runs out, and its release channel is
        # gone (nobody to ask): a resume elsewhere checks the lease, then claims.
        proxy.blackhole(later=True)
        lease = keys.lease_key("t:", node(a))
        async with asyncio.timeout(10.0):
            while await redis.pttl(lease) != -2:
                await asyncio.sleep(0.05)
        proxy.cut()
        channel = keys.release_channel("t:", node(a))
        async with asyncio.timeout(10.0):
            while (await redis.pubsub_numsub(channel))[0][1]:
                await asyncio.sleep(0.05)
        for client in clients:
            await client.kill()
        hit: list[int] = []  # offsets at which close() came while the resume ran
        wrong: list[int] = []  # and after it, B held or owned the session, or ran its handler
        for offset, client in zip(offsets, clients, strict=True):
            sid = client.session.id
            assert sid is not None
            b = Server(app_b, store=await started(redis_server))
            await b.listen("127.0.0.1", 0)
            assert b.durable is not None
            store = b.durable.store
            before = store.round_trips
            client.host, client.port = "127.0.0.1", port(b)
            resuming = asyncio.create_task(client.connect(10.0))
            # Round trips: the resume script, then the PTTL (redis-py), then the claim.
            async with asyncio.timeout(10.0):
                while store.round_trips < before + 2 and not resuming.done():
                    await asyncio.sleep(0)
            for _ in range(offset):
                await asyncio.sleep(0)
            if b.tasks:
                hit.append(offset)
            async with asyncio.timeout(10.0):
                await b.close()
            await resuming  # resumed (then released by close()) or refused as shutting down
            if (
                b.tasks
                or b.sessions.find(sid) is not None
                or app_b.running
                or await owner(redis, sid) not in ("", node(a))  # "": B resumed, released
            ):
                wrong.append(offset)
                app_b.running = 0
        assert hit and wrong == [], (hit, wrong)
        c = await start(app)
        for client in clients:  # each resumes elsewhere at once, exactly once
            client.port = port(c)
            assert await client.connect(10.0)
            await exchange(client, 1, 1)
            assert client.received == expected(2)
            await client.close()


async def started(redis_server: RedisServer) -> RedisStore:
    store = RedisStore(redis_server.url, "t:")
    await store.start()
    return store
