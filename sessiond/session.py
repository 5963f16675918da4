"""The handler's view of a session: :class:`Session` (send, recv, iterate, close).

A handler coroutine gets one Session per *session*, not per connection: it
never notices transports coming and going. When the session ends, ``recv()``
raises :class:`~sessiond_client.SessionLost` once the messages it took are returned
(async iteration simply stops); those still in the session's inbox are dropped with
its buffers: they were never acknowledged, and the client reports them as undelivered.

A handler that answers without waiting can instead give its session a synchronous
receiver (:meth:`Session.receive_with`, README "Two handler models"): the daemon calls
it from the read callback with each batch read (:meth:`Session.feed`), and its replies
(:meth:`Session.send_many_nowait`) leave in that read's write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from sessiond_client.handoff import Handoff, SettlingHandoff, _as_bytes, _fresh
from sessiond_client.protocol import CloseCode, InvalidState, PayloadTooLarge, SessionLost
from sessiond_client.protocol import Session as CoreSession

log = logging.getLogger("sessiond")

#: A synchronous receiver (:meth:`Session.receive_with`): called with the session and
#: every message read, in order, from inside the read callback.
Receiver = Callable[["Session", list[bytes]], None]


class Flushable(Protocol):
    """What owns a session's transport: writes what the core queued, once per tick."""

    #: A pass over the session is queued this tick already: ``flush()`` would do nothing.
    dirty: bool

    def flush(self) -> None: ...

    def write_now(self) -> None: ...


class _Forgotten:
    """The owner of an ended session that the daemon forgot: nothing left to write."""

    __slots__ = ()
    dirty = True  # never flushed: there is nothing to write

    def flush(self) -> None:
        pass

    def write_now(self) -> None:
        pass


_FORGOTTEN = _Forgotten()


class _Backlog:
    """What a session accepted without waiting (:meth:`Session.send_many_nowait`) that the
    peer's window did not take yet, and the sends queued behind it: it enters the core
    in order as the window opens (:meth:`Session.feed`)."""

    __slots__ = ("done", "payloads")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.done = 0  # how many of them entered the core so far


class SessionMoved(Exception):
    """The session moved to another daemon process (resumed there, or this one shut
    down and released it): ``send()`` and ``recv()`` raise it and async iteration
    stops. The handler should just return; the session goes on there, with a new
    handler (``session.recovered`` true). Not a :class:`~sessiond_client.SessionLost`:
    nothing ended."""


class Session(Handoff):
    """One session, as the application handler sees it.

    It is the :class:`~sessiond_client.handoff.Handoff` of its core session
    itself (send, recv and iteration are the handoff's coroutines: no wrapping
    coroutine per message, and no separate object per idle session).
    """

    __slots__ = (
        "_backlog",
        "_data",
        "_delivering",
        "_entry",
        "_moved",
        "identity",
        "marker",
        "receiver",
        "recovered",
        "recovered_mark",
    )

    def __init__(
        self, core: CoreSession, loop: asyncio.AbstractEventLoop, entry: Flushable
    ) -> None:
        super().__init__(core, loop)
        self._entry = entry
        self.identity: Any = core.identity
        self._data: dict[str, Any] | None = None
        #: True when this handler runs for a session recovered from the session store
        #: (it began in another process, or before a restart): ``data`` is what was
        #: stored. After a crash the messages the previous handler was handed and had
        #: not finished with come again: those it had sent no reply for and had not
        #: come back for more after (README, "The session store"); none it answered.
        self.recovered = False
        self._moved = False
        #: An app that feeds the session from a Redis stream of its own (the channels
        #: bus) sets this: called with how many payloads handed to ``send_many`` still
        #: wait for window, it returns the stream entry of the last payload queued in
        #: the session. A shared store keeps it with the payloads, atomically, and
        #: gives the greatest kept back as :attr:`recovered_mark` to the handler of the
        #: recovered session, which can resend what followed (issue 17).
        self.marker: Callable[[int], str | None] | None = None
        self.recovered_mark: str | None = None
        #: The synchronous receiver (:meth:`receive_with`), if the handler gave one.
        self.receiver: Receiver | None = None
        self._backlog: _Backlog | None = None
        self._delivering = False  # the receiver runs; the caller of feed() writes after

    @property
    def data(self) -> dict[str, Any]:
        """Application data that lives as long as the session (made on first use)."""
        if self._data is None:
            self._data = {}
        return self._data

    @property
    def id(self) -> str:
        """The session ID, in hex."""
        return (self._core.id or b"").hex()

    @property
    def core(self) -> CoreSession:
        """The protocol core of this session (sequence numbers, state)."""
        return self._core

    @property
    def ended(self) -> bool:
        return self._core.end_code is not None

    def touched_data(self) -> dict[str, Any] | None:
        """With a store (:class:`DurableSession`): ``data`` if used since the last call."""
        return None

    @property
    def moved(self) -> bool:
        """True once the session moved to another process (see :class:`SessionMoved`)."""
        return self._moved

    def move_away(self) -> None:
        """The daemon: this process no longer holds the session; end the handler."""
        self._moved = True
        # What the handler has not taken stays unconsumed: the new owner gets it again
        # from the client; taking it here as well would process it twice.
        self._local = None
        self._core.take_unsettled(self._loop.time())
        # A backlog went with the session (the store's release counts it as sent).
        self._backlog = None
        self.receiver = None
        # The entry (which the daemon forgets now) and this object refer to each other:
        # cut the link, so all the session held goes when the handler lets go of it.
        self._entry = _FORGOTTEN
        self.wake()

    def release(self) -> None:
        """The daemon: the session ended and is forgotten; let go of its replay buffer
        and inbox now, not when the cyclic garbage collector next reaches them (the
        handler may still hold this object, and a finished handler's exception holds
        its frames). The inbox's messages were never acknowledged (the client counts
        them as undelivered); what ``recv()`` took already was, and is still returned
        before :class:`~sessiond_client.SessionLost`. Its link to the daemon's entry
        goes too (the entry refers to it: a cycle)."""
        self._core.drop_buffers()
        self._entry = _FORGOTTEN
        self._backlog = None  # never sent: the session ended
        self.receiver = None  # (it may hold the app, which may hold sessions)

    def _failure(self) -> SessionLost | None:
        code = self._core.end_code
        if code is None and self._moved:
            return SessionLost(CloseCode.GOING_AWAY)  # only tested for presence
        return None if code is None else SessionLost(code)

    def _raise_failure(self) -> None:
        if self._moved:
            raise SessionMoved(f"session {self.id[:8]} moved to another process")
        super()._raise_failure()

    def _flush(self) -> None:
        entry = self._entry
        if not entry.dirty:  # (a call less for each send after the first of a tick)
            entry.flush()

    def _parking(self) -> None:
        self._entry.write_now()

    def _failed(self) -> bool:  # (no exception made: wake() asks after every read)
        return self._core.end_code is not None or self._moved

    def take_ready(self) -> list[bytes]:
        """Every message already received, in order, without waiting (maybe none):
        :meth:`Handoff.take_ready <sessiond_client.handoff.Handoff.take_ready>`, in one
        call while nothing waits in the local buffer (once per batch in the echo app)."""
        if self._local is None and self._handed is None:
            batch = self._core.take_messages(self._loop.time())
            if batch:
                entry = self._entry
                if not entry.dirty:  # self._flush(), inlined: taking may make an ACK due
                    entry.flush()
                return batch
            self._raise_failure()
            return []
        return super().take_ready()

    # send, recv, send_many and recv_many are the handoff's.

    def wait_ready(self) -> asyncio.Future[None]:
        """Wait (``await session.wait_ready()``) until :meth:`take_ready` has messages, or
        the session ended (then ``take_ready()`` raises the failure); done at once if
        messages are waiting. ``take_ready()``, and when it gives nothing
        ``await wait_ready()``, is ``recv_many()`` without a coroutine of its own: a
        handler parked that way holds one Future, not recv_many's frame too (about
        0.25 KiB less per idle session; the built-in echo app does this)."""
        core = self._core
        waiter = self._recv_waiter
        if self._local or core.messages_waiting:
            # Done at once: the last waiter, done already (woken, not cancelled), will do.
            if waiter is None or not waiter.done() or waiter.cancelled():
                self._recv_waiter = waiter = self._loop.create_future()
                waiter.set_result(None)
            return waiter
        self._entry.write_now()  # self._parking(), inlined (once per round trip)
        if self._failed():
            self._raise_failure()
        if waiter is None or waiter.done():
            self._recv_waiter = waiter = self._loop.create_future()
        return waiter

    # ------------------------- the synchronous model (README, "Two handler models")

    def receive_with(self, receiver: Receiver) -> asyncio.Future[None]:
        """Hand every message of the session to ``receiver(session, batch)`` as it is
        read, in order, from inside the transport's read callback, and return a Future
        done once the session ended or moved (the handler awaits it, then returns).

        The receiver answers with :meth:`send_many_nowait`: a reply then leaves in the
        write of the read that brought its message, without a Future, a task step or a
        loop iteration in between. It must not block or await; it may close the
        session. It is not called while a send of the session waits for window: the
        messages wait in the session (unacknowledged, so the peer's window closes), as
        they do for a handler awaiting ``send_many``. An exception it raises ends this
        session with SESSION_REVOKED ("handler failed") and is logged; nothing else
        stops. With a shared store a message counts as consumed when a reply to it
        enters the session, or once the receiver returned and nothing it sent waits
        for window (:class:`~sessiond_client.handoff.SettlingHandoff`'s rules, the
        return standing for "comes back for more"). ``recv()``, ``take_ready()`` and
        their kind see nothing once a receiver is given: it takes every message.
        """
        self.receiver = receiver
        waiter = self._recv_waiter
        if waiter is None or waiter.done():
            self._recv_waiter = waiter = self._loop.create_future()
        self.feed()  # what arrived before the handler ran
        return waiter

    def feed(self, writes: bool = False) -> None:
        """The daemon, after input, when a receiver is given (:meth:`wake` otherwise):
        move the backlog into the core as the window allows, hand the messages waiting
        to the receiver, wake the handler if the session ended. With *writes* the caller
        writes the core's output next (the read callback), else a flush is queued."""
        core = self._core
        if not self._failed():
            fed = False
            if self._backlog is not None and self._unsent is None:
                fed = self._drain(self._backlog)
            receiver = self.receiver
            if (
                receiver is not None
                and self._backlog is None
                and self._unsent is None
                and core.messages_waiting
            ):
                handed = self._handed
                if handed is None:
                    batch = core.take_messages(self._loop.time())
                else:  # a store: consumed once done with (DurableSession)
                    if handed:
                        self._settle(handed)
                    batch = core.take_unsettled(self._loop.time())
                    self._handed = len(batch)
                self._delivering = True
                try:
                    receiver(self, batch)
                except Exception as exc:
                    self._receiver_failed(exc)
                finally:
                    self._delivering = False
                if self._handed and self._backlog is None:  # done with it, replies all in
                    self._settle(self._handed)
                fed = True
            if fed and not writes:
                self._flush()
            if not self._failed():  # (the receiver may close)
                waiter = self._send_waiter
                if waiter is not None and not waiter.done() and (fed or core.can_send(1)):
                    waiter.set_result(None)
                return
        self.wake()  # ended or moved: wakes both waiters

    def _receiver_failed(self, exc: Exception) -> None:
        if isinstance(exc, SessionLost | SessionMoved) and self._failed():
            return  # it sent after closing the session itself: no fault
        log.error("handler failed for session %s", self.id[:8], exc_info=exc)
        if self._core.end_code is None and not self._moved:
            self.close(CloseCode.SESSION_REVOKED, "handler failed")

    def _drain(self, backlog: _Backlog) -> bool:
        """Move what the window takes of *backlog* into the core; True if any moved."""
        payloads = backlog.payloads
        try:
            count = self._core.send_many(payloads, self._loop.time())
        except PayloadTooLarge:  # checked when queued: the peer's limit fell on a resume
            self._backlog = None
            self.close(CloseCode.SESSION_REVOKED, "message larger than your max_frame")
            return False
        if count:
            del payloads[:count]
            backlog.done += count
            if self._handed:  # one reply each to the oldest messages handed over
                self._settle(count)
        if not payloads:
            self._backlog = None
            if self._handed and self.receiver is not None:  # its batch is done with now
                self._settle(self._handed)
        return count > 0

    def send_many_nowait(self, payloads: Sequence[bytes]) -> None:
        """Queue messages in order now, without waiting: what the peer's window does not
        take waits in the session and enters it, in order and once, as the window opens
        (the next input that opens it), before anything sent after this call. For a
        receiver (:meth:`receive_with`); a coroutine may call it too.

        Raises :class:`~sessiond_client.PayloadTooLarge` for a payload larger than the
        peer accepts (those before it are queued), ``SessionLost`` or
        :class:`SessionMoved` once the session ended or moved, as ``send_many`` does.
        While something waits for window, the receiver is not called (its messages wait
        in the session), so what waits here is bounded by one batch's replies.
        """
        core = self._core
        if core.end_code is not None or self._moved:
            self._raise_failure()
        rest: Sequence[bytes] = payloads
        if self._backlog is None and self._unsent is None:
            try:
                count = core.send_many(payloads, self._loop.time())
            except InvalidState:
                self._raise_failure()
                raise
            if count:
                if self._handed:  # one reply each to the oldest messages handed over
                    self._settle(count)
                if not self._delivering:
                    self._flush()
                if count == len(payloads):
                    return
                rest = payloads[count:]
        limit = core.max_payload
        for index, payload in enumerate(rest):
            if len(payload) > limit:
                if index:
                    self._queue(rest[:index])
                raise PayloadTooLarge(f"{len(payload)} bytes > {limit}")
        if rest:
            self._queue(rest)

    def _queue(self, payloads: Sequence[bytes]) -> None:
        backlog = self._backlog
        if backlog is None:
            self._backlog = backlog = _Backlog()
        backlog.payloads.extend(payloads)

    def send(self, payload: bytes | bytearray | memoryview) -> Coroutine[Any, Any, None]:
        """:meth:`Handoff.send <sessiond_client.handoff.Handoff.send>`; behind what waits
        from :meth:`send_many_nowait`, if anything does."""
        if self._backlog is None:
            return Handoff.send(self, payload)
        return self._send_behind([payload if type(payload) is bytes else _as_bytes(payload)])

    def send_many(self, payloads: Sequence[bytes]) -> Coroutine[Any, Any, None]:
        """:meth:`Handoff.send_many <sessiond_client.handoff.Handoff.send_many>`; behind
        what waits from :meth:`send_many_nowait`, if anything does."""
        if self._backlog is None:
            return Handoff.send_many(self, payloads)
        return self._send_behind(payloads)

    async def _send_behind(self, payloads: Sequence[bytes]) -> None:
        self.send_many_nowait(payloads)  # queued behind the backlog, in order
        backlog = self._backlog
        if backlog is None:
            return
        mark = backlog.done + len(backlog.payloads)
        while backlog.done < mark:
            self._raise_failure()
            self._send_waiter = waiter = _fresh(self._send_waiter, self._loop)
            await waiter

    @property
    def unsent(self) -> tuple[bytes, ...]:
        """What waits for window, in order: a waiting ``send``'s, then the backlog."""
        backlog = self._backlog
        waiting = tuple(self._unsent) if self._unsent else ()
        return waiting if backlog is None else (*waiting, *backlog.payloads)

    def __aiter__(self) -> Session:
        return self

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        return self.recv(stop=True)

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session for good; the client is told with *code* if it is connected."""
        if self._handed:  # done with what it was handed (the session ends anyway)
            self._settle(self._handed)
        try:
            self._core.close(self._loop.time(), code, reason)
        except InvalidState:
            raise ValueError(f"{code.name} does not end a session") from None
        self._flush()

    def __repr__(self) -> str:
        return (
            f"<sessiond.Session {self.id[:8]} {self._core.state.value} identity={self.identity!r}>"
        )


class DurableSession(Session, SettlingHandoff):
    """A :class:`Session` of a daemon with a shared session store: a message counts as
    consumed (acknowledged and stored) once the handler is done with it, so a crash
    re-delivers what it was working on (README, "The session store";
    :class:`~sessiond_client.handoff.SettlingHandoff` says when). ``data`` is stored
    with the session's next append once the handler has used it."""

    __slots__ = ("_touched",)

    def __init__(
        self, core: CoreSession, loop: asyncio.AbstractEventLoop, entry: Flushable
    ) -> None:
        super().__init__(core, loop, entry)
        self._touched = False  # data was used since the last append: maybe changed

    @property
    def data(self) -> dict[str, Any]:
        """Application data that lives as long as the session, moves with it and is
        stored with its next append after each use (msgpack-serializable)."""
        self._touched = True
        if self._data is None:
            self._data = {}
        return self._data

    def touched_data(self) -> dict[str, Any] | None:
        """``data`` if it was used since the last call (it may have changed), else None."""
        if not self._touched:
            return None
        self._touched = False
        return self._data
