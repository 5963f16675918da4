"""Between a protocol core session and the coroutines that use it, for both adapters.

:class:`Handoff` gives ``recv()`` the session's messages (from a local buffer,
without a Future, when messages are already waiting) and makes ``send()`` wait
for window. The adapter calls :meth:`Handoff.wake` after each input. Two hooks,
given as callables or overridden by a subclass (the daemon's sessions, which
saves two bound-method objects per idle session): :meth:`Handoff._flush` writes
what the core queued, :meth:`Handoff._failure` says when waiting must end with
an exception. A third, optional, :meth:`Handoff._parking`, runs when ``recv()``
is about to wait for input: what the coroutine queued before it waits can be
written at once instead of at the end of the loop iteration (a reply then
leaves in the iteration its handler ran, not one later). A fourth, optional,
:meth:`Handoff._outbound`, runs before the core's window or unacknowledged count is
read after a wait: an adapter that holds payloads back from the core (the client
gathers one loop iteration's ``send()`` calls into one ``send_many``) hands them over
there. :class:`SettlingHandoff` counts a message as consumed only once its user is
done with it (a daemon with a shared session store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from .protocol import InvalidState, PayloadTooLarge, SessionLost, WindowFull
from .protocol import Session as CoreSession


class Handoff:
    """Messages and send credit of one core session, for awaiting coroutines."""

    __slots__ = (
        "_core",
        "_failure_hook",
        "_flush_hook",
        "_handed",
        "_local",
        "_loop",
        "_recv_waiter",
        "_send_waiter",
        "_take_limit",
        "_unsent",
    )

    def __init__(
        self,
        core: CoreSession,
        loop: asyncio.AbstractEventLoop,
        flush: Callable[[], None] | None = None,
        failure: Callable[[], SessionLost | None] | None = None,
        take_limit: int | None = None,
    ) -> None:
        """*take_limit* 1 makes ``recv()`` take one message at a time from the core, so
        that what the core counts as consumed is exactly what was returned."""
        self._core = core
        self._take_limit = take_limit
        self._loop = loop
        self._flush_hook = flush
        self._failure_hook = failure
        # Taken from the core, not yet returned: newest first, so that pop() is O(1).
        # None while empty (most of the time): an empty list still costs 56 bytes.
        self._local: list[bytes] | None = None
        self._recv_waiter: asyncio.Future[None] | None = None
        self._send_waiter: asyncio.Future[None] | None = None
        # What a send()/send_many() waiting for window has yet to queue (None otherwise).
        self._unsent: Sequence[bytes] | None = None
        # SettlingHandoff: how many messages were handed over and not yet settled (None
        # here: the core counts what it hands over as consumed at once).
        self._handed: int | None = None

    def _flush(self) -> None:
        """Write what the core queued (now or soon)."""
        assert self._flush_hook is not None, "give flush or override _flush"
        self._flush_hook()

    def _failure(self) -> SessionLost | None:
        """The exception that ends waiting, once the session has ended."""
        assert self._failure_hook is not None, "give failure or override _failure"
        return self._failure_hook()

    def _failed(self) -> bool:
        """Whether the session has ended (:meth:`_failure` would give an exception); an
        adapter may answer it without making the exception (:meth:`wake` asks it after
        every read)."""
        return self._failure() is not None

    def _parking(self) -> None:
        """``recv()`` is about to wait for input (nothing by default; see the module)."""

    def _now(self) -> float:
        """The clock for a ``send()`` (the loop's; an adapter may read it less often)."""
        return self._loop.time()

    def _outbound(self) -> None:
        """The core's outbound state is about to be read after a wait (window, acks): an
        adapter that holds accepted payloads back from the core hands them over here
        (nothing by default)."""

    async def send(self, payload: bytes | bytearray | memoryview) -> None:
        """Queue one message; waits while the peer's window is full (backpressure).

        A payload that is not bytes-like raises ``TypeError`` here, before the core
        sees it (the frame would only fail when written, breaking the transport).
        """
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        core = self._core
        try:
            core.send(payload, self._now())
        except WindowFull:
            self._unsent = (payload,)
            try:
                await self._window_for(len(payload))
            finally:
                self._unsent = None
            core.send(payload, self._loop.time())
        except InvalidState:
            self._raise_failure()
            raise
        if self._handed:  # the reply to the oldest message handed over
            self._settle(1)
        self._flush()

    async def send_many(self, payloads: Sequence[bytes]) -> None:
        """Queue messages in order, as many at a time as the window takes."""
        core = self._core
        sent = 0
        while sent < len(payloads):
            try:
                count = core.send_many(payloads[sent:] if sent else payloads, self._loop.time())
            except InvalidState:
                self._raise_failure()
                raise
            sent += count
            if self._handed:  # one reply each to the oldest messages handed over
                self._settle(count)
            self._flush()
            if sent < len(payloads):
                self._unsent = payloads[sent:]
                try:
                    await self._window_for(len(payloads[sent]))
                finally:
                    self._unsent = None

    def _settle(self, count: int) -> None:
        """Count *count* of the messages handed over (at most all) as consumed."""
        handed = self._handed or 0
        count = min(count, handed)
        self._handed = handed - count
        self._core.settle(self._loop.time(), count)

    def settle_unsent(self, count: int) -> None:
        """The session is let go with *count* payloads of :attr:`unsent` stored as if
        sent now: settle as many of the messages handed over (their inputs)."""
        if self._handed and count:
            self._settle(count)

    @property
    def unsent(self) -> tuple[bytes, ...]:
        """What a send waiting for window has yet to queue, in order (usually nothing)."""
        return tuple(self._unsent) if self._unsent else ()

    async def _window_for(self, size: int) -> None:
        core = self._core
        if size > core.max_payload:
            raise PayloadTooLarge(f"{size} bytes > {core.max_payload}")
        while True:
            self._outbound()
            if core.can_send(size):
                return
            self._raise_failure()
            self._send_waiter = waiter = _fresh(self._send_waiter, self._loop)
            await waiter

    async def recv(self, stop: bool = False) -> bytes:
        """The next message, in order; the failure's exception once none will come
        (StopAsyncIteration instead with *stop*, for ``__anext__``)."""
        local = self._local
        if local:
            payload = local.pop()
            if not local:
                self._local = None
            return payload
        while True:
            batch = self._core.take_messages(self._loop.time(), self._take_limit)
            if batch:
                self._flush()  # taking frees window: the ACK may be due
                if len(batch) == 1:
                    return batch[0]
                batch.reverse()
                payload = batch.pop()
                self._local = batch
                return payload
            self._parking()
            if stop and self._failed():
                raise StopAsyncIteration
            self._raise_failure()
            self._recv_waiter = waiter = _fresh(self._recv_waiter, self._loop)
            await waiter  # not in a helper coroutine: a parked frame less per session

    async def recv_many(self) -> list[bytes]:
        """Every message waiting, in order (at least one: waits for it); the failure's
        exception once none will come."""
        while True:
            ready = self._take_all()
            if ready is not None:
                return ready  # (None, not an empty list, stays in this frame while it waits)
            self._parking()
            self._raise_failure()
            self._recv_waiter = waiter = _fresh(self._recv_waiter, self._loop)
            await waiter  # not in a helper coroutine: a parked frame less per session

    def take_ready(self) -> list[bytes]:
        """Every message already received, in order, without waiting (maybe none)."""
        ready = self._take_all()
        if ready is None:
            self._raise_failure()
            return []
        return ready

    def _take_all(self) -> list[bytes] | None:
        """Every message waiting, in order; None if there is none."""
        handed = self._handed
        if handed is None:
            batch = self._core.take_messages(self._loop.time())
        else:  # SettlingHandoff: coming back settles what was handed over
            if handed:
                self._settle(handed)
                self._flush()  # the ACK may be due
            batch = self._core.take_unsettled(self._loop.time())
        ready = self._local
        if ready is not None:
            ready.reverse()
            self._local = None
        if batch:
            self._flush()
            if ready is None:
                ready = batch
            else:
                ready.extend(batch)
        if ready is not None and handed is not None:
            self._handed = len(ready)
        return ready

    async def acknowledged(self, timeout: float) -> None:
        """Wait (at most *timeout*) until the peer acknowledged everything sent, or failure."""
        deadline = self._loop.time() + timeout
        while True:
            self._outbound()
            if not self._core.unacked_count or self._failed():
                return
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return
            self._send_waiter = waiter = _fresh(self._send_waiter, self._loop)
            # Not asyncio.wait_for: on Python 3.11 it returns instead of raising when the
            # caller is cancelled as the waiter completes (python/cpython#86296), and an
            # application's cancel of a close() would be lost. Shielded: a send() waiting
            # for window may share the waiter.
            try:
                async with asyncio.timeout(remaining):
                    await asyncio.shield(waiter)
            except TimeoutError:
                return

    def deliver(self, messages: Iterable[bytes]) -> None:
        """Hand over messages received outside the core (a lost session's unread ones)."""
        # They come after those already taken (newest first: at the front).
        self._local = list(reversed(list(messages))) + (self._local or [])
        if not self._local:
            self._local = None

    def wake(self) -> None:
        """After input: wake a recv() that has a message, a send() that has window."""
        core = self._core
        failed = self._failed()
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done() and (failed or core.messages_waiting):
            waiter.set_result(None)
        waiter = self._send_waiter
        if waiter is not None and not waiter.done() and (failed or core.can_send(1)):
            waiter.set_result(None)

    def _raise_failure(self) -> None:
        failure = self._failure()
        if failure is not None:
            try:
                raise failure
            finally:
                # Not left in this frame: the exception's traceback holds the frame, and
                # the cycle would keep every frame below (the user's, holding this
                # session and its messages) until the cyclic garbage collector runs.
                failure = None


class SettlingHandoff(Handoff):
    """A :class:`Handoff` whose messages count as consumed (acknowledged, and stored by
    a daemon with a shared session store) once their user is done with them, not when
    they are taken from the core (``Session.take_unsettled``, ``Session.settle``).

    That is when it comes back for more (``recv``, ``recv_many``, ``take_ready``, and
    so async iteration): everything handed over before is settled; and when a payload
    it sends enters the core: each settles one message handed over and not yet
    settled, oldest first. So a user that answers each message with one reply has the
    reply recorded in the same instant as the consumption of the input it answers.
    Messages taken into the local buffer and not handed over are never settled: a
    process that dies or lets the session go leaves them for the peer to replay.
    """

    __slots__ = ()

    def __init__(
        self,
        core: CoreSession,
        loop: asyncio.AbstractEventLoop,
        flush: Callable[[], None] | None = None,
        failure: Callable[[], SessionLost | None] | None = None,
        take_limit: int | None = None,
    ) -> None:
        super().__init__(core, loop, flush, failure, take_limit)
        self._handed = 0

    async def recv(self, stop: bool = False) -> bytes:
        """:meth:`Handoff.recv`, settling what was handed over before."""
        handed = self._handed
        if handed:
            self._settle(handed)
            self._flush()  # the ACK may be due
        local = self._local
        if local:
            payload = local.pop()
            if not local:
                self._local = None
            self._handed = 1
            return payload
        while True:
            batch = self._core.take_unsettled(self._loop.time(), self._take_limit)
            if batch:
                self._flush()
                self._handed = 1
                if len(batch) == 1:
                    return batch[0]
                batch.reverse()
                payload = batch.pop()
                self._local = batch
                return payload
            if stop and self._failed():
                raise StopAsyncIteration
            self._raise_failure()
            self._recv_waiter = waiter = _fresh(self._recv_waiter, self._loop)
            await waiter


def _as_bytes(payload: object) -> bytes:
    """A copy of a bytes-like *payload* (it may change after send returns), else TypeError."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise TypeError(
        f"a payload must be bytes-like (bytes, bytearray, memoryview), not {type(payload).__name__}"
    )


def _fresh(
    waiter: asyncio.Future[None] | None, loop: asyncio.AbstractEventLoop
) -> asyncio.Future[None]:
    if waiter is None or waiter.done():
        return loop.create_future()
    return waiter
