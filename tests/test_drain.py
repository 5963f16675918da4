"""Graceful drain: GOAWAY, in-flight messages acknowledged, then CLOSE GOING_AWAY."""

from __future__ import annotations

import asyncio
import contextlib

from sessiond_client.protocol import CloseCode, GoawayReceived, TransportLost

import sessiond
import sessiond.apps
from tests.coreclient import CoreClient


async def run_until_closed(client: CoreClient, timeout: float) -> None:
    """Pump input and run the client's timers (its coalesced ACKs) until the server closes."""
    deadline = client.now() + timeout
    while client.conn is not None and not client.conn.closed:
        assert client.now() < deadline, "the server never closed the transport"
        with contextlib.suppress(TimeoutError):
            await client.pump_once(0.02)
        due = client.session.next_deadline()
        if due is not None and client.now() >= due:
            client.session.handle_timer(client.now())
            client.flush()


async def test_drain_sends_goaway_waits_for_acks_then_closes() -> None:
    server = sessiond.Server(sessiond.apps.echo)
    await server.listen("127.0.0.1", 0)
    client = CoreClient(*server.addresses[0])
    await client.open()
    for i in range(200):
        client.send(f"m{i}".encode())
    drain = asyncio.create_task(server.drain(timeout=5.0, retry_after=2.0))
    await run_until_closed(client, 10.0)
    assert await drain is True
    goaways = [e for e in client.events if isinstance(e, GoawayReceived)]
    assert goaways and goaways[0].retry_after == 2.0
    lost = [e for e in client.events if isinstance(e, TransportLost)]
    assert lost[-1].code is CloseCode.GOING_AWAY and lost[-1].retry_after == 2.0
    # Everything the server sent before closing was acknowledged, so nothing is in doubt.
    assert len(client.received) == 200
    assert client.received == [f"m{i}".encode() for i in range(200)]


async def test_drain_gives_up_at_its_timeout() -> None:
    server = sessiond.Server(sessiond.apps.echo)
    await server.listen("127.0.0.1", 0)
    client = CoreClient(*server.addresses[0])
    await client.open()
    client.send(b"never acknowledged")
    await client.pump_until(lambda: client.session.messages_waiting > 0 or bool(client.received))
    # The client takes the echo but runs no timers: its coalesced ACK never goes out.
    assert client.writer is not None
    started = asyncio.get_running_loop().time()
    assert await server.drain(timeout=0.3) is False
    assert asyncio.get_running_loop().time() - started >= 0.3
    client.writer.close()
