"""The session state machine, for both roles (protocol.md §3-§11).

Two objects, neither of which does I/O or reads a clock:

* :class:`Session` is one session: sequence numbers, the replay buffer of
  encoded DATA frames, the inbox, the windows, the credential and the expiry
  deadline. It outlives transports.
* :class:`Connection` is one transport: its decoder, its output, its
  handshake and its heartbeats. At most one is attached to a session.

An adapter feeds a connection with ``receive_data(data, now)``, writes
``data_to_send()``, reads ``session.events()`` and ``take_messages(now)``,
and calls ``handle_timer(now)`` at ``next_deadline()``. A client starts with
``Session(Role.CLIENT).connect(now)``; a server with ``Connection.server(params, now)``,
then ``accept()`` or ``reject()`` once ``hello`` is set.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from itertools import islice, repeat
from typing import Any, TypeVar, cast

from msgpack import UnpackException

from . import codec
from .codec import DATA_OVERHEAD, FEED_PIECE, U64_MAX, FrameDecoder, pieces
from .credentials import (
    digest,
    matches,
    new_credential,
    new_salt,
    new_session_id,
    rotated_credential,
)
from .errors import (
    CloseCode,
    InvalidState,
    PayloadTooLarge,
    RemoteProtocolError,
    WindowFull,
    is_terminal,
    welcome_reason,
)
from .events import (
    Event,
    GoawayReceived,
    SessionEnded,
    SessionLostEvent,
    SessionResumed,
    SessionStarted,
    TransportLost,
)
from .frames import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Ack,
    Close,
    Data,
    Goaway,
    Hello,
    Ping,
    Pong,
    Resume,
    Welcome,
    parse_frame,
)
from .params import Params
from .snapshot import ServerSnapshot, Snapshot

#: How many rotated-out credentials a server remembers to recognise their reuse.
RETIRED_CREDENTIALS = 4


class Role(enum.Enum):
    """Which end of the session this core plays."""

    CLIENT = "client"
    SERVER = "server"


class SessionState(enum.Enum):
    """Lifecycle of a :class:`Session` (protocol.md §13)."""

    CONNECTING = "connecting"  # client only: no session established yet
    ATTACHED = "attached"
    DETACHED = "detached"
    ENDED = "ended"


class ConnectionState(enum.Enum):
    """Lifecycle of a :class:`Connection` (protocol.md §13)."""

    AWAIT_HELLO = "await-hello"  # server
    HELLO_RECEIVED = "hello-received"  # server: waiting for accept() or reject()
    AWAIT_WELCOME = "await-welcome"  # client
    OPEN = "open"
    CLOSED = "closed"


# Module constants: an Enum member looked up on its class costs ~75 ns on CPython 3.11.
_OPEN = ConnectionState.OPEN
_CLOSED = ConnectionState.CLOSED
_CONNECTING = SessionState.CONNECTING
_ATTACHED = SessionState.ATTACHED
_DETACHED = SessionState.DETACHED
_ENDED = SessionState.ENDED
_DATA = codec.DATA
_ACK = codec.ACK
#: The largest ACK frame as encoded with the fewest bytes: fixarray, fixint 4, uint64.
_ACK_SIZE = 11
#: An ACK as our encoder writes it: fixarray of 2, the type, the uint64 marker.
_ACK_LEAD = bytes((0x92, codec.ACK, 0xCF))
#: The type of an ACK marked by _receive_piece's decoding of a short piece (never on the wire).
_ACK_MARK = object()
#: Pieces shorter than this are measured frame by frame, never placed (see
#: FrameDecoder.place): placing costs about as much as measuring seven 64-byte DATA
#: frames (callgrind), and a ping-pong's reads hold one.
_PLACE_MIN = 1024
_pack_data_head = codec.DATA_HEAD.pack
_DATA_LEAD = codec.DATA_LEAD
_BIN32 = codec.BIN32
#: From this many messages on, send_many builds headers in bulk (below, its set-up costs more).
_BULK = 8
_HANDSHAKING = frozenset(
    {ConnectionState.AWAIT_HELLO, ConnectionState.HELLO_RECEIVED, ConnectionState.AWAIT_WELCOME}
)


_EXHAUSTED = "sequence numbers exhausted: the session must end (protocol.md §5.1)"


def _stamp(now: float) -> int:
    """A PING stamp: the clock in milliseconds (opaque to the peer, protocol.md §7.2)."""
    return int(now * 1000) & U64_MAX


_N = TypeVar("_N", int, float)
_SHARED: dict[tuple[type, float], Any] = {}


def _shared(value: _N) -> _N:
    """The one object for *value*: sessions mostly negotiate the same few terms, and each
    float or large int kept per session costs 24-28 bytes (bounded: 1,024 values)."""
    key = (value.__class__, value)
    found = _SHARED.get(key)
    if found is not None:
        return cast(_N, found)
    if len(_SHARED) < 1024:
        _SHARED[key] = value
    return value


def _no_push(payload: bytes) -> None:
    """The fast path's push while there is no fast path (never called)."""
    raise AssertionError("no session takes DATA here")


def _inbox_of(session: Session) -> list[bytes]:
    """*session*'s inbox, made now if it is None (see ``_receive_piece``)."""
    inbox = session._inbox
    if inbox is None:
        session._inbox = inbox = []
    return inbox


#: The fast path's inbox while there is no fast path (never appended to: see _no_push).
_NO_INBOX: list[bytes] = []


def _ms(seconds: float) -> int:
    return max(0, min(0xFFFFFFFF, round(seconds * 1000)))


class Session:
    """One session's state, shared by both roles and kept across transports.

    Application side: :meth:`can_send`, :meth:`send`, :meth:`take_messages`,
    :meth:`close`; then :meth:`events`. Messages sent while detached wait in the
    replay buffer and go out, in order, after the next resume.
    """

    __slots__ = (
        "_ack_deadline",
        "_ack_pending_bytes",
        "_ack_sent",
        "_acked",
        "_confirmed",
        "_consumed",
        "_credential",
        "_credential_digest",
        "_events",
        "_expires_at",
        "_heartbeat",
        "_idle_timeout",
        "_inbox",
        "_inbox_bytes",
        "_lifetime",
        "_max_payload",
        "_next_seq",
        "_previous_digest",
        "_received",
        "_replay",
        "_retired",
        "_rotation_salt",
        "_send_window_bytes",
        "_send_window_messages",
        "_unacked_bytes",
        "connection",
        "end_code",
        "id",
        "identity",
        "params",
        "role",
        "state",
    )

    def __init__(self, role: Role, params: Params | None = None) -> None:
        self.role = role
        self.params = params or Params()
        self.id: bytes | None = None
        self.identity: Any = None
        self.state = _CONNECTING if role is Role.CLIENT else _DETACHED
        self.connection: Connection | None = None
        self.end_code: CloseCode | None = None
        self._credential: bytes | None = None  # client: the current credential
        self._credential_digest: bytes | None = None  # server: digest of the current one
        self._previous_digest: bytes | None = None  # server: the one presented to get it
        self._retired: tuple[bytes, ...] = ()  # server: recently rotated-out digests
        self._confirmed = False  # server: the client proved it holds the current one
        # server: the salt the current credential was derived with from the previous
        # one, kept while it is unconfirmed (None once confirmed, and for a first one)
        self._rotation_salt: bytes | None = None
        self._events: list[Event] | None = None  # made on first use: most sessions idle
        self._expires_at: float | None = None
        self._heartbeat = self.params.heartbeat_interval
        self._idle_timeout = self._heartbeat * self.params.idle_timeout_factor
        self._lifetime = self.params.detached_lifetime
        self._reset_streams()

    def _reset_streams(self) -> None:
        self._next_seq = 1
        self._acked = 0
        # The replay buffer (payloads of seq acked+1 .. next_seq-1) and the inbox are
        # lists, appended to and cut from the front in bulk, and None while empty: idle
        # sessions are most sessions, and an empty list costs 56 bytes (a deque 760).
        self._replay: list[bytes] | None = None
        self._unacked_bytes = 0
        self._received = 0
        self._consumed = 0
        self._ack_sent = 0
        self._ack_pending_bytes = 0
        self._ack_deadline: float | None = None
        self._inbox: list[bytes] | None = None
        self._inbox_bytes = 0
        self._send_window_messages = 0
        self._send_window_bytes = 0
        self._max_payload = 0

    # ---------------------------------------------------------------- queries

    @property
    def messages_waiting(self) -> int:
        """Messages received and not yet taken with :meth:`take_messages`."""
        return len(self._inbox) if self._inbox is not None else 0

    @property
    def held_bytes(self) -> int:
        """Payload bytes held: sent and unacknowledged (replay buffer) plus received and
        not yet taken (inbox)."""
        return self._unacked_bytes + self._inbox_bytes

    @property
    def unacked_count(self) -> int:
        """Messages sent (or queued while detached) that the peer has not acknowledged."""
        return self._next_seq - 1 - self._acked

    @property
    def max_payload(self) -> int:
        """Largest payload the peer accepts (0 before the first handshake)."""
        return self._max_payload

    @property
    def buffered_bytes(self) -> tuple[int, int]:
        """``(payload bytes kept for replay, payload bytes received and not yet taken)``."""
        return self._unacked_bytes, self._inbox_bytes

    @property
    def sequence_numbers(self) -> tuple[int, int, int, int]:
        """``(last sent, acknowledged by peer, last received, consumed)``."""
        return self._next_seq - 1, self._acked, self._received, self._consumed

    def unacked_messages(self) -> list[bytes]:
        """Payloads sent but not acknowledged, oldest first."""
        return list(self._replay or ())

    def snapshot(self) -> Snapshot | None:
        """Client: the state to persist to resume after a restart of this process;
        None before the first session is established and once it has ended."""
        if self.id is None or self._credential is None or self.state is _ENDED:
            return None
        return Snapshot(
            session_id=self.id,
            credential=self._credential,
            next_seq=self._next_seq,
            acked=self._acked,
            consumed=self._consumed,
            window_messages=self._send_window_messages,
            window_bytes=self._send_window_bytes,
            max_payload=self._max_payload,
            unacked=tuple(self._replay or ()),
        )

    @classmethod
    def restore(cls, snapshot: Snapshot, params: Params | None = None) -> Session:
        """Client: a detached session from :meth:`snapshot`; ``connect()`` resumes it.

        Messages received but not consumed before the snapshot are not in it: the
        resume asks the server to replay from ``consumed + 1``.
        """
        session = cls(Role.CLIENT, params)
        session.id = snapshot.session_id
        session._credential = snapshot.credential
        session._next_seq = snapshot.next_seq
        session._acked = snapshot.acked
        session._replay = list(snapshot.unacked) or None
        session._unacked_bytes = sum(map(len, snapshot.unacked))
        session._received = session._consumed = session._ack_sent = snapshot.consumed
        session._send_window_messages = snapshot.window_messages
        session._send_window_bytes = snapshot.window_bytes
        session._max_payload = snapshot.max_payload
        session.state = _DETACHED
        return session

    def server_snapshot(self) -> ServerSnapshot:
        """Server: this session's state, for a shared session store (a daemon's other
        processes resume it with :meth:`restore_server`)."""
        if self.role is not Role.SERVER or self.id is None or self._credential_digest is None:
            raise InvalidState("server_snapshot() of a session not opened by a server")
        return ServerSnapshot(
            session_id=self.id,
            identity=self.identity,
            credential_digest=self._credential_digest,
            previous_digest=self._previous_digest,
            retired=self._retired,
            confirmed=self._confirmed,
            heartbeat=self._heartbeat,
            idle_timeout=self._idle_timeout,
            lifetime=self._lifetime,
            window_messages=self._send_window_messages,
            window_bytes=self._send_window_bytes,
            max_payload=self._max_payload,
            next_seq=self._next_seq,
            acked=self._acked,
            consumed=self._consumed,
            unacked=tuple(self._replay or ()),
            rotation_salt=self._rotation_salt,
        )

    @classmethod
    def restore_server(
        cls, snapshot: ServerSnapshot, params: Params | None = None, now: float | None = None
    ) -> Session:
        """Server: a detached session from :meth:`server_snapshot`, to hand to
        ``Connection.accept``. It has received what was consumed (the client replays
        the rest); with *now*, it expires ``lifetime`` after it unless resumed."""
        session = cls(Role.SERVER, params)
        session.id = snapshot.session_id
        session.identity = snapshot.identity
        session._credential_digest = snapshot.credential_digest
        session._previous_digest = snapshot.previous_digest
        session._retired = snapshot.retired
        session._confirmed = snapshot.confirmed
        session._rotation_salt = snapshot.rotation_salt
        session._heartbeat = _shared(snapshot.heartbeat)
        session._idle_timeout = _shared(snapshot.idle_timeout)
        session._lifetime = _shared(snapshot.lifetime)
        session._send_window_messages = snapshot.window_messages
        session._send_window_bytes = snapshot.window_bytes
        session._max_payload = snapshot.max_payload
        session._next_seq = snapshot.next_seq
        session._acked = snapshot.acked
        session._replay = list(snapshot.unacked) or None
        session._unacked_bytes = sum(map(len, snapshot.unacked))
        session._received = session._consumed = session._ack_sent = snapshot.consumed
        if now is not None:
            session._expires_at = now + snapshot.lifetime
        return session

    def events(self) -> list[Event]:
        """Return and clear the events reported since the last call."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    @property
    def has_events(self) -> bool:
        """True when :meth:`events` has something to return (a test without taking them)."""
        return self._events is not None

    def _emit(self, event: Event) -> None:
        if self._events is None:
            self._events = []
        self._events.append(event)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (attached connection included)."""
        deadline = self._expires_at
        if self.connection is not None:
            conn_deadline = self.connection.next_deadline()
            if conn_deadline is not None and (deadline is None or conn_deadline < deadline):
                deadline = conn_deadline
        return deadline

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at *now*: the connection's timers and the session's expiry."""
        if self.connection is not None:
            self.connection.handle_timer(now)
        if self._expires_at is not None and now >= self._expires_at:
            self._end(CloseCode.SESSION_EXPIRED, "detached longer than its lifetime", False, now)

    # ------------------------------------------------------- application side

    def can_send(self, size: int) -> bool:
        """True when a payload of *size* bytes fits in the peer's window now."""
        if self.state is _ENDED or self.state is _CONNECTING:
            return False
        in_flight = self._next_seq - 1 - self._acked
        if in_flight == 0:
            return True
        return (
            in_flight < self._send_window_messages
            and self._unacked_bytes + size <= self._send_window_bytes
        )

    def send(self, payload: bytes, now: float) -> int:
        """Queue *payload* as the next message and return its sequence number.

        Raises :class:`WindowFull` when :meth:`can_send` is false (wait for an
        ACK, signalled by ``can_send`` becoming true after ``receive_data``),
        :class:`PayloadTooLarge` or :class:`InvalidState`. Then call
        ``data_to_send()`` on the attached connection.
        """
        state = self.state
        if state is _ENDED or state is _CONNECTING:
            raise InvalidState(f"cannot send: session is {state.value}")
        size = len(payload)
        if size > self._max_payload:
            raise PayloadTooLarge(f"{size} bytes > {self._max_payload}")
        seq = self._next_seq
        if seq > U64_MAX:
            raise InvalidState(_EXHAUSTED)
        in_flight = seq - 1 - self._acked
        unacked = self._unacked_bytes + size
        if in_flight and (
            in_flight >= self._send_window_messages or unacked > self._send_window_bytes
        ):
            raise WindowFull("the peer's window is full")
        self._next_seq = seq + 1
        replay = self._replay
        if replay is None:
            self._replay = [payload]
        else:
            replay.append(payload)
        self._unacked_bytes = unacked
        conn = self.connection
        if conn is not None and conn._streaming:
            # A DATA frame is its header then the payload; writing them as two
            # pieces saves a copy (data_to_send joins them), see codec.encode_data.
            out = conn._out
            if out is None:
                conn._out = out = []
            out.append(_pack_data_head(_DATA_LEAD, seq, _BIN32, size))
            out.append(payload)
            conn._last_send = now
            if self._ack_deadline is not None:
                self._ack_with_data(conn, now)
        return seq

    def send_many(self, payloads: Iterable[bytes], now: float) -> int:
        """Send payloads in order while the window allows; return how many were sent.

        The same rules as :meth:`send`, at a lower cost per message: the caller
        keeps the ones not sent and offers them again once ``can_send`` is true.
        Raises :class:`PayloadTooLarge` only if the first payload is too large.
        """
        state = self.state
        if state is _ENDED or state is _CONNECTING:
            raise InvalidState(f"cannot send: session is {state.value}")
        if not isinstance(payloads, list):
            payloads = list(payloads)
        max_payload = self._max_payload
        window_bytes = self._send_window_bytes
        first = seq = self._next_seq
        if seq > U64_MAX:
            raise InvalidState(_EXHAUSTED)
        acked = self._acked
        # the window's last sequence number, and never one above 2**64-1 (protocol.md §5.1)
        # (conditionals, not min(): a builtin call per batch is a fifth of a small batch)
        last_seq = acked + self._send_window_messages
        if last_seq > U64_MAX:  # noqa: PLR1730 (no builtin call)
            last_seq = U64_MAX
        unacked = self._unacked_bytes
        frames: list[bytes] = []
        rest = payloads
        count = last_seq - seq + 1
        if count > len(payloads):  # noqa: PLR1730 (no builtin call)
            count = len(payloads)
        if count >= _BULK:
            batch = payloads if count == len(payloads) else payloads[:count]
            sizes = list(map(len, batch))
            total = sum(sizes)
        if count >= _BULK and unacked + total <= window_bytes and max(sizes) <= max_payload:
            # All that the message window takes fit the byte window: every header made
            # in one C-level map, headers and payloads interleaved by slice assignment
            # (about half the cost per message of the checked loop below).
            frames = [b""] * (2 * count)
            frames[0::2] = list(
                map(
                    _pack_data_head,
                    repeat(_DATA_LEAD, count),
                    range(seq, seq + count),
                    repeat(_BIN32),
                    sizes,
                )
            )
            frames[1::2] = batch
            seq += count
            unacked += total
            rest = []
        write = frames.append
        for payload in rest:
            size = len(payload)
            if size > max_payload or seq > last_seq or unacked + size > window_bytes:
                if size > max_payload:
                    if seq > first:
                        break
                    raise PayloadTooLarge(f"{size} bytes > {max_payload}")
                if seq - 1 - acked:
                    break  # the window is full; with nothing in flight, one always fits
            write(_pack_data_head(_DATA_LEAD, seq, _BIN32, size))
            write(payload)
            seq += 1
            unacked += size
        if seq > first:
            accepted = payloads[: seq - first]  # a copy: the caller may reuse its list
            self._next_seq = seq
            self._unacked_bytes = unacked
            if self._replay is None:
                self._replay = accepted
            else:
                self._replay.extend(accepted)
            conn = self.connection
            if conn is not None and conn._streaming:
                if conn._out is None:
                    conn._out = frames
                else:
                    conn._out.extend(frames)
                conn._last_send = now
                if self._ack_deadline is not None:
                    self._ack_with_data(conn, now)
        return seq - first

    def take_messages(self, now: float, limit: int | None = None) -> list[bytes]:
        """Take up to *limit* received messages, in order; this is what frees window.

        Acknowledgements are coalesced (protocol.md §5): then call ``data_to_send()``.
        """
        inbox = self._inbox
        if inbox is None:
            return []
        count = len(inbox) if limit is None else min(limit, len(inbox))
        if not count:
            return []
        if count == len(inbox):
            taken = inbox
            self._inbox = None
            size = self._inbox_bytes
        else:
            taken = inbox[:count]
            del inbox[:count]
            size = sum(map(len, taken))
        self._inbox_bytes -= size
        self._consumed += count
        self._ack_pending_bytes += size
        self._schedule_ack(now)
        return taken

    def take_unsettled(self, now: float, limit: int | None = None) -> list[bytes]:
        """Take messages like :meth:`take_messages`, without counting them as consumed
        until :meth:`settle` says the application is done with them.

        For a server whose consumed position is durable (a shared session store): an
        ACK never covers a message that was taken but not settled, so the peer keeps
        it for replay (a restored session asks for it again) and it holds the window.
        Their bytes count towards the next ACK's coalescing at once (protocol.md §5.4).
        """
        inbox = self._inbox
        if inbox is None:
            return []
        if limit is None or limit >= len(inbox):
            taken = inbox
            self._inbox = None
            size = self._inbox_bytes
        else:
            taken = inbox[:limit]
            del inbox[:limit]
            size = sum(map(len, taken))
        self._inbox_bytes -= size
        self._ack_pending_bytes += size
        return taken

    def settle(self, now: float, count: int) -> int:
        """Count the next *count* messages taken with :meth:`take_unsettled` as consumed
        (never more than were taken); return how many. The ACK is scheduled as by
        :meth:`take_messages`: then call ``data_to_send()``."""
        unsettled = self._received - len(self._inbox or ()) - self._consumed
        count = min(count, unsettled)
        if count <= 0:
            return 0
        self._consumed += count
        self._schedule_ack(now)
        return count

    def drop_buffers(self) -> None:
        """An ended session: let go of the replay buffer and the inbox now.

        Nothing is lost that was promised: no resume will ask for a replay, and the
        inbox holds only messages that were never acknowledged (an ACK covers what was
        taken, protocol.md §5), which the peer reports as undelivered. For an owner that
        keeps an ended session object around for a while (a server until its handler
        is gone); a client keeps them for ``SessionLost.undelivered`` and never calls
        this. The sequence numbers stay as they were. Raises :class:`InvalidState`
        while the session has not ended.
        """
        if self.state is not _ENDED:
            raise InvalidState("only an ended session drops its buffers")
        self._replay = None
        self._unacked_bytes = 0
        self._inbox = None
        self._inbox_bytes = 0

    def close(self, now: float, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session for good with a terminal *code*; the peer is told if attached."""
        if not is_terminal(code):
            raise InvalidState(f"{code.name} does not end a session")
        if self.state is _ENDED:
            return
        conn = self.connection
        if conn is not None and conn.state is not _CLOSED:
            conn.close(now, code, reason)
        else:
            self._end(code, reason, False, now)

    # --------------------------------------------------------- client side

    def connect(self, now: float, credentials: Any = None) -> Connection:
        """Client: start a transport; HELLO (resuming if a session exists) is queued.

        Write ``connection.data_to_send()`` once the transport is up.
        """
        if self.role is not Role.CLIENT:
            raise InvalidState("only a client connects")
        if self.state is _ENDED:
            raise InvalidState("session ended")
        if self.connection is not None:
            raise InvalidState("a connection is attached; report connection_lost first")
        conn = Connection(Role.CLIENT, self.params, now)
        conn.session = self
        self.connection = conn
        p = self.params
        resume = None
        if self.id is not None and self._credential is not None:
            resume = Resume(self.id, self._credential, self._received)
        hello = Hello(
            versions=SUPPORTED_VERSIONS,
            heartbeat_ms=_ms(p.heartbeat_interval),
            window_messages=p.window_messages,
            window_bytes=p.window_bytes,
            max_frame=p.max_frame_size,
            lifetime_ms=_ms(p.detached_lifetime),
            credentials=credentials,
            resume=resume,
        )
        conn._queue(hello.encode())
        conn.state = ConnectionState.AWAIT_WELCOME
        return conn

    def _on_welcome(self, conn: Connection, welcome: Welcome, now: float) -> None:
        if welcome.version not in SUPPORTED_VERSIONS:
            raise RemoteProtocolError(
                f"server chose version {welcome.version}", CloseCode.UNSUPPORTED_VERSION
            )
        replaced: CloseCode | None = None
        if welcome.resumed:
            if self.id is None or welcome.session_id != self.id:
                raise RemoteProtocolError("WELCOME resumed a session we did not ask for")
        elif self.id is not None:
            replaced = _code_or(welcome.reason, CloseCode.UNKNOWN_SESSION)
            self._emit(
                SessionLostEvent(
                    self.id, replaced, tuple(self._inbox or ()), tuple(self.unacked_messages())
                )
            )
            self._reset_streams()
        self._apply_terms(welcome.heartbeat_ms, welcome.window_messages, welcome.window_bytes)
        self._idle_timeout = welcome.idle_timeout_ms / 1000
        self._lifetime = welcome.lifetime_ms / 1000
        self._max_payload = welcome.max_frame - DATA_OVERHEAD
        self.id = welcome.session_id
        self._credential = welcome.credential
        conn._open(now, self._heartbeat, self._idle_timeout)
        self._set_attached()
        if welcome.resumed:
            peer_received = welcome.received
            if not self._acked <= peer_received < self._next_seq:
                conn.close(now, CloseCode.REPLAY_UNAVAILABLE, "cannot replay from there")
                return
            replayed = self._start_stream(conn, peer_received)
            self._emit(SessionResumed(self.id, replayed))
        else:
            self._start_stream(conn, 0)
            self._emit(SessionStarted(self.id, replaced))

    # --------------------------------------------------------- server side

    def _open_new(
        self, conn: Connection, hello: Hello, identity: Any, now: float, replaces: CloseCode | None
    ) -> None:
        self.id = new_session_id()
        self.identity = identity
        credential = new_credential()
        self._credential_digest = digest(credential)
        self._previous_digest = None
        self._rotation_salt = None
        self._confirmed = False
        self._attach_server(conn, hello, credential, False, now, replaces)
        self._start_stream(conn, 0)
        self._emit(SessionStarted(self.id, replaces))

    def _check_resume(self, resume: Resume, identity: Any, now: float) -> CloseCode | None:
        """Server: why *resume* must not continue this session, or None (protocol.md §4, §10).

        Never SESSION_CONTESTED: a resume with the previous credential while the
        current one is unconfirmed is answered with that same credential again
        (:meth:`_resume`), so one client whose WELCOMEs keep being lost is never refused,
        and a second holder is caught by rotation (CREDENTIAL_REUSED) or told by
        TAKEN_OVER (§9.2).
        """
        if self.state is _ENDED:
            return welcome_reason(self.end_code or CloseCode.SESSION_REVOKED)
        presented = digest(resume.credential)
        if matches(presented, self._credential_digest):
            pass
        elif not self._confirmed and matches(presented, self._previous_digest):
            pass  # the WELCOME carrying the current credential may never have arrived
        elif matches(presented, self._previous_digest) or any(
            [matches(presented, retired) for retired in self._retired]
        ):
            self._end(CloseCode.CREDENTIAL_REUSED, "a rotated credential was presented", False, now)
            return CloseCode.CREDENTIAL_REUSED
        else:
            return CloseCode.CREDENTIAL_INVALID
        if identity != self.identity:
            return CloseCode.IDENTITY_MISMATCH
        if not self._acked <= resume.received < self._next_seq:
            return CloseCode.REPLAY_UNAVAILABLE
        return None

    def _resume(self, conn: Connection, hello: Hello, now: float) -> None:
        assert hello.resume is not None
        old = self.connection
        if old is not None:
            old.session = None
            self.connection = None
            old.close(now, CloseCode.TAKEN_OVER, "resumed on another transport")
        credential = self._next_credential(hello.resume.credential)
        self._attach_server(conn, hello, credential, True, now)
        # DATA waits until the client confirms this transport (protocol.md §4.4): a
        # copy of the session racing this resume must not be handed the same messages.
        replayed = self._start_stream(conn, hello.resume.received, confirmed=False)
        self._emit(SessionResumed(self.id or b"", replayed))

    def _next_credential(self, presented: bytes) -> bytes:
        """Server: the credential for the WELCOME of an accepted resume (protocol.md §10.4).

        The previous credential, presented while the current one is unconfirmed, gets
        the current one again: that client's last WELCOME was lost, and answering it
        with yet another credential would leave it presenting a retired one after the
        next loss. Otherwise the current credential is retired and a new one, derived
        from the presented one and a fresh salt, is issued.
        """
        salt = self._rotation_salt
        if salt is not None and not self._confirmed:
            again = rotated_credential(presented, salt)
            if matches(digest(again), self._credential_digest):
                return again
        self._rotation_salt = salt = new_salt()
        credential = rotated_credential(presented, salt)
        if self._credential_digest is not None:
            self._retired = (*self._retired[1 - RETIRED_CREDENTIALS :], self._credential_digest)
        self._previous_digest = digest(presented)
        self._credential_digest = digest(credential)
        self._confirmed = False
        return credential

    def _attach_server(
        self,
        conn: Connection,
        hello: Hello,
        credential: bytes,
        resumed: bool,
        now: float,
        replaces: CloseCode | None = None,
    ) -> None:
        p = self.params
        heartbeat = min(max(hello.heartbeat_ms / 1000, p.heartbeat_min), p.heartbeat_max)
        self._apply_terms(_ms(heartbeat), hello.window_messages, hello.window_bytes)
        self._idle_timeout = _shared(self._heartbeat * p.idle_timeout_factor)
        asked = hello.lifetime_ms / 1000 if hello.lifetime_ms else p.detached_lifetime
        self._lifetime = _shared(min(asked, p.detached_lifetime_max))
        self._max_payload = _shared(hello.max_frame - DATA_OVERHEAD)
        welcome = Welcome(
            version=PROTOCOL_VERSION,
            session_id=self.id or b"",
            credential=credential,
            resumed=resumed,
            received=self._received,
            heartbeat_ms=_ms(self._heartbeat),
            idle_timeout_ms=_ms(self._idle_timeout),
            window_messages=p.window_messages,
            window_bytes=p.window_bytes,
            max_frame=p.max_frame_size,
            lifetime_ms=_ms(self._lifetime),
            reason=None if replaces is None else int(replaces),
        )
        conn.session = self
        self.connection = conn
        conn._queue(welcome.encode())
        conn._open(now, self._heartbeat, self._idle_timeout)
        self._set_attached()

    # ------------------------------------------------------------ both roles

    def _apply_terms(self, heartbeat_ms: int, window_messages: int, window_bytes: int) -> None:
        p = self.params
        self._heartbeat = _shared(heartbeat_ms / 1000)
        self._send_window_messages = min(window_messages, p.replay_messages)
        self._send_window_bytes = min(window_bytes, p.replay_bytes)

    def _set_attached(self) -> None:
        self.state = _ATTACHED
        self._expires_at = None

    def _start_stream(self, conn: Connection, peer_received: int, confirmed: bool = True) -> int:
        """After WELCOME: acknowledge what we consumed, then replay what the peer lacks
        (at once, or once the transport is confirmed); return how many are replayed."""
        conn._queue(codec.encode_ack(self._consumed))
        self._ack_sent = self._consumed
        self._ack_pending_bytes = 0
        self._ack_deadline = None
        conn._replay_from = peer_received
        if confirmed:
            self._replay_to(conn)
        return self._next_seq - 1 - peer_received

    def _replay_to(self, conn: Connection) -> None:
        """Write the DATA frames after the peer's ``received`` that fit the window announced
        in this transport's handshake; new sends follow directly once all are written.

        Replayed frames count against the new window like new ones (protocol.md §6.4): a
        peer that announced a smaller window on this handshake would otherwise see more
        than it allows. What does not fit is written as ACKs open the window (`_on_ack`).
        """
        out = conn._out
        if out is None:
            conn._out = out = []
        acked = self._acked
        seq = conn._replay_from
        replay = self._replay or ()
        last_seq = acked + self._send_window_messages
        window_bytes = self._send_window_bytes
        in_flight = sum(map(len, islice(replay, seq - acked)))  # the peer has these
        for payload in islice(replay, seq - acked, None):
            size = len(payload)
            if seq >= last_seq or (seq > acked and in_flight + size > window_bytes):
                conn._replay_from = seq
                conn._replaying = True  # the rest once ACKs open the window
                return
            seq += 1
            in_flight += size
            out.append(_pack_data_head(_DATA_LEAD, seq, _BIN32, size))
            out.append(payload)
        conn._replay_from = seq
        conn._replaying = False
        conn._streaming = True

    def _schedule_ack(self, now: float) -> None:
        pending = self._consumed - self._ack_sent
        if not pending:
            return
        conn = self.connection
        if conn is None or conn.state is not _OPEN:
            return
        p = self.params
        # (x // 4 or 1 is max(1, x // 4) for x >= 0, without a builtin call per read)
        if pending >= (p.window_messages // 4 or 1) or self._ack_pending_bytes >= (
            p.window_bytes // 4 or 1
        ):
            self._send_ack(conn, now)
        elif self._ack_deadline is None:
            self._ack_deadline = now + p.ack_delay

    def _ack_with_data(self, conn: Connection, now: float) -> None:
        """A coalesced ACK rides with the DATA just queued (protocol.md §5.4) once it is
        half its ``ack_delay`` old, or once it covers a sixteenth of the window: the
        same write, and no timer wakes to send it alone (in a steady request/response
        both ways, none ever does; with many sessions, each read of a few dozen
        messages would otherwise leave its ACK to a timer of its own, and a write)."""
        deadline = self._ack_deadline
        if deadline is None:
            return
        p = self.params
        # (x // 16 or 1 is max(1, x // 16) for x >= 0, without a builtin call)
        if (
            now >= deadline - p.ack_delay / 2
            or self._consumed - self._ack_sent >= (p.window_messages // 16 or 1)
            or self._ack_pending_bytes >= (p.window_bytes // 16 or 1)
        ):
            self._send_ack(conn, now)

    def _send_ack(self, conn: Connection, now: float) -> None:
        conn._queue(codec.encode_ack(self._consumed))
        conn._last_send = now
        self._ack_sent = self._consumed
        self._ack_pending_bytes = 0
        self._ack_deadline = None

    def _on_data(self, seq: Any, payload: Any) -> None:
        if type(seq) is not int or type(payload) is not bytes:
            Data.parse((codec.DATA, seq, payload))  # raises the precise error
        if seq != self._received + 1:
            if not 0 <= seq <= U64_MAX:
                raise RemoteProtocolError("DATA seq must be a uint64")
            raise RemoteProtocolError(
                f"DATA seq {seq}, expected {self._received + 1}", CloseCode.SEQUENCE_ERROR
            )
        self._received = seq
        if self._inbox is None:
            self._inbox = [payload]
        else:
            self._inbox.append(payload)
        self._inbox_bytes += len(payload)
        self._check_window()

    def _count(self, received: int, added: int, check: bool = True) -> None:
        """Store what the fast path of ``Connection._receive_piece`` counted in locals:
        the last sequence number received and the bytes added to the inbox."""
        self._received = received
        self._inbox_bytes += added
        if check:
            self._check_window()

    def _check_window(self) -> None:
        p = self.params
        if self._received - self._ack_sent > p.window_messages or (
            self._inbox_bytes > p.window_bytes and self.messages_waiting > 1
        ):
            raise RemoteProtocolError("peer exceeded our window", CloseCode.FLOW_CONTROL_ERROR)

    def _on_ack(self, seq: Any) -> None:
        acked = self._acked
        if type(seq) is not int or not acked <= seq < self._next_seq:
            Ack.parse((codec.ACK, seq))  # raises the precise error for a malformed seq
            raise RemoteProtocolError(
                f"ACK {seq!r} outside [{acked}, {self._next_seq - 1}]", CloseCode.SEQUENCE_ERROR
            )
        if seq == acked:
            return
        replay = self._replay
        assert replay is not None  # acked < seq < next_seq: something is unacknowledged
        count = seq - acked
        if count == len(replay):
            released = sum(map(len, replay))
            self._replay = None
        else:
            released = sum(map(len, islice(replay, count)))
            del replay[:count]
        self._unacked_bytes -= released
        self._acked = seq
        conn = self.connection
        if conn is not None and conn._replaying:
            self._replay_to(conn)

    def _confirm_credential(self) -> None:
        self._confirmed = True
        self._rotation_salt = None  # the previous credential is now theft: never reissued

    def _detach(self, now: float, code: CloseCode, retry_after: float) -> None:
        self.connection = None
        self._emit(TransportLost(code, retry_after))
        if self.state is _CONNECTING:
            return
        if self.state is _ATTACHED:  # failed reconnects do not postpone expiry
            grace = self._idle_timeout if self.role is Role.CLIENT else 0.0
            self._expires_at = now + self._lifetime + grace
        self.state = _DETACHED

    def _end(self, code: CloseCode, reason: str, by_peer: bool, now: float) -> None:
        if self.state is _ENDED:
            return
        self.state = _ENDED
        self.end_code = code
        self._expires_at = None
        self._ack_deadline = None
        conn = self.connection
        self.connection = None
        if conn is not None:
            conn._close(code, reason, 0.0, True, now)
        self._emit(SessionEnded(self.id or b"", code, reason, by_peer))


def _code_or(value: int | None, default: CloseCode) -> CloseCode:
    try:
        return default if value is None else CloseCode(value)
    except ValueError:
        return default


class Connection:
    """One transport's protocol state: decoding, handshake, heartbeats, output.

    Feed it with :meth:`receive_data`, write :meth:`data_to_send`, call
    :meth:`handle_timer` at :meth:`next_deadline`, and :meth:`connection_lost`
    when the transport ends. When :attr:`closed` turns true, write the last
    bytes and close the transport.
    """

    __slots__ = (
        "_confirmed",
        "_decoder",
        "_goaway_stamp",
        "_heartbeat",
        "_idle_timeout",
        "_last_recv",
        "_last_send",
        "_opened_at",
        "_out",
        "_ping_sent_at",
        "_ping_stamp",
        "_replay_from",
        "_replaying",
        "_streaming",
        "_take_run",
        "close_code",
        "close_reason",
        "hello",
        "params",
        "peer_closed",
        "retry_after",
        "role",
        "rtt",
        "session",
        "state",
    )

    def __init__(self, role: Role, params: Params, now: float) -> None:
        self.role = role
        self.params = params
        self.state = ConnectionState.AWAIT_HELLO
        self.session: Session | None = None
        self.hello: Hello | None = None
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.peer_closed = False
        self.retry_after = 0.0
        self.rtt: float | None = None
        self._decoder = FrameDecoder(params.max_frame_size)
        self._out: list[bytes] | None = None  # made on first use: most connections idle
        self._opened_at = now
        self._last_recv = now
        self._last_send = now
        self._heartbeat = 0.0
        self._idle_timeout = 0.0
        self._ping_sent_at: float | None = None
        self._ping_stamp = 0
        self._confirmed = role is Role.CLIENT
        self._goaway_stamp: int | None = None
        self._replay_from = 0  # the last sequence number written on this transport
        self._replaying = False  # a replay waits for the peer's window (protocol.md §6.4)
        self._streaming = False  # DATA may be written (after WELCOME, and confirmed)
        # The compiled DATA loop, or None: every byte through msgpack (codec.take_data_run).
        self._take_run = codec.take_data_run

    @classmethod
    def server(cls, params: Params, now: float) -> Connection:
        """A server-side transport that has just been accepted; it awaits HELLO."""
        return cls(Role.SERVER, params, now)

    @property
    def opened_at(self) -> float:
        """When the transport was accepted or opened (the ``now`` it was made with)."""
        return self._opened_at

    @property
    def closed(self) -> bool:
        """True once this transport must be closed (after writing ``data_to_send()``)."""
        return self.state is _CLOSED

    # ------------------------------------------------------------ byte flow

    def data_to_send(self) -> bytes:
        """Return and clear the bytes to write to the transport."""
        out = self._out
        if not out:
            return b""
        self._out = None
        return b"".join(out)

    def _queue(self, frame: bytes) -> None:
        out = self._out
        if out is None:
            self._out = [frame]
        else:
            out.append(frame)

    @property
    def buffered_input(self) -> int:
        """Bytes held for an incomplete frame (at most ``max_frame_size``)."""
        return self._decoder.buffered

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the transport; peer faults close it with their code (never raise)."""
        if self.state is _CLOSED:
            return
        self._last_recv = now
        try:
            if self._take_run is not None:
                self._receive_runs(data, now)
                if self.state is _CLOSED:
                    return
            elif len(data) <= FEED_PIECE:  # most reads: one piece, no pieces() call
                self._receive_piece(data, now)
                if self.state is _CLOSED:
                    return
            else:
                for piece in pieces(data):
                    self._receive_piece(piece, now)
                    if self.state is _CLOSED:
                        return
        except RemoteProtocolError as exc:
            self._fail(exc.code, str(exc), now)
            return
        # A read that ended on a frame boundary leaves nothing to keep: free the
        # decoder's ~57 KiB (an idle session then holds none); the next read makes
        # a new one for ~1 µs.
        self._decoder.release()

    def _receive_runs(self, data: bytes, now: float) -> None:
        """:meth:`receive_data` with the compiled DATA loop (``codec.take_data_run``).

        Where the decoder holds no incomplete frame and the fast path applies (an open,
        confirmed transport), the C loop takes the run of fixed-width, next DATA frames
        at the read position straight into the inbox, and a fixed-width ACK after it is
        taken here; everything else (another frame, another encoding, a fault, the end
        of the read inside a frame) goes to :meth:`_receive_piece` as a piece of its
        own, which decodes it with msgpack and applies every rule as without the C
        loop. A piece ends at the end of the incomplete frame the decoder holds, when
        its fixed-width DATA header says where, so that the C loop resumes after it.
        Cutting a read into pieces anywhere gives the same outcome (protocol.md §1.5):
        ``tests/test_codec_fastpath.py`` checks both paths against the slow one.
        """
        take = self._take_run
        assert take is not None
        decoder = self._decoder
        pos = 0
        end = len(data)
        view: memoryview | None = None
        while pos < end:
            stop = end  # where the piece for _receive_piece ends (at most FEED_PIECE on)
            if decoder._boundary == decoder._fed:
                session = self.session
                if session is not None and self._confirmed and self.state is _OPEN:
                    inbox = session._inbox
                    if inbox is None:
                        session._inbox = inbox = []
                    received = session._received
                    pos, last, added = take(data, pos, received, decoder._max, inbox)
                    if last != received:
                        session._received = last
                        session._inbox_bytes += added
                        # As the fast path of _receive_piece: once per run, before any
                        # frame after it (protocol.md §6.2).
                        session._check_window()
                    elif not inbox:
                        session._inbox = None  # nothing came: no empty list kept
                    if pos == end:
                        return
                    # A fixed-width ACK amid DATA (the peer's coalesced ACKs): taken as
                    # _receive_piece's fast path takes it, then the C loop goes on.
                    if (
                        end - pos >= _ACK_SIZE
                        and data.startswith(_ACK_LEAD, pos)
                        and decoder._max >= _ACK_SIZE
                    ):
                        session._on_ack(int.from_bytes(data[pos + 3 : pos + _ACK_SIZE], "big"))
                        pos += _ACK_SIZE
                        continue
                elif session is not None and self.state is _OPEN:
                    # An unconfirmed transport's first frame (it confirms it, through
                    # _dispatch): when it is a fixed-width DATA or ACK (a client's first
                    # frame after WELCOME is often its ACK), the piece ends with it and
                    # the C loop takes the rest of the read.
                    if (
                        end - pos >= DATA_OVERHEAD
                        and data[pos + 11] == 0xC6
                        and data.startswith(_DATA_LEAD, pos)
                    ):
                        stop = (
                            pos + DATA_OVERHEAD + int.from_bytes(data[pos + 12 : pos + 16], "big")
                        )
                    elif end - pos >= _ACK_SIZE and data.startswith(_ACK_LEAD, pos):
                        stop = pos + _ACK_SIZE
            else:
                # Inside a frame: if it is a fixed-width DATA whose header is known,
                # this piece ends where the frame does.
                head = decoder._head
                if (
                    decoder._head_start == decoder._boundary
                    and len(head) >= DATA_OVERHEAD
                    and head[11] == 0xC6
                    and head.startswith(_DATA_LEAD)
                ):
                    held = decoder._fed - decoder._boundary
                    rest = DATA_OVERHEAD + int.from_bytes(head[12:16], "big") - held
                    stop = min(end, pos + rest)
            stop = min(stop, pos + FEED_PIECE)
            if pos == 0 and stop == end:
                self._receive_piece(data, now)
                return
            if view is None:
                view = memoryview(data)
            self._receive_piece(view[pos:stop], now)
            if self.state is _CLOSED:
                return
            pos = stop

    def _receive_piece(self, piece: bytes | memoryview, now: float) -> None:
        """Decode one piece and act on its frames in stream order.

        The hot path: on an open, confirmed transport, a run of valid next DATA
        frames is taken right here with the counters in locals: one loop over
        the unpacker, no intermediate list, no call per frame (worth about a
        third of the receive cost, see bench/RESULTS.md). Every other frame
        goes through :meth:`_dispatch`, which applies the full rules of
        frames.py and raises the precise error.

        Frames are measured against the limit (protocol.md §1.3) one by one only
        until a frame boundary inside the piece is known: after it, in a piece no
        longer than the limit, none can be over it, and the decoder places the
        last boundary once, after the loop (``FrameDecoder.place``, ``rescan``).
        A piece shorter than ``_PLACE_MIN`` is decoded onto a list first
        (measured, stopping at the bytes fed instead of running the unpacker to
        exhaustion), then acted on by the same loop.
        ``tests/test_codec_fastpath.py`` pins all of this to the slow path.
        """
        decoder = self._decoder
        # (FrameDecoder.push inlined: one call less per read)
        unpacker = decoder._unpacker
        if unpacker is None:
            unpacker = decoder._unpacker = decoder._new_unpacker()
        unpacker.feed(piece)
        decoder._fed += len(piece)
        tell = unpacker.tell
        # (the decoder's fields, not its properties: two calls less per read)
        boundary = decoder._boundary
        limit = decoder._max
        # Each frame is measured (its end and size) while *measuring*; once a frame
        # boundary inside a short enough piece is known, the rest is not, and place()
        # finds the boundary afterwards (see FrameDecoder.place).
        # (A short piece holds a few frames: measuring them costs less than placing.)
        session = self.session
        # The session whose next DATA frames take the fast path (None: every frame is
        # dispatched); *received* is its counter, and the payloads its inbox holds from
        # *mark* on are the bytes to add: both stored back by _count (the bytes counted
        # once per run of DATA, in C, rather than per frame).
        live = session if session is not None and self._confirmed and self.state is _OPEN else None
        fresh: bool | None = None  # whether it began on a boundary; None: not asked
        placing = False
        measuring = True
        error: RemoteProtocolError | None = None
        source: Any = unpacker
        if len(piece) >= _PLACE_MIN:
            fresh = boundary == decoder._fed - len(piece)
            placing = decoder.placeable(piece)
            measuring = not (placing and fresh)
        else:
            # A short piece (ping-pong's reads) holds a few frames: decoded onto a list
            # first, each measured, stopping after the one that ends with the bytes fed
            # (as FrameDecoder.feed: running the unpacker to exhaustion costs two
            # exceptions with tracebacks, ~2.8k instructions a read, where the loop
            # below would have to test for the end after every frame of every piece);
            # then acted on from the list. A decoding error is raised after the frames
            # before it have been acted on, as when each is taken as decoded.
            source = []
            append = source.append
            stop = decoder._fed
            try:
                for frame in unpacker:
                    end = tell()
                    size = end - boundary
                    if size > limit:
                        error = decoder.too_large(size)
                        break
                    # An ACK amid DATA (at most 11 bytes as any peer writes it) would
                    # fail the loop's three-field unpack: a ValueError with its message
                    # and traceback, ~5k instructions. Marked here instead, where the
                    # frame's size is known, as a three-tuple the loop takes without
                    # an exception. Only while the fast path runs (*live*): it lasts
                    # until the loop returns, so no marked frame reaches _dispatch.
                    if (
                        size <= _ACK_SIZE
                        and live is not None
                        and frame.__class__ is tuple
                        and len(frame) == 2
                        and frame[0] is _ACK
                    ):
                        append((_ACK_MARK, frame[1], None))
                    else:
                        append(frame)
                    boundary = end
                    if end == stop:
                        break
            except (ValueError, UnpackException) as exc:
                error = decoder.undecodable(piece, boundary, exc)
            measuring = False
        received = session._received if session is not None else 0
        push: Callable[[bytes], None]
        if live is None:
            push = _no_push
            inbox = _NO_INBOX
        else:  # (_inbox_of inlined: once per read)
            held = live._inbox
            if held is None:
                live._inbox = held = []
            inbox = held
            push = inbox.append
        mark = len(inbox)
        try:
            for frame in source:
                if measuring:
                    end = tell()
                    if end - boundary > limit:
                        error = decoder.too_large(end - boundary)
                        break
                    boundary = end
                    if placing:
                        measuring = False  # a boundary inside the piece is known now
                if live is not None:
                    try:
                        kind, seq, payload = frame
                    except (TypeError, ValueError):
                        # Not three fields: an ACK of a long piece (in a short one it
                        # is marked, above) or a frame for _dispatch. (In a long piece
                        # testing each frame for an ACK costs more than this exception
                        # per ACK, at the peer's one ACK per tens of DATA: PROFILE.md.)
                        if frame.__class__ is tuple and len(frame) == 2 and frame[0] is _ACK:
                            kind, seq = _ACK_MARK, frame[1]
                        else:
                            kind = None
                    # `is`: msgpack hands small ints out as CPython's cached objects, so
                    # this is one pointer test for "the int 3" (3.0 and True fail it and
                    # take _dispatch, which applies the full rules of frames.py).
                    if (
                        kind is _DATA
                        and seq == received + 1
                        and seq.__class__ is int
                        and payload.__class__ is bytes
                    ):
                        received = seq
                        push(payload)
                        continue
                    if kind is _ACK_MARK:
                        # The peer's ACKs come amid its DATA: taken here as _dispatch
                        # takes them (one call instead of five).
                        count = sum(map(len, inbox[mark:]))
                        mark = len(inbox)
                        live._count(received, count)
                        live._on_ack(seq)
                        continue
                    # The window is checked as if each frame came in its own read: the
                    # outcome must not depend on how reads split the bytes (§1.5).
                    count = sum(map(len, inbox[mark:]))
                    mark = len(inbox)  # (moved first: _count may raise)
                    live._count(received, count)
                self._dispatch([frame], now)
                if self.state is _CLOSED:
                    return  # frames after CLOSE are never processed
                session = self.session
                live = (
                    session
                    if session is not None and self._confirmed and self.state is _OPEN
                    else None
                )
                if live is not None:
                    received = live._received
                    inbox = _inbox_of(live)
                    push = inbox.append
                    mark = len(inbox)
            else:
                if placing and not measuring:
                    boundary = decoder.place(piece, boundary)
        except (ValueError, UnpackException) as exc:
            if placing and not measuring:  # where the refused frame begins: decode again
                boundary = decoder.rescan(piece, boundary)
            error = decoder.undecodable(piece, boundary, exc)
        finally:
            if live is not None:
                # (_count inlined, once per read; one payload, the ping-pong case, or
                # none: no map and sum objects)
                live._received = received
                new = len(inbox) - mark
                if new == 1:
                    live._inbox_bytes += len(inbox[-1])
                elif new:
                    live._inbox_bytes += sum(map(len, inbox[mark:] if mark else inbox))
            if session is not None and not session._inbox:
                session._inbox = None  # nothing came (or all was taken): no empty list kept
        if live is not None:
            # Before an error, and before settle() checks the incomplete frame at the
            # end: as if the DATA before them came alone (the slow path checks the
            # window after each frame, so a peer over its window is told so first).
            live._check_window()
        if error is None:
            # (settle() inlined: one call less per read)
            decoder._boundary = boundary
            if boundary != decoder._fed:
                decoder._check_pending(piece, boundary)
            if fresh is not None:
                decoder.learn(piece, fresh)
        else:
            raise error

    def _dispatch(self, frames: list[Any], now: float) -> None:
        session = self.session
        if self.state is _OPEN and session is not None:
            if not self._confirmed:
                # Any frame but CLOSE proves the client received WELCOME (a client
                # whose handshake timed out sends CLOSE without having seen it).
                first = frames[0]
                if not (first.__class__ is tuple and first and first[0] == codec.CLOSE):
                    self._confirmed = True
                    session._confirm_credential()
                    if not self._streaming:  # a new session streams from WELCOME on
                        session._replay_to(self)
            for frame in frames:
                if self.state is not _OPEN:
                    return  # frames after CLOSE are never processed
                if (
                    frame.__class__ is tuple
                    and len(frame) == 2
                    and frame[0] == codec.ACK
                    and frame[0].__class__ is int
                ):
                    session._on_ack(frame[1])
                else:
                    self._on_control(parse_frame(frame), now)
            session._check_window()
            return
        for frame in frames:
            if self.state is _CLOSED:
                return
            self._on_control(parse_frame(frame), now)

    def _on_control(self, frame: Any, now: float) -> None:
        state = self.state
        session = self.session
        if isinstance(frame, Close):
            self._on_close(frame, now)
        elif state is _OPEN and session is not None:
            if isinstance(frame, Ping):
                self._queue(codec.encode_pong(frame.stamp))
                self._last_send = now
            elif isinstance(frame, Pong):
                if frame.stamp == self._goaway_stamp:
                    self._goaway_stamp = -1  # caught up
                if self._ping_sent_at is not None and frame.stamp == self._ping_stamp:
                    sample = now - self._ping_sent_at
                    self.rtt = sample if self.rtt is None else 0.875 * self.rtt + 0.125 * sample
                    self._ping_sent_at = None
            elif isinstance(frame, Data):
                session._on_data(frame.seq, frame.payload)
            elif isinstance(frame, Ack):
                session._on_ack(frame.seq)
            elif isinstance(frame, Goaway) and self.role is Role.CLIENT:
                self.retry_after = frame.retry_after_ms / 1000
                code = _code_or(frame.code, CloseCode.GOING_AWAY)
                session._emit(GoawayReceived(code, self.retry_after, frame.redirect))
            else:
                raise _unexpected(frame, state)
        elif state is ConnectionState.AWAIT_HELLO and isinstance(frame, Hello):
            self._on_hello(frame, now)
        elif state is ConnectionState.AWAIT_WELCOME and isinstance(frame, Welcome):
            assert session is not None
            session._on_welcome(self, frame, now)
            self._last_send = now
        else:
            raise _unexpected(frame, state)

    def _on_hello(self, hello: Hello, now: float) -> None:
        if PROTOCOL_VERSION not in hello.versions:
            supported = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise RemoteProtocolError(
                f"supported versions: {supported}", CloseCode.UNSUPPORTED_VERSION
            )
        self.hello = hello
        self.state = ConnectionState.HELLO_RECEIVED

    def _on_close(self, frame: Close, now: float) -> None:
        code = _code_or(frame.code, CloseCode.PROTOCOL_ERROR)
        self.peer_closed = True
        self.retry_after = frame.retry_after_ms / 1000
        self._close(code, frame.reason, self.retry_after, False, now, by_peer=True)

    # ------------------------------------------------------------ server API

    def accept(
        self,
        now: float,
        identity: Any = None,
        session: Session | None = None,
        missing: CloseCode = CloseCode.UNKNOWN_SESSION,
    ) -> Session:
        """Server: answer ``hello`` with WELCOME once the daemon has authenticated it.

        Pass the session that ``hello.resume.session_id`` names, if the daemon
        holds it, else *missing* says why not (unknown, or the code it ended with:
        mapped to a WELCOME reason by :func:`welcome_reason`). Returns the session
        now attached: the resumed one, or a new one whose :class:`SessionStarted`
        event says why the resume failed. A resume may end the old session
        (credential reused): read the old session's events too.
        """
        hello = self.hello
        if self.state is not ConnectionState.HELLO_RECEIVED or hello is None:
            raise InvalidState(f"accept() in state {self.state.value}")
        reason: CloseCode | None = None
        if hello.resume is not None:
            if session is None:
                reason = welcome_reason(missing)
            else:
                reason = session._check_resume(hello.resume, identity, now)
                if reason is None:
                    session._resume(self, hello, now)
                    self._last_send = now
                    return session
        fresh = Session(Role.SERVER, self.params)
        fresh._open_new(self, hello, identity, now, reason)
        self._last_send = now
        return fresh

    def reject(
        self, now: float, code: CloseCode, reason: str = "", retry_after: float = 0.0
    ) -> None:
        """Server: refuse ``hello`` (authentication failed, limit reached) and close."""
        self.close(now, code, reason, retry_after)

    def goaway(
        self, now: float, retry_after: float, redirect: str | None = None, reason: str = ""
    ) -> None:
        """Server: announce that this transport drains; close it later with GOING_AWAY.

        A PING follows the GOAWAY; :attr:`caught_up` turns true when its PONG
        arrives, i.e. once everything the client sent before seeing the GOAWAY
        has been received (protocol.md §11.1).
        """
        if self.state is _OPEN and self._goaway_stamp is None:
            frame = Goaway(CloseCode.GOING_AWAY, _ms(retry_after), redirect, reason)
            self._queue(frame.encode())
            self._goaway_stamp = stamp = _stamp(now)
            self._queue(codec.encode_ping(stamp))
            self._last_send = now

    @property
    def caught_up(self) -> bool:
        """Server, after :meth:`goaway`: the client's answer to the drain PING arrived."""
        return self._goaway_stamp is not None and self._goaway_stamp < 0

    # ------------------------------------------------------------ both roles

    def close(
        self, now: float, code: CloseCode, reason: str = "", retry_after: float = 0.0
    ) -> None:
        """Close this transport with *code*; a terminal code also ends the session."""
        self._close(code, reason, retry_after, True, now)

    def connection_lost(self, now: float) -> None:
        """Report that the transport ended without a CLOSE frame."""
        if self.state is not _CLOSED:
            self._close(CloseCode.TRANSPORT_LOST, "", 0.0, False, now)

    def _fail(self, code: CloseCode, reason: str, now: float) -> None:
        self._close(code, reason, 0.0, True, now)

    def _close(
        self,
        code: CloseCode,
        reason: str,
        retry_after: float,
        send: bool,
        now: float,
        by_peer: bool = False,
    ) -> None:
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        self._streaming = False
        self._replaying = False
        self.close_code = code
        self.close_reason = reason
        self._decoder.discard()
        if send:
            self._queue(Close(code, reason, _ms(retry_after)).encode())
        session = self.session
        if session is None or session.connection is not self:
            return
        if is_terminal(code):
            session._end(code, reason, by_peer, now)
        else:
            session._detach(now, code, retry_after)

    # ---------------------------------------------------------------- timers

    def _open(self, now: float, heartbeat: float, idle_timeout: float) -> None:
        self.state = _OPEN
        self._heartbeat = heartbeat
        self._idle_timeout = idle_timeout
        self._last_recv = now
        self._last_send = now

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        state = self.state
        if state is _CLOSED:
            return None
        if state is not _OPEN:
            return self._opened_at + self.params.handshake_timeout
        # Called after every read and flush: conditionals, not min() (a builtin call each).
        deadline = self._last_send + self._heartbeat
        dead_at = self._last_recv + self._idle_timeout + 4 * (self.rtt or 0.0)  # _dead_at()
        if dead_at < deadline:  # noqa: PLR1730 (no builtin call)
            deadline = dead_at
        session = self.session
        if session is not None:
            ack_deadline = session._ack_deadline
            if ack_deadline is not None and ack_deadline < deadline:
                deadline = ack_deadline
        return deadline

    def _dead_at(self) -> float:
        return self._last_recv + self._idle_timeout + 4 * (self.rtt or 0.0)

    def handle_timer(self, now: float) -> None:
        """Run the timers due at *now*: handshake timeout, idle timeout, heartbeat, ACK."""
        state = self.state
        if state is _CLOSED:
            return
        if state is not _OPEN:
            if now >= self._opened_at + self.params.handshake_timeout:
                self._fail(CloseCode.HANDSHAKE_TIMEOUT, "handshake not completed in time", now)
            return
        if now >= self._dead_at():
            self.close(now, CloseCode.IDLE_TIMEOUT, "nothing received within the idle timeout")
            return
        session = self.session
        ack_due = session._ack_deadline if session is not None else None
        if session is not None and ack_due is not None and now >= ack_due:
            session._send_ack(self, now)
        if now >= self._last_send + self._heartbeat:
            stamp = _stamp(now)
            self._queue(codec.encode_ping(stamp))
            self._ping_sent_at = now
            self._ping_stamp = stamp
            self._last_send = now


def _unexpected(frame: Any, state: ConnectionState) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"{type(frame).__name__.upper()} not allowed in state {state.value}",
        CloseCode.UNEXPECTED_FRAME,
    )
