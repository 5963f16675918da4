"""The daemon's pass per read (issue 18): when the handler waits for input again,
``write_now`` writes its output and re-arms the session's timer itself, and the loop
tick's flush passes the session by. These tests pin what that pass must still do: arm
the coalesced ACK a take set, and leave an event (the handler's close) to the tick."""

from __future__ import annotations

import asyncio

from sessiond_client.protocol import CloseCode, Params, SessionEnded, SessionLost

import sessiond
from sessiond.server import ServerConfig
from tests.coreclient import CoreClient

# No heartbeat within any test's time: only the ACK timer can make the daemon write.
QUIET = Params(heartbeat_interval=60.0)


async def test_a_taken_message_is_acknowledged_on_its_timer_without_a_reply() -> None:
    taken: list[bytes] = []

    async def app(session: sessiond.Session) -> None:
        while True:  # takes every message, answers none
            taken.append(await session.recv())

    config = ServerConfig(params=QUIET)
    async with sessiond.serve(app, "127.0.0.1", 0, config=config) as server:
        client = CoreClient(*server.addresses[0], QUIET)
        await client.open()
        for round_ in range(3):
            client.send(b"m%d" % round_)
            # One message (under a quarter of the window): the ACK is coalesced, due
            # ack_delay after the take; nothing else would make the daemon write.
            await client.pump_until(lambda: client.session.unacked_count == 0, 10.0)
        assert taken == [b"m0", b"m1", b"m2"]
        await client.close()


async def test_echoes_come_back_in_order_and_acknowledged() -> None:
    async def app(session: sessiond.Session) -> None:
        while True:
            await session.send_many(await session.recv_many())

    config = ServerConfig(params=QUIET)
    async with sessiond.serve(app, "127.0.0.1", 0, config=config) as server:
        client = CoreClient(*server.addresses[0], QUIET)
        await client.open()
        for i in range(50):
            client.send(b"e%d" % i)
            expected = i + 1
            await client.pump_until(lambda: len(client.received) == expected)  # noqa: B023
        assert client.received == [b"e%d" % i for i in range(50)]
        await client.pump_until(lambda: client.session.unacked_count == 0, 10.0)
        await client.close()


async def test_a_close_before_waiting_again_is_acted_on() -> None:
    outcome: list[object] = []

    async def app(session: sessiond.Session) -> None:
        await session.send(await session.recv())
        session.close(CloseCode.NORMAL, "one is enough")
        try:
            await session.recv()  # waits again right after the close: write_now runs
        except SessionLost as exc:
            outcome.append(exc.reason)

    # The client keeps its socket open: the daemon's transport would linger for
    # close_grace; the session is forgotten at once all the same (the event's pass).
    config = ServerConfig(params=QUIET, close_grace=60.0)
    async with sessiond.serve(app, "127.0.0.1", 0, config=config) as server:
        client = CoreClient(*server.addresses[0], QUIET)
        await client.open()
        client.send(b"only")
        await client.pump_until(lambda: any(isinstance(e, SessionEnded) for e in client.events))
        assert client.received == [b"only"]
        ended = [e for e in client.events if isinstance(e, SessionEnded)]
        assert ended[0].code is CloseCode.NORMAL
        async with asyncio.timeout(5):
            while not outcome or len(server.sessions) != 0:
                await asyncio.sleep(0.01)
        assert outcome == [CloseCode.NORMAL]
