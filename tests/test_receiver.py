"""The synchronous handler model (``Session.receive_with``, ``send_many_nowait``) on real
sockets: the window full, sends of an awaiting part of the same app, an exception in
the receiver, a payload the peer cannot take, and the Redis session store.

The echo app is such a receiver: the fault tests (tests/test_client.py, test_faults.py)
run their exactly-once, in-order checks through it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import pytest
import sessiond_client
from sessiond_client.protocol import CloseCode, Params, SessionEnded

import sessiond
from sessiond.apps import echo, echo_batch
from sessiond.server import Server, ServerConfig
from sessiond.session import SessionMoved

from .coreclient import CoreClient
from .faultproxy import FaultProxy
from .test_client import FAST, receive_into, url_of
from .test_faults import CLIENT_PARAMS, SERVER_PARAMS
from .test_store_crash import crash, send_together
from .test_store_server import Echo, exchange, expected, port, start

__all__ = ["start"]  # the Redis-backed servers' fixture, shared with test_store_server

SMALL = Params(window_messages=4)


def entry_of(server: Server, client: CoreClient) -> sessiond.Session:
    sid = client.session.id
    assert sid is not None
    entry = server.sessions.find(sid)
    assert entry is not None
    return entry.session


async def until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.005)


def ended(client: CoreClient) -> CloseCode | None:
    codes = [event.code for event in client.events if isinstance(event, SessionEnded)]
    return codes[-1] if codes else None


async def test_replies_the_window_does_not_take_go_later_in_order_and_once() -> None:
    """The client reads nothing: its window (4) holds 4 echoes, 6 wait in the session,
    and the receiver takes no more (5 later messages wait unacknowledged); once it
    reads, all 15 come back in order, each once."""
    async with sessiond.serve(echo, "127.0.0.1", 0) as server:
        client, session = await six_waiting(server)
        assert session.unsent == tuple(b"m%d" % n for n in range(4, 10))
        for n in range(10, 15):
            client.send(b"m%d" % n)
        await until(lambda: session.core.messages_waiting == 5)
        assert len(session.unsent) == 6  # the receiver was not called meanwhile
        await client.run_until(lambda: len(client.received) >= 15, 10.0)
        assert client.received == expected_m(15)
        assert not session.unsent and not session.core.messages_waiting
        await client.close()


def expected_m(count: int) -> list[bytes]:
    return [b"m%d" % n for n in range(count)]


async def six_waiting(server: sessiond.Server) -> tuple[CoreClient, sessiond.Session]:
    """A client (window 4) that sent 10 messages and reads nothing: 4 echoes fill its
    window and 6 wait in the session."""
    client = CoreClient(*server.addresses[0], SMALL)
    await client.open()
    for n in range(10):
        client.send(b"m%d" % n)
    session = entry_of(server, client)
    await until(lambda: len(session.unsent) == 6)
    return client, session


class Mixed:
    """A receiver that echoes, and the handler coroutine sending pushes of its own."""

    def __init__(self) -> None:
        self.push = asyncio.Event()
        self.pushed = asyncio.Event()
        self.pushes: list[bytes] = []

    async def __call__(self, session: sessiond.Session) -> None:
        done = session.receive_with(echo_batch)
        await self.push.wait()
        await session.send_many(self.pushes)  # behind whatever waits for window
        self.pushed.set()
        await done


async def test_an_async_send_goes_behind_the_replies_waiting_for_window() -> None:
    app = Mixed()
    app.pushes = [b"push-a", b"push-b"]
    async with sessiond.serve(app, "127.0.0.1", 0) as server:
        client, session = await six_waiting(server)
        app.push.set()  # two pushes while six echoes wait
        await until(lambda: len(session.unsent) == 8)
        assert session.unsent[-2:] == (b"push-a", b"push-b")
        await client.run_until(lambda: len(client.received) >= 12, 10.0)
        assert client.received == [*expected_m(10), b"push-a", b"push-b"]
        await until(app.pushed.is_set)
        client.send(b"after")
        await client.run_until(lambda: len(client.received) >= 13, 10.0)
        assert client.received[-1] == b"after"
        await client.close()


async def test_a_receiver_waits_while_an_async_send_waits_for_window() -> None:
    """The coroutine's send_many (6 pushes, window 4) was first: a message that arrives
    meanwhile is echoed after its last push, not between."""
    app = Mixed()
    app.pushes = [b"push%d" % n for n in range(6)]
    app.push.set()
    async with sessiond.serve(app, "127.0.0.1", 0) as server:
        client = CoreClient(*server.addresses[0], SMALL)
        await client.open()
        session = entry_of(server, client)
        await until(lambda: len(session.unsent) == 2)  # an awaiting send's, not a backlog
        client.send(b"m0")
        await until(lambda: session.core.messages_waiting == 1)
        await client.run_until(lambda: len(client.received) >= 7, 10.0)
        assert client.received == [*app.pushes, b"m0"]
        await client.close()


def exploding(session: sessiond.Session, batch: list[bytes]) -> None:
    for payload in batch:
        if payload == b"boom":
            raise RuntimeError("the app's own bug")
        session.send_many_nowait([payload])


async def receive_exploding(session: sessiond.Session) -> None:
    await session.receive_with(exploding)


async def test_an_exception_in_the_receiver_ends_that_session_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="sessiond")
    async with sessiond.serve(receive_exploding, "127.0.0.1", 0) as server:
        bystander = CoreClient(*server.addresses[0])
        victim = CoreClient(*server.addresses[0])
        await bystander.open()
        await victim.open()
        victim.send(b"fine")
        await victim.run_until(lambda: len(victim.received) >= 1)
        victim.send(b"boom")
        await victim.run_until(lambda: ended(victim) is not None)
        assert victim.received == [b"fine"]
        assert ended(victim) is CloseCode.SESSION_REVOKED
        failures = [r for r in caplog.records if r.getMessage().startswith("handler failed")]
        assert len(failures) == 1 and failures[0].exc_info is not None
        assert isinstance(failures[0].exc_info[1], RuntimeError)
        for n in range(20):  # the daemon and the other session go on
            bystander.send(b"b%d" % n)
        await bystander.run_until(lambda: len(bystander.received) >= 20)
        assert bystander.received == [b"b%d" % n for n in range(20)]
        assert len(server.sessions) == 1
        await bystander.close()


async def test_a_message_larger_than_the_peers_max_frame_revokes_the_session() -> None:
    async with sessiond.serve(echo, "127.0.0.1", 0) as server:
        host, port_ = server.addresses[0]
        session = await sessiond_client.connect(
            f"tcp://{host}:{port_}", params=Params(max_frame_size=1024)
        )
        await session.send(b"fits")
        assert await asyncio.wait_for(session.recv(), 5) == b"fits"
        await session.send(b"x" * 2000)  # fits the server's frames, not the client's
        with pytest.raises(sessiond_client.SessionLost) as lost:
            await asyncio.wait_for(session.recv(), 5)
        assert lost.value.reason is CloseCode.SESSION_REVOKED


# ------------------------------------------------------------- the Redis store


class SyncEcho(Echo):
    """The echo receiver under a store, recording what its handlers saw."""

    async def __call__(self, session: sessiond.Session) -> None:
        self.recovered.append(session.recovered)
        await session.receive_with(echo_batch)
        if session.moved:
            self.moved += 1
        else:
            self.lost += 1


Start = Callable[[Echo], Awaitable[Server]]


async def test_store_acks_only_what_is_stored_with_its_reply(start: Start) -> None:
    """With a store, an echo is written after the commit that holds it and the input it
    answers (consumed); a move after every exchange loses and repeats nothing."""
    app = SyncEcho()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a))
    assert await client.connect()
    await exchange(client, 0, 10)
    session = entry_of(a, client)
    sent, _, received, _ = session.core.sequence_numbers
    assert (sent, received) == (10, 10)
    held = a.sessions.find(client.session.id or b"")
    assert held is not None and a.durable is not None
    await until(lambda: a.durable is not None and a.durable._idle.is_set())
    stored = a.durable._stored[held]  # the replies and the inputs they answer, stored
    assert (stored.sent, stored.consumed) == (10, 10)
    for round_ in range(4):  # back and forth, attached: a takeover each time
        client.port = port(b if round_ % 2 == 0 else a)
        await client.kill()
        assert await client.connect(10.0)
        await exchange(client, 10 * (round_ + 2) - 10, 10)
    assert client.received == expected(50)
    assert app.moved >= 1 and app.recovered[-1] is True
    await client.close()


async def test_store_move_carries_the_replies_waiting_for_window(start: Start) -> None:
    """A's receiver has answered 10 messages, 6 of the echoes wait for window when the
    session moves to B: they go with it (stored as sent, their inputs consumed), and B
    sends them as the window opens."""
    app = SyncEcho()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a), SMALL)
    assert await client.connect()
    for n in range(10):
        client.send(b"m%d" % n)
    session = entry_of(a, client)
    await until(lambda: len(session.unsent) == 6)
    await client.kill()
    client.port = port(b)
    assert await client.connect(10.0)
    await client.run_until(lambda: len(client.received) >= 10, 20.0)
    await exchange(client, 10, 10)
    assert client.received == expected(20)
    assert session.moved and app.moved == 1
    with pytest.raises(SessionMoved):
        session.send_many_nowait([b"late"])
    await client.close()


@pytest.mark.parametrize("how", ["kill -9", "move"])
async def test_store_replies_waiting_for_window_survive_a_crash_or_a_move(
    start: Start, how: str
) -> None:
    """Ten requests in one read, four echoes in the client's window, six waiting in the
    backlog: after a kill -9 their inputs were never consumed (the client sends them
    again to the next owner); after a move they went with the session as sent. Either
    way every request is answered exactly once (tests/test_store_crash.py's scenario)."""
    app = SyncEcho()
    a, b = await start(app), await start(app)
    client = CoreClient("127.0.0.1", port(a), SMALL)
    assert await client.connect()
    send_together(client, expected(10))
    session = entry_of(a, client)
    await until(lambda: len(session.unsent) == 6)
    assert session.core.sequence_numbers[3] == 4  # consumed: the four answered
    if how == "kill -9":
        assert a.durable is not None
        await a.durable.settle()  # what it has done so far is stored (ACKs written)
        await crash(a)
    await client.kill()
    client.port = port(b)
    async with asyncio.timeout(20):
        while not await client.connect(10.0):  # a's release may still be on its way
            await asyncio.sleep(0.1)
    await client.run_until(lambda: len(client.received) >= 10, 20.0)
    send_together(client, [b"m%d" % n for n in range(10, 15)])
    await client.run_until(lambda: len(client.received) >= 15, 20.0)
    assert client.received == expected(15)  # every request answered, exactly once
    assert app.recovered[-1] is True
    await client.close()


class WatchedEcho:
    """The echo receiver, noting the most replies it ever left waiting for window."""

    def __init__(self) -> None:
        self.most_waiting = 0

    def receive(self, session: sessiond.Session, batch: list[bytes]) -> None:
        echo_batch(session, batch)
        self.most_waiting = max(self.most_waiting, len(session.unsent))

    async def __call__(self, session: sessiond.Session) -> None:
        await session.receive_with(self.receive)


async def test_echo_through_cuts_with_replies_waiting_for_window_is_exactly_once() -> None:
    """3,000 messages through four transport cuts, the client's window 8 messages: the
    echoes wait for window in the session again and again, and every one arrives once,
    in order, across the resumes."""
    count = 3_000
    app = WatchedEcho()
    config = ServerConfig(params=SERVER_PARAMS)
    async with (
        sessiond.serve(app, "127.0.0.1", 0, config=config) as server,
        FaultProxy(*server.addresses[0]) as proxy,
    ):
        params = dataclasses.replace(CLIENT_PARAMS, window_messages=8)
        session = await sessiond_client.connect(url_of(proxy), params=params, policy=FAST)
        sent = [b"w%d" % n for n in range(count)]
        received: list[bytes] = []
        task = asyncio.create_task(receive_into(session, received, count))
        for n in range(0, count, 50):
            await session.send_many(sent[n : n + 50])
            if n % 750 == 700:
                proxy.cut()
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 60)
        assert received == sent
        (entry,) = server.sessions.values()  # one session throughout
        assert entry.core.sequence_numbers[2] == count
        assert len(proxy.connections) >= 5  # four cuts, each resumed
        assert app.most_waiting > 0  # the backlog was used
        await session.close()
