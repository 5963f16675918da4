"""Handshake of the pure protocol core: HELLO, WELCOME, versions, timeouts, negotiation.

protocol.md §3 (handshake), §7.1 (heartbeat terms) and §8.1 (detached lifetime).
No event loop and no sockets: bytes are handed from one core to the other by hand
and time is a number the test passes in; timer tests assert exact deadlines.
"""

from __future__ import annotations

from typing import Any

import pytest
from sessiond_client.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    Connection,
    ConnectionState,
    InvalidState,
    Params,
    Role,
    Session,
    SessionEnded,
    SessionStarted,
    SessionState,
    TransportLost,
)
from sessiond_client.protocol.codec import FrameDecoder
from sessiond_client.protocol.frames import Ack, Close, Frame, Hello, Ping, Welcome, parse_frame

from tests.pair import Pair

T0 = 1000.0


def decode(data: bytes) -> list[Frame]:
    """Every frame in *data*, typed."""
    return [parse_frame(raw) for raw in FrameDecoder(1 << 24).feed(data)]


def make_hello(
    versions: tuple[int, ...] = (PROTOCOL_VERSION,),
    heartbeat_ms: int = 15_000,
    lifetime_ms: int = 120_000,
    credentials: Any = None,
) -> Hello:
    """A hand-built HELLO, as a client other than ours would send it."""
    return Hello(
        versions=versions,
        heartbeat_ms=heartbeat_ms,
        window_messages=1024,
        window_bytes=1 << 20,
        max_frame=1 << 20,
        lifetime_ms=lifetime_ms,
        credentials=credentials,
    )


def make_welcome(session_id: bytes = bytes(16), version: int = PROTOCOL_VERSION) -> Welcome:
    """A hand-built WELCOME for a new session, as a server other than ours would send it."""
    return Welcome(
        version=version,
        session_id=session_id,
        credential=bytes(32),
        resumed=False,
        received=0,
        heartbeat_ms=15_000,
        idle_timeout_ms=45_000,
        window_messages=1024,
        window_bytes=1 << 20,
        max_frame=1 << 20,
        lifetime_ms=120_000,
    )


def state_of(session: Session) -> SessionState:
    """The session's state, read afresh (so mypy does not keep an earlier narrowing)."""
    return session.state


def conn_state(conn: Connection) -> ConnectionState:
    """The connection's state, read afresh."""
    return conn.state


class Handshake:
    """A client session and a server connection; HELLO is delivered, WELCOME is not yet."""

    def __init__(
        self,
        client_params: Params | None = None,
        server_params: Params | None = None,
        credentials: Any = None,
    ) -> None:
        self.client = Session(Role.CLIENT, client_params or Params())
        self.cconn = self.client.connect(T0, credentials)
        self.sconn = Connection.server(server_params or Params(), T0)
        self.sconn.receive_data(self.cconn.data_to_send(), T0)

    def accept(self, identity: Any = "alice") -> tuple[Session, list[Frame]]:
        """Accept on the server, deliver its answer to the client; return what it sent."""
        server = self.sconn.accept(T0, identity)
        assert server is not None
        data = self.sconn.data_to_send()
        self.cconn.receive_data(data, T0)
        return server, decode(data)


def time_of_death(session: Session) -> float:
    """Run *session*'s timers, receiving nothing, until its transport closes; return when."""
    conn = session.connection
    assert conn is not None
    while True:
        deadline = session.next_deadline()
        assert deadline is not None
        session.handle_timer(deadline)
        if conn.closed:
            return deadline


# ----------------------------------------------------------------- HELLO -> WELCOME


def test_hello_welcome_opens_session_on_both_sides() -> None:
    client = Session(Role.CLIENT)
    cconn = client.connect(T0)
    assert state_of(client) is SessionState.CONNECTING
    assert conn_state(cconn) is ConnectionState.AWAIT_WELCOME
    hello_bytes = cconn.data_to_send()
    assert decode(hello_bytes) == [make_hello()]

    sconn = Connection.server(Params(), T0)
    assert conn_state(sconn) is ConnectionState.AWAIT_HELLO
    sconn.receive_data(hello_bytes, T0)
    assert conn_state(sconn) is ConnectionState.HELLO_RECEIVED
    assert sconn.hello == make_hello()
    assert sconn.data_to_send() == b""  # nothing before accept() or reject()

    server = sconn.accept(T0, identity="alice")
    assert server is not None
    assert server.role is Role.SERVER
    assert state_of(server) is SessionState.ATTACHED
    assert server.identity == "alice"
    assert server.id is not None and len(server.id) == 16
    assert conn_state(sconn) is ConnectionState.OPEN
    assert server.events() == [SessionStarted(server.id, None)]

    welcome_bytes = sconn.data_to_send()
    welcome, ack = decode(welcome_bytes)
    assert isinstance(welcome, Welcome)
    assert len(welcome.credential) == 32
    assert welcome == Welcome(
        version=PROTOCOL_VERSION,
        session_id=server.id,
        credential=welcome.credential,
        resumed=False,
        received=0,
        heartbeat_ms=15_000,
        idle_timeout_ms=45_000,
        window_messages=1024,
        window_bytes=1 << 20,
        max_frame=1 << 20,
        lifetime_ms=120_000,
        reason=None,
    )
    assert ack == Ack(0)  # §4.4: the consumed position follows WELCOME

    cconn.receive_data(welcome_bytes, T0)
    assert client.events() == [SessionStarted(server.id, None)]
    assert client.id == server.id
    assert state_of(client) is SessionState.ATTACHED
    assert conn_state(cconn) is ConnectionState.OPEN
    assert client.max_payload == (1 << 20) - 16
    assert server.max_payload == (1 << 20) - 16
    # §3.7: the client confirms WELCOME with an ACK before anything else.
    assert decode(cconn.data_to_send()) == [Ack(0)]


def test_hello_carries_credentials_to_the_server() -> None:
    hs = Handshake(credentials={"token": "s3cret"})
    assert hs.sconn.hello is not None
    assert hs.sconn.hello.credentials == {"token": "s3cret"}
    assert hs.sconn.hello.resume is None


def test_each_new_session_gets_its_own_id_and_credential() -> None:
    first, _ = Handshake().accept()
    second, _ = Handshake().accept()
    assert first.id != second.id


# ------------------------------------------------------------ version negotiation


def test_hello_without_a_common_version_gets_close_unsupported_version() -> None:
    sconn = Connection.server(Params(), T0)
    sconn.receive_data(make_hello(versions=(99,)).encode(), T0)
    assert sconn.closed
    assert sconn.close_code is CloseCode.UNSUPPORTED_VERSION
    assert sconn.hello is None
    assert decode(sconn.data_to_send()) == [
        Close(CloseCode.UNSUPPORTED_VERSION, "supported versions: 1", 0)
    ]
    assert sconn.next_deadline() is None
    with pytest.raises(InvalidState):
        sconn.accept(T0)


def test_server_picks_the_version_it_speaks_among_those_offered() -> None:
    sconn = Connection.server(Params(), T0)
    sconn.receive_data(make_hello(versions=(99, PROTOCOL_VERSION, 7)).encode(), T0)
    assert conn_state(sconn) is ConnectionState.HELLO_RECEIVED
    assert sconn.accept(T0) is not None
    welcome = decode(sconn.data_to_send())[0]
    assert isinstance(welcome, Welcome)
    assert welcome.version == PROTOCOL_VERSION


def test_client_closes_on_a_version_it_did_not_offer() -> None:
    client = Session(Role.CLIENT)
    cconn = client.connect(T0)
    cconn.data_to_send()
    cconn.receive_data(make_welcome(version=99).encode(), T0)
    assert cconn.closed
    assert cconn.close_code is CloseCode.UNSUPPORTED_VERSION
    assert decode(cconn.data_to_send()) == [
        Close(CloseCode.UNSUPPORTED_VERSION, "server chose version 99", 0)
    ]
    assert state_of(client) is SessionState.ENDED
    assert client.events() == [
        SessionEnded(b"", CloseCode.UNSUPPORTED_VERSION, "server chose version 99", False)
    ]


def test_frame_other_than_hello_first_is_unexpected() -> None:
    sconn = Connection.server(Params(), T0)
    sconn.receive_data(Ping(1).encode(), T0)
    assert sconn.closed
    assert sconn.close_code is CloseCode.UNEXPECTED_FRAME
    out = decode(sconn.data_to_send())
    assert len(out) == 1 and isinstance(out[0], Close)
    assert out[0].code == CloseCode.UNEXPECTED_FRAME


# ------------------------------------------------------------ handshake timeouts


def test_server_closes_a_silent_transport_exactly_at_handshake_timeout() -> None:
    params = Params(handshake_timeout=7.5)
    sconn = Connection.server(params, T0)
    assert sconn.next_deadline() == T0 + 7.5
    sconn.handle_timer(T0 + 7.499)  # early: nothing happens
    assert not sconn.closed
    assert sconn.data_to_send() == b""
    assert sconn.next_deadline() == T0 + 7.5

    sconn.handle_timer(T0 + 7.5)
    assert sconn.closed
    assert sconn.close_code is CloseCode.HANDSHAKE_TIMEOUT
    assert decode(sconn.data_to_send()) == [
        Close(CloseCode.HANDSHAKE_TIMEOUT, "handshake not completed in time", 0)
    ]
    assert sconn.next_deadline() is None


def test_partial_hello_does_not_extend_the_handshake_deadline() -> None:
    sconn = Connection.server(Params(handshake_timeout=10.0), T0)
    hello = make_hello().encode()
    sconn.receive_data(hello[:10], T0 + 6.0)  # a trickle of bytes
    assert conn_state(sconn) is ConnectionState.AWAIT_HELLO
    assert sconn.next_deadline() == T0 + 10.0
    sconn.handle_timer(T0 + 10.0)
    assert sconn.close_code is CloseCode.HANDSHAKE_TIMEOUT


def test_server_times_out_a_hello_that_is_never_answered() -> None:
    # §3.6: HELLO must be received *and answered* within the handshake timeout.
    sconn = Connection.server(Params(handshake_timeout=10.0), T0)
    sconn.receive_data(make_hello().encode(), T0 + 3.0)
    assert conn_state(sconn) is ConnectionState.HELLO_RECEIVED
    assert sconn.next_deadline() == T0 + 10.0
    sconn.handle_timer(T0 + 10.0)
    assert sconn.close_code is CloseCode.HANDSHAKE_TIMEOUT
    with pytest.raises(InvalidState):
        sconn.accept(T0 + 10.0)


def test_client_times_out_without_welcome_and_may_retry() -> None:
    client = Session(Role.CLIENT, Params(handshake_timeout=5.0))
    cconn = client.connect(T0)
    cconn.data_to_send()
    assert client.next_deadline() == T0 + 5.0
    client.handle_timer(T0 + 4.999)
    assert not cconn.closed
    assert cconn.data_to_send() == b""

    client.handle_timer(T0 + 5.0)
    assert cconn.closed
    assert cconn.close_code is CloseCode.HANDSHAKE_TIMEOUT
    assert decode(cconn.data_to_send()) == [
        Close(CloseCode.HANDSHAKE_TIMEOUT, "handshake not completed in time", 0)
    ]
    # HANDSHAKE_TIMEOUT is a retry code: the transport is lost, not the session.
    assert client.events() == [TransportLost(CloseCode.HANDSHAKE_TIMEOUT, 0.0)]
    assert state_of(client) is SessionState.CONNECTING
    assert client.connection is None
    assert client.next_deadline() is None

    again = client.connect(T0 + 6.0)
    assert conn_state(again) is ConnectionState.AWAIT_WELCOME
    assert client.next_deadline() == T0 + 11.0


# ------------------------------------------------------------------------ reject


def test_reject_with_auth_failed_ends_the_connecting_client() -> None:
    hs = Handshake(credentials="wrong-token")
    hs.sconn.reject(T0, CloseCode.AUTH_FAILED, "bad token")
    assert hs.sconn.closed
    assert hs.sconn.session is None
    data = hs.sconn.data_to_send()
    assert decode(data) == [Close(CloseCode.AUTH_FAILED, "bad token", 0)]

    hs.cconn.receive_data(data, T0)
    assert hs.cconn.closed
    assert hs.cconn.peer_closed
    assert hs.cconn.close_code is CloseCode.AUTH_FAILED
    assert hs.cconn.data_to_send() == b""  # a CLOSE is not answered
    assert state_of(hs.client) is SessionState.ENDED
    assert hs.client.end_code is CloseCode.AUTH_FAILED
    assert hs.client.events() == [SessionEnded(b"", CloseCode.AUTH_FAILED, "bad token", True)]
    with pytest.raises(InvalidState):
        hs.client.connect(T0)


def test_reject_with_a_retry_code_carries_retry_after() -> None:
    hs = Handshake()
    hs.sconn.reject(T0, CloseCode.LIMIT_EXCEEDED, "too many sessions", retry_after=2.5)
    data = hs.sconn.data_to_send()
    assert decode(data) == [Close(CloseCode.LIMIT_EXCEEDED, "too many sessions", 2500)]
    hs.cconn.receive_data(data, T0)
    assert hs.client.events() == [TransportLost(CloseCode.LIMIT_EXCEEDED, 2.5)]
    assert state_of(hs.client) is SessionState.CONNECTING


# ------------------------------------------------------- negotiated heartbeat terms


@pytest.mark.parametrize(
    ("asked", "granted"),
    [(0.5, 2.0), (600.0, 60.0), (10.0, 10.0), (2.0, 2.0), (60.0, 60.0)],
)
def test_heartbeat_is_clamped_and_idle_timeout_is_heartbeat_times_factor(
    asked: float, granted: float
) -> None:
    server_params = Params(heartbeat_min=2.0, heartbeat_max=60.0, idle_timeout_factor=2.5)
    hs = Handshake(Params(heartbeat_interval=asked), server_params)
    server, frames = hs.accept()
    welcome = frames[0]
    assert isinstance(welcome, Welcome)
    assert welcome.heartbeat_ms == round(granted * 1000)
    assert welcome.idle_timeout_ms == round(granted * 2.5 * 1000)

    # Both sides run on the granted terms: first PING due one interval after the
    # handshake, and receive silence kills the transport at heartbeat x factor.
    hs.cconn.data_to_send()
    hs.sconn.data_to_send()
    assert hs.client.next_deadline() == T0 + granted
    assert server.next_deadline() == T0 + granted
    assert time_of_death(hs.client) == T0 + granted * 2.5
    assert time_of_death(server) == T0 + granted * 2.5
    assert hs.cconn.close_code is CloseCode.IDLE_TIMEOUT
    assert hs.sconn.close_code is CloseCode.IDLE_TIMEOUT


# ------------------------------------------------------------ negotiated lifetime


@pytest.mark.parametrize(
    ("asked", "granted"),
    [(30.0, 30.0), (0.0, 90.0), (600.0, 600.0), (7200.0, 600.0)],
)
def test_detached_lifetime_is_the_clients_request_capped_by_server_max(
    asked: float, granted: float
) -> None:
    client_params = Params(detached_lifetime=asked, detached_lifetime_max=max(asked, 3600.0))
    server_params = Params(detached_lifetime=90.0, detached_lifetime_max=600.0)
    hs = Handshake(client_params, server_params)
    hello = hs.sconn.hello
    assert hello is not None
    assert hello.lifetime_ms == round(asked * 1000)
    server, frames = hs.accept()
    welcome = frames[0]
    assert isinstance(welcome, Welcome)
    assert welcome.lifetime_ms == round(granted * 1000)

    # The granted lifetime is what both sides count down from once detached (§8).
    hs.sconn.connection_lost(T0 + 1.0)
    hs.cconn.connection_lost(T0 + 1.0)
    assert state_of(server) is SessionState.DETACHED
    assert state_of(hs.client) is SessionState.DETACHED
    assert server.next_deadline() == T0 + 1.0 + granted
    assert hs.client.next_deadline() == T0 + 1.0 + granted + 45.0


def test_a_new_session_sending_before_the_clients_first_frame_sends_each_message_once() -> None:
    # The server's application may send as soon as the session exists, before any
    # frame from the client has confirmed the transport: confirming must not replay.
    pair = Pair(client_params=Params(window_messages=64))
    pair.connect()
    pair.flush()
    pair.deliver(to_client=0)  # HELLO reaches the server; WELCOME is not delivered yet
    assert pair.server_conn is not None and pair.server_conn.session is not None
    server = pair.server_conn.session
    for i in range(10):
        server.send(f"early {i}".encode(), pair.clock.now)
    pair.pump()  # WELCOME, the ten DATA, then the client's ACK confirms the transport
    server.send(b"late", pair.clock.now)
    pair.pump()
    assert pair.take_client() == [f"early {i}".encode() for i in range(10)] + [b"late"]
    assert pair.client.state is SessionState.ATTACHED
