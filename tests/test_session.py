"""The session state machine over an in-memory pair: heartbeats, expiry, acks, flow
control, resume, credential rotation, takeover, goaway and close (protocol.md §4-§11).

Pure core tests: no event loop and no sockets. Time moves only when a test moves
the :class:`tests.pair.Clock`, and timer tests assert exact deadlines.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sessiond_client.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    Connection,
    Event,
    GoawayReceived,
    InvalidState,
    Params,
    PayloadTooLarge,
    Session,
    SessionEnded,
    SessionLostEvent,
    SessionResumed,
    SessionStarted,
    SessionState,
    TransportLost,
    WindowFull,
)
from sessiond_client.protocol.codec import FrameDecoder
from sessiond_client.protocol.frames import (
    Ack,
    Close,
    Data,
    Frame,
    Hello,
    Ping,
    Pong,
    Resume,
    Welcome,
    parse_frame,
)

from .pair import Pair

T0 = 1000.0  # the Pair's clock starts here


# ------------------------------------------------------------------------ helpers


def decode(data: bytes | bytearray) -> list[Frame]:
    """Every frame in *data*, typed."""
    return [parse_frame(raw) for raw in FrameDecoder(1 << 24).feed(bytes(data))]


def connected(client: Params | None = None, server: Params | None = None) -> Pair:
    """A pair whose handshake is done at T0, with the events of the handshake drained."""
    pair = Pair(client, server)
    pair.connect()
    pair.pump()
    assert state_of(pair.client) is SessionState.ATTACHED
    client_events(pair)
    pair.registry.events.clear()
    return pair


def state_of(session: Session) -> SessionState:
    """The session's state, read afresh (so mypy does not keep an earlier narrowing)."""
    return session.state


def client_events(pair: Pair) -> list[Event]:
    """The client's events since the last call."""
    events = pair.client_events + pair.client.events()
    pair.client_events = []
    return events


def server_events(pair: Pair, session: Session) -> list[Event]:
    """The events of one server session since the last call (the registry's record)."""
    if session.id in pair.registry.sessions:
        pair.registry.collect(session)
    mine = [event for sid, event in pair.registry.events if sid == session.id]
    pair.registry.events = [(sid, e) for sid, e in pair.registry.events if sid != session.id]
    return mine


def tick_to(pair: Pair, when: float) -> None:
    """Set the clock to *when* (exactly) and run what is due on both sides."""
    assert when >= pair.clock.now
    pair.clock.now = when
    pair.tick(0.0)


def earliest_deadline(pair: Pair) -> float | None:
    deadlines = [pair.client.next_deadline()]
    deadlines += [s.next_deadline() for s in pair.registry.sessions.values()]
    if pair.server_conn is not None and pair.server_conn.session is None:
        deadlines.append(pair.server_conn.next_deadline())
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


def run_until(pair: Pair, until: float) -> list[float]:
    """Fire every deadline up to *until*, each at its exact time; return those times."""
    fired: list[float] = []
    for _ in range(10_000):
        deadline = earliest_deadline(pair)
        if deadline is None or deadline > until:
            break
        tick_to(pair, deadline)
        fired.append(deadline)
    else:
        raise AssertionError("a timer keeps firing without moving its deadline")
    tick_to(pair, until)
    return fired


def stolen(pair: Pair) -> tuple[bytes, bytes, int]:
    """What a copy of the client's state gives: session ID, credential, received."""
    client = pair.client
    assert client.id is not None and client._credential is not None
    return client.id, client._credential, client.sequence_numbers[2]


def resume_hello(session_id: bytes, credential: bytes, received: int) -> Hello:
    """A HELLO built by hand, resuming with the given state."""
    return Hello(
        versions=(PROTOCOL_VERSION,),
        heartbeat_ms=15_000,
        window_messages=1024,
        window_bytes=1 << 20,
        max_frame=1 << 20,
        lifetime_ms=120_000,
        resume=Resume(session_id, credential, received),
    )


def present(
    pair: Pair, hello: Hello, identity: Any = "alice"
) -> tuple[Connection, Session | None, list[Frame]]:
    """Open another transport to the pair's server and send *hello* on it."""
    now = pair.clock.now
    conn = Connection.server(pair.registry.params, now)
    conn.receive_data(hello.encode(), now)
    session = pair.registry.handle_hello(conn, now, identity)
    return conn, session, decode(conn.data_to_send())


def welcome_of(frames: list[Frame]) -> Welcome:
    welcome = frames[0]
    assert isinstance(welcome, Welcome)
    return welcome


def data_frames(data: bytes | bytearray) -> list[bytes]:
    return [f.payload for f in decode(data) if isinstance(f, Data)]


def reconnect(pair: Pair) -> None:
    pair.connect()
    pair.pump()


# --------------------------------------------------------------------- heartbeats


def test_ping_goes_out_exactly_at_the_heartbeat_deadline_and_is_answered() -> None:
    pair = connected()
    assert pair.client.next_deadline() == T0 + 15.0
    assert pair.server.next_deadline() == T0 + 15.0

    # Early calls do nothing.
    pair.client.handle_timer(T0 + 14.999)
    pair.server.handle_timer(T0 + 14.999)
    pair.flush()
    assert not pair.to_server and not pair.to_client

    tick_to(pair, T0 + 15.0)
    stamp = int((T0 + 15.0) * 1000)
    assert decode(pair.to_server) == [Ping(stamp)]
    assert decode(pair.to_client) == [Ping(stamp)]

    pair.deliver()
    pair.flush()
    assert decode(pair.to_server) == [Pong(stamp)]
    assert decode(pair.to_client) == [Pong(stamp)]
    pair.pump()
    assert pair.client_conn is not None and pair.client_conn.rtt == 0.0
    assert pair.server_conn is not None and pair.server_conn.rtt == 0.0
    assert pair.client.next_deadline() == T0 + 30.0
    assert pair.server.next_deadline() == T0 + 30.0


def test_sending_postpones_the_heartbeat() -> None:
    pair = connected()
    pair.clock.advance(4.0)
    pair.client.send(b"x", pair.clock.now)
    assert pair.client.next_deadline() == T0 + 4.0 + 15.0


def test_pong_measures_a_smoothed_rtt() -> None:
    pair = connected()
    # The server talks at T0+1 so that only the client's heartbeat is due at T0+15.
    tick_to(pair, T0 + 1.0)
    pair.server.send(b"hi", pair.clock.now)
    pair.pump()
    assert pair.server.next_deadline() == T0 + 16.0
    assert pair.client.next_deadline() == T0 + 15.0

    tick_to(pair, T0 + 15.0)
    assert decode(pair.to_server) == [Ping(1_015_000)]
    pair.clock.now = T0 + 15.125
    pair.deliver()  # the server answers at once
    pair.flush()
    assert decode(pair.to_client) == [Pong(1_015_000)]
    pair.clock.now = T0 + 15.25
    pair.deliver()
    conn = pair.client_conn
    assert conn is not None
    assert conn.rtt == 0.25
    # §7.3: the dead-transport deadline stretches by 4 x srtt.
    assert pair.client.next_deadline() == T0 + 30.0
    assert conn._dead_at() == T0 + 15.25 + 45.0 + 1.0

    tick_to(pair, T0 + 30.0)
    pair.clock.now = T0 + 30.5
    pair.deliver()
    pair.flush()
    pair.deliver()
    assert conn.rtt == 0.875 * 0.25 + 0.125 * 0.5


def test_heartbeats_keep_a_quiet_transport_alive() -> None:
    pair = connected()
    for _ in range(20):  # 300 s of application silence
        pair.clock.advance(15.0)
        pair.tick(0.0)
        pair.pump()
    assert state_of(pair.client) is SessionState.ATTACHED
    assert state_of(pair.server) is SessionState.ATTACHED
    assert pair.client_conn is not None and not pair.client_conn.closed
    assert pair.server_conn is not None and not pair.server_conn.closed
    assert client_events(pair) == []


def test_receive_silence_closes_both_sides_with_idle_timeout_at_exact_deadlines() -> None:
    pair = connected()
    server = pair.server
    # From now on nothing is delivered either way: a half-open transport.
    fired = run_until(pair, T0 + 44.999)
    assert fired == [T0 + 15.0, T0 + 30.0]  # heartbeats, answered by nobody
    assert pair.client.next_deadline() == T0 + 45.0
    assert server.next_deadline() == T0 + 45.0
    assert state_of(pair.client) is SessionState.ATTACHED
    assert state_of(server) is SessionState.ATTACHED

    tick_to(pair, T0 + 45.0)
    for conn in (pair.client_conn, pair.server_conn):
        assert conn is not None
        assert conn.closed
        assert conn.close_code is CloseCode.IDLE_TIMEOUT
    # The CLOSE is sent on a best-effort basis.
    last_to_server = decode(pair.to_server)[-1]
    assert last_to_server == Close(
        CloseCode.IDLE_TIMEOUT, "nothing received within the idle timeout", 0
    )
    # Detached, not ended, on both sides.
    assert client_events(pair) == [TransportLost(CloseCode.IDLE_TIMEOUT, 0.0)]
    assert server_events(pair, server) == [TransportLost(CloseCode.IDLE_TIMEOUT, 0.0)]
    assert state_of(pair.client) is SessionState.DETACHED
    assert state_of(server) is SessionState.DETACHED
    assert server.next_deadline() == T0 + 45.0 + 120.0
    assert pair.client.next_deadline() == T0 + 45.0 + 120.0 + 45.0

    # And the session resumes on a new transport.
    reconnect(pair)
    assert state_of(pair.client) is SessionState.ATTACHED
    assert pair.server is server


def test_idle_timeout_waits_four_rtt_longer_once_rtt_is_known() -> None:
    pair = connected()
    tick_to(pair, T0 + 1.0)
    pair.server.send(b"hi", pair.clock.now)
    pair.pump()
    tick_to(pair, T0 + 15.0)  # client PING
    pair.clock.now = T0 + 15.25
    pair.deliver()
    pair.flush()
    pair.deliver()  # PONG: rtt 0.25 on the client, last received at T0+15.25
    conn = pair.client_conn
    assert conn is not None and conn.rtt == 0.25
    server = pair.server
    # The server last heard the client at T0+15.25 and has no rtt sample: dead at +45.
    run_until(pair, T0 + 60.25)
    assert pair.server_conn is not None and pair.server_conn.closed
    assert state_of(server) is SessionState.DETACHED
    assert server.next_deadline() == T0 + 60.25 + 120.0
    assert not conn.closed
    assert pair.client.next_deadline() == T0 + 15.25 + 45.0 + 4 * 0.25

    pair.client.handle_timer(T0 + 61.249)
    assert not conn.closed
    run_until(pair, T0 + 61.25)
    assert conn.closed
    assert conn.close_code is CloseCode.IDLE_TIMEOUT
    assert client_events(pair) == [TransportLost(CloseCode.IDLE_TIMEOUT, 0.0)]


# ---------------------------------------------------------------- detached expiry


def test_detached_server_session_expires_exactly_at_lifetime() -> None:
    pair = connected(server=Params(detached_lifetime=60.0))
    server = pair.server
    sid = server.id
    assert sid is not None
    tick_to(pair, T0 + 5.0)
    pair.cut()
    assert state_of(server) is SessionState.DETACHED
    assert server_events(pair, server) == [TransportLost(CloseCode.TRANSPORT_LOST, 0.0)]
    assert server.next_deadline() == T0 + 5.0 + 120.0  # the client asked for 120 s

    server.handle_timer(T0 + 124.999)
    assert state_of(server) is SessionState.DETACHED
    run_until(pair, T0 + 125.0)
    assert state_of(server) is SessionState.ENDED
    assert server.end_code is CloseCode.SESSION_EXPIRED
    assert server_events(pair, server) == [
        SessionEnded(sid, CloseCode.SESSION_EXPIRED, "detached longer than its lifetime", False)
    ]
    assert sid not in pair.registry.sessions
    assert pair.registry.gone[sid] is CloseCode.SESSION_EXPIRED
    assert server.next_deadline() is None
    # The client still waits for the idle-timeout grace (§8.3).
    assert state_of(pair.client) is SessionState.DETACHED


def test_an_ended_session_drops_its_replay_buffer_and_inbox_on_request() -> None:
    """A server keeps an ended session object while its handler runs: drop_buffers()
    lets go of what it held (issue 12: evicted detached sessions held their memory);
    refused before the end, when a resume still needs them. The counts stay."""
    pair = connected()
    server = pair.server
    for i in range(3):
        server.send(b"out %d" % i * 100, pair.clock.now)  # the client takes none: no ACK
        pair.client.send(b"in %d" % i * 100, pair.clock.now)  # the server takes none
    pair.pump()
    assert server.buffered_bytes == (1500, 1200)
    with pytest.raises(InvalidState):
        server.drop_buffers()
    assert server.buffered_bytes == (1500, 1200)
    pair.cut()
    run_until(pair, T0 + 120.0)
    assert server.end_code is CloseCode.SESSION_EXPIRED
    assert server.buffered_bytes == (1500, 1200)  # held until asked (or garbage collected)

    server.drop_buffers()
    assert server.buffered_bytes == (0, 0)
    assert server.held_bytes == 0
    assert server._replay is None and server._inbox is None
    assert server.messages_waiting == 0
    assert server.unacked_messages() == []
    assert server.take_messages(pair.clock.now) == []
    assert server.sequence_numbers == (3, 0, 3, 0)
    server.drop_buffers()  # again: nothing more to drop
    assert server.buffered_bytes == (0, 0)
    # The client still has what it sent, unacknowledged: its loss reports them.
    assert pair.client.unacked_messages() == [b"in %d" % i * 100 for i in range(3)]


def test_resume_after_expiry_gets_a_new_session_with_the_reason() -> None:
    pair = connected()
    old_id = pair.client.id
    assert old_id is not None
    pair.server.send(b"unread", pair.clock.now)
    pair.pump()
    pair.client.send(b"unacked", pair.clock.now)
    pair.cut()  # the client's message never arrives
    client_events(pair)
    run_until(pair, T0 + 120.0)
    assert old_id not in pair.registry.sessions

    reconnect(pair)
    new_id = pair.client.id
    assert new_id is not None and new_id != old_id
    assert client_events(pair) == [
        SessionLostEvent(old_id, CloseCode.SESSION_EXPIRED, (b"unread",), (b"unacked",)),
        SessionStarted(new_id, CloseCode.SESSION_EXPIRED),
    ]
    assert server_events(pair, pair.server) == [SessionStarted(new_id, CloseCode.SESSION_EXPIRED)]
    # A fresh start: nothing carried over.
    assert pair.client.sequence_numbers == (0, 0, 0, 0)
    assert pair.client.messages_waiting == 0
    assert pair.client.unacked_count == 0


def test_client_expires_locally_at_lifetime_plus_idle_timeout() -> None:
    pair = connected(client=Params(detached_lifetime=30.0))
    sid = pair.client.id
    tick_to(pair, T0 + 2.0)
    pair.cut()
    assert client_events(pair) == [TransportLost(CloseCode.TRANSPORT_LOST, 0.0)]
    assert pair.client.next_deadline() == T0 + 2.0 + 30.0 + 45.0

    pair.client.handle_timer(T0 + 76.999)
    assert state_of(pair.client) is SessionState.DETACHED
    run_until(pair, T0 + 77.0)
    assert state_of(pair.client) is SessionState.ENDED
    assert pair.client.end_code is CloseCode.SESSION_EXPIRED
    assert client_events(pair) == [
        SessionEnded(
            sid or b"", CloseCode.SESSION_EXPIRED, "detached longer than its lifetime", False
        )
    ]
    assert pair.client.next_deadline() is None
    with pytest.raises(InvalidState):
        pair.client.connect(pair.clock.now)
    with pytest.raises(InvalidState):
        pair.client.send(b"late", pair.clock.now)


@pytest.mark.parametrize("failure", ["handshake_timeout", "connection_lost"])
def test_failed_reconnect_attempts_do_not_postpone_client_expiry(failure: str) -> None:
    # §8.3: the client counts lifetime + idle_timeout from when it *detached*; a
    # reconnect attempt that never gets a WELCOME does not restart that clock.
    pair = connected()
    sid = pair.client.id or b""
    pair.cut()  # detached at T0
    client_events(pair)
    expires = T0 + 120.0 + 45.0
    assert pair.client.next_deadline() == expires
    for attempt_at in (T0 + 50.0, T0 + 100.0, T0 + 150.0):
        pair.clock.now = attempt_at
        conn = pair.client.connect(attempt_at)  # the server never answers
        if failure == "handshake_timeout":
            pair.client.handle_timer(attempt_at + 10.0)
        else:
            conn.connection_lost(attempt_at + 1.0)
        assert conn.closed
        assert state_of(pair.client) is SessionState.DETACHED
        assert pair.client.next_deadline() == expires
    pair.clock.now = T0 + 160.0
    pair.client.handle_timer(expires)
    assert state_of(pair.client) is SessionState.ENDED
    assert client_events(pair)[-1] == SessionEnded(
        sid, CloseCode.SESSION_EXPIRED, "detached longer than its lifetime", False
    )


def test_resume_before_expiry_cancels_it() -> None:
    pair = connected()
    server = pair.server
    pair.cut()
    tick_to(pair, T0 + 119.0)
    reconnect(pair)
    assert client_events(pair)[-1] == SessionResumed(server.id or b"", 0)
    assert state_of(server) is SessionState.ATTACHED
    assert server.next_deadline() == T0 + 119.0 + 15.0  # a heartbeat, no expiry
    run_until(pair, T0 + 121.0)
    assert state_of(server) is SessionState.ATTACHED


# ------------------------------------------------------------------------- acks


def test_taking_less_than_a_quarter_window_delays_the_ack() -> None:
    pair = connected(server=Params(window_messages=16))  # quarter: 4 messages
    server = pair.server
    for payload in (b"a", b"b", b"c"):
        pair.client.send(payload, pair.clock.now)
    pair.pump()
    assert pair.client.unacked_count == 3

    assert server.take_messages(pair.clock.now, limit=1) == [b"a"]
    ack_at = T0 + 0.02
    assert server.next_deadline() == ack_at
    pair.flush()
    assert not pair.to_client  # not at once

    # A second take before the timer does not push the deadline back.
    pair.clock.now = T0 + 0.01
    assert server.take_messages(pair.clock.now, limit=1) == [b"b"]
    assert server.next_deadline() == ack_at
    server.handle_timer(T0 + 0.019)
    pair.flush()
    assert not pair.to_client

    tick_to(pair, ack_at)
    assert decode(pair.to_client) == [Ack(2)]
    pair.pump()
    assert pair.client.unacked_count == 1
    assert pair.client.unacked_messages() == [b"c"]
    assert server.next_deadline() == ack_at + 15.0  # only the heartbeat is left


def test_taking_a_quarter_window_of_messages_acks_at_once() -> None:
    pair = connected(server=Params(window_messages=8))  # quarter: 2 messages
    server = pair.server
    for payload in (b"a", b"b", b"c"):
        pair.client.send(payload, pair.clock.now)
    pair.pump()
    assert server.take_messages(pair.clock.now, limit=2) == [b"a", b"b"]
    pair.flush()
    assert decode(pair.to_client) == [Ack(2)]
    assert server.next_deadline() == T0 + 15.0  # no ACK timer armed
    pair.pump()
    assert pair.client.unacked_count == 1


def test_taking_a_quarter_window_of_bytes_acks_at_once() -> None:
    pair = connected(server=Params(window_bytes=400))  # quarter: 100 bytes
    server = pair.server
    pair.client.send(b"x" * 99, pair.clock.now)
    pair.client.send(b"y", pair.clock.now)
    pair.pump()
    server.take_messages(pair.clock.now, limit=1)  # 99 bytes pending: delayed
    pair.flush()
    assert not pair.to_client
    server.take_messages(pair.clock.now, limit=1)  # 100 bytes pending: at once
    pair.flush()
    assert decode(pair.to_client) == [Ack(2)]


def test_ack_releases_the_replay_buffer() -> None:
    pair = connected()
    for i in range(5):
        pair.client.send(b"m%d" % i, pair.clock.now)
    assert pair.client.unacked_count == 5
    pair.pump()
    assert pair.client.unacked_count == 5  # received is not consumed
    assert pair.take_server() == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    run_until(pair, T0 + 0.02)
    pair.pump()
    assert pair.client.unacked_count == 0
    assert pair.client.unacked_messages() == []
    assert pair.client.sequence_numbers == (5, 5, 0, 0)
    assert pair.server.sequence_numbers == (0, 0, 5, 5)


# ------------------------------------------------------------------ flow control


def test_message_window_blocks_send() -> None:
    pair = connected(server=Params(window_messages=4))
    for i in range(4):
        assert pair.client.can_send(1)
        pair.client.send(b"%d" % i, pair.clock.now)
    assert not pair.client.can_send(1)
    with pytest.raises(WindowFull):
        pair.client.send(b"4", pair.clock.now)
    assert pair.client.unacked_count == 4  # the refused message left no trace
    pair.pump()
    pair.take_server()  # quarter of 4 is 1: acks at once
    pair.pump()
    assert pair.client.can_send(1)
    assert pair.client.send(b"4", pair.clock.now) == 5


def test_byte_window_blocks_send() -> None:
    pair = connected(server=Params(window_bytes=100))
    pair.client.send(b"a" * 60, pair.clock.now)
    assert pair.client.can_send(40)
    assert not pair.client.can_send(41)
    with pytest.raises(WindowFull):
        pair.client.send(b"b" * 41, pair.clock.now)
    pair.client.send(b"b" * 40, pair.clock.now)
    assert not pair.client.can_send(1)
    pair.pump()
    assert pair.server.messages_waiting == 2  # exactly the window: no FLOW_CONTROL_ERROR
    assert pair.server_conn is not None and not pair.server_conn.closed


def test_one_message_larger_than_the_byte_window_when_nothing_is_in_flight() -> None:
    pair = connected(server=Params(window_bytes=100))
    assert pair.client.can_send(500)
    pair.client.send(b"z" * 500, pair.clock.now)
    assert not pair.client.can_send(1)
    with pytest.raises(WindowFull):
        pair.client.send(b"!", pair.clock.now)
    pair.pump()
    assert pair.server_conn is not None and not pair.server_conn.closed
    assert pair.take_server() == [b"z" * 500]
    pair.pump()
    assert pair.client.can_send(500)


def test_payload_above_max_frame_minus_16_is_too_large() -> None:
    pair = connected(server=Params(max_frame_size=1024))
    assert pair.client.max_payload == 1024 - 16
    with pytest.raises(PayloadTooLarge):
        pair.client.send(b"x" * 1009, pair.clock.now)
    assert pair.client.unacked_count == 0
    pair.client.send(b"x" * 1008, pair.clock.now)  # a 1024-byte frame: allowed
    pair.pump()
    assert pair.take_server() == [b"x" * 1008]


def test_send_before_the_handshake_is_invalid_state() -> None:
    pair = Pair()
    pair.connect()
    assert not pair.client.can_send(1)
    with pytest.raises(InvalidState):
        pair.client.send(b"early", pair.clock.now)


def test_window_state_carries_across_a_reconnect() -> None:
    pair = connected(server=Params(window_messages=4))
    for i in range(4):
        pair.client.send(b"%d" % i, pair.clock.now)
    pair.cut()  # none of them arrived
    assert state_of(pair.client) is SessionState.DETACHED
    assert not pair.client.can_send(1)
    with pytest.raises(WindowFull):
        pair.client.send(b"4", pair.clock.now)

    reconnect(pair)
    assert client_events(pair)[-1] == SessionResumed(pair.client.id or b"", 4)
    assert not pair.client.can_send(1)  # replayed, still not consumed
    assert pair.take_server() == [b"0", b"1", b"2", b"3"]
    pair.pump()
    assert pair.client.can_send(1)


def test_sending_while_detached_is_replayed_after_resume_before_new_messages() -> None:
    pair = connected(server=Params(window_messages=8))
    pair.client.send(b"m1", pair.clock.now)
    pair.client.send(b"m2", pair.clock.now)
    pair.cut(to_server=16 + 2)  # m1 arrives, m2 is lost with the transport
    assert pair.client.can_send(2)
    pair.client.send(b"d1", pair.clock.now)  # detached: queued
    pair.client.send(b"d2", pair.clock.now)
    assert pair.client.unacked_count == 4

    pair.connect()
    pair.flush()
    pair.deliver()  # HELLO -> server; WELCOME pending
    pair.flush()
    pair.deliver()  # WELCOME -> client, which replays
    pair.client.send(b"new", pair.clock.now)
    pair.flush()
    frames = decode(pair.to_server)
    assert frames[0] == Ack(0)  # §4.4: the ACK first, then the replay, then new data
    assert [f for f in frames if isinstance(f, Data)] == [
        Data(2, b"m2"),
        Data(3, b"d1"),
        Data(4, b"d2"),
        Data(5, b"new"),
    ]
    pair.pump()
    assert SessionResumed(pair.client.id or b"", 3) in client_events(pair)
    assert pair.take_server() == [b"m1", b"m2", b"d1", b"d2", b"new"]


# ------------------------------------------------------------------------ resume


def test_messages_in_flight_both_ways_at_a_cut_are_replayed_exactly_once() -> None:
    pair = connected()
    server = pair.server
    sid = server.id or b""
    pair.client.send(b"c1", pair.clock.now)
    pair.client.send(b"c2", pair.clock.now)
    server.send(b"s1", pair.clock.now)
    server.send(b"s2", pair.clock.now)
    server.send(b"s3", pair.clock.now)
    pair.cut(to_server=16 + 2, to_client=0)  # c1 arrives; nothing reaches the client
    assert state_of(pair.client) is SessionState.DETACHED
    assert state_of(server) is SessionState.DETACHED
    server_events(pair, server)
    client_events(pair)

    tick_to(pair, T0 + 3.0)
    reconnect(pair)
    assert client_events(pair) == [SessionResumed(sid, 1)]  # c2
    assert server_events(pair, server) == [SessionResumed(sid, 3)]  # s1 s2 s3
    assert pair.take_server() == [b"c1", b"c2"]
    assert pair.take_client() == [b"s1", b"s2", b"s3"]

    # A second cut with nothing in flight replays nothing and duplicates nothing.
    run_until(pair, T0 + 3.02)
    pair.pump()
    pair.cut()
    client_events(pair)
    server_events(pair, server)
    reconnect(pair)
    assert client_events(pair) == [SessionResumed(sid, 0)]
    assert server_events(pair, server) == [SessionResumed(sid, 0)]
    assert pair.take_server() == []
    assert pair.take_client() == []
    assert pair.client.sequence_numbers == (2, 2, 3, 3)
    assert server.sequence_numbers == (3, 3, 2, 2)


@pytest.mark.parametrize("offset", [0, 1, 15, 16, 17, 18, 19, 35, 36, 54, 55])
def test_cut_at_any_byte_replays_exactly_once(offset: int) -> None:
    pair = connected()
    server = pair.server
    sent = [b"ab", b"cdef", b"ghi"]  # DATA frames of 18, 20 and 19 bytes
    for payload in sent:
        pair.client.send(payload, pair.clock.now)
        server.send(payload.upper(), pair.clock.now)
    pair.cut(to_server=offset, to_client=offset)
    reconnect(pair)
    assert pair.take_server() == sent
    assert pair.take_client() == [p.upper() for p in sent]
    assert pair.client.sequence_numbers[2] == 3
    assert server.sequence_numbers[2] == 3


def test_unread_messages_survive_a_resume() -> None:
    pair = connected()
    pair.server.send(b"kept", pair.clock.now)
    pair.pump()
    pair.cut()
    reconnect(pair)
    assert pair.take_client() == [b"kept"]


@pytest.mark.parametrize("received", [1, 4])
def test_resume_with_received_outside_acked_sent_gets_replay_unavailable(received: int) -> None:
    pair = connected()
    server = pair.server
    for payload in (b"s1", b"s2", b"s3"):
        server.send(payload, pair.clock.now)
    pair.pump()
    pair.client.take_messages(pair.clock.now, limit=2)
    run_until(pair, T0 + 0.02)
    pair.pump()
    assert server.sequence_numbers[:2] == (3, 2)  # acked 2, sent 3
    sid, credential, _ = stolen(pair)
    pair.cut()
    server_events(pair, server)

    _, fresh, frames = present(pair, resume_hello(sid, credential, received))
    assert fresh is not None and fresh is not server
    assert fresh.id is not None and fresh.id != sid
    assert server_events(pair, fresh) == [SessionStarted(fresh.id, CloseCode.REPLAY_UNAVAILABLE)]
    assert welcome_of(frames).resumed is False
    assert welcome_of(frames).reason == CloseCode.REPLAY_UNAVAILABLE
    # The session itself is untouched and still resumable with the right position.
    assert state_of(server) is SessionState.DETACHED
    assert server_events(pair, server) == []
    reconnect(pair)
    assert pair.client.id == sid
    assert pair.take_client() == [b"s3"]


def test_client_closes_when_welcome_received_is_outside_its_stream() -> None:
    pair = connected()
    sid = pair.client.id
    assert sid is not None
    pair.client.send(b"c1", pair.clock.now)
    pair.cut()
    client_events(pair)
    conn = pair.client.connect(pair.clock.now)
    conn.data_to_send()
    welcome = Welcome(
        version=PROTOCOL_VERSION,
        session_id=sid,
        credential=bytes(32),
        resumed=True,
        received=5,  # the client only ever sent 1
        heartbeat_ms=15_000,
        idle_timeout_ms=45_000,
        window_messages=1024,
        window_bytes=1 << 20,
        max_frame=1 << 20,
        lifetime_ms=120_000,
    )
    conn.receive_data(welcome.encode(), pair.clock.now)
    assert conn.closed
    assert conn.close_code is CloseCode.REPLAY_UNAVAILABLE
    assert decode(conn.data_to_send()) == [
        Close(CloseCode.REPLAY_UNAVAILABLE, "cannot replay from there", 0)
    ]
    assert state_of(pair.client) is SessionState.ENDED
    assert client_events(pair) == [
        SessionEnded(sid, CloseCode.REPLAY_UNAVAILABLE, "cannot replay from there", False)
    ]


def test_resume_as_another_identity_gets_identity_mismatch() -> None:
    pair = connected()
    server = pair.server
    old_id = server.id
    assert old_id is not None
    pair.client.send(b"lost", pair.clock.now)
    pair.cut()
    client_events(pair)
    server_events(pair, server)

    pair.identity = "mallory"
    reconnect(pair)
    new_id = pair.client.id
    assert new_id is not None and new_id != old_id
    assert pair.server.identity == "mallory"
    assert server_events(pair, pair.server) == [SessionStarted(new_id, CloseCode.IDENTITY_MISMATCH)]
    # alice's session is left alone.
    assert state_of(server) is SessionState.DETACHED
    assert pair.registry.sessions[old_id] is server
    assert client_events(pair) == [
        SessionLostEvent(old_id, CloseCode.IDENTITY_MISMATCH, (), (b"lost",)),
        SessionStarted(new_id, CloseCode.IDENTITY_MISMATCH),
    ]


def test_wrong_credential_gets_credential_invalid() -> None:
    pair = connected()
    server = pair.server
    sid, _, received = stolen(pair)
    _, fresh, frames = present(pair, resume_hello(sid, b"\x01" * 32, received))
    assert fresh is not None and fresh is not server and fresh.id is not None
    assert server_events(pair, fresh) == [SessionStarted(fresh.id, CloseCode.CREDENTIAL_INVALID)]
    assert welcome_of(frames).resumed is False
    assert welcome_of(frames).reason == CloseCode.CREDENTIAL_INVALID
    # A guess neither ends nor disturbs the real session.
    assert state_of(server) is SessionState.ATTACHED
    assert pair.server_conn is not None and not pair.server_conn.closed
    assert server_events(pair, server) == []


def test_wrong_credential_from_our_client_reports_credential_invalid() -> None:
    pair = connected()
    old_id = pair.client.id
    assert old_id is not None
    pair.cut()
    client_events(pair)
    pair.client._credential = b"\x02" * 32
    reconnect(pair)
    new_id = pair.client.id
    assert new_id is not None and new_id != old_id
    assert client_events(pair) == [
        SessionLostEvent(old_id, CloseCode.CREDENTIAL_INVALID, (), ()),
        SessionStarted(new_id, CloseCode.CREDENTIAL_INVALID),
    ]


def test_resume_of_an_unknown_session_reports_unknown_session() -> None:
    pair = connected()
    old_id = pair.client.id
    assert old_id is not None
    pair.cut()
    client_events(pair)
    del pair.registry.sessions[old_id]  # e.g. the daemon restarted
    reconnect(pair)
    new_id = pair.client.id
    assert new_id is not None
    assert client_events(pair) == [
        SessionLostEvent(old_id, CloseCode.UNKNOWN_SESSION, (), ()),
        SessionStarted(new_id, CloseCode.UNKNOWN_SESSION),
    ]


# ----------------------------------------------------------- credential rotation


def test_every_resume_issues_a_new_credential() -> None:
    pair = connected()
    seen = {stolen(pair)[1]}
    for _ in range(3):
        pair.cut()
        reconnect(pair)
        credential = stolen(pair)[1]
        assert credential not in seen
        seen.add(credential)
    assert state_of(pair.client) is SessionState.ATTACHED


@pytest.mark.parametrize("attached", [True, False], ids=["attached", "detached"])
def test_rotated_credential_presented_after_confirmation_is_theft(attached: bool) -> None:
    pair = connected()
    server = pair.server
    sid, old_credential, received = stolen(pair)  # the thief's copy
    pair.cut()
    reconnect(pair)  # rotation; the client's ACK confirms the new credential
    assert state_of(pair.client) is SessionState.ATTACHED
    assert stolen(pair)[1] != old_credential
    client_events(pair)
    server_events(pair, server)
    legit_conn = pair.server_conn
    assert legit_conn is not None
    if not attached:
        pair.cut()
        server_events(pair, server)

    _, fresh, frames = present(pair, resume_hello(sid, old_credential, received))
    # The real session ends with CREDENTIAL_REUSED...
    assert state_of(server) is SessionState.ENDED
    assert server.end_code is CloseCode.CREDENTIAL_REUSED
    ended = server_events(pair, server)
    assert len(ended) == 1 and isinstance(ended[0], SessionEnded)
    assert ended[0].session_id == sid
    assert ended[0].code is CloseCode.CREDENTIAL_REUSED
    assert ended[0].by_peer is False
    assert sid not in pair.registry.sessions
    # ...the thief gets a new session that says why...
    assert fresh is not None and fresh is not server and fresh.id is not None
    assert server_events(pair, fresh) == [SessionStarted(fresh.id, CloseCode.CREDENTIAL_REUSED)]
    assert welcome_of(frames).resumed is False
    assert welcome_of(frames).reason == CloseCode.CREDENTIAL_REUSED
    if attached:
        # ...and the transport it was attached to is closed with that code.
        assert legit_conn.closed
        assert legit_conn.close_code is CloseCode.CREDENTIAL_REUSED
        data = legit_conn.data_to_send()
        last = decode(data)[-1]
        assert isinstance(last, Close) and last.code == CloseCode.CREDENTIAL_REUSED
        pair.to_client += data
        pair.deliver()
        assert state_of(pair.client) is SessionState.ENDED
        (event,) = client_events(pair)
        assert isinstance(event, SessionEnded)
        assert (event.session_id, event.code, event.by_peer) == (
            sid,
            CloseCode.CREDENTIAL_REUSED,
            True,
        )


def test_lost_welcome_lets_the_previous_credential_resume() -> None:
    pair = connected()
    server = pair.server
    sid, old_credential, _ = stolen(pair)
    pair.cut()
    server_events(pair, server)
    pair.connect()
    pair.cut(to_server=1 << 20, to_client=0)  # HELLO arrives, WELCOME is lost
    assert server_events(pair, server) == [
        SessionResumed(sid, 0),
        TransportLost(CloseCode.TRANSPORT_LOST, 0.0),
    ]
    assert stolen(pair)[1] == old_credential  # the client never saw the new one
    client_events(pair)

    reconnect(pair)  # presents the previous credential: not theft
    assert client_events(pair) == [SessionResumed(sid, 0)]
    assert server_events(pair, server) == [SessionResumed(sid, 0)]
    assert pair.server is server
    assert state_of(server) is SessionState.ATTACHED
    assert stolen(pair)[1] != old_credential


@pytest.mark.parametrize("lost", [2, 6])
def test_lost_welcomes_in_a_row_still_resume_and_then_old_credential_is_theft(
    lost: int,
) -> None:
    pair = connected()
    server = pair.server
    pair.cut()
    reconnect(pair)  # one confirmed rotation
    sid, presented, received = stolen(pair)  # the credential the client keeps presenting
    for _ in range(lost):
        pair.cut()
        pair.connect()
        pair.cut(to_server=1 << 20, to_client=0)
        assert stolen(pair)[1] == presented
    reconnect(pair)
    assert pair.server is server
    assert state_of(server) is SessionState.ATTACHED
    assert stolen(pair)[1] != presented  # and now confirmed

    # §10.3: the previous credential while confirmed is theft, however many
    # unseen credentials were issued (and retired) in between.
    _, fresh, _ = present(pair, resume_hello(sid, presented, received))
    assert fresh is not None and fresh is not server and fresh.id is not None
    assert server_events(pair, fresh) == [SessionStarted(fresh.id, CloseCode.CREDENTIAL_REUSED)]
    assert server.end_code is CloseCode.CREDENTIAL_REUSED


# ---------------------------------------------------------------------- takeover


def test_valid_resume_on_another_transport_takes_over() -> None:
    pair = connected()
    server = pair.server
    old_conn = pair.server_conn
    assert old_conn is not None
    assert old_conn.data_to_send() == b""
    sid, credential, received = stolen(pair)

    conn, session, frames = present(pair, resume_hello(sid, credential, received))
    assert session is server
    assert server.connection is conn
    assert state_of(server) is SessionState.ATTACHED
    assert welcome_of(frames).resumed is True
    assert server_events(pair, server) == [SessionResumed(sid, 0)]

    assert old_conn.closed
    assert old_conn.close_code is CloseCode.TAKEN_OVER
    data = old_conn.data_to_send()
    assert decode(data)[-1] == Close(CloseCode.TAKEN_OVER, "resumed on another transport", 0)

    # TAKEN_OVER is terminal for whoever receives it.
    pair.to_client += data
    pair.deliver()
    assert state_of(pair.client) is SessionState.ENDED
    assert client_events(pair) == [
        SessionEnded(sid, CloseCode.TAKEN_OVER, "resumed on another transport", True)
    ]


def test_previous_credential_while_unconfirmed_gets_the_same_credential_again() -> None:
    """§9.2, §10.3: one client whose WELCOMEs are lost, its old transports half-open at
    the server, presents the previous credential again and again: each resume takes
    over and is answered with the same, still unconfirmed credential; none is refused."""
    pair = connected()
    server = pair.server
    sid, credential, received = stolen(pair)
    pair.clock.advance(1.0)
    current, session, frames = present(pair, resume_hello(sid, credential, received))
    assert session is server
    pending = welcome_of(frames).credential
    assert pending != credential
    for _ in range(10):
        pair.clock.advance(0.1)
        conn, session, frames = present(pair, resume_hello(sid, credential, received))
        assert session is server and server.connection is conn
        assert welcome_of(frames).resumed is True
        assert welcome_of(frames).credential == pending  # idempotent: no new rotation
        assert current.close_code is CloseCode.TAKEN_OVER
        current = conn
    assert not current.closed and server.connection is current
    # The client finally hears its WELCOME and confirms: the previous credential is
    # now theft, the pending one the current one.
    current.receive_data(Ack(received).encode(), pair.clock.now)
    assert server.connection is current
    _, session, frames = present(pair, resume_hello(sid, pending, received))
    assert session is server
    assert welcome_of(frames).credential not in (pending, credential)
    _, fresh, frames = present(pair, resume_hello(sid, credential, received))
    assert fresh is not server
    assert welcome_of(frames).reason == CloseCode.CREDENTIAL_REUSED


def test_takeovers_with_the_newest_credential_are_never_contested() -> None:
    """One client whose network keeps changing: each resume presents the credential its
    last WELCOME carried while the old transport is still attached (half-open)."""
    pair = connected()
    server = pair.server
    sid, credential, received = stolen(pair)
    for _ in range(10):
        pair.clock.advance(0.5)
        conn, session, frames = present(pair, resume_hello(sid, credential, received))
        assert session is server and server.connection is conn
        credential = welcome_of(frames).credential


def test_a_second_holder_taking_over_a_live_transport_ends_it_there() -> None:
    """§9.1: two holders of one credential: the one whose live transport is taken over
    receives TAKEN_OVER on its current connection and its session ends (it is told,
    and does not come back); the other one holds the session."""
    pair = connected()
    server = pair.server
    sid, credential, received = stolen(pair)  # the second holder's copy
    conn, session, _ = present(pair, resume_hello(sid, credential, received))
    assert session is server and server.connection is conn
    pair.pump()
    assert state_of(pair.client) is SessionState.ENDED
    (event,) = client_events(pair)
    assert isinstance(event, SessionEnded) and event.code is CloseCode.TAKEN_OVER


def test_resumes_of_a_detached_session_are_not_takeovers() -> None:
    pair = connected()
    server = pair.server
    for _ in range(6):
        pair.cut()
        reconnect(pair)
        assert pair.server is server
        assert state_of(pair.client) is SessionState.ATTACHED


# ----------------------------------------------------------------- goaway, close


def test_goaway_reports_retry_after_and_redirect() -> None:
    pair = connected()
    assert pair.server_conn is not None
    pair.server_conn.goaway(pair.clock.now, 5.0, "tcp://other:7000", "draining")
    pair.pump()
    assert client_events(pair) == [GoawayReceived(CloseCode.GOING_AWAY, 5.0, "tcp://other:7000")]
    assert state_of(pair.client) is SessionState.ATTACHED  # both sides continue normally
    pair.client.send(b"still here", pair.clock.now)
    pair.pump()
    assert pair.take_server() == [b"still here"]


def test_goaway_without_redirect() -> None:
    pair = connected()
    assert pair.server_conn is not None
    pair.server_conn.goaway(pair.clock.now, 0.25)
    pair.pump()
    assert client_events(pair) == [GoawayReceived(CloseCode.GOING_AWAY, 0.25, None)]


def test_close_with_a_retry_code_detaches_with_retry_after() -> None:
    pair = connected()
    server = pair.server
    assert pair.server_conn is not None
    pair.server_conn.close(pair.clock.now, CloseCode.GOING_AWAY, "restart", 5.0)
    assert state_of(server) is SessionState.DETACHED
    assert server_events(pair, server) == [TransportLost(CloseCode.GOING_AWAY, 5.0)]
    pair.pump()
    assert client_events(pair) == [TransportLost(CloseCode.GOING_AWAY, 5.0)]
    assert state_of(pair.client) is SessionState.DETACHED
    assert pair.client_conn is not None
    assert pair.client_conn.peer_closed and pair.client_conn.retry_after == 5.0

    tick_to(pair, T0 + 5.0)
    reconnect(pair)
    assert state_of(pair.client) is SessionState.ATTACHED
    assert pair.server is server


@pytest.mark.parametrize("side", ["client", "server"])
def test_close_normal_ends_both_sides(side: str) -> None:
    pair = connected()
    server = pair.server
    sid = server.id or b""
    closer, other = (pair.client, server) if side == "client" else (server, pair.client)
    closer.close(pair.clock.now, reason="bye")
    assert state_of(closer) is SessionState.ENDED
    closer_events = client_events(pair) if side == "client" else server_events(pair, server)
    assert closer_events == [SessionEnded(sid, CloseCode.NORMAL, "bye", False)]
    pair.flush()
    assert decode(pair.to_server if side == "client" else pair.to_client) == [
        Close(CloseCode.NORMAL, "bye", 0)
    ]
    pair.pump()
    assert state_of(other) is SessionState.ENDED
    other_events = server_events(pair, server) if side == "client" else client_events(pair)
    assert other_events == [SessionEnded(sid, CloseCode.NORMAL, "bye", True)]
    assert sid not in pair.registry.sessions
    assert pair.registry.gone[sid] is CloseCode.NORMAL
    for session in (pair.client, server):
        assert session.next_deadline() is None
        with pytest.raises(InvalidState):
            session.send(b"too late", pair.clock.now)
        assert not session.can_send(1)
    closer.close(pair.clock.now)  # idempotent
    assert client_events(pair) == []


def test_close_with_a_non_terminal_code_is_invalid_state() -> None:
    pair = connected()
    for code in (CloseCode.GOING_AWAY, CloseCode.IDLE_TIMEOUT, CloseCode.TRANSPORT_LOST):
        with pytest.raises(InvalidState):
            pair.client.close(pair.clock.now, code)
    pair.flush()
    assert not pair.to_server  # API misuse never touches the wire
    assert state_of(pair.client) is SessionState.ATTACHED


def test_close_while_detached_ends_the_session_locally() -> None:
    pair = connected()
    sid = pair.client.id or b""
    pair.cut()
    client_events(pair)
    pair.client.close(pair.clock.now)
    assert state_of(pair.client) is SessionState.ENDED
    assert client_events(pair) == [SessionEnded(sid, CloseCode.NORMAL, "", False)]
    with pytest.raises(InvalidState):
        pair.client.connect(pair.clock.now)


# ------------------------------------------------------ a window shrunk on resume


@pytest.mark.parametrize("bound", ["messages", "bytes"])
def test_replay_counts_against_the_window_announced_on_the_new_transport(bound: str) -> None:
    """protocol.md §6.4: a receiver announcing a smaller window on a resume (here a server
    restarted with a smaller configuration) never sees more than it: the sender replays
    what fits, and the rest, in order, as the receiver's ACKs open the window."""
    pair = connected(server=Params(window_messages=8, window_bytes=800))
    server = pair.server
    sent = [b"%03d" % i + b"x" * 97 for i in range(8)]  # 100 bytes each
    for payload in sent:
        pair.client.send(payload, pair.clock.now)
    pair.cut(to_server=2 * (16 + 100))  # two arrive (not consumed), six are lost
    smaller = (
        Params(window_messages=4, window_bytes=800)
        if bound == "messages"
        else Params(window_messages=8, window_bytes=400)
    )
    server.params = smaller
    pair.registry.params = smaller
    reconnect(pair)
    assert state_of(server) is SessionState.ATTACHED, server.end_code
    assert pair.server_conn is not None and not pair.server_conn.closed
    assert server.messages_waiting == 4  # two from before the cut, two replayed
    got: list[bytes] = []
    for _ in range(10):
        got += pair.take_server()
        pair.tick(1.0)  # the coalesced ACK goes out
        pair.pump()
        assert not pair.server_conn.closed
        assert server.messages_waiting <= 4
    assert got == sent
    assert state_of(pair.client) is SessionState.ATTACHED
    pair.client.send(b"after", pair.clock.now)
    pair.pump()
    assert pair.take_server() == [b"after"]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    in_flight=st.integers(0, 6),
    window_messages=st.integers(1, 12),
    window_bytes=st.integers(1, 2000),
)
def test_send_many_sends_what_send_one_at_a_time_would(
    sizes: list[int], in_flight: int, window_messages: int, window_bytes: int
) -> None:
    """send_many (its unchecked fast path when the whole batch fits, else the checked
    loop) writes the same frames and keeps the same replay as send() per payload."""
    server = Params(window_messages=window_messages, window_bytes=window_bytes)
    results = []
    for batch in (True, False):
        pair = connected(server=server)
        client, conn = pair.client, pair.client_conn
        assert conn is not None
        sent_before = 0
        for i in range(in_flight):  # unacknowledged already
            try:
                client.send(b"f%d" % i, pair.clock.now)
                sent_before += 1
            except WindowFull:
                break
        conn.data_to_send()
        payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
        if batch:
            count = client.send_many(payloads, pair.clock.now)
        else:
            count = 0
            for payload in payloads:
                try:
                    client.send(payload, pair.clock.now)
                except WindowFull:
                    break
                count += 1
        payloads.clear()  # the caller reusing its list changes nothing kept
        results.append((count, conn.data_to_send(), client.unacked_messages()))
    assert results[0] == results[1]
