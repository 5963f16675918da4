"""Two in-process servers on one Redis (tests/redisserver.py): a session moves between
them as one ordinary resume, exactly once both ways (ARCHITECTURE.md guarantee 10)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sessiond_client.protocol import (
    CloseCode,
    Params,
    SessionEnded,
    SessionLostEvent,
    SessionResumed,
)

import sessiond
from sessiond.apps import echo
from sessiond.metrics import Collector
from sessiond.server import Server, ServerConfig
from sessiond.session import SessionMoved
from sessiond.store.redisstore import RedisStore

from .coreclient import CoreClient
from .faultproxy import FaultProxy
from .redisserver import RedisServer, proxied

Start = Callable[[], Awaitable[Server]]


class Echo:
    """An echo app that records what its handlers saw."""

    def __init__(self) -> None:
        self.recovered: list[bool] = []
        self.moved = 0
        self.lost = 0

    async def __call__(self, session: sessiond.Session) -> None:
        self.recovered.append(session.recovered)
        session.data["handlers"] = session.data.get("handlers", 0) + 1
        try:
            while True:
                await session.send(await session.recv())
        except SessionMoved:
            self.moved += 1
        except sessiond.SessionLost:
            self.lost += 1


@pytest.fixture
async def start(redis_server: RedisServer) -> AsyncIterator[Callable[[Echo], Awaitable[Server]]]:
    async with AsyncExitStack() as stack:

        async def make(
            app: Echo,
            url: str | None = None,
            config: ServerConfig | None = None,
            **options: float,
        ) -> Server:
            store = RedisStore(url or redis_server.url, "t:", **options)  # type: ignore[arg-type]
            await store.start()
            server = await stack.enter_async_context(
                sessiond.serve(app, "127.0.0.1", 0, store=store, config=config)
            )
            return server

        yield make


def port(server: Server) -> int:
    return server.addresses[0][1]


async def exchange(client: CoreClient, first: int, count: int) -> None:
    for n in range(first, first + count):
        client.send(b"m%d" % n)
    await client.run_until(lambda: len(client.received) >= first + count, 20.0)


def expected(count: int) -> list[bytes]:
    return [b"m%d" % n for n in range(count)]


async def test_resume_on_another_server_after_a_transport_loss(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 50)
    await client.kill()
    client.port = port(b)
    assert await client.connect(10.0)
    assert any(isinstance(e, SessionResumed) for e in client.events)
    await exchange(client, 50, 50)
    assert client.received == expected(100)  # exactly once, in order, both ways
    async with asyncio.timeout(10):
        while app.moved < 1:
            await asyncio.sleep(0.01)
    assert app.recovered == [False, True]
    assert sum(a.stats.store_seconds.counts) > 0  # commits are timed (metrics)
    sid = client.session.id
    assert sid is not None
    assert b.sessions.find(sid) is not None
    assert a.sessions.find(sid) is None
    moved = b.sessions.find(sid)
    assert moved is not None and moved.session.data["handlers"] == 2
    await client.close()


async def test_resume_on_another_server_while_attached_takes_over(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    a, b = await start(app), await start(app)
    async with FaultProxy("127.0.0.1", port(a)) as proxy:
        client = CoreClient(*proxy.address)
        assert await client.connect()
        await exchange(client, 0, 20)
        sid = client.session.id
        assert sid is not None
        entry = a.sessions.find(sid)
        assert entry is not None and entry.protocol is not None
        old = entry.protocol.conn
        assert old is not None
        # The client's network changes: the old path goes dead without a close, so
        # A still holds the session attached when the client resumes at B.
        proxy.blackhole()
        await client.kill()
        client.host, client.port = "127.0.0.1", port(b)
        assert await client.connect(10.0)
        await exchange(client, 20, 20)
        assert client.received == expected(40)
        assert old.close_code is CloseCode.TAKEN_OVER
        assert a.sessions.find(sid) is None
        await client.close()


async def test_moving_back_and_forth_keeps_exactly_once(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    servers = [await start(app), await start(app)]
    client = CoreClient("127.0.0.1", port(servers[0]))
    assert await client.connect()
    sent = 0
    for hop in range(6):
        await exchange(client, sent, 10)
        sent += 10
        await client.kill()
        client.port = port(servers[(hop + 1) % 2])
        assert await client.connect(10.0)
    await exchange(client, sent, 10)
    assert client.received == expected(sent + 10)
    assert not any(isinstance(e, SessionLostEvent) for e in client.events)
    await client.close()


async def test_a_session_ended_elsewhere_is_answered_with_its_reason(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 3)
    sid = client.session.id
    assert sid is not None
    entry = a.sessions.find(sid)
    assert entry is not None
    await client.kill()
    entry.session.close(CloseCode.SESSION_REVOKED, "admin")
    async with asyncio.timeout(10):
        while not await _ended_in_store(b, sid):
            await asyncio.sleep(0.02)
    client.port = port(b)
    await client.connect(10.0)
    lost = [e for e in client.events if isinstance(e, SessionLostEvent)]
    assert lost and lost[0].reason is CloseCode.SESSION_REVOKED


async def _ended_in_store(server: Server, sid: bytes) -> bool:
    assert server.durable is not None
    exists = await server.durable.store.client.hexists(f"t:{{{sid.hex()}}}:m", "x")
    return bool(exists)


async def test_a_node_cut_off_from_redis_detaches_and_another_takes_over(
    start: Callable[..., Awaitable[Server]], redis_server: RedisServer
) -> None:
    app = Echo()
    async with proxied(redis_server) as proxy:
        host, proxy_port = proxy.address
        a = await start(
            app, f"redis://{host}:{proxy_port}/0", lease_ttl=1.0, renew_every=0.2, timeout=0.3
        )
        b = await start(app)
        client = CoreClient("127.0.0.1", port(a))
        assert await client.connect()
        await exchange(client, 0, 20)
        proxy.blackhole(later=True)
        # A cannot renew its lease: it lets every session go before the lease runs out
        # (the client is told GOING_AWAY) and refuses new ones with the same typed code.
        await client.run_until(lambda: not client.attached, 10.0)
        assert client.conn is not None and client.conn.close_code is CloseCode.GOING_AWAY
        assert a.stats.store_errors.get("lease") == 1
        newcomer = CoreClient("127.0.0.1", port(a))
        assert not await newcomer.connect()
        assert newcomer.conn is not None and newcomer.conn.close_code is CloseCode.GOING_AWAY
        # B resumes the session once A's lease is gone (until then it says "retry").
        client.port = port(b)
        async with asyncio.timeout(20):
            while not await client.connect(10.0):
                assert client.conn is not None
                assert client.conn.close_code is CloseCode.GOING_AWAY
                await asyncio.sleep(0.2)
        await exchange(client, 20, 20)
        assert client.received == expected(40)
        await client.close()


async def test_an_attached_sessions_keys_expire_if_its_owner_dies(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    a = await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 3)
    sid = client.session.id
    assert sid is not None and a.durable is not None
    redis = a.durable.store.client
    meta, stream = f"t:{{{sid.hex()}}}:m", f"t:{{{sid.hex()}}}:o"
    # Renewed by the owner while it lives; after a crash, gone a lifetime later.
    entry = a.sessions.find(sid)
    assert entry is not None
    limit = a.durable.attached_ttl(entry) * 1000
    async with asyncio.timeout(10):
        while not 0 < await redis.pttl(meta) <= limit:
            await asyncio.sleep(0.02)
    await redis.pexpire(meta, 10**9)
    a.durable.refresh()
    async with asyncio.timeout(10):
        while not 0 < await redis.pttl(meta) <= limit:
            await asyncio.sleep(0.02)
    assert 0 < await redis.pttl(stream) <= limit
    await client.close()


async def test_a_stolen_credential_across_servers_ends_the_session(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 3)
    await client.kill()
    thief = client.clone()  # a copy of the credential, taken before it rotates
    client.port = port(b)
    assert await client.connect(10.0)  # resumed at B: the credential rotated
    await exchange(client, 3, 3)
    # The copy comes back at A: a rotated-out credential is theft (protocol.md §10).
    thief.port = port(a)
    await thief.connect(10.0)
    lost = [e for e in thief.events if isinstance(e, SessionLostEvent)]
    assert lost and lost[0].reason is CloseCode.CREDENTIAL_REUSED
    await client.run_until(lambda: not client.attached, 10.0)
    assert client.conn is not None
    assert client.conn.close_code in (CloseCode.TAKEN_OVER, CloseCode.CREDENTIAL_REUSED)
    await thief.close()


async def test_a_wrong_credential_at_another_server_does_not_disturb_the_owner(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 3)
    forger = CoreClient("127.0.0.1", port(b))
    forger.session.id = client.session.id
    forger.session._credential = bytes(32)
    await forger.connect(10.0)
    lost = [e for e in forger.events if isinstance(e, SessionLostEvent)]
    assert lost and lost[0].reason is CloseCode.CREDENTIAL_INVALID
    assert client.attached
    await exchange(client, 3, 3)
    assert client.received == expected(6)
    await client.close()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    targets=st.lists(st.sampled_from([0, 1]), min_size=1, max_size=5),
    per_hop=st.integers(1, 8),
)
def test_alternating_resume_targets_keep_exactly_once(
    redis_server: RedisServer, targets: list[int], per_hop: int
) -> None:
    async def scenario() -> None:
        app = Echo()
        async with AsyncExitStack() as stack:
            servers = []
            for _ in range(2):
                store = RedisStore(redis_server.url, "h:")
                await store.start()
                servers.append(
                    await stack.enter_async_context(
                        sessiond.serve(app, "127.0.0.1", 0, store=store)
                    )
                )
            client = CoreClient("127.0.0.1", port(servers[0]))
            assert await client.connect()
            sent = 0
            for target in targets:
                await exchange(client, sent, per_hop)
                sent += per_hop
                await client.kill()
                client.port = port(servers[target])
                assert await client.connect(10.0)
            await exchange(client, sent, per_hop)
            assert client.received == expected(sent + per_hop)
            await client.close()

    asyncio.run(scenario())


async def test_a_handler_ending_with_session_moved_is_not_reported_as_unretrieved(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    # The built-in echo app lets SessionMoved end its handler: the server retrieves it,
    # so asyncio never logs "Task exception was never retrieved" for a moved session.
    unhandled: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    a = await start(echo)  # type: ignore[arg-type]
    b = await start(echo)  # type: ignore[arg-type]
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 10)
    sid = client.session.id
    assert sid is not None
    await client.kill()
    client.port = port(b)
    assert await client.connect(10.0)
    await exchange(client, 10, 10)
    assert client.received == expected(20)
    async with asyncio.timeout(10):
        while a.sessions.find(sid) is not None or a._handlers:
            await asyncio.sleep(0.01)
    gc.collect()  # an unretrieved exception is reported when its task is collected
    await asyncio.sleep(0)
    assert not unhandled, unhandled
    await client.close()


class BatchEcho(Echo):
    """The built-in echo's loop (recv_many, send_many): waits for window mid-batch."""

    async def __call__(self, session: sessiond.Session) -> None:
        self.recovered.append(session.recovered)
        try:
            while True:
                await session.send_many(await session.recv_many())
        except SessionMoved:
            self.moved += 1
        except sessiond.SessionLost:
            self.lost += 1


async def test_a_handler_waiting_for_window_moves_with_its_unsent_replies(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    # The client's window (4) fills with echoes it does not acknowledge (it reads
    # nothing), so A's handler has taken 10 messages and waits to send 6 replies when
    # the session moves to B. Those replies go with it (sent by B as the window
    # opens): taken input whose replies were dropped would be consumed, never answered.
    app = BatchEcho()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a), Params(window_messages=4))
    assert await client.connect()
    for n in range(10):
        client.send(b"m%d" % n)
    sid = client.session.id
    assert sid is not None
    entry = a.sessions.find(sid)
    assert entry is not None
    async with asyncio.timeout(10):
        while len(entry.session.unsent) < 6:  # all 10 taken by the handler, 4 answered
            await asyncio.sleep(0.01)
    await client.kill()
    client.port = port(b)
    assert await client.connect(10.0)
    await client.run_until(lambda: len(client.received) >= 10, 20.0)
    await exchange(client, 10, 10)
    assert client.received == expected(20)  # exactly once, in order
    await client.close()


# ------------------------------------------------------------------------ metrics


def messages(server: Server) -> dict[str, float]:
    """``sessiond_messages_total`` of *server*, by direction, as a scrape shows it."""

    class Source:
        draining = False
        app = None

        def __init__(self) -> None:
            self.server = server

        def readiness(self) -> tuple[bool, str]:
            return True, "ready"

    collector = Collector(Source())
    family = next(m for m in collector.collect() if m.name == "sessiond_messages")
    return {sample.labels["direction"]: sample.value for sample in family.samples}


async def test_a_moved_session_stays_counted_where_its_messages_went(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    app = Echo()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 30)
    assert messages(a) == {"in": 30, "out": 30}
    await client.kill()
    client.port = port(b)
    assert await client.connect(10.0)
    await exchange(client, 30, 20)
    async with asyncio.timeout(10):
        while app.moved < 1:
            await asyncio.sleep(0.01)
    # Each process counts the messages that went through it: a's do not vanish with
    # the session, and b does not count them again.
    assert messages(a) == {"in": 30, "out": 30}
    assert messages(b) == {"in": 20, "out": 20}
    await client.close()
    async with asyncio.timeout(10):
        while b.sessions.find(client.session.id or b"") is not None:
            await asyncio.sleep(0.01)
    assert messages(b) == {"in": 20, "out": 20}  # ended there: still its 20


async def test_a_session_that_moved_away_is_freed_at_once_where_it_was(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    """The old process lets go of everything a moved session held (its replay buffer,
    inbox, handler) when its handler returns, with the cyclic garbage collector off:
    the daemon's entry and the handler's session object refer to each other, and the
    move must cut that link as an ended session's release does."""
    app = Echo()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    sid = client.session.id or b""
    await exchange(client, 0, 30)

    def moved_here() -> list[object]:
        return [
            obj
            for obj in gc.get_objects()
            if isinstance(obj, sessiond.Session) and obj.id == sid.hex() and obj.moved
        ]

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        await client.kill()
        client.port = port(b)
        assert await client.connect(10.0)
        async with asyncio.timeout(10):
            while app.moved < 1:
                await asyncio.sleep(0.01)
        for _ in range(5):  # the handler's task finishes and is let go of
            await asyncio.sleep(0.01)
        assert moved_here() == []
        await exchange(client, 30, 5)
    finally:
        if gc_was_enabled:
            gc.enable()
    await client.close()


async def test_a_failed_commit_refuses_new_sessions_only_until_the_store_answers_again(
    start: Callable[..., Awaitable[Server]], redis_server: RedisServer
) -> None:
    app = Echo()
    a = await start(app, lease_ttl=2.0, renew_every=0.2)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 1)
    redis_server.kill()
    client.send(b"lost with redis")  # its commit fails: the session is dropped here
    assert a.durable is not None
    async with asyncio.timeout(10):
        while a.durable.accepting:
            await asyncio.sleep(0.05)
    redis_server.start()
    # No session is left to commit anything; the lease's renewal shows Redis is back.
    async with asyncio.timeout(10):
        while not a.durable.accepting:
            await asyncio.sleep(0.05)
    fresh = CoreClient("127.0.0.1", port(a))
    assert await fresh.connect(10.0)
    await exchange(fresh, 0, 3)
    await fresh.close()
    await client.close()


async def test_a_close_cancelled_while_it_stores_the_last_output_raises_cancelled(
    redis_server: RedisServer,
) -> None:
    """The application's task cancelled in ``Server.close()`` (``serve()``'s exit) 0-7
    loop iterations after close() started, while it waits for the store's writer to be
    idle or later, raises CancelledError: on Python 3.11 asyncio.wait_for returned
    instead when the writer was idle by then (python/cpython#86296, sessiond/tasks.py),
    and the task went on as if never cancelled. A close() called again finishes the
    shutdown at once (it no longer waits for the writer the first one ended)."""
    hit: list[int] = []  # offsets at which the cancel came while close() ran
    for offset in range(8):
        store = RedisStore(redis_server.url, "t:")
        await store.start()
        server = Server(Echo(), store=store)
        await server.listen("127.0.0.1", 0)
        closing = asyncio.create_task(server.close())
        for _ in range(offset):
            await asyncio.sleep(0)
        if not closing.done():
            closing.cancel()
            hit.append(offset)
        async with asyncio.timeout(5.0):
            await asyncio.wait([closing])
            assert closing.cancelled() == (offset in hit), f"cancel lost at offset {offset}"
            if closing.cancelled():
                await server.close()
    assert hit


# An end or a detach acted on before the loop tick's flush (server.py, Server._unhook):
# with a store, that flush is what writes a session's output, and it writes only the
# output of a session still on its transport.


async def test_an_end_acted_on_before_the_ticks_flush_still_reaches_the_client(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    """The operator ends a session (its CLOSE waits for the tick's flush) and, in the
    same loop iteration, the client's next bytes are read on its transport, which acts
    on the end at once. The CLOSE must still leave and the transport close:
    tests/test_workers_doors.py saw the client left ACTIVE and told nothing, about once
    in 10-20 runs under load (a coalesced ACK read in that window)."""
    app = Echo()
    a = await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 3)
    entry = a.sessions.find(client.session.id or b"")
    assert entry is not None and entry.protocol is not None and client.conn is not None
    protocol = entry.protocol
    client.session.send(b"after the end", client.now())
    read = client.conn.data_to_send()  # what the client writes, read by the daemon below
    # In this order within one loop iteration (as sessiond/admin.py's end, then a read,
    # then the flush the end scheduled): no sleep decides it.
    entry.session.close(CloseCode.SESSION_REVOKED, "ended by the operator: test")
    protocol.data_received(read)
    await client.run_until(lambda: not client.attached, 10.0)
    assert client.conn.close_code is CloseCode.SESSION_REVOKED
    ended = [e for e in client.events if isinstance(e, SessionEnded)]
    assert [(e.code, e.reason) for e in ended] == [
        (CloseCode.SESSION_REVOKED, "ended by the operator: test")
    ]
    assert client.received == expected(3)


async def test_a_malformed_frame_on_a_stored_session_is_answered_with_its_close(
    start: Callable[[Echo], Awaitable[Server]],
) -> None:
    """Bad input ends the session while its read is acted on, before the tick's flush:
    the CLOSE PROTOCOL_ERROR must still leave and the transport close (with a store it
    did neither: the client heard nothing until its own idle timeout)."""
    a = await start(Echo())
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 3)
    assert client.writer is not None and client.conn is not None
    client.writer.write(b"\xc1")  # never valid msgpack
    await client.run_until(lambda: not client.attached, 10.0)
    assert client.conn.close_code is CloseCode.PROTOCOL_ERROR
    assert [e.code for e in client.events if isinstance(e, SessionEnded)] == [
        CloseCode.PROTOCOL_ERROR
    ]


async def test_an_idle_timeout_on_a_stored_session_drops_the_transport(
    start: Callable[..., Awaitable[Server]],
) -> None:
    """A client that goes silent: the daemon's idle timeout (a timer, acted on before
    the tick's flush) detaches the session and must drop the transport; with a store it
    stayed open, so a dead peer's socket was never closed."""
    params = Params(heartbeat_interval=0.2, heartbeat_min=0.05)  # idle timeout 0.6 s
    a = await start(Echo(), config=ServerConfig(params=params))
    client = CoreClient("127.0.0.1", port(a), params)
    assert await client.connect()
    await exchange(client, 0, 3)
    sid = client.session.id or b""
    assert client.reader is not None
    # Silent from now on (no step: no heartbeat, no ACK): read until the daemon drops it.
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(10):
            while await client.reader.read(65536):
                pass
    entry = a.sessions.find(sid)
    assert entry is not None and entry.protocol is None  # detached, not ended
    assert entry.core.end_code is None
