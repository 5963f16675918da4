"""Property tests: exactly-once, in-order delivery across random cuts, chunking and timers.

A hypothesis state machine drives :class:`tests.serverpair.ServerPair`, a client
core against the daemon's real :class:`sessiond.server.Server` (registry, HELLO
answering, takeover, flushes and timers) on in-memory transports and a stepped
clock, with small windows: both sides send (every payload starts with its
direction and index, so no two are equal), consume (sometimes a few at a time),
bytes move in random amounts, the clock steps so ACK timers, heartbeats and
timeouts fire, and the transport is cut at random byte offsets, or left half-open
so that the resume takes the session over (§9.2). Only transport faults happen,
so no session may ever end or be replaced, every step must keep the windows
(protocol.md §6), and at the end every message sent must have arrived exactly
once and in order (§4.4, §5).

A second property repeats the "lost WELCOME" cut of protocol.md §10.3: the resume
is answered, then the transport dies before the client's confirming ACK (§3.7)
reaches the server, whether or not the WELCOME itself reached the client.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sessiond_client.protocol import (
    Connection,
    ConnectionState,
    Params,
    Session,
    SessionEnded,
    SessionLostEvent,
    SessionResumed,
    SessionState,
    WindowFull,
    parse_frame,
)
from sessiond_client.protocol.frames import Ack

from tests.serverpair import ServerPair

OPEN = ConnectionState.OPEN

#: Short timers so that a few clock steps reach heartbeats, idle and handshake timeouts;
#: a lifetime long enough that no detached session expires during a run.
HEARTBEAT = 1.0
HANDSHAKE_TIMEOUT = 0.5


def make_params(window_messages: int = 8, window_bytes: int = 2048) -> Params:
    return Params(
        window_messages=window_messages,
        window_bytes=window_bytes,
        heartbeat_interval=HEARTBEAT,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        detached_lifetime=3600.0,
    )


def make_payload(direction: bytes, index: int, size: int) -> bytes:
    """A payload of *size* bytes (at least 1) that names its index, and its direction
    when there is room (5 bytes or more).

    No two payloads of one direction are equal, tiny ones included (a run sends
    fewer than 256 per direction), so a loss plus a duplicate cannot pass for the
    messages that were sent. Empty payloads have their own test below.
    """
    if size < 5:
        size = max(size, 1)
        assert index < 256**size, "a tiny payload could not name its index"
        return index.to_bytes(size, "big")
    head = direction + index.to_bytes(4, "big")
    return head + bytes((index + i) % 251 for i in range(size - len(head)))


def first_frame_length(wire: bytes | bytearray) -> int:
    """Length of the complete frame at the start of *wire*."""
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    unpacker.feed(bytes(wire))
    unpacker.skip()
    length: int = unpacker.tell()
    return length


class Harness:
    """A ServerPair plus the record of what each side sent and received."""

    def __init__(self, client_params: Params, server_params: Params) -> None:
        self.client_params = client_params
        self.server_params = server_params
        self.pair = ServerPair(client_params, server_params)
        self.pair.connect()
        self.pair.pump()
        assert self.pair.client.state is SessionState.ATTACHED
        assert self.pair.client.id is not None
        self.session_id: bytes = self.pair.client.id
        self.sent_by_client: list[bytes] = []
        self.sent_by_server: list[bytes] = []
        self.got_by_client: list[bytes] = []
        self.got_by_server: list[bytes] = []

    @property
    def now(self) -> float:
        return self.pair.clock.now

    @property
    def server(self) -> Session:
        """The server's core session (the one the server's registry holds)."""
        return self.pair.server.sessions[self.session_id].core

    def close(self) -> None:
        self.pair.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ operations

    def client_send(self, size: int) -> None:
        payload = make_payload(b"c", len(self.sent_by_client), size)
        client = self.pair.client
        if client.can_send(len(payload)):
            client.send(payload, self.now)
            self.sent_by_client.append(payload)
        else:
            # Refused sends are not sent; the test tries again later.
            with pytest.raises(WindowFull):
                client.send(payload, self.now)

    def server_send(self, size: int) -> None:
        """The server application sends through its handler-facing session."""
        payload = make_payload(b"s", len(self.sent_by_server), size)
        if self.server.can_send(len(payload)):
            self.pair.server_send(payload)
            self.sent_by_server.append(payload)
        else:
            with pytest.raises(WindowFull):
                self.server.send(payload, self.now)

    def client_take(self, limit: int | None) -> None:
        self.got_by_client += self.pair.client.take_messages(self.now, limit)

    def server_take(self, limit: int | None) -> None:
        self.got_by_server += self.pair.server_take(limit)

    def reconnect(self, half_open: bool = False) -> None:
        """The old transport dies and the client opens a new one. Both ends notice,
        or with *half_open* only the client does: the resume then takes the session
        over from a transport the server still holds (protocol.md §9.2)."""
        if half_open:
            self.pair.half_open()
        else:
            self.pair.cut()
        self.pair.connect()

    def cut_after_welcome(self, reaches: bool, to_server: int, to_client: int) -> None:
        """Resume and cut before the client's confirmation reaches the server (§10.3).

        With *reaches*, the WELCOME (and maybe *to_client* more bytes) reaches the
        client and fewer than a whole frame of its answer reaches the server;
        otherwise fewer than the WELCOME's bytes reach the client.
        """
        p = self.pair
        self.reconnect()
        p.flush()
        p.deliver(to_server=len(p.to_server), to_client=0)
        p.flush()
        assert p.to_client, "the server did not answer HELLO"
        welcome = first_frame_length(p.to_client)
        if not reaches:
            p.cut(to_server=0, to_client=min(to_client, welcome - 1))
            return
        p.deliver(to_server=0, to_client=welcome)
        assert p.client_conn is not None
        assert p.client_conn.state is OPEN
        p.flush()
        confirmation = first_frame_length(p.to_server)
        # protocol.md §3.7: the client's first frame after WELCOME is an ACK.
        first = msgpack.unpackb(bytes(p.to_server[:confirmation]), use_list=False, raw=False)
        assert isinstance(parse_frame(first), Ack)
        p.cut(to_server=min(to_server, confirmation - 1), to_client=to_client)

    # ------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        p = self.pair
        p.client_events += p.client.events()
        lost = [e for e in p.client_events if isinstance(e, SessionEnded | SessionLostEvent)]
        assert not lost, f"client session ended or was replaced: {lost}"
        # The server started one handler, and its registry holds that one session.
        assert len(p.started) == 1, f"a resume opened a new session: {p.started}"
        assert p.client.id == self.session_id
        assert len(p.server.sessions) == 1 and self.session_id in p.server.sessions
        assert p.server_session is p.started[0]
        assert p.client.state is not SessionState.ENDED
        server = self.server
        assert server.state is not SessionState.ENDED, f"server session ended: {server}"

        # In order and without duplicates so far: what arrived is a prefix of what was sent.
        assert self.got_by_server == self.sent_by_client[: len(self.got_by_server)]
        assert self.got_by_client == self.sent_by_server[: len(self.got_by_client)]

        sides = (
            (p.client, self.client_params, server, self.server_params),
            (server, self.server_params, p.client, self.client_params),
        )
        for receiver, receiver_params, sender, sender_params in sides:
            assert receiver.messages_waiting <= receiver_params.window_messages
            window = min(receiver_params.window_messages, sender_params.replay_messages)
            assert sender.unacked_count <= window
            unacked_bytes = sum(map(len, sender.unacked_messages()))
            # §6.1: one message above the byte window only when nothing else is unacked.
            assert unacked_bytes <= receiver_params.window_bytes or sender.unacked_count == 1

    def _attached(self) -> bool:
        p = self.pair
        return (
            p.client_conn is not None
            and p.client_conn.state is OPEN
            and p.server_conn is not None
            and p.server_conn.state is OPEN
            and p.server_conn.session is self.server
            and p.entry.protocol is p.protocol
        )

    def settle_and_check(self) -> None:
        """Reconnect if needed, move everything, and check exactly-once in-order delivery."""
        p = self.pair
        p.pump()
        self.check_invariants()
        if not self._attached():
            self.reconnect()
            p.pump()
            self.check_invariants()
        assert self._attached(), "the final resume did not attach the session"
        server = self.server
        for _ in range(200):
            self.client_take(None)
            self.server_take(None)
            p.pump()
            if (
                len(self.got_by_server) == len(self.sent_by_client)
                and len(self.got_by_client) == len(self.sent_by_server)
                and p.client.unacked_count == 0
                and server.unacked_count == 0
            ):
                break
            p.tick(0.05)  # coalesced ACKs go out after ack_delay
            p.pump()
        self.check_invariants()
        assert self.got_by_server == self.sent_by_client
        assert self.got_by_client == self.sent_by_server
        assert p.client.unacked_count == 0
        assert server.unacked_count == 0
        assert p.client.messages_waiting == 0
        assert server.messages_waiting == 0


# ---------------------------------------------------------------- the state machine

windows = st.sampled_from([1, 3, 8])
byte_windows = st.sampled_from([256, 700, 2048])
sizes = st.integers(0, 300)
limits = st.none() | st.integers(1, 4)
byte_counts = st.integers(0, 400)


class DeliveryMachine(RuleBasedStateMachine):
    """Random sends, takes, partial deliveries, clock steps, cuts and resumes."""

    def __init__(self) -> None:
        super().__init__()
        self._harness: Harness | None = None
        # False while a step runs; the invariant sets it once the step passed.
        self._healthy = False

    def step(self) -> Harness:
        """The harness, for a step that has not passed yet."""
        assert self._harness is not None
        self._healthy = False
        return self._harness

    def _has_transport(self) -> bool:
        return self._harness is not None and self._harness.pair.client_conn is not None

    @initialize(
        client_window=windows,
        client_bytes=byte_windows,
        server_window=windows,
        server_bytes=byte_windows,
    )
    def start(
        self, client_window: int, client_bytes: int, server_window: int, server_bytes: int
    ) -> None:
        self._harness = Harness(
            make_params(client_window, client_bytes), make_params(server_window, server_bytes)
        )

    @rule(size=sizes)
    def client_send(self, size: int) -> None:
        self.step().client_send(size)

    @rule(size=sizes)
    def server_send(self, size: int) -> None:
        self.step().server_send(size)

    @rule(limit=limits)
    def client_take(self, limit: int | None) -> None:
        self.step().client_take(limit)

    @rule(limit=limits)
    def server_take(self, limit: int | None) -> None:
        self.step().server_take(limit)

    @rule(to_server=byte_counts, to_client=byte_counts)
    def deliver(self, to_server: int, to_client: int) -> None:
        pair = self.step().pair
        pair.flush()
        pair.deliver(to_server, to_client)

    @rule()
    def pump(self) -> None:
        self.step().pair.pump()

    @rule(seconds=st.sampled_from([0.001, 0.01, 0.03, 0.1, 0.4, 1.1]))
    def tick(self, seconds: float) -> None:
        self.step().pair.tick(seconds)

    @precondition(_has_transport)
    @rule(to_server=byte_counts, to_client=byte_counts)
    def cut(self, to_server: int, to_client: int) -> None:
        self.step().pair.cut(to_server, to_client)

    @rule(
        hello=st.none() | byte_counts,
        answer=byte_counts,
        stall=st.sampled_from([0.0, 0.0, HANDSHAKE_TIMEOUT]),
        half_open=st.booleans(),
    )
    def connect(self, hello: int | None, answer: int, stall: float, half_open: bool) -> None:
        """Whatever transport there was dies; the client reconnects at once.

        With *half_open* the server has not noticed, and the resume takes over.
        With *hello*, that many bytes of the HELLO reach the server and *answer*
        bytes of its reply reach the client, then the network may *stall* for the
        handshake timeout: handshakes are cut and delayed at random too.
        """
        harness = self.step()
        harness.reconnect(half_open)
        if hello is not None:
            pair = harness.pair
            pair.flush()
            pair.deliver(hello, 0)
            pair.flush()
            pair.deliver(0, answer)
            if stall:
                pair.tick(stall)

    @rule(reaches=st.booleans(), to_server=st.integers(0, 30), to_client=byte_counts)
    def cut_after_welcome(self, reaches: bool, to_server: int, to_client: int) -> None:
        self.step().cut_after_welcome(reaches, to_server, to_client)

    @invariant()
    def holds(self) -> None:
        harness = self.step()
        harness.check_invariants()
        self._healthy = True

    def teardown(self) -> None:
        if self._harness is None:
            return
        try:
            # Only a run whose every step passed is settled; a failed step is reported as is.
            if self._healthy:
                self._harness.settle_and_check()
        finally:
            self._harness.close()


TestDelivery = DeliveryMachine.TestCase
TestDelivery.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)


# ---------------------------------------------------------------- lost WELCOME, repeatedly

rounds = st.lists(
    st.tuples(
        st.integers(0, 4),  # client sends
        st.integers(0, 4),  # server sends
        st.booleans(),  # consume on both sides
        st.booleans(),  # the WELCOME reaches the client
        st.integers(0, 30),  # bytes of the client's answer that reach the server (< a frame)
        st.integers(0, 200),  # bytes that reach the client (with reaches: beyond the WELCOME)
    ),
    min_size=1,
    max_size=12,
)


@settings(deadline=None)
@given(rounds=rounds)
def test_resume_survives_repeated_cuts_before_confirmation(
    rounds: list[tuple[int, int, bool, bool, int, int]],
) -> None:
    with Harness(make_params(), make_params()) as h:
        for client_sends, server_sends, take, reaches, to_server, to_client in rounds:
            for _ in range(client_sends):
                h.client_send(40)
            for _ in range(server_sends):
                h.server_send(40)
            if take:
                h.client_take(None)
                h.server_take(None)
            h.cut_after_welcome(reaches, to_server, to_client)
            h.check_invariants()
        h.settle_and_check()
    # One resume per WELCOME that reached the client, and the final one.
    resumed = [e for e in h.pair.client_events if isinstance(e, SessionResumed)]
    assert len(resumed) == 1 + sum(reaches for _, _, _, reaches, _, _ in rounds)


def test_handshake_timeout_close_does_not_confirm_the_credential() -> None:
    """protocol.md §3.1, §3.7, §10.2: a CLOSE sent before WELCOME arrived confirms nothing.

    The server answers a resume, the WELCOME is lost, the client gives up with
    CLOSE HANDSHAKE_TIMEOUT and resumes again with the only credential it has.
    """
    with Harness(make_params(), make_params()) as h:
        h.client_send(10)
        p = h.pair
        h.reconnect()
        p.flush()
        p.deliver(to_server=len(p.to_server), to_client=0)  # server accepts; WELCOME in flight
        p.tick(HANDSHAKE_TIMEOUT)  # the client times out and sends CLOSE
        client_conn = p.client_conn
        assert isinstance(client_conn, Connection)
        assert client_conn.closed
        p.flush()
        p.deliver(to_client=0)  # the server reads the CLOSE; the WELCOME never arrives
        h.reconnect()
        p.pump()
        h.settle_and_check()


@pytest.mark.parametrize("half_open", [False, True])
def test_empty_payloads_cross_a_resume(half_open: bool) -> None:
    """Empty messages (which the state machine's identifiable payloads never are)
    are delivered, replayed and counted like any other, both ways (§4.4)."""
    with Harness(make_params(), make_params()) as h:
        p = h.pair
        for index in range(3):
            for side, sent in ((p.client, h.sent_by_client), (h.server, h.sent_by_server)):
                for payload in (b"", make_payload(b"x", index, 8)):
                    if side is p.client:
                        side.send(payload, h.now)
                    else:
                        p.server_send(payload)
                    sent.append(payload)
        p.flush()
        p.deliver(to_server=30, to_client=30)  # part of it arrives; the rest is replayed
        h.reconnect(half_open)
        p.pump()
        h.settle_and_check()


def test_unread_messages_leave_the_server_idle() -> None:
    """A handler that leaves messages unread gets no busy loop: after the input is
    handled, nothing is left to run until the clock moves (it used to queue a flush
    for them after every flush, for ever)."""
    with Harness(make_params(), make_params()) as h:
        h.client_send(10)
        h.pair.pump()
        assert h.server.messages_waiting == 1
        h.pair.loop.settle()  # raises if callbacks keep coming
        h.server_take(None)
        h.settle_and_check()
