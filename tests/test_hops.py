"""Loop iterations between a read and the write of its reply (sessiond/hops.py).

The daemon's per-tick flush is queued by the first session that gets input in a
loop iteration; handlers woken by later reads in that iteration run after it, so
their replies used to wait one more iteration. A handler's output now leaves
when it waits for input again. The trace is the developer's switch
(TRACE_SESSIOND_HOPS), set here for one server.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest
from sessiond_client.protocol import Params, codec

import sessiond
from sessiond import hops
from sessiond.apps import echo, echo_async
from sessiond.server import ServerConfig

from .coreclient import CoreClient

SESSIONS = 5
ROUNDS = 20


def answered(client: CoreClient, count: int) -> bool:
    return len(client.received) >= count


@pytest.mark.parametrize(("app", "expected"), [(echo_async, 1), (echo, 0)])
async def test_replies_to_reads_of_one_iteration_leave_in_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app: sessiond.server.Handler, expected: int
) -> None:
    """An awaiting handler's replies leave one iteration after their read; a synchronous
    receiver's (the echo app's) in the read callback itself."""
    summary = tmp_path / "hops.txt"
    monkeypatch.setattr(hops, "PATH", str(summary))
    async with sessiond.serve(app, "127.0.0.1", 0) as server:
        host, port = server.addresses[0]
        clients = [CoreClient(host, port) for _ in range(SESSIONS)]
        for client in clients:
            await client.open()
        for round_ in range(ROUNDS):
            for client in clients:  # written before the server's loop reads any of them
                client.send(b"ping %d" % round_)
            for client in clients:
                await client.pump_until(partial(answered, client, round_ + 1), 10.0)
        assert all(c.received == [b"ping %d" % r for r in range(ROUNDS)] for c in clients)
        trace = server.hop_trace
        assert trace is not None
        counted = [hops_ for hops_, _, _ in trace.records]
        assert len(counted) == SESSIONS * ROUNDS  # every read carried one ping
        assert set(counted) == {expected}, trace.summary()
        for client in clients:
            await client.close()
    assert summary.read_text().splitlines()[2].startswith(f"{expected} {SESSIONS * ROUNDS} ")


@pytest.mark.parametrize("app", [echo_async, echo])
async def test_what_a_read_makes_leaves_with_its_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app: sessiond.server.Handler
) -> None:
    """A read carrying a ping and a PING: the PONG goes out in the write of the echo, not
    in a write of its own before it (the trace counts writes that carry no reply)."""
    monkeypatch.setattr(hops, "PATH", str(tmp_path / "hops.txt"))
    # No heartbeat and no ACK timer within the test: only the reads make the daemon write.
    quiet = Params(heartbeat_interval=60.0, ack_delay=30.0)
    async with sessiond.serve(app, "127.0.0.1", 0, config=ServerConfig(params=quiet)) as server:
        client = CoreClient(*server.addresses[0], quiet)
        await client.open()
        trace = server.hop_trace
        assert trace is not None and client.conn is not None and client.writer is not None
        alone = trace.other_writes
        for round_ in range(ROUNDS):
            client.session.send(b"ping %d" % round_, client.now())
            client.writer.write(client.conn.data_to_send() + codec.encode_ping(round_))
            await client.pump_until(partial(answered, client, round_ + 1), 10.0)
        assert client.received == [b"ping %d" % r for r in range(ROUNDS)]
        assert len(trace.records) == ROUNDS
        assert trace.other_writes == alone, trace.summary()
        await client.close()


async def test_the_trace_is_off_without_its_variable() -> None:
    assert hops.PATH is None  # the suite runs without TRACE_SESSIOND_HOPS
    async with sessiond.serve(echo, "127.0.0.1", 0) as server:
        assert server.hop_trace is None
        await asyncio.sleep(0)
