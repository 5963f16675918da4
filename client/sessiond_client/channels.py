"""Channels on a session: publish/subscribe with the daemon's channels app (protocol.md §15).

asyncio::

    session = await sessiond_client.connect("tcp://127.0.0.1:7420")
    channels = Channels(session)
    await channels.subscribe("devices/+/telemetry")
    await channels.publish("devices/sensor-1/telemetry", b"21.5")
    async for event in channels:  # Message, Joined, Left, Gap, Refused
        if isinstance(event, Message):
            print(event.channel, event.payload, event.publisher)

Blocking, for IoT scripts and game loops: :class:`SyncChannels` over
:func:`~sessiond_client.connect_sync`, with ``recv(timeout=...)`` and ``poll()``.

A helper owns its session's incoming messages: do not call ``session.recv()``
besides it. Subscriptions belong to the session, so they survive reconnects
without the helper doing anything, and end when the session ends (the
helper's iteration then stops, and ``recv()`` and pending requests raise
:class:`~sessiond_client.SessionLost`). With ``fresh_session=True`` the
connection may go on with a new session when the server could not resume the
old one: its subscriptions are gone, so the helper ends the same way (with the
reason the old session was lost), and a new helper on the same connection
subscribes again. A refused request raises :class:`ChannelError` with its
:class:`ErrorCode`.

Events wait in a bounded buffer (``max_events``); while it is full the helper
stops reading the session, so the daemon sees a slow consumer and applies the
channel's policy instead of this process growing without bound. Replies wait
behind those events: keep iterating while you make requests.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from . import envelopes
from .client import Session, State
from .envelopes import (
    ChannelError,
    ErrorCode,
    Event,
    Gap,
    Joined,
    Left,
    Member,
    Message,
    Refused,
    Reply,
)
from .protocol import CloseCode, SessionLost, SessionLostEvent, SessionStarted
from .sync import SyncSession

__all__ = [
    "ChannelError",
    "Channels",
    "ErrorCode",
    "Event",
    "Gap",
    "Joined",
    "Left",
    "Member",
    "Message",
    "Refused",
    "Subscribed",
    "SyncChannels",
]

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The reply to a subscribe. For a channel with presence (an exact name), *members*
    lists the sessions present, this one included, and *count* how many there are
    (more than listed when the list did not fit in one message); else None and 0."""

    pattern: str
    members: tuple[Member, ...] | None = None
    count: int = 0


def _subscribed(pattern: str, body: dict[str, Any]) -> Subscribed:
    listed = body.get("members")
    if not isinstance(listed, list):
        return Subscribed(pattern)
    count = body.get("count")
    members = tuple(envelopes.parse_member(item) for item in listed)
    return Subscribed(pattern, members, count if isinstance(count, int) else len(members))


class _Presence:
    """Members of the presence channels this client subscribed to, kept from events."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, Member]] = {}

    def reply(self, reply: Reply) -> None:
        """A subscribe reply listing members starts the channel's list (taken in the
        reader, before any later join or leave of that channel is)."""
        channel = reply.body.get("ch")
        if reply.error is None and isinstance(channel, str) and "members" in reply.body:
            result = _subscribed(channel, reply.body)
            if result.members is not None:
                self.channels[channel] = {m.member: m for m in result.members}

    def event(self, event: Event) -> None:
        if isinstance(event, Joined | Left):
            present = self.channels.get(event.channel)
            if present is None:
                return
            if isinstance(event, Joined):
                present[event.member] = Member(event.identity, event.member)
            else:
                present.pop(event.member, None)

    def members(self, channel: str) -> tuple[Member, ...]:
        return tuple(self.channels.get(channel, {}).values())


# --------------------------------------------------------------------- asyncio


class Channels:
    """The channels helper over an asyncio :class:`~sessiond_client.Session`.

    Call ``subscribe``, ``unsubscribe`` and ``publish`` (each waits for the
    daemon's reply, at most *timeout* seconds), and read events with ``recv()``
    or ``async for``. ``close()`` (or ``async with``) stops the helper, not the
    session.
    """

    def __init__(
        self,
        session: Session,
        *,
        max_events: int = 1024,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.session = session
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._events: deque[Event] = deque()
        self._max_events = max_events
        self._event_waiter: asyncio.Future[None] | None = None
        self._space_waiter: asyncio.Future[None] | None = None
        self._ended: SessionLost | None = None
        self._presence = _Presence()
        #: Server messages this client could not decode (a broken or newer server).
        self.undecodable = 0
        self._session_id = session.id  # the session whose subscriptions these are
        session.on_state_change(self._on_state)
        self._reader = self._loop.create_task(self._read())

    def _on_state(self, state: State) -> None:
        if state is State.ACTIVE:
            lost = _replaced(self._session_id, self.session)
            if lost is not None:
                self._end(lost)
                self._reader.cancel()

    # ---------------------------------------------------------- requests

    async def subscribe(self, pattern: str, timeout: float | None = None) -> Subscribed:
        """Subscribe to a channel name or pattern (``+`` one level, ``#`` the rest).

        Retained messages of matching channels follow as events; on a presence
        channel the result lists the members present.
        """
        reply = await self._request(envelopes.SUB, pattern, None, timeout)
        return _subscribed(pattern, reply.body)

    async def unsubscribe(self, pattern: str, timeout: float | None = None) -> None:
        """Remove a subscription; nothing matched only by it arrives after this returns."""
        await self._request(envelopes.UNSUB, pattern, None, timeout)
        self._presence.channels.pop(pattern, None)

    async def publish(
        self, channel: str, payload: bytes, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Publish *payload* on *channel*.

        With *wait* (the default) this returns once the daemon accepted it and
        queued it for every subscriber, and raises ChannelError if refused.
        ``wait=False`` only sends it (no reply; a refusal arrives as a
        :class:`Refused` event): for high rates.
        """
        if wait:
            await self._request(envelopes.PUB, channel, payload, timeout)
            return
        self._raise_if_ended()
        async with asyncio.timeout(self._timeout(timeout)):
            await self.session.send(envelopes.request(envelopes.PUB, channel, None, payload))

    def members(self, channel: str) -> tuple[Member, ...]:
        """The members of a presence channel this client subscribed to, as its events
        received so far tell (the reader runs ahead of your iteration)."""
        return self._presence.members(channel)

    async def _request(
        self, op: str, channel: str, data: bytes | None, timeout: float | None
    ) -> Reply:
        self._raise_if_ended()
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(self._timeout(timeout)):
                await self.session.send(envelopes.request(op, channel, request_id, data))
                reply = await future
        finally:
            self._pending.pop(request_id, None)
        if reply.error is not None:
            raise reply.error
        return reply

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _raise_if_ended(self) -> None:
        if self._ended is not None:
            raise self._ended

    # ------------------------------------------------------------ events

    async def recv(self) -> Event:
        """The next event, in order; raises SessionLost once the session has ended."""
        while not self._events:
            self._raise_if_ended()
            if self._event_waiter is None or self._event_waiter.done():
                self._event_waiter = self._loop.create_future()
            await self._event_waiter
        event = self._events.popleft()
        waiter = self._space_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.recv()
            except SessionLost:
                return

    async def _read(self) -> None:
        """Take the session's messages: replies to their requests, the rest to events."""
        try:
            while True:
                payload = await self.session.recv()
                try:
                    decoded = envelopes.parse_server(payload)
                except ChannelError:
                    self.undecodable += 1
                    continue
                if isinstance(decoded, Reply):
                    self._presence.reply(decoded)
                    future = self._pending.get(decoded.id)
                    if future is not None and not future.done():
                        future.set_result(decoded)
                elif decoded is not None:
                    while len(self._events) >= self._max_events:
                        if self._space_waiter is None or self._space_waiter.done():
                            self._space_waiter = self._loop.create_future()
                        await self._space_waiter
                    self._presence.event(decoded)
                    self._events.append(decoded)
                    waiter = self._event_waiter
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
        except SessionLost as exc:
            self._end(exc)
        except asyncio.CancelledError:
            self._end(SessionLost(CloseCode.NORMAL, "channels helper closed"))
            raise

    def _end(self, lost: SessionLost) -> None:
        if self._ended is None:
            self._ended = lost
        for future in self._pending.values():
            if not future.done():
                future.set_exception(lost)
        waiter = self._event_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def close(self) -> None:
        """Stop the helper (pending requests raise SessionLost); the session stays open."""
        self._reader.cancel()
        await asyncio.wait([self._reader])

    async def __aenter__(self) -> Channels:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -------------------------------------------------------------------- blocking


class SyncChannels:
    """The channels helper over a blocking :class:`~sessiond_client.SyncSession`.

    Built from the session's public ``send``, ``recv`` and ``poll`` only. Requests
    block until their reply (at most *timeout* seconds, then TimeoutError);
    ``recv(timeout=...)`` blocks for the next event; ``poll()`` returns the events
    received so far and never blocks (call it once per frame). Safe to use from
    several threads. Events read while a request waits for its reply are kept for
    ``recv``/``poll``: an application that makes requests should also take its events.
    ``close()`` (or ``with``) closes the session.
    """

    _STEP = 0.05  # longest single wait on the session while holding the lock

    def __init__(self, session: SyncSession, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.session = session
        self.timeout = timeout
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._events: deque[Event] = deque()
        self._replies: dict[int, Reply] = {}
        self._wanted: set[int] = set()
        self._presence = _Presence()
        self.undecodable = 0
        self._session_id = session.id  # the session whose subscriptions these are

    def _check_replaced(self) -> None:
        lost = _replaced(self._session_id, self.session)
        if lost is not None:
            raise lost

    def subscribe(self, pattern: str, timeout: float | None = None) -> Subscribed:
        """As :meth:`Channels.subscribe`."""
        reply = self._request(envelopes.SUB, pattern, None, timeout)
        return _subscribed(pattern, reply.body)

    def unsubscribe(self, pattern: str, timeout: float | None = None) -> None:
        """As :meth:`Channels.unsubscribe`."""
        self._request(envelopes.UNSUB, pattern, None, timeout)
        with self._lock:
            self._presence.channels.pop(pattern, None)

    def publish(
        self, channel: str, payload: bytes, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """As :meth:`Channels.publish`."""
        if wait:
            self._request(envelopes.PUB, channel, payload, timeout)
        else:
            self.session.send(envelopes.request(envelopes.PUB, channel, None, payload), timeout)

    def members(self, channel: str) -> tuple[Member, ...]:
        with self._lock:
            return self._presence.members(channel)

    def recv(self, timeout: float | None = None) -> Event:
        """The next event; TimeoutError after *timeout*, SessionLost once the session ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._events:
                    return self._events.popleft()
                self._pull(self._step(deadline))
                if self._events:
                    return self._events.popleft()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("no channels event within the timeout")

    def poll(self) -> list[Event]:
        """Every event received since the last call; never blocks. Raises SessionLost
        once the session has ended and every event was returned."""
        with self._lock:
            try:
                self._check_replaced()
                payloads = self.session.poll()
            except SessionLost:
                if not self._events:
                    raise
                payloads = []
            for payload in payloads:
                self._dispatch(payload)
            events = list(self._events)
            self._events.clear()
        return events

    def __iter__(self) -> Iterator[Event]:
        """Events, blocking, until the session ends."""
        while True:
            try:
                yield self.recv()
            except SessionLost:
                return

    def _request(self, op: str, channel: str, data: bytes | None, timeout: float | None) -> Reply:
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        request_id = next(self._ids)
        with self._lock:
            self._wanted.add(request_id)
        try:
            self.session.send(envelopes.request(op, channel, request_id, data), limit)
            while True:
                with self._lock:
                    reply = self._replies.pop(request_id, None)
                    if reply is None:
                        self._pull(self._step(deadline))
                        reply = self._replies.pop(request_id, None)
                if reply is not None:
                    break
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no reply to {op} {channel!r} within {limit} s")
        finally:
            with self._lock:
                self._wanted.discard(request_id)
                self._replies.pop(request_id, None)
        if reply.error is not None:
            raise reply.error
        return reply

    def _step(self, deadline: float | None) -> float:
        if deadline is None:
            return self._STEP
        return max(0.0, min(self._STEP, deadline - time.monotonic()))

    def _pull(self, wait: float) -> None:
        """With the lock held: take one message from the session (at most *wait* s)."""
        self._check_replaced()
        try:
            payload = self.session.recv(timeout=wait)
        except TimeoutError:
            return
        self._dispatch(payload)

    def _dispatch(self, payload: bytes) -> None:
        try:
            decoded = envelopes.parse_server(payload)
        except ChannelError:
            self.undecodable += 1
            return
        if isinstance(decoded, Reply):
            self._presence.reply(decoded)
            if decoded.id in self._wanted:
                self._replies[decoded.id] = decoded
        elif decoded is not None:
            self._presence.event(decoded)
            self._events.append(decoded)

    def close(self, timeout: float = 5.0) -> None:
        """Close the session (as :meth:`SyncSession.close`)."""
        self.session.close(timeout)

    def __enter__(self) -> SyncChannels:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except SessionLost:
            if not isinstance(exc, SessionLost):
                raise  # else the block's own SessionLost propagates


class _Carrier(Protocol):
    """What the helpers need of a session to tell it was replaced (both facades)."""

    @property
    def id(self) -> str | None: ...

    @property
    def notices(self) -> Iterable[object]: ...


def _replaced(bound: str | None, session: _Carrier) -> SessionLost | None:
    """SessionLost if *session* now carries another session than *bound* (a fresh one,
    ``fresh_session=True``), with the reason the old one could not be resumed. The
    notices are read only then: on the blocking facade each read is a thread hop."""
    current = session.id
    if bound is None or current is None or current == bound:
        return None
    reason = CloseCode.UNKNOWN_SESSION
    undelivered: tuple[bytes, ...] = ()
    for notice in session.notices:
        if isinstance(notice, SessionStarted) and notice.replaces is not None:
            reason = notice.replaces
        elif isinstance(notice, SessionLostEvent):
            undelivered = notice.unacked  # the old session's requests in doubt
    return SessionLost(
        reason, "replaced by a fresh session: its subscriptions are gone", undelivered
    )
