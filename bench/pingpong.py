"""Ping-pong at a fixed offered rate: the load generator of ``python -m bench latency``.

A pass offers *rate* messages per second for *duration* seconds over *connections*
connections, each with at most one ping in flight: connection *i* sends its *k*-th ping at
``start + (i / connections + k) * period``, ``period = connections / rate``, so the pings
interleave evenly. Each round trip is counted, in nanoseconds, in one
:class:`~bench.histogram.Histogram` per pass: from when the ping was handed to the
transport (the loop's timers fire up to a millisecond off: the load generator's jitter,
not the server's), or, for a ping whose time came while the previous one was still out,
from its *scheduled* time (HdrHistogram's correction for coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import BenchError
from .core import POOL
from .histogram import Histogram
from .loadgen import CONNECT_CONCURRENCY, CpuClock, Driver, close_idle, open_sessions
from .processes import pace

#: The first pings go this long after the pass starts (connections are open by then).
LEAD_NS = 5_000_000
#: Waiting for the last replies, beyond the pass's own time bound.
DRAIN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class PingResult:
    """One pass of one system at one offered rate: its plan (the counts, the histogram of
    round trips in ns) and its clocks, from the first scheduled ping to the last reply."""

    plan: PingPlan
    seconds: float
    client_cpu: float  # load generator CPU seconds over the same span
    server_cpu: float
    #: Share of the server's and the load generator's cores other processes used.
    others: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "offered_rate": plan.rate,
            "connections": plan.connections,
            "planned": plan.planned,
            "sent": plan.sent,
            "received": plan.received,
            "lost": plan.sent - plan.received,
            "late": plan.late,
            "achieved_rate": plan.received / self.seconds,
            "round_trip_us": {
                key: value / 1000 if key != "count" else value
                for key, value in plan.histogram.summary().items()
            },
            "stopped_by": plan.stopped_by,
            **pace(self, self.others),
        }


class PingPlan:
    """What the connections of one pass share: the schedule, the histogram, the counts."""

    def __init__(
        self,
        system: str,
        pool: list[bytes],
        rate: float,
        connections: int,
        duration: float,
        time_limit: float,
    ) -> None:
        if rate <= 0 or connections < 1 or duration <= 0 or len(pool) != POOL:
            raise BenchError(f"rate, duration > 0, connections ≥ 1, a pool of {POOL} payloads")
        self.system = system
        self.pool = pool
        self.size = len(pool[0])
        self.rate = rate
        self.connections = connections
        self.period_ns = round(connections * 1e9 / rate)
        self.per_connection = max(1, round(duration * rate / connections))
        self.planned = self.per_connection * connections
        self.time_limit = time_limit
        self.histogram = Histogram()
        self.sent = self.received = self.late = self.start_ns = self.stop_ns = 0
        self.stopped_by = "count"
        self.failure: str | None = None

    def begin(self) -> None:
        """Fix the schedule: the first ping goes :data:`LEAD_NS` from now."""
        self.start_ns = time.perf_counter_ns() + LEAD_NS
        duration = self.per_connection * self.period_ns / 1e9 + self.time_limit
        self.stop_ns = self.start_ns + round(duration * 1e9)

    def due(self, connection: int, k: int) -> int:
        """When connection *connection* sends its *k*-th ping (perf_counter_ns)."""
        return (
            self.start_ns + (connection * self.period_ns) // self.connections + k * self.period_ns
        )

    def payload(self, connection: int, k: int) -> bytes:
        return self.pool[(connection * 7919 + k) & (POOL - 1)]

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = f"{self.system}: {why}"


class Pinger:
    """One connection's pings, driven by a timer and by the echoes (callback clients).

    A subclass implements :meth:`transmit` and calls :meth:`on_echo` for every payload
    that comes back (the clock read once per read), :meth:`finish_failed` if it breaks.
    """

    def __init__(self, plan: PingPlan, index: int) -> None:
        self.plan = plan
        self.index = index
        self.loop = asyncio.get_running_loop()
        self.k = 0  # pings sent
        self.count = plan.per_connection
        self.outstanding = False
        self.expected = b""
        self.sent_ns = 0
        self.ping_timer: asyncio.TimerHandle | None = None
        self.finished: asyncio.Future[None] = self.loop.create_future()

    def transmit(self, payload: bytes) -> None:
        """Write one ping to the transport, framed as the subclass's server expects."""
        raise NotImplementedError

    def start(self) -> None:
        """Arm the timer for the first ping (after :meth:`PingPlan.begin`)."""
        self._schedule(time.perf_counter_ns())

    def _schedule(self, now_ns: int) -> None:
        delay = (self.plan.due(self.index, self.k) - now_ns) / 1e9
        self.ping_timer = self.loop.call_later(max(0.0, delay), self._on_ping_timer)

    def _on_ping_timer(self) -> None:
        self.ping_timer = None
        if not self.outstanding and not self.finished.done():
            self._send(time.perf_counter_ns())

    def _send(self, started_ns: int) -> None:
        plan = self.plan
        if started_ns > plan.stop_ns:
            plan.stopped_by = "time"
            self.count = self.k
            self._finish()
            return
        self.expected = payload = plan.payload(self.index, self.k)
        self.outstanding = True
        self.sent_ns = started_ns
        self.k += 1
        plan.sent += 1
        try:
            self.transmit(payload)
        except Exception as exc:  # a client library refusing the send ends the pass
            self.finish_failed(f"send failed: {exc!r}")

    def on_echo(self, payload: bytes, now_ns: int) -> None:
        """Count the round trip of the ping *payload* answers; send the next one or wait."""
        plan = self.plan
        if not self.outstanding or payload != self.expected:
            self.finish_failed(
                f"connection {self.index}: echo {payload[:8].hex()}... "
                + ("with no ping out" if not self.outstanding else "is not the ping sent")
            )
            return
        plan.histogram.record(now_ns - self.sent_ns)
        plan.received += 1
        self.outstanding = False
        if self.k >= self.count:
            self._finish()
            return
        due = plan.due(self.index, self.k)
        if now_ns >= due:  # held back by this reply: count from the scheduled time
            plan.late += 1
            self._send(due)
        else:
            self._schedule(now_ns)

    def _finish(self) -> None:
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        if not self.finished.done():
            self.finished.set_result(None)

    def finish_failed(self, why: str) -> None:
        self.plan.fail(why)
        self._finish()


class Ping(Pinger, Driver):
    """Pings over a :class:`~bench.loadgen.Driver`: the daemon's core, or *framed* the
    ceiling's framing; the clock is read as the read arrives, before decoding."""

    def __init__(self, plan: PingPlan, index: int, *, framed: bool = False) -> None:
        Pinger.__init__(self, plan, index)
        Driver.__init__(self, framed=framed)

    def on_messages(self, messages: list[bytes], now: float) -> None:
        for payload in messages:
            self.on_echo(payload, self.read_ns)

    def transmit(self, payload: bytes) -> None:
        self.send_payloads([payload], self.loop.time())
        self._flush()
        self._arm()

    def _fail(self, why: str) -> None:
        super()._fail(why)
        if not self.finished.done():
            self.finish_failed(why)


#: Send one payload, as a client library's ``await send()`` / ``await publish()`` does.
Send = Callable[[bytes], Awaitable[object]]
#: The next message and the ``perf_counter_ns`` reading when the application got it.
Receive = Callable[[], Awaitable[tuple[bytes, int]]]


async def coroutine_pinger(plan: PingPlan, index: int, send: Send, receive: Receive) -> None:
    """One connection's pings through an awaitable API: ``await send(ping)``, then the
    echo from ``await receive()``; the same schedule and counting as :class:`Pinger`."""
    clock = time.perf_counter_ns
    for k in range(plan.per_connection):
        due = plan.due(index, k)
        now_ns = clock()
        if now_ns < due:
            await asyncio.sleep((due - now_ns) / 1e9)
            started = clock()
        else:
            plan.late += k > 0
            started = due
        if started > plan.stop_ns:
            plan.stopped_by = "time"
            return
        payload = plan.payload(index, k)
        plan.sent += 1
        await send(payload)
        echo, now_ns = await receive()
        if echo != payload:
            plan.fail(f"connection {index}: echo {echo[:8].hex()}... is not the ping sent")
            return
        plan.histogram.record(now_ns - started)
        plan.received += 1


async def run_pass(
    plan: PingPlan, pingers: list[Awaitable[None]], server_cpu: CpuClock
) -> PingResult:
    """Wait for every connection's pings (already scheduled by *plan*); measure the span."""
    server0, cpu0 = server_cpu(), time.process_time()
    waiting = [asyncio.ensure_future(pinger) for pinger in pingers]
    limit = plan.stop_ns / 1e9 - time.perf_counter() + DRAIN_SECONDS
    done, pending = await asyncio.wait(waiting, timeout=max(limit, 1.0))
    end_ns, cpu = time.perf_counter_ns(), time.process_time() - cpu0
    server = server_cpu() - server0
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            plan.fail(f"{task.exception()!r}")
    if pending and plan.failure is None:
        plan.fail(f"no reply within {DRAIN_SECONDS:g} s after the pass's time bound")
    if plan.failure is not None:
        raise BenchError(f"{plan.failure} ({plan.sent:,} sent, {plan.received:,} echoed back)")
    if plan.received != plan.sent:
        raise BenchError(f"{plan.system}: {plan.sent:,} pings sent, {plan.received:,} came back")
    return PingResult(plan, (end_ns - plan.start_ns) / 1e9, cpu, server)


async def open_all(count: int, open_one: Callable[[int], Awaitable[None]]) -> None:
    """``open_one(i)`` for every *i* < *count*, a few at a time, 10 s each."""
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def bounded(index: int) -> None:
        async with semaphore:
            await asyncio.wait_for(open_one(index), 10.0)

    try:
        await asyncio.gather(*(bounded(i) for i in range(count)))
    except (OSError, TimeoutError) as exc:
        raise BenchError(f"opening {count} connections: {exc!r}") from None


async def ping_protocols(plan: PingPlan, port: int, server_cpu: CpuClock) -> PingResult:
    """One pass of the daemon (core sessions) or the ceiling (framed connections)."""
    framed = plan.system == "ceiling"
    clients = await open_sessions(
        port, plan.connections, CONNECT_CONCURRENCY, lambda i: Ping(plan, i, framed=framed)
    )
    try:
        plan.begin()
        for client in clients:
            client.start()
        return await run_pass(plan, [client.finished for client in clients], server_cpu)
    finally:
        await close_idle(clients, 5.0)
