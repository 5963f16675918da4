"""The asyncio client: a session that reconnects and resumes by itself.

``session = await connect("tcp://127.0.0.1:7420")``, then ``send``, ``recv``,
``async for``, ``close``. Transport failures are invisible: the client
reconnects (:class:`~sessiond_client.backoff.ReconnectPolicy`), resumes, and
both sides replay what the other missed. Sends made while offline wait in the
window and go out after the replay. When the server cannot resume the session,
``send``/``recv`` raise :class:`SessionLost` with the reason.

The protocol decisions are the core's (:mod:`sessiond_client.protocol`); this
module moves bytes, runs one timer per session and sleeps only between
reconnect attempts.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Callable
from os import PathLike
from typing import Any
from urllib.parse import urlsplit

from .backoff import ReconnectPolicy
from .handoff import Handoff
from .protocol import (
    CloseCode,
    Connection,
    ConnectionState,
    GoawayReceived,
    Params,
    Role,
    SessionEnded,
    SessionLost,
    SessionLostEvent,
    SessionResumed,
    SessionStarted,
    SessionState,
    TransportLost,
)
from .protocol import Session as CoreSession
from .state_file import StateFile

Credentials = Any  # a value, or a callable (sync or async) returning one


class State(enum.Enum):
    """What a :class:`Session` is doing, as a UI would show it."""

    CONNECTING = "connecting"
    ACTIVE = "active"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


def parse_url(url: str) -> tuple[str, int, bool]:
    """``tcp://host:port`` or ``tls://host:port`` to (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
        raise ValueError(f"expected tcp://HOST:PORT or tls://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port, parts.scheme == "tls"


class _Protocol(asyncio.Protocol):
    """One transport: hands bytes to the session; nothing else."""

    def __init__(self, session: Session, conn: Connection) -> None:
        self.session = session
        self.conn = conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session._flush()

    def data_received(self, data: bytes) -> None:
        if self.session._proto is self:
            self.conn.receive_data(data, self.session._loop.time())
            self.session._after_input()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session._proto is self:
            self.conn.connection_lost(self.session._loop.time())
            self.session._after_input()


class Session:
    """A client session; create it with :func:`connect`, which takes these options:

    * ``credentials``: a value, or a callable (sync or async) called before every
      connection attempt, so that expiring tokens are refreshed;
    * ``ssl`` (an ``SSLContext``), or ``ca_file``, ``cert_file``, ``key_file`` for
      :func:`tls_context`; a ``tls://`` URL verifies the server by default;
      ``server_hostname`` overrides the name checked;
    * ``policy``: a :class:`ReconnectPolicy`; ``params``: protocol parameters;
    * ``fresh_session``: when the server cannot resume, continue with a new session
      (told through :attr:`notices`) instead of raising :class:`SessionLost`;
    * ``state_file``: a path; the session then survives a restart of this process
      (:mod:`sessiond_client.state_file`).
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
        fresh_session: bool = False,
        state_file: str | PathLike[str] | None = None,
    ) -> None:
        self._host, self._port, tls = parse_url(url)
        if tls and ssl is None:
            ssl = tls_context(ca_file, cert_file, key_file)
        self._ssl = ssl if tls else None
        self._server_hostname = server_hostname if tls else None
        self._credentials = credentials
        self._policy = policy or ReconnectPolicy()
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
        self._handoff = Handoff(self._core, self._loop, flush, self._failure, take_limit)
        self._flush_pending = False
        self._state = State.CONNECTING
        self._listeners: list[Callable[[State], None]] = []
        self._lost: SessionLost | None = None
        self._closing = False
        self._reconnect: asyncio.Task[None] | None = None
        self._handshake: asyncio.Future[CloseCode | None] | None = None
        self._retry_after = 0.0
        self._last_error = ""
        #: Events the application may want (session replaced, goaway), newest last.
        self.notices: deque[object] = deque(maxlen=64)

    # ------------------------------------------------------------- public

    @property
    def id(self) -> str | None:
        """The session ID (hex), once the first handshake completed."""
        return self._core.id.hex() if self._core.id else None

    @property
    def state(self) -> State:
        return self._state

    def on_state_change(self, callback: Callable[[State], None]) -> None:
        """Call *callback(state)* on every change (connecting, active, reconnecting, closed)."""
        self._listeners.append(callback)

    async def send(self, payload: bytes, timeout: float | None = None) -> None:
        """Queue one message; waits while the server's window is full."""
        async with asyncio.timeout(timeout):
            await self._handoff.send(payload)

    async def recv(self) -> bytes:
        """The next message, in order; raises SessionLost once the session has ended."""
        return await self._handoff.recv()

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

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except SessionLost:
                return

    async def close(self, timeout: float = 5.0) -> None:
        """Wait (at most *timeout*) for sent messages to be acknowledged, then end the
        session for good (CLOSE NORMAL) and close the transport."""
        if self._state is State.CLOSED:
            return
        await self._handoff.acknowledged(timeout)
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self._core.close(self._loop.time())
        self._flush()
        self._after_input()
        self._shutdown()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------- connecting

    async def _start(self) -> None:
        await self._connect_loop(CloseCode.TRANSPORT_LOST, first=True)

    async def _connect_loop(self, code: CloseCode, first: bool = False) -> None:
        """Connect (or reconnect) until a handshake succeeds or the policy gives up."""
        started = self._loop.time()
        attempt = 0
        while True:
            if self._policy.gives_up(attempt, self._loop.time() - started):
                why = f": {self._last_error}" if self._last_error else ""
                self._set_lost(SessionLost(code, f"gave up after {attempt} attempts{why}"))
                return
            if attempt or not first:
                delay = self._policy.delay(attempt, code, self._retry_after)
                if delay:
                    await asyncio.sleep(delay)
                    if self._lost is not None or self._closing:
                        return  # the session expired (§8.3) or was closed meanwhile
            attempt += 1
            outcome = await self._attempt()
            if outcome is None or self._lost is not None or self._closing:
                return
            code = outcome

    async def _attempt(self) -> CloseCode | None:
        """One connection attempt; None when the session is attached again."""
        credentials = self._credentials
        if callable(credentials):
            credentials = credentials()
            if inspect.isawaitable(credentials):
                credentials = await credentials
        conn = self._core.connect(self._loop.time(), credentials)
        proto = _Protocol(self, conn)
        self._proto = proto
        self._handshake = self._loop.create_future()
        self._arm()
        try:
            async with asyncio.timeout(self._core.params.handshake_timeout):
                await self._loop.create_connection(
                    lambda: proto,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl else None,
                )
        except (OSError, TimeoutError, ssl_module.SSLError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            if self._proto is proto:
                conn.connection_lost(self._loop.time())
                self._after_input()
            if isinstance(exc, ssl_module.SSLCertVerificationError) and self._core.id is None:
                # A server that cannot be verified before any session exists is a
                # misconfiguration, not a network fault: waiting will not fix it.
                self._set_lost(SessionLost(CloseCode.TRANSPORT_LOST, f"TLS: {exc.verify_message}"))
                return None
            return CloseCode.TRANSPORT_LOST
        self._last_error = ""
        return await self._handshake

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
            if isinstance(event, SessionStarted) and event.replaces is not None:
                self.notices.append(event)
            self._retry_after = 0.0
            self._set_state(State.ACTIVE)
            self._finish_handshake(None)
        elif isinstance(event, SessionLostEvent):
            self._handoff.deliver(event.unread)  # already received: still delivered
            self.notices.append(event)
            if not self._fresh:
                self._set_lost(SessionLost(event.reason, "the server could not resume"))
                self._core.close(self._loop.time())  # the new session is not wanted
                self._flush()
        elif isinstance(event, GoawayReceived):
            self.notices.append(event)
            self._retry_after = event.retry_after
            if event.redirect:
                self._redirect(event.redirect)
        elif isinstance(event, TransportLost):
            self._on_transport_lost(event.code, event.retry_after)
        elif isinstance(event, SessionEnded):
            if not self._closing and self._lost is None:
                self._set_lost(SessionLost(event.code, event.reason))
            self._finish_handshake(event.code)
            self._shutdown()

    def _on_transport_lost(self, code: CloseCode, retry_after: float) -> None:
        proto = self._proto
        self._proto = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._retry_after = max(self._retry_after, retry_after)
        if self._handshake is not None and not self._handshake.done():
            self._finish_handshake(code)  # the attempt loop carries on
            return
        if self._closing or self._lost is not None:
            return
        self._set_state(State.RECONNECTING)
        self._reconnect = self._loop.create_task(self._connect_loop(code))

    def _finish_handshake(self, outcome: CloseCode | None) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(outcome)

    def _set_lost(self, lost: SessionLost) -> None:
        if self._lost is None:
            self._lost = lost
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
        if self._store is not None:
            self._persist()
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        data = proto.conn.data_to_send()
        if data:
            proto.transport.write(data)
        if proto.conn.closed:
            proto.transport.close()

    def _flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_pending = False
        self._flush()

    def _wake(self) -> None:
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
        self._core.handle_timer(self._loop.time())
        self._after_input()

    @property
    def core(self) -> CoreSession:
        """The protocol core (sequence numbers, unacknowledged messages)."""
        return self._core

    @property
    def connected(self) -> bool:
        proto = self._proto
        return proto is not None and proto.conn.state is ConnectionState.OPEN


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


async def connect(url: str, **options: Any) -> Session:
    """Open a session to *url* (``tcp://`` or ``tls://``); see :class:`Session` for options.

    Raises :class:`SessionLost` if no session could be established (refused, or
    the reconnect policy gave up).
    """
    session = Session(url, **options)
    await session._start()
    if session._lost is not None:
        session._shutdown()
        raise session._lost
    return session
