"""The asyncio client: a session that reconnects and resumes by itself.

``session = await connect("tcp://127.0.0.1:7420")``, then ``send``, ``recv``,
``async for``, ``close``. Transport failures are invisible: the client
reconnects (:class:`~sessiond_client.backoff.ReconnectPolicy`), resumes, and
both sides replay what the other missed. Sends made while offline wait in the
window and go out after the replay. When the server cannot resume the session,
``send``/``recv`` raise :class:`SessionLost` with the reason.

Never silent: the first connection is one attempt (unless ``wait_for_server``), and
its failure raises :class:`ConnectFailed` naming the address and the cause;
``close()`` returns only once everything sent was acknowledged, else raises
:class:`SessionLost` whose ``undelivered`` lists what was not; ``send`` refuses a
payload that is not bytes-like. What happens is logged to the ``sessiond_client``
logger (DEBUG: frame summaries from :mod:`sessiond_client.framelog`).

The protocol decisions are the core's (:mod:`sessiond_client.protocol`); this
module moves bytes, runs one timer per session and sleeps only between
reconnect attempts.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import socket
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from os import PathLike
from typing import Any, TypeAlias

from .addresses import parse_address
from .backoff import ReconnectPolicy
from .framelog import FrameLog
from .handoff import Handoff, _as_bytes
from .protocol import (
    CODE_TABLE,
    CloseCode,
    Connection,
    ConnectionState,
    GoawayReceived,
    InvalidState,
    Params,
    Role,
    SessionEnded,
    SessionLost,
    SessionLostEvent,
    SessionResumed,
    SessionStarted,
    SessionState,
    TransportLost,
    WindowFull,
)
from .protocol import Session as CoreSession
from .protocol.codec import U64_MAX
from .state_file import StateFile

log = logging.getLogger("sessiond_client")

# Module constants: an Enum member looked up on its class is a slow attribute lookup.
_ATTACHED = SessionState.ATTACHED
_DETACHED = SessionState.DETACHED
#: send() gathers a loop iteration's sends after this many went to the core one by one
#: (issue 18): a gathering costs a fixed ~150 bytecodes (the room, the hand-over,
#: send_many's setup) and saves 30-50 per message, so fewer sends per iteration are
#: cheaper one by one (callgrind, a library ping-pong of 2 messages per round trip:
#: +11,000 Ir per round trip when the second was gathered).
_GATHER_AFTER = 8
#: Below this, no window (at most 2**32-1 messages) reaches past sequence number 2**64-1:
#: the check with big integers is skipped.
_SEQ_NEAR_END = U64_MAX + 1 - 0xFFFFFFFF

#: HELLO credentials (protocol.md §3.5): a token, a map such as ``{"token": ...}``, or a
#: callable (sync or async) returning one, called before every connection attempt.
Credentials: TypeAlias = "str | bytes | Mapping[str, Any] | Callable[[], Any] | None"

#: What :attr:`Session.notices` holds: a fresh session replaced the lost one
#: (:class:`SessionStarted` with ``replaces`` set, after the :class:`SessionLostEvent`
#: that lists what the old one left), or the server drains the transport
#: (:class:`GoawayReceived`).
Notice: TypeAlias = SessionLostEvent | SessionStarted | GoawayReceived


class ConnectFailed(SessionLost):
    """The first connection of :func:`connect` failed: no session was opened.

    :attr:`address` is the URL tried; the message says what failed (refused,
    unreachable, DNS, TLS verification with the ``ssl`` module's reason, no
    handshake in time, credentials refused); :attr:`reason` is the close code
    (``TRANSPORT_LOST`` for network and TLS faults). ``__cause__`` holds the
    ``OSError`` or ``ssl.SSLError`` when there is one. :attr:`undelivered` is
    empty: with a ``state_file``, the session and its unacknowledged messages
    stay in the file for the next attempt (unless the server ended that session
    during the handshake: then they are here).
    """

    def __init__(
        self, address: str, reason: CloseCode, message: str, undelivered: tuple[bytes, ...] = ()
    ) -> None:
        super().__init__(reason, message, undelivered)
        self.args = (f"cannot connect to {address}: {message} [{reason.name}]",)
        self.address = address


class State(enum.Enum):
    """What a :class:`Session` is doing, as a UI would show it."""

    CONNECTING = "connecting"
    ACTIVE = "active"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


def parse_url(url: str) -> tuple[str, int, bool]:
    """``tcp://host:port`` or ``tls://host:port`` to (host, port, tls)
    (:func:`~sessiond_client.addresses.parse_address`, as the daemon's ``--listen``)."""
    address = parse_address(url)
    return address.host, address.port, address.tls


class _Protocol(asyncio.Protocol):
    """One transport: hands bytes to the session; nothing else."""

    def __init__(self, session: Session, conn: Connection) -> None:
        self.session = session
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        # DEBUG only: frame summaries of both directions (never payloads).
        self.frames: tuple[FrameLog, FrameLog] | None = (
            (FrameLog(), FrameLog()) if log.isEnabledFor(logging.DEBUG) else None
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session._flush()

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session._proto is self:
            if self.frames is not None:
                log.debug("%s: read %s", session._url, self.frames[1].summary(data))
            if session._held is not None:
                session._hand_over()
            self.conn.receive_data(data, session._loop.time())
            session._after_input()

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        if session._proto is self:
            if exc is not None:  # such as a TLS alert: the server refused our certificate
                session._last_error = _describe(exc)
                session._last_exc = exc
            elif session._handshake is not None and not session._handshake.done():
                session._last_error = "the server closed the connection before answering HELLO"
                if session._ssl is not None:  # asyncio servers close without the TLS alert
                    session._last_error += (
                        " (over TLS, a server that refuses a missing or untrusted"
                        " client certificate does this)"
                    )
            session._hand_over()
            self.conn.connection_lost(session._loop.time())
            session._after_input()


#: The payload types send_many passes on as they are.
_BYTES = frozenset({bytes})


class _Handoff(Handoff):
    """The session's handoff: writes what is queued when ``recv()`` begins to wait, and
    hands the payloads the session holds back (``Session._held``) to the core before a
    batch, and before it looks at the window or at what is unacknowledged after a wait.
    (``Session.send`` hands them over itself before it calls :meth:`send`.)"""

    __slots__ = ("owner",)
    owner: Session

    def _parking(self) -> None:
        self.owner._write_pending()

    def _now(self) -> float:
        return self.owner._send_clock()

    def _outbound(self) -> None:
        self.owner._hand_over()

    async def send_many(self, payloads: Sequence[bytes]) -> None:
        self.owner._hand_over()
        await super().send_many(payloads)


class Session:
    """A client session; open one with :func:`connect` (its docstring lists the options).

    ``send``, ``recv``, ``async for``, ``close`` (or ``async with``); :attr:`state`,
    :attr:`id`, :attr:`notices`. Transport failures are invisible; a session the
    server could not resume raises :class:`SessionLost` from ``send``/``recv``.
    """

    def __init__(
        self,
        url: str,
        *,
        credentials: Credentials = None,
        params: Params | None = None,
        ssl: ssl_module.SSLContext | None = None,
        ca_file: str | PathLike[str] | None = None,
        cert_file: str | PathLike[str] | None = None,
        key_file: str | PathLike[str] | None = None,
        server_hostname: str | None = None,
        policy: ReconnectPolicy | None = None,
        wait_for_server: bool = False,
        fresh_session: bool = False,
        state_file: str | PathLike[str] | None = None,
    ) -> None:
        self._host, self._port, tls = parse_url(url)
        self._url = url
        if tls and ssl is None:
            ssl = tls_context(ca_file, cert_file, key_file)
        self._ssl = ssl if tls else None
        self._server_hostname = server_hostname if tls else None
        self._credentials = credentials
        self._policy = policy or ReconnectPolicy()
        self._wait_for_server = wait_for_server
        self._fresh = fresh_session
        self._loop = asyncio.get_running_loop()
        self._store = StateFile(state_file) if state_file is not None else None
        saved = self._store.load() if self._store is not None else None
        if saved is not None:
            self._core = CoreSession.restore(saved, params or Params())
        else:
            self._core = CoreSession(Role.CLIENT, params or Params())
        self._proto: _Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        # With a state file, what the core counts as consumed (and persists, and
        # acknowledges) must be exactly what recv() returned: one at a time.
        take_limit = 1 if self._store is not None else None
        # Without a state file, what send() and recv() queue is written once per loop
        # iteration, not once per call: a burst of sends leaves as one write. With one,
        # send() returns only once its message is on disk, so it flushes at once.
        flush = self._flush if self._store is not None else self._flush_soon
        self._handoff = _Handoff(self._core, self._loop, flush, self._failure, take_limit)
        self._handoff.owner = self
        self._flush_pending = False
        self._send_now: float | None = None  # see _send_clock
        self._sends = 0  # sends that went to the core one by one since the flush was armed
        self._deferred = self._store is None  # send()'s fast path: see there
        # Payloads send() accepted in this loop iteration and the core has not seen yet,
        # oldest first (None: none held): see _gather and _hand_over. What the core
        # would still accept after them: messages, and bytes (at most max_payload).
        self._held: list[bytes] | None = None
        self._held_now = 0.0
        self._room_messages = 0
        self._room_bytes = 0
        self._state = State.CONNECTING
        self._listeners: list[Callable[[State], None]] = []
        self._lost: SessionLost | None = None
        self._closing = False
        self._established = False  # a handshake completed on this object
        self._close_called = False
        self._closed: asyncio.Future[None] | None = None  # for a second, concurrent close()
        self._reconnect: asyncio.Task[None] | None = None
        self._handshake: asyncio.Future[CloseCode | None] | None = None
        self._retry_after = 0.0
        self._last_error = ""
        self._last_exc: BaseException | None = None  # behind _last_error, if any
        self._last_code = CloseCode.TRANSPORT_LOST
        self._detached_at: float | None = None
        #: What the application may want to know besides messages, newest last.
        self.notices: deque[Notice] = deque(maxlen=64)

    # ------------------------------------------------------------- public

    @property
    def id(self) -> str | None:
        """The session ID (hex), once the first handshake completed."""
        return self._core.id.hex() if self._core.id else None

    @property
    def state(self) -> State:
        return self._state

    @property
    def url(self) -> str:
        """The address this session connects to (``tcp://`` or ``tls://``)."""
        return self._url

    def on_state_change(self, callback: Callable[[State], None]) -> None:
        """Call *callback(state)* on every change (connecting, active, reconnecting, closed)."""
        self._listeners.append(callback)

    async def send(
        self, payload: bytes | bytearray | memoryview, timeout: float | None = None
    ) -> None:
        """Queue one message (``await session.send(payload)``); waits while the server's
        window is full.

        Raises ``TypeError`` for a payload that is not bytes-like (the session is
        unaffected), ``TimeoutError`` when *timeout* passes first, :class:`SessionLost`
        once the session has ended.
        """
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        held = self._held
        if held is not None:
            # The second and later sends of a loop iteration (issue 18): held back and
            # handed to the core in one send_many at the iteration's flush, or before
            # anything else uses the core (_hand_over). Held only when the core would
            # take it now (_gather's room: the checks of core.send, in the same order of
            # messages), so a send that fails still fails here, and a full window waits.
            size = len(payload)
            room = self._room_bytes - size
            if room >= 0 and len(held) < self._room_messages:
                held.append(payload)
                self._room_bytes = room
                return
            self._hand_over()
        if self._deferred:
            # The common case inlined (issue 18, the client's cost per message: five
            # Python calls fewer than through the handoff and its hooks): the message
            # fits the window, the clock is read once per loop iteration (a syscall) and
            # the write is left to the end of the iteration. Anything else (a full
            # window, an ended session) goes the general way below, which tries again:
            # the core changes nothing when it refuses.
            if self._flush_pending:
                # The first _GATHER_AFTER sends since the flush was armed go to the core
                # one by one (cheaper for a few, as in a request/response); later ones
                # are gathered while they fit.
                now = self._send_now
                if now is None:
                    now = self._send_now = self._loop.time()
                elif self._sends >= _GATHER_AFTER and self._gather(payload, now):
                    return
                try:
                    self._core.send(payload, now)
                except (WindowFull, InvalidState):
                    pass
                else:
                    self._sends += 1
                    return
            else:
                now = self._loop.time()
                try:
                    self._core.send(payload, now)
                except (WindowFull, InvalidState):
                    pass
                else:
                    self._flush_soon()
                    self._send_now = now
                    self._sends = 1
                    return
        if timeout is None:
            await self._handoff.send(payload)
        else:
            async with asyncio.timeout(timeout):
                await self._handoff.send(payload)

    def send_many(
        self, payloads: Sequence[bytes | bytearray | memoryview]
    ) -> Coroutine[Any, Any, None]:
        """Queue messages in order (``await session.send_many(payloads)``), as many at a
        time as the server's window takes: one call for a whole batch, cheaper per message
        than ``send``. Raises as ``send`` does (``TypeError`` before any is queued)."""
        if not set(map(type, payloads)) <= _BYTES:
            payloads = [_as_bytes(payload) for payload in payloads]
        return self._handoff.send_many(payloads)  # type: ignore[arg-type]

    def recv(self) -> Coroutine[Any, Any, bytes]:
        """The next message, in order (``await session.recv()``); raises SessionLost once
        the session has ended."""
        return self._handoff.recv()

    def recv_many(self) -> Coroutine[Any, Any, list[bytes]]:
        """Every message received so far, in order (``await session.recv_many()``: at
        least one, waits for it); raises SessionLost once the session has ended."""
        return self._handoff.recv_many()

    def _failure(self) -> SessionLost | None:
        if self._lost is not None:
            return self._lost
        if self._state is State.CLOSED:
            return SessionLost(CloseCode.NORMAL, "session closed")
        return None

    def received(self) -> list[bytes]:
        """Every message already received, in order, without waiting (maybe none);
        raises SessionLost once the session has ended and nothing is left."""
        return self._handoff.take_ready()

    def __aiter__(self) -> Session:
        return self

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        """The next message; the iteration ends once the session has ended. The
        handoff's own coroutine, not an async generator around ``recv()``: a
        generator step and a frame less per message (issue 18)."""
        return self._handoff.recv(True)

    async def close(self, timeout: float = 5.0) -> None:
        """Wait (at most *timeout*) for every sent message to be acknowledged, then end
        the session for good (CLOSE NORMAL) and close the transport.

        Returns only when everything sent was acknowledged. Otherwise (the time ran
        out, or the session had been lost) it still ends the session, then raises
        :class:`SessionLost` whose ``undelivered`` lists the messages never
        acknowledged, oldest first; calling it again raises the same. Cancelled while
        it waits, it ends the session too and raises ``CancelledError``.
        """
        if not self._close_called:
            self._close_called = True
            if self._state is not State.CLOSED:
                try:
                    await self._handoff.acknowledged(timeout)
                finally:  # cancelled meanwhile too: the session ends
                    self._end(timeout)
        elif self._state is not State.CLOSED:  # another close() is waiting: so does this one
            if self._closed is None:
                self._closed = self._loop.create_future()
            await asyncio.shield(self._closed)
        lost = self._lost
        if lost is not None and lost.undelivered:
            raise lost

    def _end(self, timeout: float) -> None:
        self._hand_over()
        undelivered = tuple(self._core.unacked_messages())
        if undelivered and self._lost is None:
            where = (
                "connected"
                if self.connected
                else f"not connected: {self._last_error or self._last_code.name}"
            )
            self._lost = SessionLost(
                self._last_code if not self.connected else CloseCode.NORMAL,
                f"closed after waiting {timeout:g} s for acknowledgements ({where})",
                undelivered,
            )
            log.warning("%s: %s", self._url, self._lost)
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self._core.close(self._loop.time())
        self._flush()
        self._after_input()
        self._shutdown()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            await self.close()
        except SessionLost:
            if not isinstance(exc, SessionLost):
                raise
            # The block already raised a SessionLost (the same loss, or a close()
            # the block made): that one propagates.

    # ---------------------------------------------------------- connecting

    async def _start(self) -> None:
        """The first connection: one attempt, or the policy's with ``wait_for_server``."""
        log.info("%s: connecting", self._url)
        if self._wait_for_server:
            await self._connect_loop(CloseCode.TRANSPORT_LOST, first=True)
        else:
            outcome = await self._attempt()
            if outcome is not None and self._lost is None:
                self._set_lost(self._first_failure(outcome))
        lost = self._lost
        if lost is not None and not self._established and type(lost) is SessionLost:
            # Refused during the handshake (credentials, limits): no session was opened,
            # or (state_file) the saved one ended without being resumed.
            self._lost = ConnectFailed(self._url, lost.reason, lost.message, lost.undelivered)

    def _first_failure(self, code: CloseCode, attempts: int = 1) -> ConnectFailed:
        what = self._last_error or _meaning(code)
        if attempts > 1:
            what = f"gave up after {attempts} attempts: {what}"
        failed = ConnectFailed(self._url, code, what)
        failed.__cause__ = self._last_exc
        return failed

    async def _connect_loop(self, code: CloseCode, first: bool = False) -> None:
        """Connect (or reconnect) until a handshake succeeds or the policy gives up."""
        started = self._loop.time()
        attempt = 0
        while True:
            if self._policy.gives_up(attempt, self._loop.time() - started):
                self._hand_over()
                if first and self._core.id is None:
                    self._set_lost(self._first_failure(code, attempt))
                else:
                    why = f": {self._last_error}" if self._last_error else ""
                    self._set_lost(
                        SessionLost(
                            code,
                            f"gave up after {attempt} attempts{why}",
                            tuple(self._core.unacked_messages()),
                        )
                    )
                return
            if attempt or not first:
                delay = self._policy.delay(attempt, code, self._retry_after)
                if delay:
                    log.info(
                        "%s: retrying in %.2f s (attempt %d, after %s)",
                        self._url,
                        delay,
                        attempt + 1,
                        self._last_error or code.name,
                    )
                    await asyncio.sleep(delay)
                    if self._lost is not None or self._closing:
                        return  # the session expired (§8.3) or was closed meanwhile
            attempt += 1
            outcome = await self._attempt()
            if outcome is None or self._lost is not None or self._closing:
                return
            code = outcome

    async def _attempt(self) -> CloseCode | None:
        """One connection attempt; None when the session is attached again (or lost).

        The core's handshake deadline (``params.handshake_timeout``) bounds the whole
        attempt: TCP, TLS and HELLO/WELCOME.
        """
        credentials = self._credentials
        if callable(credentials):
            credentials = credentials()
            if inspect.isawaitable(credentials):
                credentials = await credentials
        self._hand_over()
        conn = self._core.connect(self._loop.time(), credentials)
        proto = _Protocol(self, conn)
        self._proto = proto
        self._handshake = self._loop.create_future()
        self._arm()
        log.debug("%s: opening a transport", self._url)
        try:
            async with asyncio.timeout(self._core.params.handshake_timeout):
                await self._loop.create_connection(
                    lambda: proto,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl else None,
                )
        except (OSError, TimeoutError, ssl_module.SSLError, UnicodeError) as exc:
            # (UnicodeError: a host name IDNA cannot encode, before any lookup)
            self._last_error = _describe(exc)
            self._last_exc = exc
            if isinstance(exc, TimeoutError):
                self._last_error = (
                    f"no connection within {self._core.params.handshake_timeout:g} s"
                    + (" (TCP connect or TLS handshake)" if self._ssl else " (TCP connect)")
                )
            if self._proto is proto:
                self._hand_over()
                conn.connection_lost(self._loop.time())
                self._after_input()
            if isinstance(exc, ssl_module.SSLCertVerificationError) and self._core.id is None:
                # A server that cannot be verified before any session exists is a
                # misconfiguration, not a network fault: waiting will not fix it.
                failed = ConnectFailed(self._url, CloseCode.TRANSPORT_LOST, self._last_error)
                failed.__cause__ = exc
                self._set_lost(failed)
                return None
            return CloseCode.TRANSPORT_LOST
        if self._proto is not proto and proto.transport is not None:
            proto.transport.close()  # the core's handshake deadline passed meanwhile
        self._last_error = ""
        self._last_exc = None
        outcome = await self._handshake
        if outcome is CloseCode.HANDSHAKE_TIMEOUT and not self._last_error:
            self._last_error = f"no handshake within {self._core.params.handshake_timeout:g} s"
        return outcome

    def _redirect(self, url: str) -> None:
        try:
            host, port, tls = parse_url(url)
        except ValueError:
            return
        if tls == (self._ssl is not None):
            self._host, self._port = host, port

    # -------------------------------------------------------------- events

    def _after_input(self) -> None:
        """Write what the core queued, act on its events, wake waiters, re-arm the timer."""
        self._flush()
        while events := self._core.events():
            for event in events:
                self._on_event(event)
        self._wake()
        self._arm()

    def _on_event(self, event: object) -> None:
        if isinstance(event, SessionStarted | SessionResumed):
            if isinstance(event, SessionStarted):
                log.info("%s: session %s started", self._url, event.session_id.hex())
                if event.replaces is not None:
                    self.notices.append(event)
            else:
                took = self._loop.time() - (self._detached_at or self._loop.time())
                log.info(
                    "%s: session %s resumed in %.3f s, %d message(s) replayed",
                    self._url,
                    event.session_id.hex(),
                    took,
                    event.replayed,
                )
            self._established = True
            self._detached_at = None
            self._retry_after = 0.0
            self._last_error = ""
            self._set_state(State.ACTIVE)
            self._finish_handshake(None)
        elif isinstance(event, SessionLostEvent):
            self._handoff.deliver(event.unread)  # already received: still delivered
            self.notices.append(event)
            log.warning(
                "%s: session %s could not be resumed (%s); %d message(s) not acknowledged%s",
                self._url,
                event.session_id.hex(),
                event.reason.name,
                len(event.unacked),
                ", continuing with a fresh session" if self._fresh else "",
            )
            if not self._fresh:
                self._set_lost(
                    SessionLost(event.reason, "the server could not resume", event.unacked)
                )
                self._hand_over()  # (a guard, as for SessionEnded)
                self._core.close(self._loop.time())  # the new session is not wanted
                self._flush()
        elif isinstance(event, GoawayReceived):
            self.notices.append(event)
            log.info(
                "%s: the server drains this transport (%s, retry after %.2f s%s)",
                self._url,
                event.code.name,
                event.retry_after,
                f", redirect {event.redirect}" if event.redirect else "",
            )
            self._retry_after = event.retry_after
            if event.redirect:
                self._redirect(event.redirect)
        elif isinstance(event, TransportLost):
            self._on_transport_lost(event.code, event.retry_after)
        elif isinstance(event, SessionEnded):
            self._hand_over()  # (nothing is held after the input: a guard, not a path)
            if not self._closing and self._lost is None:
                self._set_lost(
                    SessionLost(
                        event.code,
                        event.reason or _meaning(event.code),
                        tuple(self._core.unacked_messages()),
                    )
                )
            self._finish_handshake(event.code)
            self._shutdown()

    def _on_transport_lost(self, code: CloseCode, retry_after: float) -> None:
        proto = self._proto
        self._proto = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._retry_after = max(self._retry_after, retry_after)
        self._last_code = code
        if self._handshake is not None and not self._handshake.done():
            self._finish_handshake(code)  # the attempt loop carries on
            return
        if self._closing or self._lost is not None:
            return
        self._detached_at = self._loop.time()
        log.warning(
            "%s: connection lost (%s); reconnecting",
            self._url,
            self._last_error or code.name,
        )
        self._set_state(State.RECONNECTING)
        self._reconnect = self._loop.create_task(self._connect_loop(code))

    def _finish_handshake(self, outcome: CloseCode | None) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(outcome)

    def _set_lost(self, lost: SessionLost) -> None:
        if self._lost is None:
            self._lost = lost
            if not isinstance(lost, ConnectFailed):
                log.warning("%s: %s", self._url, lost)
        self._finish_handshake(lost.reason)
        self._wake()

    def _set_state(self, state: State) -> None:
        if state is not self._state:
            self._state = state
            for callback in list(self._listeners):
                callback(state)

    def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        proto = self._proto
        self._proto = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._set_state(State.CLOSED)
        self._wake()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._store is not None:
            self._persist()
            self._store.close()
            self._store = None

    # ------------------------------------------------------------ plumbing

    def _persist(self) -> None:
        """Bring the state file up to date: called before any byte is written."""
        assert self._store is not None
        snapshot = self._core.snapshot()
        if snapshot is not None:
            self._store.save(snapshot)
        elif self._core.state is SessionState.ENDED:
            self._store.clear()

    def _flush(self) -> None:
        if self._held is not None:
            self._hand_over()
        if self._store is not None:
            self._persist()
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        data = proto.conn.data_to_send()
        if data:
            if proto.frames is not None:
                log.debug("%s: wrote %s", self._url, proto.frames[0].summary(data))
            proto.transport.write(data)
        if proto.conn.closed:
            proto.transport.close()

    def _flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._send_now = None
            self._sends = 0
            self._loop.call_soon(self._deferred_flush)

    def _send_clock(self) -> float:
        """The clock for send(): read once per loop iteration while a flush is pending
        (it cleared the last reading), not per message: reading it is a syscall
        (0.6 µs per send on the issue-18 machine). Never older than this iteration."""
        if not self._flush_pending:
            return self._loop.time()
        now = self._send_now
        if now is None:
            now = self._send_now = self._loop.time()
        return now

    def _deferred_flush(self) -> None:
        self._flush_pending = False
        self._flush()

    def _gather(self, payload: bytes, now: float) -> bool:
        """Hold *payload* (``send()`` at *now*, with a flush pending in this loop iteration
        and a send already made in it) if the core would take it now; then compute what
        it would take after it. False, and nothing held, when it would not (a full
        window, an ended or unconnected session, too large: core.send decides, and
        raises or waits).

        The room is core.send's own checks (protocol.md §5.1, §6): the session attached
        or detached; at most ``max_payload`` bytes; the messages in flight below the
        peer's message window and the unacknowledged bytes within its byte window, the
        held ones counted; sequence numbers up to 2**64-1 (or less, never more). It
        stays true until the core is used again, which every path does through
        :meth:`_hand_over` first. The window and sequence counters are the core's own
        slots, read once per iteration: the core has no query for the peer's window.
        """
        core = self._core
        state = core.state
        if state is not _ATTACHED and state is not _DETACHED:
            return False
        next_seq = core._next_seq
        size = len(payload)
        # (an empty window takes one payload of any size, core.send's rule: one larger
        # than the byte window is not held here, and core.send takes it)
        room_bytes = core._send_window_bytes - core._unacked_bytes - size
        room_messages = core._send_window_messages - (next_seq - 1 - core._acked)
        if next_seq > _SEQ_NEAR_END and room_messages > U64_MAX + 1 - next_seq:
            room_messages = U64_MAX + 1 - next_seq  # seq <= 2**64-1
        max_payload = core._max_payload
        if room_bytes < 0 or room_messages < 1 or size > max_payload:
            return False
        self._held = [payload]
        self._held_now = now
        self._room_messages = room_messages
        # Capped at max_payload: then a payload that fits the room is not too large (one
        # check per send less). It only holds fewer when the peer's byte window is larger
        # than its frames: the send after them gathers again from the core.
        self._room_bytes = room_bytes if room_bytes < max_payload else max_payload
        return True

    def _hand_over(self) -> None:
        """Give the core what ``send()`` held back in this iteration (in one
        ``send_many``, in order), before anything else uses the core."""
        held = self._held
        if held is not None:
            self._held = None
            taken = self._core.send_many(held, self._held_now)
            if taken != len(held):  # _gather's room is the core's: cannot happen
                raise RuntimeError(f"the core took {taken} of {len(held)} held messages")

    def _write_pending(self) -> None:
        """recv() is about to wait: what was queued this iteration leaves now (a request
        then goes out before its reply is awaited, not one iteration later)."""
        if self._flush_pending:
            self._flush()

    def _wake(self) -> None:
        # (no hand-over: after input the flush made it; a wake that held sends would
        # have prevented only makes a waiting sender look at the window again)
        self._handoff.wake()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._core.next_deadline()
        if deadline is not None and self._state is not State.CLOSED:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._hand_over()
        self._core.handle_timer(self._loop.time())
        self._after_input()

    @property
    def core(self) -> CoreSession:
        """The protocol core (sequence numbers, unacknowledged messages), with every
        message ``send()`` accepted in it."""
        self._hand_over()
        return self._core

    @property
    def connected(self) -> bool:
        proto = self._proto
        return proto is not None and proto.conn.state is ConnectionState.OPEN


def _meaning(code: CloseCode) -> str:
    info = CODE_TABLE.get(code)
    return info.meaning if info is not None else code.name


def _describe(exc: BaseException) -> str:
    """What went wrong with a transport, in words: the ``ssl`` module's reason for TLS."""
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl_module.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, socket.gaierror | UnicodeError):
        return f"cannot resolve the host name: {getattr(exc, 'strerror', None) or exc}"
    return str(exc) or type(exc).__name__


def tls_context(
    ca_file: str | PathLike[str] | None = None,
    cert_file: str | PathLike[str] | None = None,
    key_file: str | PathLike[str] | None = None,
) -> ssl_module.SSLContext:
    """A TLS 1.2+ client context that verifies the server and checks its hostname:
    against *ca_file* alone when given (such as the CA ``sessiond gen-cert`` writes),
    else the system store; with *cert_file* (and *key_file*) for mutual TLS."""
    if ca_file is None:
        context = ssl_module.create_default_context()
    else:  # this CA only: trusting a development CA must not add the system store
        context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=ca_file)
    context.minimum_version = ssl_module.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    elif key_file is not None:
        raise ValueError("key_file given without cert_file")
    return context


async def connect(
    url: str,
    *,
    credentials: Credentials = None,
    ssl: ssl_module.SSLContext | None = None,
    ca_file: str | PathLike[str] | None = None,
    cert_file: str | PathLike[str] | None = None,
    key_file: str | PathLike[str] | None = None,
    server_hostname: str | None = None,
    params: Params | None = None,
    policy: ReconnectPolicy | None = None,
    wait_for_server: bool = False,
    fresh_session: bool = False,
    state_file: str | PathLike[str] | None = None,
) -> Session:
    """Open a session to *url*: ``tcp://HOST:PORT`` or ``tls://HOST:PORT``.

    :param credentials: HELLO credentials (a token, or a map such as ``{"token": ...}``),
        or a callable (sync or async) returning them, called before every connection
        attempt so that expiring tokens are refreshed.
    :param ssl: the ``SSLContext`` for a ``tls://`` URL; by default
        :func:`tls_context` (*ca_file*, *cert_file*, *key_file*), which verifies the
        server against *ca_file* (else the system store) and checks its name.
    :param ca_file: the CA that signs the server's certificate (``sessiond gen-cert``'s).
    :param cert_file: this client's certificate, for mutual TLS; *key_file* its key.
    :param key_file: the key of *cert_file*, when not in the same file.
    :param server_hostname: the name checked in the server's certificate (default: the
        URL's host).
    :param params: protocol parameters (heartbeat, windows, lifetime, handshake timeout;
        protocol.md §3). ``params.handshake_timeout`` (10 s) bounds each connection
        attempt: TCP, TLS and handshake.
    :param policy: when to reconnect once the session is established (exponential
        backoff with full jitter, protocol.md §12); unbounded by default: transport
        failures are then invisible. The server's retry-after and redirect are obeyed.
    :param wait_for_server: also retry the *first* connection per *policy*, until the
        server appears (or the policy gives up). By default the first connection is
        one attempt, and its failure raises :class:`ConnectFailed` at once.
    :param fresh_session: when the server cannot resume the session, continue with a
        new one (told through :attr:`Session.notices`) instead of raising
        :class:`SessionLost`.
    :param state_file: a path: the session then survives a restart of this process
        (:mod:`sessiond_client.state_file`).

    :raises ConnectFailed: the first connection failed (refused, unreachable, DNS, TLS,
        no handshake in time, credentials refused); the message names *url* and says why.
    :raises SessionLost: a ``state_file`` session the server no longer knows; its
        ``undelivered`` holds the messages that were kept in the file.
    :raises StateFileError: the state file cannot be used (another process holds it).
    """
    session = Session(
        url,
        credentials=credentials,
        ssl=ssl,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        server_hostname=server_hostname,
        params=params,
        policy=policy,
        wait_for_server=wait_for_server,
        fresh_session=fresh_session,
        state_file=state_file,
    )
    await session._start()
    if session._lost is not None:
        session._shutdown()
        raise session._lost
    return session
