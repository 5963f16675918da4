"""A diagnostic trace: how many loop iterations a read waits for the write of its reply.

Off unless the environment variable :data:`ENV` names a file when the daemon
starts (read once, at import); then every plain-TCP transport is a
:class:`ServerProtocol` subclass that records, per read carrying DATA, the loop
iterations ("hops") and microseconds until the write after which the session has
sent as many messages as it had received with that read: for the echo app (one
reply per message), the write of its echo. Nothing of this runs when it is off:
the server uses the plain class.

Iterations are counted by a callback that re-queues itself with ``call_soon``
while a read waits for its reply: queued before the callbacks that read causes,
it runs first in each following iteration, so a reply written in the iteration
after its read counts 1. When the server closes, the trace writes a summary to the
file: reads per hop count, with the percentiles of the microseconds each took.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import ServerProtocol

#: The environment variable naming the summary file (not a setting: a developer's switch).
ENV = "TRACE_SESSIOND_HOPS"
PATH = os.environ.get(ENV) or None
#: Reads recorded at most (the summary says when more came).
MAX_RECORDS = 1_000_000
QUANTILES = (0.5, 0.9, 0.99)


class HopTrace:
    """Reads waiting for their replies, the iteration counter, the records."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str) -> None:
        self.loop = loop
        self.path = path
        self.tick = 0
        self._ticking = False
        self._waiting = 0
        self.pending: dict[Any, list[tuple[int, int, int, int]]] = {}
        self.records: list[tuple[int, float, int]] = []  # hops, µs, messages
        self.dropped = 0
        self.other_reads = 0
        self.other_writes = 0
        # The transport whose read is being processed, and the sent count of a write
        # made inside that read (a synchronous receiver's reply: zero hops).
        self.reading_for: Any = None
        self.written_in_read: int | None = None
        self.started = time.monotonic()

    def _tick(self) -> None:
        self.tick += 1
        if self._waiting:
            self.loop.call_soon(self._tick)
        else:
            self._ticking = False

    def reading(self) -> int:
        """A read is about to be processed: queue the counter before what it causes."""
        if not self._ticking:
            self._ticking = True
            self.loop.call_soon(self._tick)
        return self.tick

    def received(self, protocol: Any, before: int, after: int, tick: int, started_ns: int) -> None:
        """A read (at iteration *tick*) took the session's received count from *before*
        to *after*."""
        if after > before:
            self.pending.setdefault(protocol, []).append((after, tick, started_ns, after - before))
            self._waiting += 1
        else:
            self.other_reads += 1  # no DATA in it

    def written(self, protocol: Any, sent: int) -> None:
        """A write left the session with *sent* messages sent."""
        waiting = self.pending.get(protocol)
        if not waiting or waiting[0][0] > sent:
            self.other_writes += 1  # no reply in it: an ACK, a PONG, a PING alone
            return
        now = time.perf_counter_ns()
        while waiting and waiting[0][0] <= sent:
            _, tick, started_ns, messages = waiting.pop(0)
            self._waiting -= 1
            if len(self.records) < MAX_RECORDS:
                self.records.append((self.tick - tick, (now - started_ns) / 1000, messages))
            else:
                self.dropped += 1
        if not waiting:
            del self.pending[protocol]

    def forget(self, protocol: Any) -> None:
        self._waiting -= len(self.pending.pop(protocol, ()))

    def summary(self) -> str:
        """Reads and messages per hop count, with percentiles of their microseconds."""
        by_hops: dict[int, list[float]] = {}
        messages: dict[int, int] = {}
        for hops, micros, count in self.records:
            by_hops.setdefault(hops, []).append(micros)
            messages[hops] = messages.get(hops, 0) + count
        seconds = time.monotonic() - self.started
        lines = [
            f"# {ENV}: {len(self.records)} reads with DATA traced, {self.dropped} not kept;"
            f" over {seconds:.1f} s, {self.other_reads} reads without DATA and"
            f" {self.other_writes} writes without a reply (ACK, PING, PONG alone)"
        ]
        lines.append("hops reads messages p50_us p90_us p99_us max_us")
        for hops in sorted(by_hops):
            values = sorted(by_hops[hops])
            p50, p90, p99 = (values[min(len(values) - 1, int(q * len(values)))] for q in QUANTILES)
            lines.append(
                f"{hops} {len(values)} {messages[hops]} {p50:.1f} {p90:.1f} {p99:.1f} "
                f"{values[-1]:.1f}"
            )
        return "\n".join(lines) + "\n"

    def dump(self) -> None:
        with open(self.path, "w", encoding="utf-8") as out:
            out.write(self.summary())


def protocol_class(
    base: type[ServerProtocol], loop: asyncio.AbstractEventLoop
) -> tuple[Callable[[Any], ServerProtocol], HopTrace | None]:
    """The transport class to use (*base* itself when the trace is off) and the trace."""
    if PATH is None:
        return base, None
    trace = HopTrace(loop, PATH)

    class Traced(base):  # type: ignore[valid-type, misc]
        __slots__ = ()

        def _receive(self, data: bytes) -> None:
            started = time.perf_counter_ns()
            tick = trace.reading()
            entry = self.entry
            before = entry.core.sequence_numbers[2] if entry is not None else 0
            trace.reading_for = self
            trace.written_in_read = None
            try:
                super()._receive(data)
            finally:
                trace.reading_for = None
            entry = self.entry
            if entry is not None:
                trace.received(self, before, entry.core.sequence_numbers[2], tick, started)
            sent = trace.written_in_read
            if sent is not None:  # a reply written inside the read callback (hop 0)
                trace.written(self, sent)

        def write_out(self, data: bytes) -> None:
            super().write_out(data)
            entry = self.entry
            if data and entry is not None:
                if trace.reading_for is self:  # counted once the read is recorded
                    trace.written_in_read = entry.core.sequence_numbers[0]
                else:
                    trace.written(self, entry.core.sequence_numbers[0])

        def connection_lost(self, exc: Exception | None) -> None:
            trace.forget(self)
            super().connection_lost(exc)

    return Traced, trace
