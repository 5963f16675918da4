"""The rules protocol.md revision 1.1 made explicit (issue 15, minor items): confirmation
(§3.7), closing an unwanted new session (§4.3), the server's first ACK (§4.4), what an ACK
may name (§5.3), the quarter-window rule (§5.4), the window checks (§6.2), the RTT per
transport (§7.3), a GOAWAY followed by a lost transport (§11.1) and the backoff (§12).

Pure core tests over an in-memory pair, except the GOAWAY one, which needs the client
adapter and two daemons.
"""

from __future__ import annotations

import asyncio
import dataclasses

import msgpack
import pytest
import sessiond_client
from sessiond_client import CloseCode, ReconnectPolicy, SessionLost, envelopes
from sessiond_client.protocol import (
    InvalidState,
    Params,
    SessionEnded,
    SessionState,
)
from sessiond_client.protocol.frames import Ack, Close, Data, Ping, Welcome

from tests.faultproxy import FaultProxy
from tests.test_faults import CLIENT_PARAMS, echo_daemon

from .test_session import client_events, connected, decode, reconnect, server_events, state_of


def test_server_takes_any_first_frame_after_welcome_as_confirmation() -> None:
    """§3.7: a first frame that is not an ACK (here a PING, then DATA) confirms the
    transport and is processed as usual; the server does not close it."""
    pair = connected()
    pair.cut()
    pair.connect()
    pair.flush()
    pair.deliver()  # HELLO -> server, which answers WELCOME and its ACK
    server = pair.server
    conn = pair.server_conn
    assert conn is not None
    pair.to_client.clear()  # the client never sees them: it sends something else first
    conn.receive_data(Ping(7).encode() + Data(1, b"first").encode(), pair.clock.now)
    assert not conn.closed
    assert server._confirmed
    assert server.take_messages(pair.clock.now) == [b"first"]


def test_client_may_close_an_unwanted_new_session_without_acking_first() -> None:
    """§3.7, §4.3: CLOSE NORMAL straight after WELCOME (no ACK) ends the new session."""
    pair = connected()
    pair.cut()
    pair.registry.sessions.clear()  # the server forgot the session: a new one follows
    pair.connect()
    pair.flush()
    pair.deliver()
    pair.flush()
    conn = pair.server_conn
    assert conn is not None and conn.session is not None
    fresh = conn.session
    conn.receive_data(Close(CloseCode.NORMAL, "not wanted", 0).encode(), pair.clock.now)
    assert state_of(fresh) is SessionState.ENDED
    assert fresh.end_code is CloseCode.NORMAL


def test_server_sends_its_ack_with_welcome_and_data_only_once_confirmed() -> None:
    """§4.4: on a resumed session the server's step-1 ACK leaves with WELCOME; the replay
    waits for the client's first frame."""
    pair = connected()
    server = pair.server
    server.send(b"lost on the way", pair.clock.now)
    pair.cut()
    pair.connect()
    pair.flush()
    pair.deliver()  # HELLO -> server
    pair.flush()
    frames = decode(pair.to_client)
    assert isinstance(frames[0], Welcome) and frames[0].resumed
    assert frames[1:] == [Ack(0)]  # the ACK at once, no DATA yet
    pair.pump()
    assert pair.take_client() == [b"lost on the way"]


def test_an_ack_may_name_a_message_queued_while_detached_only_once_sent() -> None:
    """§5.3: an ACK above what the ACK's receiver has assigned is SEQUENCE_ERROR; the
    check is against ``last_sent``, queued messages included."""
    pair = connected()
    pair.cut()
    pair.client.send(b"queued while detached", pair.clock.now)
    reconnect(pair)
    assert pair.take_server() == [b"queued while detached"]
    conn = pair.client_conn
    assert conn is not None
    conn.receive_data(Ack(2).encode(), pair.clock.now)  # last_sent is 1
    assert conn.close_code is CloseCode.SEQUENCE_ERROR


@pytest.mark.parametrize("window_messages", [1, 2, 3])
def test_a_window_smaller_than_four_acks_every_consumption_at_once(window_messages: int) -> None:
    """§5.4: a quarter of the window, rounded down, is at least 1."""
    pair = connected(server=Params(window_messages=window_messages, window_bytes=3))
    pair.client.send(b"x", pair.clock.now)
    pair.pump()
    assert pair.take_server() == [b"x"]
    pair.flush()
    assert Ack(1) in decode(pair.to_client)  # at once, not after ack_delay


@pytest.mark.parametrize(
    ("taken", "size", "rides"),
    [(3, 1, False), (4, 1, True), (1, 99, False), (1, 100, True)],
)
def test_a_coalesced_ack_rides_with_data_once_it_covers_a_sixteenth_of_the_window(
    taken: int, size: int, rides: bool
) -> None:
    """§5.4: an ACK not yet due (below a quarter window, within ack_delay) goes with DATA
    written anyway once it covers a sixteenth of the window in messages or bytes, at
    once; below that only once half its ack_delay has passed."""
    pair = connected(server=Params(window_messages=64, window_bytes=1600, ack_delay=5.0))
    now = pair.clock.now
    for _ in range(taken):
        pair.client.send(b"m" * size, now)
    pair.pump()
    assert len(pair.take_server()) == taken
    conn = pair.server_conn
    assert conn is not None
    assert [f for f in decode(conn.data_to_send()) if isinstance(f, Ack)] == []  # not yet due
    pair.server.send(b"reply", now)
    frames = decode(conn.data_to_send())
    assert Data(1, b"reply") in frames
    assert (Ack(taken) in frames) is rides


def test_consumed_messages_do_not_count_against_the_byte_window() -> None:
    """§6.2: bytes count only messages held unconsumed; the message count runs from the
    last ACK sent, consumed or not."""
    pair = connected(server=Params(window_messages=8, window_bytes=1000, ack_delay=5.0))
    server = pair.server
    conn = pair.server_conn
    assert conn is not None
    now = pair.clock.now
    conn.receive_data(Data(1, b"a" * 200).encode(), now)
    server.take_messages(now)  # consumed, not yet acknowledged (below a quarter window)
    assert server.sequence_numbers[3] == 1 and decode(conn.data_to_send()) == []
    conn.receive_data(Data(2, b"b" * 900).encode(), now)
    assert not conn.closed  # 900 unconsumed bytes: within, though 1100 since the ACK
    for seq in range(3, 9):
        conn.receive_data(Data(seq, b"c").encode(), now)
    assert not conn.closed  # eight beyond the last ACK: within
    conn.receive_data(Data(9, b"d").encode(), now)
    assert conn.close_code is CloseCode.FLOW_CONTROL_ERROR  # nine beyond it
    pair = connected(server=Params(window_messages=8, window_bytes=1000, ack_delay=5.0))
    conn = pair.server_conn
    assert conn is not None
    conn.receive_data(Data(1, b"a" * 900).encode() + Data(2, b"b" * 101).encode(), now)
    assert conn.close_code is CloseCode.FLOW_CONTROL_ERROR  # 1001 unconsumed bytes


def test_smoothed_rtt_starts_unmeasured_on_every_transport() -> None:
    """§7.3: srtt is per transport."""
    pair = connected(client=Params(heartbeat_interval=1.0), server=Params(heartbeat_min=1.0))
    pair.tick(1.0)  # the client's PING
    pair.tick(0.25)
    pair.pump()  # ... and its PONG, 0.25 s later
    assert pair.client_conn is not None and pair.client_conn.rtt == pytest.approx(0.25)
    pair.cut()
    reconnect(pair)
    assert pair.client_conn is not None and pair.client_conn.rtt is None


def test_the_servers_retry_after_bounds_the_first_attempt_whatever_the_code() -> None:
    """§11.1, §12: a GOAWAY's retry_after still applies when the transport is then lost
    (an *immediate* code); and the backoff's attempt counter is per loss."""
    policy = ReconnectPolicy(base=0.1, cap=1.0, random=lambda: 1.0)
    assert policy.delay(0, CloseCode.TRANSPORT_LOST, retry_after=2.0) == 2.0
    assert policy.delay(0, CloseCode.IDLE_TIMEOUT) == 0.0
    assert policy.delay(0, CloseCode.HANDSHAKE_TIMEOUT, retry_after=2.0) == 2.0
    assert policy.delay(1, CloseCode.TRANSPORT_LOST, retry_after=2.0) == pytest.approx(0.2)


async def test_goaway_then_a_lost_transport_still_obeys_retry_after_and_redirect() -> None:
    """§11.1: the connection dies after GOAWAY and before CLOSE GOING_AWAY: the client
    still waits retry_after and resumes at the redirect."""
    async with (
        echo_daemon() as old,
        echo_daemon() as new,
        FaultProxy(*old.addresses[0]) as proxy,
    ):
        loop = asyncio.get_running_loop()
        attempts: list[float] = []

        def credentials() -> None:
            attempts.append(loop.time())

        host, port = proxy.address
        session = await sessiond_client.connect(
            f"tcp://{host}:{port}",
            credentials=credentials,
            params=CLIENT_PARAMS,
            fresh_session=True,  # the new daemon does not know the session
        )
        (protocol,) = old.protocols
        retry_after = 0.3
        new_host, new_port = new.addresses[0]
        assert protocol.conn is not None
        protocol.conn.goaway(loop.time(), retry_after, f"tcp://{new_host}:{new_port}")
        protocol.flush()
        first = session.id
        async with asyncio.timeout(10):
            while not session.notices:
                await asyncio.sleep(0.01)
        lost_at = loop.time()
        proxy.cut()
        async with asyncio.timeout(10):
            while session.id == first:
                await asyncio.sleep(0.02)
        assert len(new.sessions) == 1
        assert attempts[-1] - lost_at >= retry_after * 0.99  # it waited as told
        await session.close()


def test_taken_over_on_the_current_connection_ends_the_session() -> None:
    """§9.1: TAKEN_OVER received on the client's current connection: another holder has
    the session; the client does not resume it."""
    pair = connected()
    conn = pair.client_conn
    assert conn is not None
    sid = pair.client.id or b""
    conn.receive_data(Close(CloseCode.TAKEN_OVER, "", 0).encode(), pair.clock.now)
    assert state_of(pair.client) is SessionState.ENDED
    assert client_events(pair) == [SessionEnded(sid, CloseCode.TAKEN_OVER, "", True)]
    server_events(pair, pair.server)


def test_sequence_numbers_never_exceed_two_to_the_64_minus_one() -> None:
    """§5.1: the last sequence number is 2**64-1; a send beyond it is refused (the
    session must end), one at a time or in a batch."""
    pair = connected()
    client = pair.client
    client._acked = 2**64 - 3  # as if that many had been sent and acknowledged
    client._next_seq = 2**64 - 2
    assert client.send_many([b"a", b"b", b"c"], pair.clock.now) == 2  # seqs 2**64-2, -1
    with pytest.raises(InvalidState):
        client.send(b"over", pair.clock.now)
    with pytest.raises(InvalidState):
        client.send_many([b"over"], pair.clock.now)


async def test_echo_ends_a_session_whose_echo_would_exceed_its_max_frame() -> None:
    """§16: the echo app cannot send back a payload above the client's largest payload:
    the session ends with SESSION_REVOKED, nothing is dropped silently."""
    async with echo_daemon() as server:
        host, port = server.addresses[0]
        params = dataclasses.replace(CLIENT_PARAMS, max_frame_size=1024)
        session = await sessiond_client.connect(f"tcp://{host}:{port}", params=params)
        await session.send(b"x" * 2000)  # within the daemon's max_frame, above ours
        with pytest.raises(SessionLost) as lost:
            async with asyncio.timeout(10):
                await session.recv()
        assert lost.value.reason is CloseCode.SESSION_REVOKED


def test_a_channels_envelope_with_an_unknown_key_is_understood() -> None:
    """§15.1.1: a receiver ignores keys it does not know."""
    payload = msgpack.packb({"op": "sub", "id": 1, "ch": "a/b", "x-future": [1]})
    assert envelopes.parse_request(payload) == envelopes.Request("sub", 1, "a/b")


def test_session_contested_from_a_v1_server_is_waited_out() -> None:
    """§9.2: a client receiving SESSION_CONTESTED waits retry_after_ms (plus jitter)."""
    policy = ReconnectPolicy(base=0.1, cap=1.0, random=lambda: 0.5)
    assert policy.delay(0, CloseCode.SESSION_CONTESTED, retry_after=10.0) == 10.0
    assert policy.delay(1, CloseCode.SESSION_CONTESTED, retry_after=10.0) == pytest.approx(10.1)


def test_the_client_handshake_timeout_defaults_to_ten_seconds() -> None:
    """§3.6: the reference client's default, the same as the server's."""
    assert Params().handshake_timeout == 10.0
