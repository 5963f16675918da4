"""One subscriber's outbox: what the daemon has for a session and not yet sent.

Everything a channels session receives goes through its outbox, in order, and
one sender task moves it into the session (whose window then applies its own
backpressure); *on_ready* is called whenever an entry arrives, so that the owner
starts that task only when there is something to send. Publishers only ever
append: they never wait for a subscriber.

Two kinds of entries:

* *channel entries* (messages, presence events) count against the limits
  (``queue_messages``, ``queue_bytes``). When a new one does not fit, the
  channel's policy decides (protocol.md §15.6): ``disconnect`` ends the session
  with ``SLOW_CONSUMER`` (through *on_overflow*); ``drop-oldest`` drops the
  oldest droppable entries and counts them, per channel, in a gap notice that
  the sender emits before the next entry.
* *control entries* (replies, retained messages on subscribe) are never dropped.
  They are bounded by the handler instead: it reads no further request while
  :attr:`Outbox.control` is at :data:`CONTROL_LIMIT` entries or
  :attr:`Outbox.control_size` at ``channels.control_bytes`` (see
  :meth:`room_for_control`), so they hold at most that plus one entry; the session's
  unread requests then wait within its window, and its client's sends wait.
  The retained messages one subscribe matches are one control entry, a
  :class:`RetainedRun` (two lists of references: 16 bytes per message, where an
  entry each cost about 80), weighing one control entry per :data:`RUN_WEIGHT`
  messages: a session that reads nothing holds at most about CONTROL_LIMIT x
  RUN_WEIGHT of them queued, plus one run (at most ``channels.max_retained``) (issue 12).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

from sessiond_client import envelopes

#: Control entries (replies, retained messages) above which the handler stops reading.
CONTROL_LIMIT = 64
#: A run of retained messages counts as one control entry per this many messages (and
#: one more), so runs too keep a session that reads nothing from queueing without bound.
RUN_WEIGHT = 64


class RetainedRun:
    """The retained messages of one subscribe, taken one at a time (a control entry)."""

    __slots__ = ("channels", "envelopes", "next", "size", "weight")

    def __init__(self, channels: list[str], envelopes: list[bytes]) -> None:
        self.channels = channels
        self.envelopes = envelopes
        self.next = 0
        self.weight = 1 + len(channels) // RUN_WEIGHT  # in control entries
        # the bytes it keeps alive (shared with the retained set, until replaced there)
        self.size = sum(map(len, envelopes))


# (payload, channel or None, droppable, counted: a channel entry rather than a control
# one, bus entry of a delivery or None), or a run of retained messages
Entry = tuple[bytes, str | None, bool, bool, str | None] | RetainedRun


class ChannelStats:
    """Counters of one broker, for metrics: deliveries and drops since start, and the
    subscriptions held now."""

    __slots__ = (
        "bus_lost",
        "caught_up",
        "deliveries",
        "drops",
        "moved_queued",
        "presence_lost",
        "subscriptions",
    )

    def __init__(self) -> None:
        self.deliveries = 0  # channel messages queued for subscribers
        self.drops = 0  # of those, dropped by a drop-oldest policy (told as gaps)
        self.subscriptions = 0
        self.bus_lost = 0  # publishes a Redis bus could not carry (bus.py)
        self.moved_queued = 0  # queued for a session when it moved to another process
        self.caught_up = 0  # delivered again from the bus to sessions that moved here
        self.presence_lost = 0  # joins and leaves a Redis bus could not carry


class Outbox:
    """A bounded queue with a declared overflow policy; one per channels session."""

    __slots__ = (
        "_entries",
        "_loop",
        "_on_overflow",
        "_on_ready",
        "_room_waiter",
        "_stats",
        "closed",
        "control",
        "control_size",
        "count",
        "gaps",
        "mark",
        "max_bytes",
        "max_control_bytes",
        "max_messages",
        "size",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_messages: int,
        max_bytes: int,
        on_overflow: Callable[[str], None],
        on_ready: Callable[[], None] | None = None,
        stats: ChannelStats | None = None,
        max_control_bytes: int = 1 << 20,
    ) -> None:
        self._loop = loop
        self._stats = stats
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_control_bytes = max_control_bytes
        self._on_overflow = on_overflow
        self._on_ready = on_ready
        # None while empty: an empty deque costs 624 bytes, and most outboxes are empty.
        self._entries: deque[Entry] | None = None
        self.count = 0  # channel entries queued
        self.size = 0  # their bytes
        self.control = 0  # control entries queued
        self.control_size = 0  # their bytes (a run's: those not yet taken)
        self.gaps: dict[str, int] = {}  # channel -> messages dropped, not yet told
        self.closed = False
        self._room_waiter: asyncio.Future[None] | None = None
        #: The bus entry of the last delivery taken (with a Redis bus; else None).
        self.mark: str | None = None

    # ------------------------------------------------------------ producers

    def put_control(self, payload: bytes, channel: str | None = None) -> None:
        """Queue a reply, or a retained message of *channel*: never dropped, never refused."""
        if self.closed:
            return
        self._append((payload, channel, False, False, None))
        self.control += 1
        self.control_size += len(payload)

    def put_retained(self, channels: list[str], envelopes: list[bytes]) -> None:
        """Queue the retained messages of one subscribe (envelopes of *channels*, in order)
        as one control entry."""
        if self.closed or not channels:
            return
        run = RetainedRun(channels, envelopes)
        self._append(run)
        self.control += run.weight
        self.control_size += run.size

    def put(self, payload: bytes, channel: str, droppable: bool, mark: str | None = None) -> None:
        """Queue a message (*mark*: its bus entry) or presence event of *channel*; apply
        the policy if it is full."""
        if self.closed:
            return
        size = len(payload)
        if self._full(size):
            if not droppable:
                self.overflow(f"{self.count} messages queued, {channel} is disconnect")
                return
            while self._full(size):
                if not self._drop_oldest():
                    self._gap(channel, 1)  # only disconnect entries queued: this one goes
                    return
            if self.closed:
                return
        self.count += 1
        self.size += size
        self._append((payload, channel, droppable, True, mark))

    def put_first(self, deliveries: list[tuple[bytes, str, bool, str]]) -> None:
        """Queue *deliveries* (payload, channel, droppable, bus entry), in order, before
        everything queued: what a session that moved here missed, found after later
        deliveries were queued (app.py). They count against the limits; the next
        delivery that does not fit meets the channel's policy."""
        if self.closed or not deliveries:
            return
        entries = self._entries
        if entries is None:
            self._entries = entries = deque()
        entries.extendleft(
            (payload, channel, droppable, True, mark)
            for payload, channel, droppable, mark in reversed(deliveries)
        )
        self.count += len(deliveries)
        self.size += sum(len(delivery[0]) for delivery in deliveries)
        if self._on_ready is not None:
            self._on_ready()

    def _append(self, entry: Entry) -> None:
        entries = self._entries
        if entries is None:
            self._entries = entries = deque()
        entries.append(entry)
        if self._on_ready is not None:
            self._on_ready()

    def _full(self, size: int) -> bool:
        if not self.count:
            return False  # one entry always fits, however large (as protocol.md §6.1)
        return self.count >= self.max_messages or self.size + size > self.max_bytes

    def _drop_oldest(self) -> bool:
        entries = self._entries
        if entries is None:
            return False
        for index, entry in enumerate(entries):
            if entry.__class__ is RetainedRun:
                continue
            payload, channel, droppable, _, _ = cast(
                tuple[bytes, str | None, bool, bool, str | None], entry
            )
            if droppable:
                assert channel is not None
                del entries[index]
                self.count -= 1
                self.size -= len(payload)
                self._gap(channel, 1)
                return True
        return False

    def _gap(self, channel: str, dropped: int) -> None:
        """Count *dropped* messages of *channel* for the next gap notice."""
        gaps = self.gaps
        if channel not in gaps and len(gaps) >= self.max_messages:
            # Drops on more channels than a queue holds: the gap notices themselves
            # would need unbounded memory, so the subscriber is ended instead.
            self.overflow(f"messages dropped on more than {self.max_messages} channels")
            return
        gaps[channel] = gaps.get(channel, 0) + dropped
        if self._stats is not None:
            self._stats.drops += dropped

    def overflow(self, why: str) -> None:
        """The subscriber cannot keep up: free everything and let the owner end it."""
        if not self.closed:
            self.close()
            self._on_overflow(why)

    def close(self) -> None:
        """Accept nothing more and free what is queued (the session is over)."""
        self.closed = True
        self._entries = None
        self.gaps.clear()
        self.count = self.size = self.control = self.control_size = 0
        waiter = self._room_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------- consumer

    def take(self) -> tuple[bytes, str | None] | None:
        """The next payload to send, gap notices first; None when there is nothing."""
        gaps = self.gaps
        if gaps:
            gapped = next(iter(gaps))
            return envelopes.gap(gapped, gaps.pop(gapped)), None
        entries = self._entries
        if not entries:
            return None
        first = entries[0]
        channel: str | None
        if isinstance(first, RetainedRun):
            index = first.next
            first.next = index + 1
            payload, channel = first.envelopes[index], first.channels[index]
            if first.next < len(first.channels):
                self._control_taken(0, len(payload))
                return payload, channel
            entries.popleft()
            self._control_taken(first.weight, len(payload))
        else:
            payload, channel, _, counted, mark = first
            entries.popleft()
            if mark is not None:
                self.mark = mark
            if counted:
                self.count -= 1
                self.size -= len(payload)
            else:
                self._control_taken(1, len(payload))
        if not entries:
            self._entries = None
        return payload, channel

    def _control_taken(self, weight: int, size: int) -> None:
        self.control -= weight
        self.control_size -= size
        waiter = self._room_waiter
        if waiter is not None and not waiter.done() and self._room():
            waiter.set_result(None)

    def _room(self) -> bool:
        return self.control < CONTROL_LIMIT and self.control_size < self.max_control_bytes

    def note_undeliverable(self, channel: str) -> None:
        """A taken entry could not be sent (larger than the session's frame limit)."""
        self._gap(channel, 1)

    def room_for_control(self) -> asyncio.Future[None] | None:
        """A future done once control entries are below CONTROL_LIMIT and their bytes
        below ``max_control_bytes``; None if they are now."""
        if self._room() or self.closed:
            return None
        if self._room_waiter is None or self._room_waiter.done():
            self._room_waiter = self._loop.create_future()
        return self._room_waiter

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0
