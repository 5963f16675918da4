"""The daemon's server-side rules over real sockets, with and without a session store.

With a store a session's output takes another path (sessiond/durable.py: staged by
the loop tick's flush, stored, then written by the store's writer), and every CLOSE
the daemon decides while it handles input or a timer must still reach the wire and
close the transport (helper F's find: with Redis none did). The protocol-rule tests
elsewhere (tests/conformance.md) drive the core alone or a daemon without a store;
these drive the embedded daemon, once without a store and once with a RedisStore on
a real redis-server, and check what a client sees on the wire: the CLOSE with its
code, then the end of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from sessiond_client.protocol import (
    CloseCode,
    FrameDecoder,
    GoawayReceived,
    Params,
    SessionLostEvent,
    SessionResumed,
    parse_frame,
)
from sessiond_client.protocol.frames import Ack, Close, Data, Hello

import sessiond
import sessiond.apps
from sessiond.budgets import Limits
from sessiond.server import Server, ServerConfig
from sessiond.store.redisstore import RedisStore

from .coreclient import CoreClient
from .redisserver import RedisServer

HOST = "127.0.0.1"
Start = Callable[..., Awaitable[Server]]


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module (each test has its own key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


_prefixes = itertools.count()


@pytest.fixture(params=["no-store", "redis"])
async def start(request: pytest.FixtureRequest) -> AsyncIterator[Start]:
    """Start embedded echo daemons, without a store or on the module's redis-server."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(config: ServerConfig | None = None) -> Server:
            store = None
            if request.param == "redis":
                redis: RedisServer = request.getfixturevalue("shared_redis")
                store = RedisStore(redis.url, f"r{next(_prefixes)}:")
                await store.start()
            return await stack.enter_async_context(
                sessiond.serve(sessiond.apps.echo, HOST, 0, store=store, config=config)
            )

        yield make


def port(server: Server) -> int:
    return server.addresses[0][1]


async def opened(server: Server, params: Params | None = None) -> CoreClient:
    """A client with a session, three messages echoed."""
    client = CoreClient(HOST, port(server), params)
    assert await client.connect()
    for n in range(3):
        client.send(b"m%d" % n)
    await client.run_until(lambda: len(client.received) >= 3, 10.0)
    assert client.received == [b"m0", b"m1", b"m2"]
    return client


async def read_close(reader: asyncio.StreamReader | None, timeout: float = 10.0) -> Close | None:
    """Read to the end of the stream (EOF or reset; TimeoutError if the daemon leaves it
    open): the CLOSE frame that ended it, if any. The reader must be at a frame boundary."""
    assert reader is not None
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            data = await reader.read()
    frames = [parse_frame(frame) for frame in FrameDecoder(1 << 22).feed(data)]
    closes = [frame for frame in frames if isinstance(frame, Close)]
    return closes[-1] if closes else None


def session_of(server: Server, client: CoreClient) -> sessiond.Session:
    entry = server.sessions.find(client.session.id or b"")
    assert entry is not None
    return entry.session


# ------------------------------------------------------------- input decided ends

#: A 4-message window; frames up to 4 MiB; incomplete frames over all transports held
#: up to 1 MiB (limits.max_partial_bytes, its minimum).
CONFIG = ServerConfig(
    params=Params(window_messages=4, max_frame_size=4 << 20),
    limits=Limits(max_partial_bytes=1 << 20),
)

#: What a client writes after three messages (its next sequence number is 4), and the
#: code of the CLOSE it must get for it.
BAD_INPUT = {
    "malformed": (b"\xc1", CloseCode.PROTOCOL_ERROR),  # never valid msgpack
    "too-large": (  # a DATA header announcing a 4 GiB payload (§1.4: before buffering)
        b"\x93\x03\xcf" + (4).to_bytes(8, "big") + b"\xc6\xff\xff\xff\xff",
        CloseCode.FRAME_TOO_LARGE,
    ),
    "sequence-gap": (Data(9, b"4 to 8 skipped").encode(), CloseCode.SEQUENCE_ERROR),
    "ack-above-sent": (Ack(1000).encode(), CloseCode.SEQUENCE_ERROR),
    "hello-mid-session": (
        Hello((1,), 15000, 1024, 1 << 20, 1 << 20, 0).encode(),
        CloseCode.UNEXPECTED_FRAME,
    ),
    "over-the-window": (  # the daemon's window is 4 messages
        b"".join(Data(seq, b"x").encode() for seq in range(4, 20)),
        CloseCode.FLOW_CONTROL_ERROR,
    ),
    "partial-over-max-partial-bytes": (  # 2 MiB of a frame, never completed
        Data(4, bytes(3 << 20)).encode()[: 2 << 20],
        CloseCode.LIMIT_EXCEEDED,
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_mid_session_gets_its_close_then_the_end_of_the_stream(
    start: Start, case: str
) -> None:
    """protocol.md §1.4, §5.2, §5.3, §6.2 and limits.max_partial_bytes: the CLOSE with
    the rule's code reaches the client and the daemon closes the transport (§12)."""
    server = await start(CONFIG)
    client = await opened(server)
    session = session_of(server, client)
    assert client.writer is not None
    data, code = BAD_INPUT[case]
    client.writer.write(data)
    close = await read_close(client.reader)
    assert close is not None and close.code == code
    # A protocol error ends the session; a limit costs the transport only (it detaches).
    assert session.ended is (code is not CloseCode.LIMIT_EXCEEDED)


async def test_a_close_decided_just_before_the_peers_fin_is_still_written(start: Start) -> None:
    """Garbage, then at once the client's FIN (a client that shuts down after its last
    write): the daemon decides the CLOSE while reading, then sees the EOF. The CLOSE
    must be written before the transport goes (with a store it waits for the commit;
    with Redis on another host, the EOF comes first)."""
    server = await start()
    client = await opened(server)
    entry = server.sessions.find(client.session.id or b"")
    assert entry is not None and entry.protocol is not None
    protocol = entry.protocol
    assert protocol.transport is not None
    # As asyncio calls them when both come in one loop iteration (no sleep decides it).
    protocol.data_received(b"\xc1")
    if not protocol.eof_received():
        protocol.transport.close()
    close = await read_close(client.reader)
    assert close is not None and close.code == CloseCode.PROTOCOL_ERROR


async def test_a_hello_with_garbage_in_its_read_is_refused_whole(start: Start) -> None:
    """The HELLO and a malformed byte in one read: the read is decoded before the HELLO
    is answered, so no session is made (none stored) and the CLOSE comes alone."""
    server = await start()
    client = CoreClient(HOST, port(server))
    await client.open_transport()
    assert client.writer is not None
    client.writer.write(client.session.connect(client.now()).data_to_send() + b"\xc1")
    close = await read_close(client.reader)
    assert close is not None and close.code == CloseCode.PROTOCOL_ERROR
    assert not len(server.sessions)


async def test_a_close_from_the_peer_ends_the_session_and_the_transport(start: Start) -> None:
    server = await start()
    client = await opened(server)
    session = session_of(server, client)
    assert client.writer is not None
    client.writer.write(Close(CloseCode.NORMAL, "bye", 0).encode())
    assert await read_close(client.reader) is None  # nothing to answer a CLOSE with
    assert session.ended


async def test_a_frame_left_partial_is_closed_with_idle_timeout_and_resumes(
    start: Start,
) -> None:
    """A timer of the transport (limits.partial_frame_timeout), not of the core."""
    server = await start(ServerConfig(limits=Limits(partial_frame_timeout=0.3)))
    client = await opened(server)
    assert client.writer is not None
    client.writer.write(Data(4, b"x" * 1000).encode()[:-10])
    close = await read_close(client.reader)
    assert close is not None and close.code == CloseCode.IDLE_TIMEOUT
    assert not session_of(server, client).ended  # detached, not ended
    assert client.conn is not None
    client.conn.connection_lost(client.now())
    assert await client.connect()
    assert isinstance(client.events[-1], SessionResumed)
    await client.close()


# -------------------------------------------------------------- timer decided ends


async def test_heartbeats_keep_a_quiet_session_attached(start: Start) -> None:
    """§7: PINGs both ways, answered; neither side's idle timeout (0.6 s) fires."""
    params = Params(heartbeat_interval=0.2, heartbeat_min=0.05)
    server = await start(ServerConfig(params=params))
    client = await opened(server, params)
    with contextlib.suppress(TimeoutError):
        await client.run_until(lambda: False, 1.5)
    assert client.attached
    await client.close()


async def test_the_daemons_idle_timeout_drops_a_silent_transport(start: Start) -> None:
    """§7.2: a client that stops reading and writing: the transport is dropped (aborted,
    nobody reads the CLOSE) and the session detaches, not ends."""
    params = Params(heartbeat_interval=0.2, heartbeat_min=0.05)
    server = await start(ServerConfig(params=params))
    client = await opened(server, params)
    await read_close(client.reader)  # until the daemon drops it (TimeoutError if never)
    assert not session_of(server, client).ended


# ----------------------------------------------------- ends decided elsewhere


async def test_an_operators_end_reaches_the_client(start: Start) -> None:
    server = await start()
    client = await opened(server)
    session_of(server, client).close(CloseCode.SESSION_REVOKED, "ended by the operator")
    close = await read_close(client.reader)
    assert close is not None and close.code == CloseCode.SESSION_REVOKED


async def test_the_echo_app_ending_a_session_it_cannot_answer_reaches_the_client(
    start: Start,
) -> None:
    """§16: an end decided by the handler (its reply above the client's max_frame)."""
    server = await start()
    client = await opened(server, Params(max_frame_size=1024))
    client.send(b"x" * 2000)  # within the daemon's max_frame, above the client's
    close = await read_close(client.reader)
    assert close is not None and close.code == CloseCode.SESSION_REVOKED
    assert "max_frame" in close.reason


async def test_drain_sends_goaway_then_going_away(start: Start) -> None:
    """§11: GOAWAY first; once everything is acknowledged, CLOSE GOING_AWAY."""
    server = await start()
    client = await opened(server)
    drain = asyncio.create_task(server.drain(5.0, retry_after=0.5))
    with contextlib.suppress(TimeoutError):
        await client.run_until(lambda: False, 10.0)
    assert await drain
    assert client.conn is not None and client.conn.close_code is CloseCode.GOING_AWAY
    goaways = [e for e in client.events if isinstance(e, GoawayReceived)]
    assert [(e.code, e.retry_after) for e in goaways] == [(CloseCode.GOING_AWAY, 0.5)]


async def test_shutdown_closes_every_transport_with_going_away(start: Start) -> None:
    server = await start()
    client = await opened(server)
    closing = asyncio.create_task(server.close())
    close = await read_close(client.reader)
    await closing
    assert close is not None and close.code == CloseCode.GOING_AWAY


# ------------------------------------------------------------------- resumes


async def test_a_takeover_closes_the_old_transport_with_taken_over(start: Start) -> None:
    """§9.1: a resume on a new transport while the old one looks alive; the old one
    gets CLOSE TAKEN_OVER on the wire, the new one the session, nothing lost."""
    server = await start()
    client = await opened(server)
    old = client.reader, client.writer  # kept: a transport dropped here would close
    assert client.conn is not None
    client.conn.connection_lost(client.now())  # the client gave up on it; still open
    client.send(b"m3")  # queued while detached
    assert await client.connect()
    await client.run_until(lambda: len(client.received) >= 4, 10.0)
    close = await read_close(old[0])
    assert close is not None and close.code == CloseCode.TAKEN_OVER
    assert client.received == [b"m0", b"m1", b"m2", b"m3"]
    await client.close()


async def test_replies_lost_with_a_transport_are_replayed_once_after_resume(
    start: Start,
) -> None:
    """§4.4: what the daemon sent and the client never read comes again, once, in order."""
    server = await start()
    client = await opened(server)
    entry = server.sessions.find(client.session.id or b"")
    assert entry is not None
    for n in range(3, 13):
        client.send(b"m%d" % n)
    async with asyncio.timeout(10):  # echoed (sent, unacknowledged), never read here
        while entry.core.sequence_numbers[0] < 13:
            await asyncio.sleep(0.01)
    await client.kill()
    assert await client.connect()
    await client.run_until(lambda: len(client.received) >= 13, 10.0)
    assert client.received == [b"m%d" % n for n in range(13)]
    await client.close()


async def test_a_rotated_credential_presented_again_ends_the_session_on_its_transport(
    start: Start,
) -> None:
    """§10.3: theft. The holder's transport gets CLOSE CREDENTIAL_REUSED; the thief gets
    a new session and the loss of the old one."""
    server = await start()
    client = await opened(server)
    await client.kill()
    thief = client.clone()  # the credential before the next resume
    assert await client.connect()  # rotates it
    client.send(b"confirmed")
    await client.run_until(lambda: len(client.received) >= 4, 10.0)
    assert await thief.connect()  # as a new session, told why (§4.3)
    lost = [e for e in thief.events if isinstance(e, SessionLostEvent)]
    assert [e.reason for e in lost] == [CloseCode.CREDENTIAL_REUSED]
    close = await read_close(client.reader)
    assert close is not None and close.code == CloseCode.CREDENTIAL_REUSED
    await thief.close()


async def test_shutdown_survives_a_transport_its_peer_closed_a_moment_before(
    start: Start,
) -> None:
    """A client closes its socket and the daemon closes before reading the FIN: its
    CLOSE frame is answered with a reset (at once on loopback, or through a local
    proxy), so the FIN after it cannot be sent (ENOTCONN). That must cost that
    transport only, not the rest of the shutdown (the other client's CLOSE, the
    handlers' cancellation, the store's)."""
    server = await start()
    gone, other = await opened(server), await opened(server)
    assert gone.writer is not None
    gone.writer.transport.close()  # the socket closes in the loop's next callbacks,
    await asyncio.sleep(0)  # which run now, before the daemon's next read
    await server.close()
    close = await read_close(other.reader)
    assert close is not None and close.code == CloseCode.GOING_AWAY
    assert not server.protocols
