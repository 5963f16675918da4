"""The asyncio adapter: moves bytes between transports and protocol cores, runs timers.

No protocol decision lives here. Per transport, :class:`ServerProtocol` feeds
the core's :class:`~sessiond_client.protocol.Connection`, writes its output
once per read (or once per loop tick for application sends), and keeps one
timer armed at the core's next deadline. :class:`Server` holds the sessions,
answers HELLOs and runs one handler task per session.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import contextvars
import inspect
import logging
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from sessiond_client.protocol import (
    CloseCode,
    Connection,
    ConnectionState,
    Event,
    Params,
    SessionEnded,
    SessionLost,
    SessionResumed,
    SessionStarted,
    TransportLost,
)
from sessiond_client.protocol import Session as CoreSession

from .accept import Listener, bind
from .auth import AuthenticationFailed, Authenticator, OpenAuthenticator, Peer
from .budgets import Budgets, LimitExceeded, Limits
from .deadlines import Deadlines, Slot
from .durable import Durability
from .heap import map_large_blocks
from .hops import protocol_class
from .logs import lifecycle
from .refusals import Refusals
from .registry import MemoryRegistry, Registry
from .session import DurableSession, Session
from .stats import Stats
from .tasks import end
from .tls import peer_identity

if TYPE_CHECKING:  # redis is an optional dependency (the [redis] extra)
    from .store.redisstore import RedisStore

log = logging.getLogger("sessiond")
#: Connections the kernel queues before accept (asyncio's default is 100): after a
#: reconnect storm (every client of a network cut at once) a short queue drops SYNs,
#: and each dropped client waits a second for its retransmit. Linux caps it at
#: net.core.somaxconn.
LISTEN_BACKLOG = 4096
_CLOSED = ConnectionState.CLOSED

Handler = Callable[[Session], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Daemon settings that are not protocol parameters."""

    params: Params = field(default_factory=Params)
    authenticator: Authenticator = field(default_factory=OpenAuthenticator)
    max_sessions: int = 100_000
    max_transports_per_peer: int = 256  # open transports from one IP address
    remembered_ended: int = 10_000  # ended session IDs kept to answer resumes with a reason
    drain_timeout: float = 10.0
    close_grace: float = 2.0  # how long a closed transport may take to flush its output
    limits: Limits = field(default_factory=Limits)  # what one client may cost (budgets.py)
    # TLS transports read ciphertext into one buffer they all share (asyncio's TLS
    # protocol, see _SharedBufferTls): about 4 KiB less per idle TLS session than uvloop's
    # own, which keeps a 256 KiB buffer per transport, for a little more CPU per TLS
    # record (the daemon's tls.idle_memory = "compact"; issue 18).
    tls_shared_buffer: bool = True
    # With uvloop's TLS protocol (tls_shared_buffer False): a TLS listener fixes glibc's
    # mmap threshold, so that only the touched pages of those buffers are resident, for
    # more CPU per large output batch (sessiond/heap.py).
    map_large_blocks: bool = False


#: The name of every handler's task (``repr(session)`` tells the sessions apart).
_HANDLER = "sessiond handler"


class _Entry:
    """A live session: its core, its handler-facing object, its task and its timer."""

    __slots__ = (
        "core",
        "created",
        "dirty",
        "owner",
        "peer_host",
        "peer_port",
        "protocol",
        "server",
        "session",
        "slot",
        "taken_over",
        "task",
    )

    def __init__(self, core: CoreSession, server: Server) -> None:
        self.core = core
        self.server = server
        # With a store, a message counts as consumed once the handler is done with it.
        kind = Session if server.durable is None else DurableSession
        self.session = kind(core, server.loop, self)
        self.protocol: ServerProtocol | None = None
        self.task: asyncio.Task[None] | None = None
        self.slot = Slot(self)  # its place in the server's Deadlines
        self.dirty = False  # output to write at the end of this loop tick
        self.peer_host = ""  # the last transport's peer (host interned, port: no string
        self.peer_port: int | None = None  # per session until a log line needs one)
        self.taken_over = False
        self.created = server.loop.time()  # for operators (sessiond sessions list)
        self.owner = ""  # the address that opened it: its budgets (budgets.py) count it

    @property
    def peer(self) -> str:
        return _peer_text(self.peer_host, self.peer_port)

    def flush(self) -> None:
        if not self.dirty:  # called for every message sent: once per tick is enough
            self.server.schedule_flush(self)

    def write_now(self) -> None:
        """The handler waits for input: write what it queued now, not at the end of the
        tick (its flush may be queued ahead of it, see hops.py). Not with a store: the
        tick's commit comes first. With no event to act on, the rest of the tick's pass
        (re-arm the timer: a take may have set an ACK deadline) is done here too, and
        the tick's flush passes this session by; with one, the tick's flush acts on it."""
        protocol = self.protocol
        if self.dirty and protocol is not None and self.server.durable is None:
            conn = protocol.conn
            if conn is not None and protocol.transport is not None and not protocol._write_paused:
                data = conn.data_to_send()  # ServerProtocol.flush, inlined (once per read)
                if data or conn.state is _CLOSED:
                    protocol.write_out(data)
            else:
                protocol.flush()
            core = self.core
            if not core.has_events and self.protocol is protocol:
                self.dirty = False
                deadline = core.next_deadline()  # Server.arm, inlined (once per read)
                if deadline is not None:
                    slot = self.slot
                    pending = slot.pending  # the earliest time pending (Slot.pending)
                    if isinstance(pending, tuple):
                        pending = pending[-1]
                    if pending is None or pending > deadline:  # else schedule() returns
                        self.server._deadlines.schedule(slot, deadline)


class Server:
    """Sessions, handlers and listeners of one daemon process."""

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig | None = None,
        registry: Registry[_Entry] | None = None,
        store: RedisStore | None = None,
    ) -> None:
        self.handler = handler
        self.config = config or ServerConfig()
        self.loop = asyncio.get_running_loop()
        #: Where sessions live; any :class:`~sessiond.registry.Registry` will do.
        self.sessions: Registry[_Entry] = registry or MemoryRegistry(self.config.remembered_ended)
        self.protocols: set[ServerProtocol] = set()
        self.per_host: dict[str, int] = {}
        self.tls_pending = 0  # TLS handshakes in progress (each holds a descriptor)
        # Refuse new transports typed while some descriptors are left: once none is,
        # accept itself fails (logged and paused by accept.py, but untyped).
        self.transport_limit = _descriptor_limit() - self.config.limits.fd_reserve
        self.partial_bytes = 0  # held for incomplete frames, all transports
        self.refusals = Refusals(log)  # refusal log lines, rate-limited with counts
        self.budgets = Budgets(self.config.limits)  # per address and identity
        self.listeners: list[Listener] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False  # close() has begun: no HELLO is answered any more
        self._handlers: dict[asyncio.Task[None], _Entry] = {}
        # One bound method and one (empty) context for every handler's done callback,
        # instead of a new pair per session.
        self._on_handler_done = self._handler_done
        self._callback_context = contextvars.Context()
        self._dirty: list[_Entry] = []
        self._flush_scheduled = False
        self._deadlines: Deadlines[_Entry] = Deadlines(self.loop, self._on_timer)
        #: Event counters for metrics (sessiond.metrics reads them, and live state, on scrape).
        self.stats = Stats()
        #: With a shared store (started already; the server closes it): write-through of
        #: every session, resumes of sessions held by other processes (sessiond/durable.py).
        self.durable = Durability(self, store) if store is not None else None
        # The plain-TCP transport class: a traced subclass with TRACE_SESSIOND_HOPS (hops.py).
        self._protocol_class, self.hop_trace = protocol_class(ServerProtocol, self.loop)

    # ------------------------------------------------------------- listening

    async def listen(
        self, host: str, port: int, ssl: Any = None, reuse_port: bool = False
    ) -> Listener:
        """Accept transports on *host*:*port* (TLS when *ssl* is an SSLContext); with
        *reuse_port*, beside other processes on the same port (sessiond/workers.py)."""
        # TLS: the listener accepts plain TCP and TlsAccept runs the TLS handshake
        # (loop.start_tls), so the transport counts against its address's limit from
        # accept, not only once its handshake is done.
        factory: Callable[[], asyncio.Protocol]
        if ssl is None:
            factory = lambda: self._protocol_class(self)  # noqa: E731
        else:
            if self.config.map_large_blocks and not self.config.tls_shared_buffer:
                map_large_blocks()  # each TLS transport's 256 KiB read buffer: sessiond/heap.py
            factory = lambda: TlsAccept(self, ssl)  # noqa: E731
        # Our own accept (accept.py): running out of descriptors is logged and waited out.
        sockets = bind(host, port, LISTEN_BACKLOG, reuse_port)
        listener = await Listener.start(self, sockets, factory, LISTEN_BACKLOG)
        self.listeners.append(listener)
        return listener

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually bound."""
        return [
            (sock.getsockname()[0], sock.getsockname()[1])
            for listener in self.listeners
            for sock in listener.sockets
        ]

    async def drain(
        self, timeout: float, retry_after: float = 1.0, redirect: str | None = None
    ) -> bool:
        """Stop accepting, send GOAWAY, wait (at most *timeout*) until every attached
        session's messages are acknowledged, then close (protocol.md §11). GOAWAY tells
        clients to wait *retry_after* seconds and, with *redirect* (a URL), where to go.

        Returns True when everything was acknowledged in time.
        """
        for listener in self.listeners:
            listener.close()
        now = self.loop.time()
        for protocol in list(self.protocols):
            if protocol.conn is not None and not protocol.conn.closed:
                protocol.conn.goaway(now, retry_after, redirect, "server draining")
                protocol.flush()
        deadline = now + timeout
        drained = False
        # Polling is fine here: it runs once, at shutdown, bounded by the drain timeout.
        while True:
            drained = all(
                entry.protocol.drained
                for entry in self.sessions.values()
                if entry.protocol is not None
            )
            if drained or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        log.info("drained: %s", "all acknowledged" if drained else "timeout")
        await self.close(retry_after)
        return drained

    async def close(self, retry_after: float = 1.0) -> None:
        """Stop listening and close every transport with GOING_AWAY (sessions are dropped,
        or, with a store, released for another process to resume). Resumes in flight end
        first: one refused answers GOING_AWAY, a session one claimed is released too."""
        self.closing = True
        for listener in self.listeners:
            listener.close()
        # Resumes (and identity checks) end first, cancelled again while they run (a
        # cancel can be lost in redis-py: sessiond/tasks.py): a session one of them
        # claims from the store meanwhile is held by then, so release_all releases it.
        # One claimed later would be dropped here unreleased, left to the lease.
        bound = self.durable.store.timeout + 1.0 if self.durable is not None else 1.0
        await end(list(self.tasks), bound)
        if self.durable is not None:
            await self.durable.release_all(retry_after)
        now = self.loop.time()
        for protocol in list(self.protocols):
            if protocol.conn is not None:
                protocol.conn.close(now, CloseCode.GOING_AWAY, "server shutting down", retry_after)
            protocol.close_now()
        self._deadlines.clear()
        self.sessions.clear()
        tasks = [*self.tasks, *self._handlers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Every transport closes (connection_lost takes it out of self.protocols); one
        # still lingering (a peer that neither reads nor closes) is aborted after
        # close_grace, so shutdown is bounded. Polled: this runs once, at shutdown.
        deadline = self.loop.time() + self.config.close_grace + 1.0
        while self.protocols and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.protocols:
            log.warning("transports still open after close_grace: aborted")
            for protocol in list(self.protocols):
                if protocol.transport is not None:
                    protocol.transport.abort()
        self.refusals.close()
        if self.hop_trace is not None:
            self.hop_trace.dump()
        if self.durable is not None:
            await self.durable.close()

    def reconfigure(self, config: ServerConfig) -> None:
        """New settings (SIGHUP): ``limits`` apply at once (budgets.py: budgets keep their
        counts; detached sessions above a lowered byte budget are evicted now)."""
        self.config = config
        self.transport_limit = _descriptor_limit() - config.limits.fd_reserve
        for sid in self.budgets.reconfigure(config.limits, self.loop.time()):
            self._evict(sid)

    def out_of_descriptors(self, peer: str) -> bool:
        """True (and logged, rate-limited) when a new transport would eat the reserve
        of file descriptors (``limits.fd_reserve``)."""
        if len(self.protocols) + self.tls_pending <= self.transport_limit:
            return False
        why = "file descriptors nearly exhausted (limits.fd_reserve)"
        self.refusals.note("limit", peer, why, logging.WARNING, limit="fd_reserve")
        return True

    # -------------------------------------------------------------- sessions

    def on_hello(self, protocol: ServerProtocol, conn: Connection) -> None:
        """Authenticate a HELLO, then answer it (now, or when an async authenticator is done)."""
        hello = conn.hello
        assert hello is not None
        try:
            now = self.loop.time()
            self.budgets.check_auth(protocol.host, now)
            if hello.resume is not None:
                self.budgets.check_resume(protocol.host, now)
        except LimitExceeded as exc:
            self._limit(protocol, conn, exc)
            return
        try:
            result = self.config.authenticator(hello.credentials, protocol.peer_info())
        except AuthenticationFailed as exc:
            self._refuse(protocol, conn, str(exc))
            return
        if inspect.isawaitable(result):
            task = self.loop.create_task(self._await_identity(protocol, conn, result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        self.answer_hello(protocol, conn, result)

    async def _await_identity(
        self, protocol: ServerProtocol, conn: Connection, pending: Awaitable[Any]
    ) -> None:
        try:
            identity = await pending
        except AuthenticationFailed as exc:
            self._refuse(protocol, conn, str(exc))
            return
        except Exception:
            log.exception("authenticator failed for peer %s", protocol.peer)
            self._refuse(protocol, conn, "authentication unavailable")
            return
        if conn.state is ConnectionState.HELLO_RECEIVED:  # not closed meanwhile
            self.answer_hello(protocol, conn, identity)
            protocol.flush()

    def _refuse(self, protocol: ServerProtocol, conn: Connection, why: str) -> None:
        self.refusals.note("refused", protocol.peer, why)
        now = self.loop.time()
        self.budgets.failed_auth(protocol.host, now)
        conn.reject(now, CloseCode.AUTH_FAILED, "authentication failed")
        protocol.flush()

    def _limit(self, protocol: ServerProtocol, conn: Connection, exc: LimitExceeded) -> None:
        self.refusals.note("limit", protocol.peer, exc.reason, logging.WARNING, limit=exc.limit)
        conn.reject(self.loop.time(), CloseCode.LIMIT_EXCEEDED, exc.reason, exc.retry_after)
        protocol.flush()

    def answer_hello(
        self,
        protocol: ServerProtocol,
        conn: Connection,
        identity: Any,
        gone: CloseCode | None = None,
        decoy: CoreSession | None = None,
    ) -> None:
        """Resume the session a HELLO names, or open a new one, for *identity*
        (*gone*: the store said why the named session cannot be resumed; *decoy*: a
        copy of it from the store, only to answer a credential it never had)."""
        hello = conn.hello
        assert hello is not None
        now = self.loop.time()
        existing: _Entry | None = None
        missing = CloseCode.UNKNOWN_SESSION
        if self.closing:
            # Shutting down: a session taken on now (a claim from the store finishing
            # after release_all) would be neither served nor released.
            conn.reject(now, CloseCode.GOING_AWAY, "server shutting down", 1.0)
            return
        if self.durable is not None and not self.durable.accepting:
            # Nothing could be stored: no new session, no resume (protocol.md §12:
            # GOING_AWAY is retried after retry_after, the session is kept).
            conn.reject(now, CloseCode.GOING_AWAY, "session store unavailable", 1.0)
            return
        if hello.resume is not None:
            existing = self.sessions.find(hello.resume.session_id)
            if existing is None and self.durable is not None and gone is None and decoy is None:
                self._spawn(
                    self.durable.resume_elsewhere(protocol, conn, identity, hello.resume.session_id)
                )
                return
            if existing is None:
                missing = gone or self.sessions.missing_reason(hello.resume.session_id)
        if existing is None and len(self.sessions) >= self.config.max_sessions:
            why = f"max_sessions ({self.config.max_sessions}) reached"
            self.refusals.note("limit", protocol.peer, why, logging.WARNING, limit="max_sessions")
            conn.reject(now, CloseCode.LIMIT_EXCEEDED, "too many sessions", 5.0)
            return
        if existing is None:  # a new session: within the address's and identity's budgets?
            try:
                self.budgets.open(protocol.host, _budget_key(identity), now)
            except LimitExceeded as exc:
                self._limit(protocol, conn, exc)
                return
        previous = existing.protocol if existing is not None else None
        core = conn.accept(now, identity, existing.core if existing else decoy, missing)
        conn.hello = None  # answered: neither its credentials nor its memory are kept
        if hello.resume is not None and (existing is None or core is not existing.core):
            self.budgets.failed_resume(protocol.host, now)
            if existing is not None and core is not None:  # a new session after all
                self.budgets.open(protocol.host, _budget_key(identity), now, check=False)
        if existing is not None and core is existing.core:
            self.stats.resume_seconds.observe(now - conn.opened_at)
            if previous is not None:
                existing.taken_over = previous is not protocol
        if previous is not None and previous is not protocol and previous.closed:
            previous.entry = None  # taken over (or ended): write its CLOSE and drop it
            if self.durable is not None and existing is not None:
                self.durable.stage(existing, previous)
            else:
                previous.flush()
        if existing is not None:
            if existing.core.end_code is CloseCode.CREDENTIAL_REUSED:
                # A retired credential came back: someone copied it (protocol.md §10).
                lifecycle(
                    log,
                    "credential-reused",
                    hello.resume.session_id.hex()[:8] if hello.resume else "",
                    logging.WARNING,
                    peer=protocol.peer,
                    identity=identity,
                    owner=existing.peer,
                )
            self.process(existing)
        if core is None:
            return
        sid = core.id or b""
        entry = self.sessions.find(sid)
        if entry is None:
            entry = _Entry(core, self)
            entry.owner = protocol.host
            self.sessions.create(sid, entry)
            if self.durable is not None:
                self.durable.created(entry)
        elif self.durable is not None and existing is not None and core is existing.core:
            self.durable.resumed(entry)
        self.sessions.attach(sid)
        entry.protocol = protocol
        entry.peer_host, entry.peer_port = protocol.host, protocol.port
        protocol.entry = entry
        self.process(entry)

    def process(self, entry: _Entry, after_input: bool = True, writes: bool = False) -> None:
        """Act on a session's events, wake its handler (or hand its messages to its
        synchronous receiver, ``Session.receive_with``) and re-arm its timer.

        Without *after_input* (after a flush) no flush is queued for unread
        messages: they were there when the handler was woken, and a handler
        that leaves them unread must not keep the loop busy. With *writes* the
        caller writes the core's output right after (the read callback): what a
        receiver sends leaves in that write.
        """
        core = entry.core
        if core.has_events:
            evict = self._act(entry, core.events())
        elif after_input:
            evict = None
        else:
            # After a flush with nothing new, no waiter can have become ready: messages
            # and window come with input, an end with an event (one call less per tick).
            self.arm(entry)
            return
        session = entry.session
        if session.receiver is None and session._backlog is None:
            session.wake()
            if (
                after_input
                and not entry.dirty
                and core.messages_waiting
                and entry.protocol is not None
            ):
                # The woken handler runs next iteration; a flush queued behind it writes its
                # replies in that same iteration instead of one later (echo latency).
                self.schedule_flush(entry)
        else:
            # (Messages left waiting here wait for window: the input that opens it feeds
            # them; no flush to queue for them.)
            session.feed(writes)
        if evict is None:
            if entry.dirty:
                # A pass for this session comes in this loop iteration or the next (its
                # handler's write_now, else the tick's flush) and arms the timer then,
                # once the handler has had its turn (a take sets an ACK deadline): one
                # arming per read, not two.
                return
            self.arm(entry)
            return
        self.arm(entry)
        for sid in evict:
            self._evict(sid)

    def _act(self, entry: _Entry, events: list[Event]) -> list[bytes]:
        """Log and count a session's lifecycle events; return the sessions to evict."""
        core = entry.core
        evict: list[bytes] = []
        for event in events:
            self._count(entry, event)
            if isinstance(event, SessionStarted):
                self._log(entry, "created", replaces=event.replaces)
                self._start_handler(entry)
            elif isinstance(event, SessionResumed):
                what = "taken over" if entry.taken_over else "resumed"
                entry.taken_over = False
                self.budgets.attach(core.id or b"", entry.owner)
                self._log(entry, what, replayed=event.replayed)
            elif isinstance(event, TransportLost):
                self._log(entry, "detached", code=event.code)
                self._unhook(entry)
                self.sessions.detach(core.id or b"", self.loop.time())
                if core.end_code is None:
                    evict = self.budgets.detach(core.id or b"", entry.owner, core.held_bytes)
                if self.durable is not None:
                    self.durable.detached(entry)
            elif isinstance(event, SessionEnded):
                what = "expired" if event.code is CloseCode.SESSION_EXPIRED else "closed"
                self._log(entry, what, code=event.code, by_peer=event.by_peer)
                self._forget(entry, event.code)
        return evict

    def _evict(self, sid: bytes) -> None:
        """End a detached session that its memory budget no longer holds: it expires
        early, and the returning client learns SESSION_EXPIRED (protocol.md §12.1)."""
        entry = self.sessions.find(sid)
        if entry is None or entry.protocol is not None:
            return
        why = "detached sessions over their memory budget"
        self.refusals.note("evicted", entry.peer, why, logging.WARNING, session=sid.hex()[:8])
        entry.core.close(self.loop.time(), CloseCode.SESSION_EXPIRED, f"evicted: {why}")
        self.process(entry)

    def _start_handler(self, entry: _Entry) -> None:
        # The handler's coroutine is the task itself, and one callback sees it end:
        # no wrapper coroutine per session (idle memory, see bench/). One name for all:
        # asyncio would make a "Task-N" string per task (64 bytes per idle session).
        entry.task = task = self.loop.create_task(self.handler(entry.session), name=_HANDLER)
        self._handlers[task] = entry
        task.add_done_callback(self._on_handler_done, context=self._callback_context)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def adopt(self, core: CoreSession, data: dict[str, Any]) -> _Entry:
        """A session recovered from the store (detached): register it and start its
        handler, with the stored ``data`` and ``session.recovered`` set."""
        entry = _Entry(core, self)
        entry.session.recovered = True
        entry.session.data.update(data)
        sid = core.id or b""
        sent, _, received, _ = core.sequence_numbers
        self.stats.session_adopted(sent, received)
        self.sessions.create(sid, entry)
        self.sessions.detach(sid, self.loop.time())
        self._log(entry, "recovered")
        self._start_handler(entry)
        self.arm(entry)
        return entry

    def let_go(self, entry: _Entry) -> None:
        """The session moved to another process: forget it here; its handler ends with
        :class:`~sessiond.session.SessionMoved`."""
        sid = entry.core.id or b""
        self._release_budget(entry)
        if self.sessions.find(sid) is entry:
            self.sessions.remove(sid)
        self._deadlines.release(entry.slot)
        protocol = entry.protocol
        entry.protocol = None
        if protocol is not None:
            protocol.entry = None
        self._log(entry, "moved")
        sent, _, received, _ = entry.core.sequence_numbers
        self.stats.session_moved(sent, received)
        entry.session.move_away()

    def _forget(self, entry: _Entry, code: CloseCode) -> None:
        sid = entry.core.id or b""
        self._release_budget(entry)
        if self.sessions.find(sid) is entry:
            self.sessions.expire(sid, code)
        self._deadlines.release(entry.slot)
        self._unhook(entry)
        if self.durable is not None:
            self.durable.ended(entry, code)
        entry.session.release()  # its buffers go now, whatever still refers to it

    def _unhook(self, entry: _Entry) -> None:
        """The core closed the session's transport: the session leaves it. With a store,
        the transport's last output (its CLOSE, after anything queued before it) is staged
        now: the tick's flush stages ``entry.protocol`` only, so an end or detach acted
        on before it (input read, or a timer, in the same tick as an operator's end; a
        malformed frame; an idle timeout) would leave the CLOSE unwritten and the
        transport open for good. (An end acted on by that flush is staged twice, the
        second time with nothing to write: write_out ignores it.)"""
        protocol = entry.protocol
        entry.protocol = None
        if protocol is not None and self.durable is not None:
            self.durable.stage(entry, protocol)

    def _release_budget(self, entry: _Entry) -> None:
        """The session no longer counts against its address's and identity's budgets."""
        if entry.owner:
            sid = entry.core.id or b""
            self.budgets.close(sid, entry.owner, _budget_key(entry.core.identity))
            entry.owner = ""

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        entry = self._handlers.pop(task)
        # The task holds its exception, whose traceback holds the handler's frames (its
        # batches, the session): with entry.task -> task -> ... -> session -> entry a
        # cycle, it would all wait for the cyclic garbage collector.
        entry.task = None
        session = entry.session
        if task.cancelled():
            return
        # Retrieved in every case, SessionMoved included: asyncio logs an exception
        # never retrieved as an error ("Task exception was never retrieved").
        exc = task.exception()
        if session.moved:
            return
        if exc is None:
            if not session.ended:
                session.close(CloseCode.NORMAL, "handler returned")
            return
        if isinstance(exc, SessionLost) and session.ended:
            return  # the session ended under a send() or recv(): the peer's doing, no fault
        log.error("handler failed for session %s", session.id[:8], exc_info=exc)
        if not session.ended:
            session.close(CloseCode.SESSION_REVOKED, "handler failed")

    def _count(self, entry: _Entry, event: object) -> None:
        """Metrics of one lifecycle event (the event itself is counted by _log)."""
        if isinstance(event, SessionEnded):
            sent, _, received, _ = entry.core.sequence_numbers
            self.stats.session_ended(event.code.name, sent, received)
        elif isinstance(event, SessionStarted) and event.replaces is not None:
            self.stats.resume_failed_as(event.replaces.name)

    def _log(self, entry: _Entry, what: str, **details: Any) -> None:
        self.stats.event(what)
        lifecycle(
            log,
            what,
            (entry.core.id or b"").hex()[:8],
            peer=entry.peer,
            identity=entry.core.identity,
            **details,
        )

    # ---------------------------------------------------------------- timers

    def arm(self, entry: _Entry) -> None:
        """Re-arm the session's timer for its core's next deadline."""
        deadline = entry.core.next_deadline()
        if deadline is not None:
            slot = entry.slot
            pending = slot.pending  # the earliest time pending (Slot.pending)
            if isinstance(pending, tuple):
                pending = pending[-1]
            if pending is None or pending > deadline:  # else schedule() returns at once
                self._deadlines.schedule(slot, deadline)

    def _on_timer(self, entry: _Entry) -> None:
        entry.core.handle_timer(self.loop.time())
        protocol = entry.protocol
        if protocol is not None:
            protocol.flush()
        self.process(entry)

    # ---------------------------------------------------------------- output

    def schedule_flush(self, entry: _Entry) -> None:
        """Write a session's pending output once, at the end of this loop tick."""
        if entry.protocol is None:
            if entry.core.end_code is not None:
                self.process(entry)
            return
        entry.dirty = True
        self._dirty.append(entry)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        if self.durable is not None:
            self.durable.flush(dirty)
            return
        for entry in dirty:
            if not entry.dirty:
                continue  # its handler's write_now did the pass (or it is listed twice)
            entry.dirty = False
            protocol = entry.protocol
            if protocol is not None:
                protocol.flush()
            self.process(entry, False)


class ServerProtocol(asyncio.Protocol):
    """One transport: feeds its Connection and writes what comes out.

    Backpressure (guarantee 9): while the transport's write buffer is above its high
    water mark the core's output stays in the core (bounded by the session's window)
    and nothing is read from the peer, so its PINGs and ACKs wait in the kernel; a
    read is processed in slices of ``limits.read_slice`` bytes, one per loop turn.
    """

    __slots__ = (
        "_backlog",
        "_closing",
        "_continue_handle",
        "_fed",
        "_held",
        "_partial_boundary",
        "_partial_timer",
        "_read_paused",
        "_stall_timer",
        "_timer",
        "_write_paused",
        "conn",
        "entry",
        "host",
        "port",
        "server",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.entry: _Entry | None = None
        self.host = ""  # interned: the many transports of one address share it
        self.port: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False  # the core closed it: FIN sent, waiting for the peer's
        self._write_paused = False  # the transport's output is above its high water mark
        self._read_paused = False
        self._backlog = b""  # input read but not yet processed (beyond one slice)
        self._continue_handle: asyncio.Handle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._fed = 0  # bytes received so far (a stream offset)
        self._held = 0  # of which held for an incomplete frame (counted in server.partial)
        self._partial_boundary = -1  # where that frame started when its timer was armed
        self._partial_timer: asyncio.TimerHandle | None = None

    @property
    def peer(self) -> str:
        """``host:port`` of the client, for logs."""
        return _peer_text(self.host, self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        limits = self.server.config.limits
        self.transport.set_write_buffer_limits(limits.write_buffer_high, limits.write_buffer_low)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.host, self.port = sys.intern(str(peer[0])), peer[1]
        else:
            self.host = sys.intern(str(peer))
        server = self.server
        self.conn = Connection.server(server.config.params, server.loop.time())
        server.protocols.add(self)
        if transport.get_extra_info("ssl_object") is not None:
            server.stats.tls_handshakes += 1
        count = server.per_host.get(self.host, 0) + 1
        server.per_host[self.host] = count
        if server.out_of_descriptors(self.peer):
            retry_after = server.config.limits.retry_after
            self.conn.reject(
                server.loop.time(), CloseCode.LIMIT_EXCEEDED, "server busy", retry_after
            )
            self.flush()
            return
        if count > server.config.max_transports_per_peer:
            why = f"max_transports_per_peer ({server.config.max_transports_per_peer}) reached"
            server.refusals.note(
                "limit", self.peer, why, logging.WARNING, limit="max_transports_per_peer"
            )
            self.conn.reject(
                server.loop.time(), CloseCode.LIMIT_EXCEEDED, "too many transports", 5.0
            )
            self.flush()
            return
        deadline = self.conn.next_deadline()
        if deadline is not None:
            self._timer = server.loop.call_at(deadline, self._on_handshake_timer)

    def data_received(self, data: bytes) -> None:
        if self._backlog:  # reading is paused meanwhile; keep stream order regardless
            self._backlog += data
            return
        size = self.server.config.limits.read_slice
        if len(data) > size:
            self._backlog = data[size:]
            data = data[:size]
            self._update_reading()
            self._continue_later()
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        server = self.server
        server.stats.bytes_in += len(data)
        conn.receive_data(data, server.loop.time())
        self._fed += len(data)
        held = conn.buffered_input
        if held or self._held:
            self._check_partial(conn, held)
        if self.entry is None and conn.hello is not None and not conn.closed:
            self._cancel_timer()
            server.on_hello(self, conn)
        entry = self.entry
        if entry is not None:
            # A receiver's replies leave in this read's write, unless more of the read
            # waits for its turn (_continue, in the next iteration): then they leave with
            # that slice's, in one write (the tick's flush), as an awaiting handler's do.
            server.process(entry, True, not self._backlog)
            if entry.dirty and entry.protocol is self:
                # A pass over the session comes this tick (its handler's write_now, else
                # the tick's flush): it writes what this read made (an ACK, a PONG) with
                # the replies, in one write (and a flush less per read).
                return
        self.flush()

    def _check_partial(self, conn: Connection, held: int) -> None:
        """Bound what an incomplete frame may hold: per transport before the handshake,
        over all transports, and in time (whatever the heartbeat)."""
        server = self.server
        limits = server.config.limits
        server.partial_bytes += held - self._held
        self._held = held
        if not held or conn.closed:
            return
        now = server.loop.time()
        if conn.session is None and held > limits.max_hello_size:
            why = f"handshake frame above {limits.max_hello_size} bytes"
            conn.close(now, CloseCode.FRAME_TOO_LARGE, why)
        elif server.partial_bytes > limits.max_partial_bytes:
            why = "max_partial_bytes reached"
            server.refusals.note("limit", self.peer, why, limit="max_partial_bytes")
            conn.close(now, CloseCode.LIMIT_EXCEEDED, "server busy", limits.retry_after)
        elif self._partial_timer is None:
            self._partial_boundary = self._fed - held
            self._partial_timer = server.loop.call_later(
                limits.partial_frame_timeout, self._on_partial_timer
            )

    def _on_partial_timer(self) -> None:
        """A frame started partial_frame_timeout ago: still the same one? Then the
        transport is closed (IDLE_TIMEOUT: the session detaches)."""
        self._partial_timer = None
        conn = self.conn
        if conn is None or conn.closed or not self._held:
            return
        if self._fed - self._held != self._partial_boundary:  # frames completed since
            self._check_partial(conn, self._held)  # re-armed for the frame now partial
            return
        timeout = self.server.config.limits.partial_frame_timeout
        why = f"frame not completed within {timeout:.0f} s"
        conn.close(self.server.loop.time(), CloseCode.IDLE_TIMEOUT, why)
        self.flush()
        if self.entry is not None:
            self.server.process(self.entry)

    def _continue_later(self) -> None:
        if self._continue_handle is None and not self._write_paused:
            self._continue_handle = self.server.loop.call_soon(self._continue)

    def _continue(self) -> None:
        """The next slice of a large read, one loop turn after the previous one."""
        self._continue_handle = None
        transport = self.transport
        if transport is None or transport.is_closing() or self.conn is None:
            self._backlog = b""
            return
        if self._write_paused:
            return  # resume_writing continues
        size = self.server.config.limits.read_slice
        data, self._backlog = self._backlog[:size], self._backlog[size:]
        if self._backlog:
            self._continue_later()
        else:
            self._update_reading()
        self._receive(data)

    def _update_reading(self) -> None:
        """Read from the peer only while its output drains and no input waits here."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        paused = self._write_paused or bool(self._backlog)
        if paused is not self._read_paused:
            self._read_paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def pause_writing(self) -> None:
        """The transport's output passed its high water mark: stop reading the peer and
        keep further output in the core; close it if this lasts write_stall_timeout."""
        self._write_paused = True
        self._update_reading()
        if self._stall_timer is None:
            timeout = self.server.config.limits.write_stall_timeout
            self._stall_timer = self.server.loop.call_later(timeout, self._on_write_stall)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self.flush()
        if self.entry is not None:
            self.server.process(self.entry)
        if self._backlog:
            self._continue_later()
        self._update_reading()

    def _on_write_stall(self) -> None:
        """The peer read nothing for write_stall_timeout: drop the transport (typed);
        its session detaches and may resume."""
        self._stall_timer = None
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None or not self._write_paused:
            return
        limits = self.server.config.limits
        why = f"output not read for {limits.write_stall_timeout:.0f} s"
        self.server.refusals.note("limit", self.peer, why, limit="write_stall_timeout")
        conn.close(
            self.server.loop.time(),
            CloseCode.LIMIT_EXCEEDED,
            "output not read in time",
            limits.retry_after,
        )
        self._closing = True
        self._backlog = b""
        transport.abort()  # nobody reads: the CLOSE frame could not reach the peer anyway

    @property
    def drained(self) -> bool:
        """After GOAWAY: the client caught up and everything both ways was consumed."""
        conn = self.conn
        entry = self.entry
        if conn is None or conn.closed or entry is None:
            return True
        core = entry.core
        return conn.caught_up and not core.unacked_count and not core.messages_waiting

    @property
    def closed(self) -> bool:
        """True once the core has closed this transport."""
        return self.conn is not None and self.conn.closed

    def flush(self) -> None:
        """Write the core's pending output; close the transport if the core closed it.

        With a store, a session's output is written only once stored: it is taken at
        the end of this loop tick (sessiond/durable.py)."""
        conn = self.conn
        if conn is None or self.transport is None:
            return
        if self.entry is not None and self.server.durable is not None:
            self.server.schedule_flush(self.entry)
            return
        if self._write_paused and not conn.closed:
            return  # the core holds it (bounded by the window) until resume_writing
        data = conn.data_to_send()
        # (most flushes after a read have nothing to write; `closed` without its
        # property call: this runs after every read)
        if data or conn.state is _CLOSED:
            self.write_out(data)

    @property
    def write_paused(self) -> bool:
        """The transport's output is above its high water mark: the core keeps output."""
        return self._write_paused

    def write_out(self, data: bytes) -> None:
        """Write *data* (taken from the core); close the transport if the core closed it."""
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None:
            return
        if data and not self._closing:  # after the FIN of a CLOSE nothing can follow:
            # with a store, output taken before a session was dropped (its CLOSE written
            # at once, sessiond/durable.py) is never written, as it was never stored
            self.server.stats.bytes_out += len(data)
            transport.write(data)
        if conn.state is _CLOSED and not self._closing and not transport.is_closing():
            self._closing = True
            if conn.close_code is CloseCode.IDLE_TIMEOUT or conn.peer_closed:
                transport.abort()  # nobody is reading: do not wait to flush
                return
            # A lingering close: FIN after the CLOSE frame, and keep reading (and
            # discarding) until the peer closes. Closing at once would turn input still
            # unread here into a reset, and a reset can destroy the CLOSE frame before
            # the peer reads it. A peer that neither reads nor closes must not keep the
            # socket (and its per-peer count) for ever: abort after close_grace.
            if transport.can_write_eof():
                try:
                    transport.write_eof()
                except OSError:  # the peer reset it (on loopback, at once, answering
                    transport.abort()  # our CLOSE after its FIN): connection_lost follows
                    return
            else:
                transport.close()
            self.server.loop.call_later(self.server.config.close_grace, transport.abort)

    def _on_handshake_timer(self) -> None:
        self._timer = None
        conn = self.conn
        if conn is None or conn.session is not None:
            return
        conn.handle_timer(self.server.loop.time())
        self.flush()
        deadline = conn.next_deadline()
        if deadline is not None and not conn.closed:
            self._timer = self.server.loop.call_at(deadline, self._on_handshake_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def peer_info(self) -> Peer:
        """The peer as an authenticator sees it."""
        identity = None
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is not None:
            identity = peer_identity(ssl_object)
        return Peer(self.peer, self.host, identity)

    def eof_received(self) -> bool:
        """The peer half-closed: write what is still queued for it (echoes, a CLOSE
        decided this tick) before the transport closes; the core learns of the loss in
        connection_lost. With a store that output is written once committed (a CLOSE
        decided a tick ago may still be in a commit): the transport stays open, no
        longer read, until the store's writer has written it, then closes."""
        self.flush()
        durable = self.server.durable
        if durable is None or self.transport is None:
            return False
        # After the tick's flush that self.flush() queued (or that was queued before).
        self.server.loop.call_soon(durable.close_when_written, self.transport)
        # (asyncio's TLS closes on EOF whatever this says, and warns when told not to.)
        return self.transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        if self in server.protocols:
            server.protocols.discard(self)
            left = server.per_host.get(self.host, 1) - 1
            if left:
                server.per_host[self.host] = left
            else:
                server.per_host.pop(self.host, None)
        self._cancel_timer()
        self._backlog = b""
        for handle in (self._continue_handle, self._stall_timer, self._partial_timer):
            if handle is not None:
                handle.cancel()
        self._continue_handle = self._stall_timer = self._partial_timer = None
        server.partial_bytes -= self._held
        self._held = 0
        conn = self.conn
        if conn is not None:
            code = conn.close_code
            if conn.session is None and code is not CloseCode.TAKEN_OVER:
                # never carried a session: refused, or the peer left during the handshake
                server.stats.refusal(code.name if code is not None else "NONE")
            conn.connection_lost(server.loop.time())
        entry = self.entry
        self.entry = None
        if entry is not None:
            if entry.protocol is self:
                entry.protocol = None
            server.process(entry)

    def abort_unwritten(self) -> None:
        """Drop the transport without writing what is queued (its session was not stored)."""
        if self.transport is not None:
            self.transport.abort()

    def close_now(self) -> None:
        """Write what the core has queued, then close the transport (asyncio sends the
        buffered bytes first: not an abort, which would drop them)."""
        self.flush()
        if self.transport is not None:
            self.transport.close()


class TlsAccept(asyncio.Protocol):
    """A TCP transport of a TLS listener until its TLS handshake is done, then handed to
    a :class:`ServerProtocol`. It counts against its address's ``max_transports_per_peer``
    from accept: over the limit it is closed at once (no CLOSE frame can be sent before
    TLS, and the handshake is the costly part); the handshake has ``handshake_timeout``.

    Nothing of TLS exists until the client's first bytes (its ClientHello) arrive: a
    transport that says nothing costs a TCP transport, not an SSL object with its
    handshake buffers (about 50 KiB of RSS each, issue 18). The TLS protocol
    (:func:`start_tls_server`) is then installed
    from ``data_received``, as ``loop.start_tls`` would do it, and handed those bytes: a
    ``start_tls`` from a task could miss the ClientHello.
    """

    __slots__ = ("_silence", "_waiter", "host", "pending", "server", "ssl", "transport")

    def __init__(self, server: Server, ssl: Any) -> None:
        self.server = server
        self.ssl = ssl
        self.host = ""
        self.pending = False  # counted in server.tls_pending
        self.transport: asyncio.Transport | None = None  # until the first bytes
        self._waiter: asyncio.Future[None] | None = None
        self._silence: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        server = self.server
        server.stats.tls_accepted += 1  # ServerProtocol.connection_made counts completed ones
        peer = transport.get_extra_info("peername")
        self.host = sys.intern(str(peer[0] if isinstance(peer, tuple) else peer))
        count = server.per_host.get(self.host, 0) + 1
        server.per_host[self.host] = count
        if server.out_of_descriptors(self.host):
            server.stats.refusal(CloseCode.LIMIT_EXCEEDED.name)
            self._uncount()
            raw.abort()
            return
        if count > server.config.max_transports_per_peer:
            why = f"max_transports_per_peer ({server.config.max_transports_per_peer}) reached"
            server.refusals.note(
                "limit", self.host, why, logging.WARNING, limit="max_transports_per_peer"
            )
            server.stats.refusal(CloseCode.LIMIT_EXCEEDED.name)
            self._uncount()
            raw.abort()
            return
        server.tls_pending += 1
        self.pending = True
        self.transport = raw
        loop = server.loop
        self._waiter = loop.create_future()
        self._silence = loop.call_later(server.config.params.handshake_timeout, self._silent)
        task = loop.create_task(self._handshake(raw, self._waiter))
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)

    def data_received(self, data: bytes) -> None:
        """The ClientHello (or its start): install the TLS protocol and hand it *data*."""
        raw, waiter = self.transport, self._waiter
        if raw is None or waiter is None or waiter.done():
            return
        self.transport = None
        remaining = self._silence.when() - self.server.loop.time() if self._silence else 0.0
        self._cancel_silence()
        server = self.server
        start_tls_server(
            server.loop,
            raw,
            _TlsServerProtocol(server, self),
            self.ssl,
            waiter,
            shared_buffer=server.config.tls_shared_buffer,
            handshake_timeout=max(remaining, 0.1),
            data=data,
        )

    def eof_received(self) -> bool:
        self._fail(ConnectionResetError("the peer closed before its ClientHello"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionResetError("the peer closed before its ClientHello"))

    def _silent(self) -> None:
        self._silence = None
        timeout = self.server.config.params.handshake_timeout
        self._fail(TimeoutError(f"no ClientHello within {timeout:g} s"))

    def _fail(self, exc: BaseException) -> None:
        """Before the ClientHello: end the handshake (the task aborts and uncounts)."""
        self._cancel_silence()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _cancel_silence(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None

    async def _handshake(self, raw: asyncio.Transport, waiter: asyncio.Future[None]) -> None:
        """Uncount a transport whose handshake fails (one that succeeds was handed over)."""
        try:
            await waiter
        except asyncio.CancelledError:
            raw.abort()
            raise
        except Exception as exc:  # a failed handshake: SSLError, reset, timeout
            log.debug("TLS handshake with %s failed: %r", self.host, exc)
            raw.abort()
        finally:
            self._cancel_silence()
            self._uncount()
            self._waiter = None

    def _uncount(self) -> None:
        if self.pending:
            self.server.tls_pending -= 1
            self.pending = False
        if self.host:
            left = self.server.per_host.get(self.host, 1) - 1
            if left:
                self.server.per_host[self.host] = left
            else:
                self.server.per_host.pop(self.host, None)
            self.host = ""


class _TlsReader(asyncio.BufferedProtocol):
    """Between the loop's TLS protocol and a :class:`ServerProtocol`: decrypted input is
    read into one buffer that every TLS transport shares, then handed on as bytes.

    Given a plain ``asyncio.Protocol``, uvloop reads each record with
    ``SSLObject.read(256 KiB)``: a 256 KiB block allocated, then shrunk, per read (with
    :func:`sessiond.heap.map_large_blocks`, a mapping made and unmade per read).
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.protocol.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _tls_read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.protocol.data_received(_tls_read_buffer()[:nbytes].tobytes())

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


#: Decrypted TLS input, one read at a time (uvloop's own limit per read, SSL_READ_MAX_SIZE).
TLS_READ_BUFFER = 256 * 1024


class _SharedBuffers(threading.local):
    """The buffers every TLS transport of a thread shares, made when first needed. One
    set per thread, not per process: the socket read and ``SSL_read`` run without the
    GIL, so loops in two threads (an embedder's) must not fill the same buffer."""

    plaintext: memoryview | None = None  # _TlsReader's
    ciphertext: tuple[bytearray, memoryview] | None = None  # _SharedBufferTls's


_BUFFERS = _SharedBuffers()


def _tls_read_buffer() -> memoryview:
    """The buffer :class:`_TlsReader` lends out."""
    buffer = _BUFFERS.plaintext
    if buffer is None:
        buffer = _BUFFERS.plaintext = memoryview(bytearray(TLS_READ_BUFFER))
    return buffer


class _TlsServerProtocol(ServerProtocol):
    """A ServerProtocol whose transport its TlsAccept counted until the handshake ended."""

    __slots__ = ("accept",)

    def __init__(self, server: Server, accept: TlsAccept) -> None:
        super().__init__(server)
        self.accept: TlsAccept | None = accept

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        accept, self.accept = self.accept, None  # nothing of the handshake is kept
        if accept is not None:
            accept._uncount()  # counted again just below, in the same call
        super().connection_made(transport)


class _SharedBufferTls(asyncio.sslproto.SSLProtocol):
    """asyncio's TLS protocol, reading ciphertext into one buffer every transport (of a
    thread: :class:`_SharedBuffers`) shares.

    Each transport of asyncio's (and uvloop's) TLS protocol has a 256 KiB buffer that
    the socket is read into and that ``buffer_updated`` at once copies into the
    ``SSLObject``'s input ``MemoryBIO``: nothing is left in it between reads, so one
    buffer serves every transport. asyncio's is zero-filled (all 256 KiB resident);
    uvloop's is not, but a page of it stays resident per transport (4 KiB of an idle
    TLS session's ~27, issue 18; README, "Memory over TLS", has the rest). The write backlog is a
    list, empty between writes, where asyncio keeps a deque with a 0.5 KiB block.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # An instance value while __init__ makes its buffer (empty), the class's after.
        self.max_size = 0  # type: ignore[misc]
        super().__init__(*args, **kwargs)
        del self.max_size
        self._ssl_buffer, self._ssl_buffer_view = _shared_ciphertext_buffer()
        self._write_backlog = []  # type: ignore[assignment]  # append, [0], del [0], clear


def _shared_ciphertext_buffer() -> tuple[bytearray, memoryview]:
    """The buffer :class:`_SharedBufferTls` reads into."""
    shared = _BUFFERS.ciphertext
    if shared is None:
        buffer = bytearray(asyncio.sslproto.SSLProtocol.max_size)
        shared = _BUFFERS.ciphertext = (buffer, memoryview(buffer))
    return shared


def _tls_protocol_class(loop: asyncio.AbstractEventLoop, shared_buffer: bool) -> Any:
    """The TLS protocol for a transport of a TLS listener: :class:`_SharedBufferTls` with
    *shared_buffer*, else the class ``loop.start_tls`` uses on *loop*."""
    if shared_buffer:
        return _SharedBufferTls
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop  # noqa: PLC0415  (a uvloop loop runs: uvloop is installed)

        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    return asyncio.sslproto.SSLProtocol


def start_tls_server(
    loop: asyncio.AbstractEventLoop,
    raw: asyncio.Transport,
    protocol: asyncio.Protocol,
    context: Any,
    waiter: asyncio.Future[None],
    *,
    shared_buffer: bool,
    handshake_timeout: float,
    data: bytes = b"",
) -> None:
    """Put the server side of TLS (SSLContext *context*) on *raw*, a TCP transport of
    *loop*, the way a TLS listener of the daemon does: *protocol* is connected once the
    handshake is done and is handed the decrypted input as bytes (:class:`_TlsReader`).

    *shared_buffer* picks the TLS protocol (``ServerConfig.tls_shared_buffer``: asyncio's
    with one shared ciphertext buffer, :class:`_SharedBufferTls`, else the loop's own).
    *data*: what was already read from *raw* (a ClientHello or its start). *waiter* is
    done when the handshake is, with its exception if it failed (a failed handshake
    leaves *raw* to the caller to abort). ``bench/ceiling.py`` runs its TLS listener
    with this, so that ``bench idle`` compares the daemon with the same transport.
    """
    tls = _tls_protocol_class(loop, shared_buffer)(
        loop,
        _TlsReader(protocol),
        context,
        waiter,
        True,  # server side
        None,
        ssl_handshake_timeout=handshake_timeout,
    )
    raw.set_protocol(tls)
    tls.connection_made(raw)
    view = memoryview(data)
    while view and not raw.is_closing():
        buffer = tls.get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        tls.buffer_updated(size)
        view = view[size:]


@contextlib.asynccontextmanager
async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 7420,
    *,
    ssl: Any = None,
    config: ServerConfig | None = None,
    store: RedisStore | None = None,
) -> AsyncIterator[Server]:
    """Run a server for the duration of the ``async with`` block.

    ``handler(session)`` runs once per session, across reconnects.
    Port 0 picks a free port; read it from ``server.addresses``. With a *store*
    (started; the server closes it), sessions are written through to it and can
    move between the processes that share it.
    """
    server = Server(handler, config, store=store)
    await server.listen(host, port, ssl)
    try:
        yield server
    finally:
        await server.close()


def _descriptor_limit() -> int:
    """This process's soft limit of open file descriptors (a large number if unknown)."""
    try:
        import resource  # noqa: PLC0415  (not on Windows)
    except ImportError:
        return 1 << 30
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def _budget_key(identity: Any) -> Hashable:
    """The identity as per-identity budgets count it (None: anonymous or unhashable)."""
    try:
        hash(identity)
    except TypeError:
        return None
    return cast(Hashable, identity)


def _peer_text(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"
