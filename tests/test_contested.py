"""Property tests of takeover and credential rotation (protocol.md §9, §10.3).

A hypothesis-driven world of protocol cores in memory, with a clock stepped by hand:
one server registry, one or two clients, and any number of transports, each of which
can lose what the server sends (a WELCOME lost with its path), be abandoned by the
client (its path dead) while the server still holds it half-open, or carry bytes in
random amounts. Timers fire as the clock steps (handshake and idle timeouts).

* One client, whatever is lost, is never refused: it never sees SESSION_CONTESTED,
  CREDENTIAL_REUSED, TAKEN_OVER or a new session, and at the end every message sent
  either way has arrived exactly once and in order.
* Two real holders of one session (a copy of the client's state) are always detected:
  once the network is quiet and both keep trying, one of them is told (TAKEN_OVER on its
  own connection, or its credential is found reused) and stops, so they never both go
  on holding the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sessiond_client.protocol import (
    CloseCode,
    Connection,
    Event,
    Params,
    Role,
    Session,
    SessionEnded,
    SessionLostEvent,
    SessionState,
    Snapshot,
    TransportLost,
)

from tests.pair import Clock, Registry

PARAMS = Params(
    window_messages=8,
    window_bytes=4096,
    heartbeat_interval=1.0,
    handshake_timeout=0.5,
    detached_lifetime=3600.0,
)

#: Codes that tell a client another holder exists, or that its copy was caught: taken
#: over, its credential reused, the session ended by that, or its copy's stream diverged
#: from the session's (it cannot be replayed to).
TOLD = {
    CloseCode.TAKEN_OVER,
    CloseCode.CREDENTIAL_REUSED,
    CloseCode.SESSION_REVOKED,
    CloseCode.REPLAY_UNAVAILABLE,
}


@dataclass
class Wire:
    """One transport: the client's end, the server's end and the bytes in flight."""

    client: Connection
    server: Connection
    up: bytearray = field(default_factory=bytearray)
    down: bytearray = field(default_factory=bytearray)
    down_lost: bool = False  # what the server sends never arrives (its path is dead)
    abandoned: bool = False  # the client gave up on it: nothing more goes up


class World:
    """A server registry and clients joined by wires; nothing moves unless told to."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.registry = Registry(PARAMS)
        self.clients: list[Session] = [Session(Role.CLIENT, PARAMS)]
        self.events: list[list[Event]] = [[]]
        self.wires: list[Wire] = []
        self.sent: list[list[bytes]] = [[]]  # per client, client → server
        self.got: list[list[bytes]] = [[]]  # per client, server → client
        self.server_sent: list[bytes] = []
        self.server_got: list[bytes] = []
        self.session_id: bytes | None = None
        self.connect(0)
        self.settle()
        assert self.clients[0].state is SessionState.ATTACHED
        self.session_id = self.clients[0].id

    @property
    def now(self) -> float:
        return self.clock.now

    def fork(self) -> None:
        """A second holder: a copy of client 0's persisted state (protocol.md §10)."""
        snapshot = self.clients[0].snapshot()
        assert isinstance(snapshot, Snapshot)
        self.clients.append(Session.restore(snapshot, PARAMS))
        self.events.append([])
        self.sent.append([])
        self.got.append([])

    # ------------------------------------------------------------- operations

    def connect(self, i: int) -> None:
        client = self.clients[i]
        if client.connection is not None or client.state is SessionState.ENDED:
            return
        wire = Wire(client.connect(self.now), Connection.server(PARAMS, self.now))
        self.wires.append(wire)
        self.flush()

    def flush(self) -> None:
        for wire in self.wires:
            data = wire.client.data_to_send()
            if not wire.abandoned:
                wire.up += data
            data = wire.server.data_to_send()
            if not wire.down_lost:
                wire.down += data
            if wire.client.closed and not wire.abandoned:
                # The client's end is gone: what it had not delivered is lost with the
                # path (a stale HELLO arriving later is out of this model, see notes).
                wire.abandoned = True
                wire.up.clear()
        for i, client in enumerate(self.clients):
            self.events[i] += client.events()

    def deliver(self, w: int, up: int, down: int) -> None:
        """Move up to *up* and *down* bytes on the wire *w* from the newest."""
        if not self.wires:
            return
        wire = self.wires[-1 - w % len(self.wires)]
        if up and wire.up and not wire.server.closed:
            chunk = bytes(wire.up[:up])
            del wire.up[:up]
            wire.server.receive_data(chunk, self.now)
            conn = wire.server
            if conn.hello is not None and conn.session is None and not conn.closed:
                self.registry.handle_hello(conn, self.now, "alice")
            if conn.session is not None:
                self.registry.collect(conn.session)
        if down and wire.down and not wire.client.closed:
            chunk = bytes(wire.down[:down])
            del wire.down[:down]
            wire.client.receive_data(chunk, self.now)
        self.flush()

    def lose_down(self, w: int) -> None:
        """Everything the server sends on this wire from now on is lost (a lost WELCOME)."""
        if self.wires:
            wire = self.wires[-1 - w % len(self.wires)]
            wire.down_lost = True
            wire.down.clear()

    def abandon(self, w: int) -> None:
        """The client's end of the wire dies (its network changed); the server's end stays
        open, half-open, until its idle timeout."""
        if self.wires:
            wire = self.wires[-1 - w % len(self.wires)]
            wire.client.connection_lost(self.now)
            self.flush()

    def lost_welcome(self, i: int) -> None:
        """Client *i* resumes on a new wire whose HELLO arrives and whose WELCOME is lost;
        the client gives up on it (handshake timeout) while the server holds it open."""
        self.connect(i)
        wire = self.wires[-1]
        if wire.client is not self.clients[i].connection:
            return
        self.lose_down(0)
        self.deliver(0, len(wire.up), 0)
        self.abandon(0)

    def tick(self, seconds: float) -> None:
        now = self.clock.advance(seconds)
        for client in self.clients:
            deadline = client.next_deadline()
            if deadline is not None and now >= deadline:
                client.handle_timer(now)
        for wire in self.wires:
            if wire.server.session is None and not wire.server.closed:
                wire.server.handle_timer(now)
        self.registry.tick(now)
        self.flush()

    def send(self, i: int) -> None:
        client = self.clients[i]
        payload = b"c%d:%d" % (i, len(self.sent[i]))
        if client.state is SessionState.ATTACHED and client.can_send(len(payload)):
            client.send(payload, self.now)
            self.sent[i].append(payload)
            self.flush()

    def server_send(self) -> None:
        server = self.registry.sessions.get(self.session_id or b"")
        payload = b"s:%d" % len(self.server_sent)
        if server is not None and server.can_send(len(payload)):
            server.send(payload, self.now)
            self.server_sent.append(payload)
            self.flush()

    def take(self) -> None:
        for i, client in enumerate(self.clients):
            self.got[i] += client.take_messages(self.now)
        server = self.registry.sessions.get(self.session_id or b"")
        if server is not None:
            self.server_got += server.take_messages(self.now)
        self.flush()

    # ------------------------------------------------------------- settling

    def quiet(self) -> None:
        """Move every byte still in flight on live wires until nothing moves."""
        for _ in range(200):
            moved = False
            for w, wire in enumerate(self.wires):
                if (wire.up and not wire.server.closed) or (wire.down and not wire.client.closed):
                    self.deliver(len(self.wires) - 1 - w, len(wire.up), len(wire.down))
                    moved = True
            if not moved:
                return
        raise AssertionError("the wires never went quiet")

    def settle(self, rounds: int = 1) -> None:
        """Faults over: every client still holding its session reconnects if detached, and
        bytes flow until quiet, *rounds* times."""
        for _ in range(rounds):
            for i in range(len(self.clients)):
                self.connect(i)
                self.quiet()
                self.take()
                self.quiet()
            self.tick(1.0)  # idle timeouts (3 s) fire within a few rounds
            self.quiet()

    def codes(self, i: int) -> list[Any]:
        """Every code client *i* was told: closes, endings and refused resumes."""
        found: list[Any] = []
        for event in self.events[i]:
            if isinstance(event, TransportLost | SessionEnded):
                found.append(event.code)
            elif isinstance(event, SessionLostEvent):
                found.append(event.reason)
        return found


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.integers(0, 1)),
        st.tuples(st.just("lost_welcome"), st.integers(0, 1)),
        st.tuples(st.just("deliver"), st.integers(0, 7), st.integers(0, 300), st.integers(0, 300)),
        st.tuples(st.just("lose_down"), st.integers(0, 7)),
        st.tuples(st.just("abandon"), st.integers(0, 7)),
        st.tuples(st.just("tick"), st.sampled_from([0.05, 0.3, 0.6, 1.5, 4.0])),
        st.tuples(st.just("send"), st.integers(0, 1)),
        st.tuples(st.just("server_send")),
        st.tuples(st.just("take")),
    ),
    max_size=60,
)


def run(world: World, ops: list[tuple[Any, ...]]) -> None:
    n = len(world.clients)
    for op in ops:
        name, *args = op
        if name in ("connect", "send", "lost_welcome"):
            getattr(world, name)(args[0] % n)
        else:
            getattr(world, name)(*args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_one_client_with_lost_welcomes_and_half_open_transports_is_never_refused(
    ops: list[tuple[Any, ...]],
) -> None:
    world = World()
    run(world, ops)
    world.settle(rounds=6)
    refused = [
        code
        for code in world.codes(0)
        if code not in (CloseCode.TRANSPORT_LOST, CloseCode.HANDSHAKE_TIMEOUT)
        and code is not CloseCode.IDLE_TIMEOUT
    ]
    assert not refused, f"one client was refused: {refused}"
    client = world.clients[0]
    assert client.state is SessionState.ATTACHED
    assert client.id == world.session_id
    assert list(world.registry.sessions) == [world.session_id]
    assert not world.registry.gone
    # Exactly once, in order, both ways, once the last sends are acknowledged.
    for _ in range(5):
        world.take()
        world.settle()
    assert world.got[0] == world.server_sent
    assert world.server_got == world.sent[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=OPS, after=OPS)
def test_two_real_holders_are_always_detected(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    world = World()
    run(world, before)
    world.settle()
    if world.clients[0].snapshot() is None:
        return  # nothing to copy (cannot happen with one client, see the test above)
    world.fork()
    run(world, after)
    world.settle(rounds=8)
    holding = [
        i
        for i, client in enumerate(world.clients)
        if client.state is not SessionState.ENDED and client.id == world.session_id
    ]
    assert len(holding) <= 1, f"both holders still hold the session: {world.codes(0)}"
    for i in range(len(world.clients)):
        if i not in holding:
            told = [code for code in world.codes(i) if code in TOLD]
            assert told, f"holder {i} stopped without being told why: {world.codes(i)}"
    never = {CloseCode.SESSION_CONTESTED}
    assert not never & {code for i in range(2) for code in world.codes(i)}
