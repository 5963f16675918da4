"""Many session deadlines on one event-loop timer.

A TimerHandle per session costs about 650 bytes; idle sessions are most sessions and
each always has a deadline (its next heartbeat). :class:`Deadlines` keeps them in a
heap and arms one loop timer for the earliest.

Each item gets a :class:`Slot`; the heap holds slots, so releasing an item (its
session ended) frees it at once, whatever is still queued for it. A slot keeps a
heap entry until its time comes. Asking for a later deadline adds nothing while an
earlier entry is pending: it fires, the callback finds nothing due and asks again.
Asking for an earlier one adds an entry. So a slot has at most a few entries,
however often its deadline moves.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: Deadlines this close together fire in one batch.
SLACK = 0.001


class Slot(Generic[T]):
    """One item's place in :class:`Deadlines`."""

    __slots__ = ("item", "pending")

    def __init__(self, item: T) -> None:
        self.item: T | None = item
        # Its times in the heap: None, one float (the usual case: no tuple per idle
        # session, 64 bytes), or a tuple of two or more, latest first (each one added
        # is earlier than all before it, and _run keeps the order): the last is the
        # earliest.
        self.pending: float | tuple[float, ...] | None = None

    def __lt__(self, other: Slot[T]) -> bool:  # ties in the heap: any order will do
        return id(self) < id(other)


class Deadlines(Generic[T]):
    """Call ``fire(item)`` at (or just after) the times given to :meth:`schedule`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[T], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._heap: list[tuple[float, Slot[T]]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, slot: Slot[T], when: float) -> None:
        """Make sure ``fire(slot.item)`` runs no later than *when*."""
        pending = slot.pending
        # Called after every read: one pending time usually settles it.
        if pending is None:
            slot.pending = when
        elif not isinstance(pending, tuple):
            if pending <= when:
                return
            slot.pending = (pending, when)
        else:
            if pending[-1] <= when:  # latest first: the last is the earliest
                return
            slot.pending = (*pending, when)
        heapq.heappush(self._heap, (when, slot))
        if self._handle is None or when < self._armed_at:
            self._arm(when)

    @staticmethod
    def release(slot: Slot[T]) -> None:
        """Never fire for this slot's item again; the item is not kept alive by it."""
        slot.item = None

    def clear(self) -> None:
        """Drop every deadline (at shutdown)."""
        for _, slot in self._heap:
            slot.pending = None
        self._heap.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        heap = self._heap
        horizon = self._loop.time() + SLACK
        due: dict[Slot[T], None] = {}  # once each, in deadline order
        while heap and heap[0][0] <= horizon:
            when, slot = heapq.heappop(heap)
            pending = slot.pending
            if isinstance(pending, tuple):  # two or more: one less
                rest = list(pending)
                rest.remove(when)
                slot.pending = rest[0] if len(rest) == 1 else tuple(rest)
            else:
                slot.pending = None
            due[slot] = None
        for slot in due:
            if slot.item is not None:
                self._fire(slot.item)
        # A callback that asked for a later deadline (its next heartbeat) armed the
        # timer for it: arm it for the earliest one still queued (another slot's ACK).
        if heap and (self._handle is None or heap[0][0] < self._armed_at):
            self._arm(heap[0][0])
