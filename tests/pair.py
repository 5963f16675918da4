"""An in-memory client/server pair of protocol cores, with a wire that can be cut.

No event loop and no sockets: bytes move when the test calls :meth:`Pair.pump`,
and time moves when it calls :meth:`Clock.advance`. The server side plays a
minimal daemon: it keeps sessions by ID and answers HELLO with ``accept()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sessiond_client.protocol import (
    CloseCode,
    Connection,
    Event,
    Params,
    Role,
    Session,
    SessionEnded,
)


@dataclass
class Clock:
    """A clock the test steps by hand."""

    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Registry:
    """The daemon's part: sessions by ID, and what happened to the ones that are gone."""

    params: Params
    sessions: dict[bytes, Session] = field(default_factory=dict)
    gone: dict[bytes, CloseCode] = field(default_factory=dict)
    events: list[tuple[bytes, Event]] = field(default_factory=list)

    def handle_hello(self, conn: Connection, now: float, identity: Any) -> Session | None:
        hello = conn.hello
        assert hello is not None
        existing = None
        missing = CloseCode.UNKNOWN_SESSION
        if hello.resume is not None:
            existing = self.sessions.get(hello.resume.session_id)
            missing = self.gone.get(hello.resume.session_id, CloseCode.UNKNOWN_SESSION)
        session = conn.accept(now, identity, existing, missing)
        if existing is not None:
            self.collect(existing)
        if session is not None:
            assert session.id is not None
            self.sessions[session.id] = session
            self.collect(session)
        return session

    def collect(self, session: Session) -> list[Event]:
        """Read a session's events; forget it once it has ended."""
        events = session.events()
        for event in events:
            self.events.append((session.id or b"", event))
            if isinstance(event, SessionEnded) and session.id in self.sessions:
                del self.sessions[session.id]
                self.gone[session.id] = event.code
        return events

    def tick(self, now: float) -> None:
        for session in list(self.sessions.values()):
            deadline = session.next_deadline()
            if deadline is not None and now >= deadline:
                session.handle_timer(now)
            self.collect(session)


class Pair:
    """A client session and a server registry joined by one in-memory transport at a time."""

    def __init__(
        self,
        client_params: Params | None = None,
        server_params: Params | None = None,
        identity: Any = "alice",
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.client = Session(Role.CLIENT, client_params or Params())
        self.registry = Registry(server_params or Params())
        self.identity = identity
        self.client_conn: Connection | None = None
        self.server_conn: Connection | None = None
        self.client_events: list[Event] = []
        #: bytes written by each side and not yet delivered
        self.to_server = bytearray()
        self.to_client = bytearray()

    @property
    def server(self) -> Session:
        """The server-side session of the client's current session ID."""
        assert self.client.id is not None
        return self.registry.sessions[self.client.id]

    def connect(self, credentials: Any = None) -> None:
        """Open a new transport: the client sends HELLO; call :meth:`pump` to finish."""
        now = self.clock.now
        self.client_conn = self.client.connect(now, credentials)
        self.server_conn = Connection.server(self.registry.params, now)
        self.to_server.clear()
        self.to_client.clear()

    def flush(self) -> None:
        """Collect what both ends want to write onto the wire."""
        if self.client_conn is not None:
            self.to_server += self.client_conn.data_to_send()
        if self.server_conn is not None:
            self.to_client += self.server_conn.data_to_send()
        self.client_events += self.client.events()

    def deliver(self, to_server: int | None = None, to_client: int | None = None) -> None:
        """Deliver up to the given number of pending bytes each way (all if None)."""
        now = self.clock.now
        n = len(self.to_server) if to_server is None else min(to_server, len(self.to_server))
        if n and self.server_conn is not None:
            chunk = bytes(self.to_server[:n])
            del self.to_server[:n]
            self.server_conn.receive_data(chunk, now)
            self._server_after_receive()
        n = len(self.to_client) if to_client is None else min(to_client, len(self.to_client))
        if n and self.client_conn is not None:
            chunk = bytes(self.to_client[:n])
            del self.to_client[:n]
            self.client_conn.receive_data(chunk, now)

    def _server_after_receive(self) -> None:
        conn = self.server_conn
        assert conn is not None
        if conn.hello is not None and conn.session is None and not conn.closed:
            self.registry.handle_hello(conn, self.clock.now, self.identity)
        if conn.session is not None:
            self.registry.collect(conn.session)

    def pump(self, rounds: int = 50) -> None:
        """Move bytes both ways until neither side has anything more to say."""
        for _ in range(rounds):
            self.flush()
            if not self.to_server and not self.to_client:
                return
            self.deliver()
        raise AssertionError("pump did not settle")

    def cut(self, to_server: int = 0, to_client: int = 0) -> None:
        """Kill the transport after delivering only the given numbers of pending bytes."""
        self.flush()
        self.deliver(to_server, to_client)
        now = self.clock.now
        if self.client_conn is not None:
            self.client_conn.connection_lost(now)
        if self.server_conn is not None:
            session = self.server_conn.session
            self.server_conn.connection_lost(now)
            if session is not None:
                self.registry.collect(session)
        self.client_conn = None
        self.server_conn = None
        self.to_server.clear()
        self.to_client.clear()
        self.client_events += self.client.events()

    def tick(self, seconds: float) -> None:
        """Advance the clock and run every timer that is due, on both sides."""
        now = self.clock.advance(seconds)
        deadline = self.client.next_deadline()
        if deadline is not None and now >= deadline:
            self.client.handle_timer(now)
        if self.server_conn is not None and self.server_conn.session is None:
            self.server_conn.handle_timer(now)
        self.registry.tick(now)
        self.flush()

    def take_client(self) -> list[bytes]:
        return self.client.take_messages(self.clock.now)

    def take_server(self) -> list[bytes]:
        return self.server.take_messages(self.clock.now)
