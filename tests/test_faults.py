"""The daemon behind a fault-injecting proxy (tests/faultproxy.py): transports cut with
messages in flight, byte-by-byte delivery, one-way and half-open paths, detached expiry,
two clients fighting over one session, and one session's faults not touching another.

Timers are short (heartbeat 0.5 s, idle timeout 1.5 s) so every test stays fast, yet
longer than a 1 s stall of the event loop (a shared, loaded machine: client and daemon
share the loop, so a stall silences both ends at once), and every wait is bounded.
Randomised tests name their seed in every failure; rerun one with
``TEST_FAULT_SEED=<seed>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sessiond_client.protocol import (
    CloseCode,
    FrameDecoder,
    InvalidState,
    Params,
    SessionEnded,
    SessionLostEvent,
    SessionResumed,
    SessionStarted,
    SessionState,
    TransportLost,
    parse_frame,
)
from sessiond_client.protocol.frames import Close

import sessiond
import sessiond.apps
from sessiond.server import Server, ServerConfig, ServerProtocol
from tests.coreclient import CoreClient
from tests.faultproxy import C2S, HIGH_WATER, S2C, Direction, FaultProxy, ProxyConnection

HEARTBEAT = 0.5
IDLE_TIMEOUT = 3 * HEARTBEAT  # heartbeat times idle_timeout_factor, announced in WELCOME
MARGIN = 2.0  # generous slack for a loaded machine: a behaviour bound, not a benchmark

SERVER_PARAMS = Params(
    heartbeat_interval=HEARTBEAT,
    heartbeat_min=0.05,
    idle_timeout_factor=3.0,
    detached_lifetime=10.0,
    handshake_timeout=2.0,
)
CLIENT_PARAMS = Params(heartbeat_interval=HEARTBEAT, heartbeat_min=0.05, handshake_timeout=2.0)


def fault_seed() -> int:
    value = os.environ.get("TEST_FAULT_SEED")
    return int(value) if value else random.randrange(2**32)


@contextlib.contextmanager
def noting_seed(seed: int) -> Iterator[str]:
    """Yield the text naming *seed* for assertion messages, and add it to any failure."""
    why = f"seed={seed} (rerun with TEST_FAULT_SEED={seed})"
    try:
        yield why
    except BaseException as exc:
        exc.add_note(why)
        raise


@contextlib.asynccontextmanager
async def echo_daemon(**params: Any) -> AsyncIterator[Server]:
    config = ServerConfig(params=dataclasses.replace(SERVER_PARAMS, **params))
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        yield server


@contextlib.asynccontextmanager
async def daemon_and_proxy(**params: Any) -> AsyncIterator[tuple[Server, FaultProxy]]:
    async with echo_daemon(**params) as server, FaultProxy(*server.addresses[0]) as proxy:
        yield server, proxy


def server_side(server: Server, peer: tuple[str, int] | None) -> ServerProtocol:
    """The daemon's protocol object for the transport whose client end is *peer*."""
    assert peer is not None
    found = [p for p in server.protocols if p.peer == f"{peer[0]}:{peer[1]}"]
    assert len(found) == 1, (peer, [p.peer for p in server.protocols])
    return found[0]


def client_address(client: CoreClient) -> tuple[str, int]:
    assert client.writer is not None
    host, port = client.writer.get_extra_info("sockname")[:2]
    return str(host), int(port)


def server_core_unacked(server: Server, client: CoreClient) -> int:
    """Messages the daemon sent on the client's session that the client has not acked."""
    entry = server.sessions.find(client.session.id or b"")
    return entry.core.unacked_count if entry is not None else 0


async def exchange(client: CoreClient, payloads: list[bytes], timeout: float = 5.0) -> None:
    """Send *payloads* (as the window allows) and step until all their echoes arrived,
    i.e. until ``client.received`` ends with them (echoes come back in order, after any
    replayed ones)."""
    pending = list(payloads)
    deadline = time.monotonic() + timeout
    while pending or client.received[len(client.received) - len(payloads) :] != payloads:
        assert client.attached, f"transport closed: {client.events}"
        while pending and client.session.can_send(len(pending[0])):
            client.send(pending.pop(0))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"echoes of {payloads[:3]}... not all received")
        await client.step(remaining)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll *condition* (every 10 ms) until true; return the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)
    return time.monotonic()


def events_of(client: CoreClient, kind: type[Any]) -> list[Any]:
    return [event for event in client.events if isinstance(event, kind)]


# --------------------------------------------------------------------- the proxy itself


async def test_proxy_forwards_counts_and_cuts_with_rst() -> None:
    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper())
        writer.close()

    target = await asyncio.start_server(sink, "127.0.0.1", 0)
    async with target, FaultProxy(*target.sockets[0].getsockname()[:2]) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
        conn = proxy.last
        assert (conn.bytes_c2s, conn.bytes_s2c) == (5, 5)
        conn.cut()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        await conn.wait_closed()
        writer.close()


async def test_proxy_buffering_is_bounded_and_blackhole_hides_the_close() -> None:
    held: list[asyncio.Transport] = []

    class Stuck(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()  # never reads: the proxy must push back, not buffer
            held.append(transport)

    loop = asyncio.get_running_loop()
    target = await loop.create_server(Stuck, "127.0.0.1", 0)
    async with target, FaultProxy(*target.sockets[0].getsockname()[:2]) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        block = bytes(1 << 20)
        for _ in range(16):
            writer.write(block)
        conn = proxy.last
        await wait_for(lambda: conn.client.read_paused, 5, "the proxy kept reading")
        await asyncio.sleep(0.1)  # still paused: the queue stays bounded
        assert conn.client.read_paused
        assert HIGH_WATER < conn.queued(C2S) <= HIGH_WATER + 256 * 1024  # + one read at most
        conn.blackhole()  # the queue is dropped, the client is drained into the void
        assert conn.queued(C2S) == 0
        held[0].close()  # the server closes: the client must not notice
        await asyncio.sleep(0.2)
        assert not reader.at_eof() and not conn.closed
        assert conn.dropped(C2S) > 0
        writer.transport.abort()


# ------------------------------------------------------------------------- daemon tests


async def test_cuts_with_messages_in_flight_both_ways_lose_nothing() -> None:
    """Cut the transport at random moments (the handshake included) while messages flow
    both ways; after each cut resume, sometimes after queueing messages while detached.
    The client must end up with exactly the sequence it sent, once, in order."""
    seed = fault_seed()
    rng = random.Random(seed)
    cuts = 10
    loop = asyncio.get_running_loop()
    with noting_seed(seed) as why:
        await _cuts_in_flight(rng, cuts, loop, why)


async def _cuts_in_flight(
    rng: random.Random, cuts: int, loop: asyncio.AbstractEventLoop, why: str
) -> None:
    async with daemon_and_proxy() as (server, proxy):
        client = CoreClient(*proxy.address, CLIENT_PARAMS)
        sent: list[bytes] = []
        in_flight: list[tuple[int, int]] = []  # (client → server, server → client) at each cut

        def cut(index: int) -> None:
            if len(proxy.connections) <= index:  # the client has not reached the proxy yet
                loop.call_later(0.001, cut, index)
                return
            in_flight.append((client.session.unacked_count, server_core_unacked(server, client)))
            proxy.connections[index].cut()

        def send_some(count: int) -> None:
            for _ in range(count):
                payload = b"%d:" % len(sent) + rng.randbytes(rng.randrange(0, 400))
                if not client.session.can_send(len(payload)):
                    return
                client.send(payload)
                sent.append(payload)

        deadline = time.monotonic() + 20
        for attempt in range(cuts + 1):
            final = attempt == cuts
            if not final:  # a quarter of the cuts fall in or near the handshake
                wait = rng.uniform(0.0, 0.003) if rng.random() < 0.25 else rng.uniform(0.0, 0.08)
                loop.call_later(wait, cut, attempt)
            if client.session.state is SessionState.DETACHED and rng.random() < 0.5:
                send_some(rng.randrange(1, 50))  # queued while detached, sent after the replay
            await client.connect()
            while client.attached and (not final or len(client.received) < len(sent)):
                assert time.monotonic() < deadline, f"stuck: {why}"
                if not final:
                    send_some(rng.randrange(1, 100))
                await client.step(0.05)
            if not final:
                await client.run_until(lambda: not client.attached, 5)
                assert not client.attached, why
            else:
                assert client.attached, f"final transport closed: {client.events} {why}"

        assert len(in_flight) == cuts, why
        assert client.received == sent, f"{len(client.received)}/{len(sent)} {why}"
        assert not events_of(client, SessionLostEvent), why
        assert not events_of(client, SessionEnded), why
        # The cuts hit while messages were in flight both ways (not only between exchanges).
        assert any(up and down for up, down in in_flight), f"{in_flight} {why}"
        await client.close()


async def test_one_byte_chunks_both_ways_echo_intact() -> None:
    async with daemon_and_proxy() as (_server, proxy):
        proxy.chunk(1)
        client = CoreClient(*proxy.address, CLIENT_PARAMS)
        assert await client.connect()
        sent = [b"%d" % i for i in range(500)]
        await exchange(client, sent, timeout=20)
        assert client.received == sent
        conn = proxy.last
        for direction in (C2S, S2C):  # every forwarded byte went out in its own write
            assert conn.forwarded(direction) > 500 * 14
            assert conn.writes(direction) == conn.forwarded(direction)
        await client.close()


@pytest.mark.parametrize("direction", [S2C, C2S])
async def test_one_way_cut_is_detected_by_silence_and_resumed(direction: Direction) -> None:
    """server→client stopped: the client hears nothing and closes with IDLE_TIMEOUT.
    client→server stopped: the daemon hears nothing and closes with IDLE_TIMEOUT (its CLOSE
    still reaches the client). Either way the client resumes and nothing is lost."""
    async with daemon_and_proxy() as (_server, proxy):
        client = CoreClient(*proxy.address, CLIENT_PARAMS)
        assert await client.connect()
        sent = [b"before %d" % i for i in range(50)]
        await exchange(client, sent)
        proxy.last.cut_one_way(direction)
        cut_at = time.monotonic()
        lost = [b"into the cut %d" % i for i in range(20)]  # one way or the other, lost
        for payload in lost:
            client.send(payload)
        sent += lost
        await client.run_until(lambda: not client.attached, IDLE_TIMEOUT + MARGIN)
        detected = time.monotonic()
        assert client.conn is not None
        assert client.conn.close_code is CloseCode.IDLE_TIMEOUT
        # server→client dead: the client itself noticed; else the daemon's CLOSE told it.
        assert client.conn.peer_closed is (direction == C2S)
        assert events_of(client, TransportLost)[-1].code is CloseCode.IDLE_TIMEOUT
        assert detected - cut_at <= IDLE_TIMEOUT + MARGIN
        if direction == S2C:
            assert client.last_input is not None
            assert detected - client.last_input >= IDLE_TIMEOUT
        assert await client.connect()  # a fresh proxy connection
        assert isinstance(client.events[-1], SessionResumed)
        after = [b"after %d" % i for i in range(50)]
        await exchange(client, after)
        assert client.received == sent + after
        await client.close()


@pytest.mark.parametrize("route", ["direct", "fresh proxy connection"])
async def test_half_open_blackhole_is_detected_within_the_idle_timeout(route: str) -> None:
    async with daemon_and_proxy() as (server, proxy):
        client = CoreClient(*proxy.address, CLIENT_PARAMS)
        assert await client.connect()
        old = server_side(server, proxy.last.upstream_address)
        sent = [b"before %d" % i for i in range(50)]
        await exchange(client, sent)
        proxy.last.blackhole()
        holed_at = time.monotonic()
        for i in range(20):
            client.send(b"into the hole %d" % i)
            sent.append(b"into the hole %d" % i)
        await client.run_until(lambda: not client.attached, IDLE_TIMEOUT + MARGIN + 1)
        detected = time.monotonic()
        assert client.conn is not None and client.last_input is not None
        assert client.conn.close_code is CloseCode.IDLE_TIMEOUT
        assert not client.conn.peer_closed  # the client noticed by itself: nothing came through
        assert detected - client.last_input >= IDLE_TIMEOUT
        assert detected - holed_at <= IDLE_TIMEOUT + MARGIN
        if route == "direct":
            client.host, client.port = server.addresses[0]
        assert await client.connect()
        assert isinstance(client.events[-1], SessionResumed)
        # The daemon dropped the dead transport: taken over by the resume, or its own
        # idle timeout got there first. Either way it is closed and no longer attached.
        await wait_for(lambda: old not in server.protocols, 2, "old transport still held")
        assert old.conn is not None and old.closed and old.entry is None
        assert old.conn.close_code in {CloseCode.TAKEN_OVER, CloseCode.IDLE_TIMEOUT}
        after = [b"after %d" % i for i in range(50)]
        await exchange(client, after)
        assert client.received == sent + after
        await client.close()


async def test_a_stalled_resume_handshake_times_out_on_both_ends() -> None:
    """The path dies before HELLO gets through: the client gives up at its handshake
    timeout, the daemon (which saw nothing) at its own; the next resume works."""
    client_timeout, server_timeout = 0.3, 0.5
    async with daemon_and_proxy(handshake_timeout=server_timeout) as (server, proxy):
        params = dataclasses.replace(CLIENT_PARAMS, handshake_timeout=client_timeout)
        client = CoreClient(*proxy.address, params)
        assert await client.connect()
        await exchange(client, [b"one"])
        proxy.last.cut()
        await client.run_until(lambda: not client.attached, 2)
        proxy.delay(30.0)  # nothing gets through in time, either way
        started = time.monotonic()
        assert not await client.connect()
        gave_up = time.monotonic()
        assert client.conn is not None and not client.conn.peer_closed
        assert client.conn.close_code is CloseCode.HANDSHAKE_TIMEOUT
        assert client_timeout <= gave_up - started <= client_timeout + MARGIN
        assert events_of(client, TransportLost)[-1].code is CloseCode.HANDSHAKE_TIMEOUT
        stalled = server_side(server, proxy.last.upstream_address)
        closed_at = await wait_for(lambda: stalled.closed, server_timeout + MARGIN, "no timeout")
        assert closed_at - started >= server_timeout
        assert stalled.conn is not None
        assert stalled.conn.close_code is CloseCode.HANDSHAKE_TIMEOUT
        proxy.delay(0.0)
        client.send(b"two")  # queued while detached
        assert await client.connect()
        assert isinstance(client.events[-1], SessionResumed)
        client.send(b"three")
        await client.run_until(lambda: len(client.received) == 3, 5)
        assert client.received == [b"one", b"two", b"three"]
        await client.close()


async def test_a_closed_transport_is_released_when_its_peer_stopped_reading() -> None:
    """The daemon's output toward the client is stuck (a zero window, or a path that lost
    its ACKs) with megabytes still buffered when the client's idle timeout closes the
    transport. The session detaches and resumes; the daemon must also let go of the
    dead transport (socket, per-peer count) within a bounded time, not keep it for as
    long as the peer keeps not reading."""
    big = 32 << 20
    wide = {"window_bytes": big, "replay_bytes": big, "window_messages": 4096}
    async with daemon_and_proxy(**wide) as (server, proxy):
        client = CoreClient(*proxy.address, dataclasses.replace(CLIENT_PARAMS, **wide))
        assert await client.connect()
        stuck = server_side(server, proxy.last.upstream_address)
        proxy.last.stall(S2C)
        sent = [bytes([i]) * 65536 for i in range(256)]  # 16 MiB: more than socket buffers hold
        for payload in sent:
            client.send(payload)
        await client.run_until(lambda: not client.attached, IDLE_TIMEOUT + MARGIN)
        assert client.conn is not None
        assert client.conn.close_code is CloseCode.IDLE_TIMEOUT
        await wait_for(lambda: stuck.closed, 2, "the daemon kept the transport open")
        closed_at = time.monotonic()
        assert await client.connect()  # a fresh path: the session resumes, replay included
        await client.run_until(lambda: len(client.received) == len(sent), 10)
        assert client.received == sent
        deadline = closed_at + IDLE_TIMEOUT + MARGIN
        while stuck in server.protocols and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert stuck.transport is not None
        assert stuck not in server.protocols, (
            f"the daemon still holds the transport it closed {time.monotonic() - closed_at:.1f} s"
            f" ago: {stuck.transport.get_write_buffer_size()} bytes unsent, counted in"
            f" per_host={server.per_host}"
        )
        await client.close()


async def test_detached_session_expires_and_a_late_resume_gets_a_new_session() -> None:
    lifetime = 0.5
    async with daemon_and_proxy(detached_lifetime=lifetime) as (server, proxy):
        # lifetime 0 in HELLO asks for the daemon's default (protocol.md §3.2)
        params = dataclasses.replace(CLIENT_PARAMS, detached_lifetime=0)
        client = CoreClient(*proxy.address, params)
        assert await client.connect()
        old_id = client.session.id
        assert old_id is not None
        await exchange(client, [b"before %d" % i for i in range(10)])
        await client.run_until(lambda: client.session.unacked_count == 0, 2)
        proxy.cut()
        cut_at = time.monotonic()
        await client.run_until(lambda: not client.attached, 2)
        late = [b"late %d" % i for i in range(5)]
        for payload in late:
            client.send(payload)  # queued while detached: never acknowledged
        assert old_id in server.sessions
        gone_at = await wait_for(
            lambda: old_id not in server.sessions, lifetime + MARGIN, "session not forgotten"
        )
        assert gone_at - cut_at >= lifetime
        assert server.sessions.missing_reason(old_id) is CloseCode.SESSION_EXPIRED
        mark = len(client.events)
        assert await client.connect()
        lost, started = client.events[mark:]
        assert lost == SessionLostEvent(old_id, CloseCode.SESSION_EXPIRED, (), tuple(late))
        assert isinstance(started, SessionStarted)
        assert started.replaces is CloseCode.SESSION_EXPIRED
        assert started.session_id == client.session.id != old_id
        assert client.session.id in server.sessions
        received = len(client.received)
        await exchange(client, [b"new session"])
        assert client.received[received:] == [b"new session"]
        await client.close()


async def test_two_clients_resuming_one_session_alternately() -> None:
    """A and B hold the same session ID and credential. A resumes (the credential rotates
    and A proves it holds the new one), then B presents the rotated one: theft
    (protocol.md §10.3). The session ends with CREDENTIAL_REUSED on A's transport, B gets
    a new session with that reason, and A cannot resume any more."""
    async with echo_daemon() as server:
        a = CoreClient(*server.addresses[0], CLIENT_PARAMS)
        assert await a.connect()
        sid = a.session.id
        assert sid is not None
        await exchange(a, [b"shared %d" % i for i in range(5)])
        await a.run_until(lambda: a.session.unacked_count == 0, 2)
        await a.run_until(lambda: server_core_unacked(server, a) == 0, 2)
        await a.kill()
        await wait_for(lambda: server.sessions[sid].protocol is None, 2, "not detached")
        b = a.clone()
        forked = len(a.received)

        assert await a.connect()
        assert isinstance(a.events[-1], SessionResumed)
        await exchange(a, [b"for a"])  # the echo proves the daemon saw A's post-WELCOME ACK
        a_transport = server_side(server, client_address(a))

        assert await b.connect()
        lost, started = b.events
        assert lost == SessionLostEvent(sid, CloseCode.CREDENTIAL_REUSED, (), ())
        assert isinstance(started, SessionStarted)
        assert started.replaces is CloseCode.CREDENTIAL_REUSED
        assert b.session.id != sid
        await a.run_until(lambda: not a.attached, 2)
        assert a.conn is not None and a.conn.close_code is CloseCode.CREDENTIAL_REUSED
        assert a.conn.peer_closed
        ended = SessionEnded(sid, CloseCode.CREDENTIAL_REUSED, a.conn.close_reason, True)
        assert events_of(a, SessionEnded) == [ended]
        assert a_transport.closed
        assert sid not in server.sessions
        assert server.sessions.missing_reason(sid) is CloseCode.CREDENTIAL_REUSED
        assert a.session.state is SessionState.ENDED
        with pytest.raises(InvalidState):
            a.session.connect(a.now())  # A's turn again: the session is over

        await exchange(b, [b"for b"])
        assert a.received[forked:] == [b"for a"]
        assert b.received[forked:] == [b"for b"]
        await b.close()


async def test_a_clone_racing_an_unconfirmed_resume_takes_over_without_duplicates() -> None:
    """B resumes with the old credential while A's resume is unconfirmed (A's frames after
    WELCOME are delayed on the way): the daemon must accept B (A may never have seen its
    WELCOME, §10.3) and close A with TAKEN_OVER. Echoes the daemon still held at the fork
    must reach one of the two clients only, never both: which requires the daemon to send
    no DATA on a resumed transport before the transport is confirmed (§3.7)."""
    async with daemon_and_proxy() as (server, proxy):
        a = CoreClient(*proxy.address, CLIENT_PARAMS)
        assert await a.connect()
        sid = a.session.id
        assert sid is not None
        await exchange(a, [b"before %d" % i for i in range(5)])
        outstanding = [b"outstanding %d" % i for i in range(5)]
        for payload in outstanding:  # echoed by the daemon, never read by A
            a.send(payload)
        entry = server.sessions[sid]
        await wait_for(lambda: entry.core.sequence_numbers[0] == 10, 2, "echoes not sent")
        await a.kill()
        await wait_for(lambda: entry.protocol is None, 2, "not detached")
        b = a.clone()
        b.host, b.port = server.addresses[0]
        forked = len(a.received)

        proxy.delay(0.5, C2S)  # A's HELLO, then its ACK after WELCOME, arrive late
        a_resume = asyncio.create_task(a.connect())
        await wait_for(lambda: entry.protocol is not None, 2, "A's HELLO never arrived")
        a_transport = entry.protocol
        assert await b.connect()  # before A's ACK can confirm the new credential
        assert isinstance(b.events[-1], SessionResumed)
        await a_resume
        await a.run_until(lambda: not a.attached, 2)
        assert a.conn is not None and a.conn.close_code is CloseCode.TAKEN_OVER
        assert a.session.state is SessionState.ENDED
        assert a_transport is not None and a_transport.closed
        assert a_transport.conn is not None
        assert a_transport.conn.close_code is CloseCode.TAKEN_OVER

        await exchange(b, [b"for b"])
        a_got = a.received[forked:]
        b_got = b.received[forked:]
        both = [payload for payload in a_got if payload in b_got]
        assert not both, f"delivered to both clients: {both}"
        assert sorted(a_got + b_got) == sorted([*outstanding, b"for b"])  # to one of them
        await b.close()


async def test_one_client_on_half_open_transports_is_never_contested() -> None:
    """One client resumes again and again while its previous transports are half-open
    (blackholed, still attached at the daemon), as a device whose network keeps
    changing: each resume presents its newest credential, so each takeover goes through
    however many there are (§9.2); nothing is lost, nothing duplicated."""
    async with daemon_and_proxy() as (server, proxy):
        client = CoreClient(*proxy.address, CLIENT_PARAMS)
        assert await client.connect()
        sent: list[bytes] = []
        for i in range(6):
            await exchange(client, [b"on transport %d" % i])
            sent.append(b"on transport %d" % i)
            old = server_side(server, proxy.last.upstream_address)
            hole = proxy.last
            forwarded = (hole.forwarded(C2S), hole.forwarded(S2C))
            hole.blackhole()
            client.send(b"into hole %d" % i)
            sent.append(b"into hole %d" % i)
            await client.kill()
            assert await client.connect()
            assert (hole.forwarded(C2S), hole.forwarded(S2C)) == forwarded  # it was a hole
            assert isinstance(client.events[-1], SessionResumed)
            assert old.closed and old.conn is not None
            assert old.conn.close_code is CloseCode.TAKEN_OVER
        await exchange(client, [b"finally"])
        sent.append(b"finally")
        assert client.received == sent
        await client.close()


async def test_lost_welcomes_on_half_open_transports_are_never_contested() -> None:
    """One client's resumes keep losing their WELCOME (the path goes dead after the
    HELLO) while the daemon holds every old transport half-open: each resume presents
    the same credential, the newest this client ever received, and each is answered
    with the same pending credential again (§9.2, §10.3), so none is refused, however
    many there are. The attempt whose WELCOME arrives resumes at once; nothing is lost.
    (Copies of one detached state stand for the attempts: each is the client's state
    as it was before the attempt whose WELCOME was lost.)"""
    async with daemon_and_proxy() as (server, proxy):
        client = CoreClient(*proxy.address, CLIENT_PARAMS)
        assert await client.connect()
        sid = client.session.id
        assert sid is not None
        await exchange(client, [b"before"])
        proxy.last.blackhole()
        await client.kill()
        attempts = [client.clone() for _ in range(6)]
        proxy.delay(60.0, S2C)  # the WELCOMEs stay in the proxy ...
        taken: list[ServerProtocol] = []
        for attempt in attempts[:5]:
            await attempt.open_transport()
            attempt.conn = attempt.session.connect(attempt.now())
            attempt.flush()
            previous = server.sessions[sid].protocol
            deadline = time.monotonic() + 5.0
            while server.sessions[sid].protocol is previous:  # resumed on the new transport
                assert time.monotonic() < deadline, "resume not accepted"
                await asyncio.sleep(0.01)
            taken.append(server_side(server, proxy.last.upstream_address))
            proxy.last.blackhole()  # ... and are dropped with everything after them
        proxy.delay(0.0, S2C)
        for old in taken[:4]:
            assert old.closed and old.conn is not None
            assert old.conn.close_code is CloseCode.TAKEN_OVER
        last = attempts[5]
        assert await last.connect()  # at once: not contested, not theft
        assert isinstance(last.events[-1], SessionResumed)
        assert not events_of(last, TransportLost)
        assert taken[4].closed and taken[4].conn is not None
        assert taken[4].conn.close_code is CloseCode.TAKEN_OVER
        await exchange(last, [b"finally"])
        assert last.received == [b"before", b"finally"]
        await last.close()
        for attempt in attempts[:5]:
            assert attempt.writer is not None
            attempt.writer.transport.abort()


async def test_canary_session_is_untouched_by_other_transports_faults() -> None:
    seed = fault_seed()
    with noting_seed(seed) as why:
        await _canary(random.Random(seed), why)


async def _canary(rng: random.Random, why: str) -> None:
    async with daemon_and_proxy() as (server, proxy):
        host, port = server.addresses[0]
        canary = CoreClient(host, port, CLIENT_PARAMS)
        assert await canary.connect()
        canary_sent: list[bytes] = []
        stop = asyncio.Event()

        async def keep_talking() -> None:
            while not stop.is_set():
                assert canary.attached, f"canary lost its transport: {canary.events}"
                if len(canary_sent) - len(canary.received) < 20:
                    canary_sent.append(b"canary %d" % len(canary_sent))
                    canary.send(canary_sent[-1])
                await canary.step(0.01)
            await canary.run_until(lambda: len(canary.received) == len(canary_sent), 5)

        talker = asyncio.create_task(keep_talking())
        try:
            await _canary_victims(server, proxy, canary, talker, rng, why)
        except BaseException:
            talker.cancel()
            raise
        stop.set()
        await asyncio.wait_for(talker, 10)
        assert canary.received == canary_sent, why
        assert not events_of(canary, TransportLost), why
        assert canary.session.id in server.sessions
        await canary.close()


async def _canary_victims(
    server: Server,
    proxy: FaultProxy,
    canary: CoreClient,
    talker: asyncio.Task[None],
    rng: random.Random,
    why: str,
) -> None:
    host, port = server.addresses[0]

    async def progress(count: int) -> None:
        """Wait until the canary (driven by *talker*) has received *count* more messages."""
        target = len(canary.received) + count
        deadline = time.monotonic() + 5
        while len(canary.received) < target:
            if talker.done():
                talker.result()  # raises what stopped it
                raise AssertionError("the canary stopped talking")
            assert time.monotonic() < deadline, f"canary stalled: {why}"
            await asyncio.sleep(0.01)

    await progress(50)

    # A victim whose transport is fed garbage mid-session: it loses its session.
    garbled = CoreClient(*proxy.address, CLIENT_PARAMS)
    assert await garbled.connect()
    await exchange(garbled, [b"victim"])
    proxy.last.inject(C2S, b"\xc1")
    await garbled.run_until(lambda: not garbled.attached, 2)
    assert garbled.conn is not None
    assert garbled.conn.close_code is CloseCode.PROTOCOL_ERROR
    assert events_of(garbled, SessionEnded)[-1].code is CloseCode.PROTOCOL_ERROR
    await progress(20)

    # Raw connections spraying random bytes: each costs only its own transport.
    for _ in range(5):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(rng.randbytes(rng.randrange(1, 4096)))
        writer.write_eof()  # an incomplete frame is not left waiting for its end
        with contextlib.suppress(ConnectionError):
            reply = await asyncio.wait_for(reader.read(), 5)
            if reply:  # the daemon answered with a CLOSE before closing
                close = parse_frame(FrameDecoder(1 << 20).feed(reply)[-1])
                assert isinstance(close, Close), why
        writer.close()
        await progress(10)

    # Victims whose transports are cut and blackholed: detached, then resumed.
    cut = CoreClient(*proxy.address, CLIENT_PARAMS)
    holed = CoreClient(*proxy.address, CLIENT_PARAMS)
    for victim in (cut, holed):
        assert await victim.connect()
        await exchange(victim, [b"victim"])
    connections: list[ProxyConnection] = proxy.connections[-2:]
    connections[0].cut()
    connections[1].blackhole()
    await cut.run_until(lambda: not cut.attached, 2)
    await holed.run_until(lambda: not holed.attached, IDLE_TIMEOUT + MARGIN)
    for victim in (cut, holed):
        assert await victim.connect()
        await exchange(victim, [b"back"])
        assert victim.received == [b"victim", b"back"]
    await progress(20)
