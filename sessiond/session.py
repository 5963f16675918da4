"""The handler's view of a session: :class:`Session` (send, recv, iterate, close).

A handler coroutine gets one Session per *session*, not per connection: it
never notices transports coming and going. When the session ends, ``recv()``
raises :class:`~sessiond_client.SessionLost` once the messages it took are returned
(async iteration simply stops); those still in the session's inbox are dropped with
its buffers: they were never acknowledged, and the client reports them as undelivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from sessiond_client.handoff import Handoff, SettlingHandoff
from sessiond_client.protocol import CloseCode, InvalidState, SessionLost
from sessiond_client.protocol import Session as CoreSession


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

    __slots__ = ("_data", "_entry", "_moved", "identity", "marker", "recovered", "recovered_mark")

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
