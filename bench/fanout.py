"""``python -m bench fanout``: one publisher, many subscribers on one channel.

Systems, each a server in its own pinned process on 127.0.0.1 and its clients
in the load generator (this process, pinned to the other core), on one asyncio
loop:

* ``daemon``: ``python -m sessiond serve --app channels`` (protocol.md §15)
  with its default settings. Every client is the protocol core driven directly
  (:class:`~bench.loadgen.IdleSession`, as the echo load generator does) with
  the channels envelopes of :mod:`sessiond_client.envelopes`: each subscriber
  sends ``sub`` for the channel and decodes every delivery with
  ``envelopes.parse_server``; the publisher sends ``pub`` without a request ID
  (no reply). Each delivery is exactly once and in order on the subscriber's
  session. The daemon allows ``max_transports_per_peer`` (256) transports per
  IP address, so the sessions come from several 127.0.0.x source addresses
  (:func:`bench.daemon.source_addresses`), all to 127.0.0.1.
* ``mosquitto``: MQTT 3.1.1, QoS 1 both ways: the publisher publishes at QoS 1
  (the broker acknowledges), the subscribers hold persistent sessions
  (``clean_session=False``) subscribed at QoS 1 and acknowledge every delivery;
  the paho-mqtt clients of :mod:`bench.mqtt_peer`, all on the same loop.
  Skipped, with a message saying how to install it, where mosquitto or
  paho-mqtt is missing.

The publisher keeps at most ``--window`` messages *outstanding*: published and
not yet received by every subscriber, so no subscriber is ever more than that
behind (below the daemon's per-subscriber queue, ``queue_messages``, whose
overflow would end the subscriber's session as a slow consumer, and below
mosquitto's queue, whose overflow would drop messages). Two kinds of pass:

* *window*: as fast as the window allows, ``--messages`` messages (or
  ``--time-limit`` seconds of publishing): deliveries per second, all the
  messages taken by all the subscribers over the pass's wall time, first
  publish to the last delivery;
* *paced*: ``--rates`` messages per second for ``--duration`` seconds, a load
  both systems carry, for the delivery latency when it is not a queue's. A
  message the window holds back past its time counts from when it was due
  (the correction for coordinated omission of :mod:`bench.pingpong`).

Each payload begins with its sequence number and the ``time.perf_counter_ns()``
at which it was handed to the publisher's client; a subscriber reads the clock
once per read, and the difference is its delivery latency (one process, one
clock), counted in an HDR-style histogram. Every subscriber must receive every
message once, in order: a repeated, missing or reordered one fails the pass,
and so does a subscriber or publisher whose connection ends (a slow-consumer
close included). Sequence numbers run on across passes, so nothing may leak
from one pass into the next either.

Both systems' clients stay connected for the whole run (the passes are
interleaved), so each system's idle clients share the load generator with the
other's passes: the paho clients' one-second housekeeping timers, the
sessions' heartbeats.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from sessiond_client import envelopes
from sessiond_client.envelopes import ChannelError, Message, Reply
from sessiond_client.protocol import Params

from sessiond.channels import ChannelsConfig

from . import BenchError, systems
from .harness import (
    Context,
    full_cores_cell,
    header,
    other_load,
    other_load_note,
    scenario,
    summarise,
)
from .histogram import Histogram
from .loadgen import (
    IdleSession,
    close_idle,
    open_sessions,
    sessions_per_address,
    source_addresses,
)
from .pingpong import open_all
from .processes import CLIENT_BOUND, ServerProcess, bound_by, daemon_argv, pace
from .results import Json, markdown_table
from .summary import Headline, cpu_cell
from .systems import DAEMON, MOSQUITTO, PEERS, start_peer

HELP = "1 publisher to N subscribers on one channel: deliveries/s and latency, vs mosquitto QoS 1"

SCENARIO = "fanout"
SYSTEMS = (DAEMON, MOSQUITTO)
CHANNEL = "bench/fanout"
SIZES = (64,)

DEFAULT_SUBSCRIBERS = 1_000
QUICK_SUBSCRIBERS = 20
DEFAULT_MESSAGES = 1_000
QUICK_MESSAGES = 100
DEFAULT_REPEAT = 3
QUICK_REPEAT = 3
DEFAULT_WINDOW = 128
TIME_LIMIT = 5.0  # seconds of publishing per pass, whichever of this and --messages first
DRAIN_SECONDS = 30.0  # beyond the time limit, for the last deliveries
WARMUP_MESSAGES = 20
#: Paced passes: publishes/s, and seconds each (1,000 subscribers: 10,000 deliveries/s,
#: below what either system's clients can take, so the latency is not a queue's).
RATES = (10.0,)
QUICK_RATES = (50.0,)
DURATION = 3.0
QUICK_DURATION = 0.3
SETUP_TIMEOUT = 60.0  # for every subscription of a system to be in place
WATCH_INTERVAL = 0.25  # how often a pass looks for a failed client
#: Every payload begins with its sequence number and its publish time (perf_counter_ns).
HEAD = struct.Struct(">QQ")


# ------------------------------------------------------------------- a pass


class Fanout:
    """One pass: what the publisher sent, what every subscriber took, and when.

    Subscribers call :meth:`take` with what each read brought; the publisher's
    client is *send*, called with the payloads to publish in order.
    """

    def __init__(
        self,
        subscribers: int,
        base: int,
        messages: int,
        window: int,
        rate: float,
        time_limit: float,
        size: int,
        send: Callable[[list[bytes]], None],
        clocks: Callable[[], tuple[float, float, float]],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.subscribers = subscribers
        self.base = base  # the first sequence number of this pass
        self.limit = messages
        self.window = window
        self.rate = rate
        self.time_limit = time_limit
        self.send = send
        self.clocks = clocks  # (wall, our CPU, the server's CPU) seconds
        self.padding = bytes(size - HEAD.size)
        self.got = [0] * messages  # per message: subscribers that took it
        self.published = 0
        self.complete = 0  # messages every subscriber has taken (a prefix)
        self.deliveries = 0
        self.missing = 0  # counted by take(): skipped over and never turned up
        self.duplicates = 0
        self.reordered = 0
        self.histogram = Histogram()
        self.stopped_by = "count"
        self.failure: str | None = None
        self.started = (0.0, 0.0, 0.0)
        self.ended = (0.0, 0.0, 0.0)
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.held = 0  # messages before this one were held back by the window when due
        self.late = 0  # how many messages were held back (paced passes)
        self.start_ns = 0
        self._stop_at = 0.0
        self._refill: asyncio.Handle | None = None

    def start(self) -> None:
        self.started = self.clocks()
        self.start_ns = time.perf_counter_ns()
        self._stop_at = self.started[0] + self.time_limit
        self.refill()

    def refill(self) -> None:
        """Publish what the window (and, in a paced pass, the clock) allow now."""
        self._refill = None
        if self.done.done():
            return
        published = self.published
        wall = time.perf_counter()
        if published < self.limit and wall >= self._stop_at:
            self.limit = published  # the time bound: publish no more, wait for the rest
            self.stopped_by = "time"
            self._check_end()
            return
        room = min(self.window - (published - self.complete), self.limit - published)
        rate = self.rate
        held = self.held  # messages before it were held back when they were due
        if rate:
            due = min(self.limit, int((wall - self.started[0]) * rate) + 1)
            if due - published > room:
                # The window holds back messages already due: they go when it opens
                # (take() calls again), and count from when they were due.
                self.held = max(held, due)
            else:
                room = due - published
                if due < self.limit:  # come back when the next one is due
                    wait = due / rate - (wall - self.started[0])
                    self._refill = self.loop.call_later(max(wait, 0.0), self.refill)
        if room <= 0:
            return
        now_ns = time.perf_counter_ns()
        first = self.base + published
        pack, padding = HEAD.pack, self.padding
        self.published = published + room
        if not rate or published >= held:
            self.send([pack(first + i, now_ns) + padding for i in range(room)])
            return
        # Coordinated omission: a message the window held back is late by then.
        start_ns, period = self.start_ns, 1e9 / rate
        late = min(room, held - published)
        self.late += late
        self.send(
            [
                pack(first + i, start_ns + round((published + i) * period) if i < late else now_ns)
                + padding
                for i in range(room)
            ]
        )

    def take(self, receiver: Receiver, payloads: Sequence[bytes], now_ns: int) -> None:
        """A subscriber's read: check the order, count what is missing, repeated or late
        (:attr:`missing`, :attr:`duplicates`, :attr:`reordered`), record the latency."""
        got, base = self.got, self.base
        record = self.histogram.record
        unpack = HEAD.unpack_from
        expected = receiver.expected
        for data in payloads:
            seq, sent_ns = unpack(data)
            if seq != expected:
                if seq > expected:  # a gap: accounted for, until it turns up late
                    receiver.gaps.update(range(expected, seq))
                    self.missing += seq - expected
                    for skipped in range(max(expected, base), seq):
                        got[skipped - base] += 1
                elif seq in receiver.gaps:
                    receiver.gaps.discard(seq)
                    self.missing -= 1
                    self.reordered += 1
                    record(now_ns - sent_ns)
                    continue
                else:
                    self.duplicates += 1
                    continue
            expected = seq + 1
            record(now_ns - sent_ns)
            got[seq - base] += 1
        receiver.expected = expected
        self.deliveries += len(payloads)
        complete = self.complete
        published = self.published
        subscribers = self.subscribers
        while complete < published and got[complete] == subscribers:
            complete += 1
        if complete != self.complete:
            self.complete = complete
            if not self._check_end() and self._refill is None:
                self._refill = self.loop.call_soon(self.refill)

    def _check_end(self) -> bool:
        if self.complete < self.limit or self.done.done():
            return False
        self.ended = self.clocks()
        self.done.set_result(None)
        return True

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        if not self.done.done():
            self.done.set_exception(BenchError(why))


class Receiver(Protocol):
    """A subscriber: where it is in the sequence, and whether its connection failed."""

    expected: int
    gaps: set[int]  # numbers skipped over, until they turn up
    fanout: Fanout | None

    @property
    def failure(self) -> str | None: ...


def _deliver(receiver: Receiver, payloads: list[bytes], now_ns: int) -> None:
    fanout = receiver.fanout
    if fanout is None:
        raise BenchError("a subscriber received a message outside a pass")
    fanout.take(receiver, payloads, now_ns)


# ------------------------------------------------------------- the daemon


class ChannelSubscriber(IdleSession):
    """A channels subscriber on the protocol core: ``sub``, then deliveries."""

    __slots__ = ("expected", "fanout", "gaps", "subscribed")

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.expected = 0
        self.gaps: set[int] = set()
        self.fanout: Fanout | None = None
        self.subscribed: asyncio.Future[None] = self.loop.create_future()

    def subscribe(self, channel: str) -> None:
        """Send ``sub`` (request ID 1); :attr:`subscribed` is done once it is accepted."""
        self.session.send(envelopes.request(envelopes.SUB, channel, 1), self.loop.time())
        self._flush()
        self._arm()

    def on_messages(self, messages: list[bytes], now: float) -> None:
        now_ns = time.perf_counter_ns()
        payloads: list[bytes] = []
        keep = payloads.append
        parse = envelopes.parse_server
        try:
            for envelope in messages:
                event = parse(envelope)
                if type(event) is Message:
                    keep(event.payload)
                elif isinstance(event, Reply) and event.error is None and event.id == 1:
                    if not self.subscribed.done():
                        self.subscribed.set_result(None)
                else:
                    self._fail(f"unexpected from the channels app: {event!r}")
                    return
            if payloads:
                _deliver(self, payloads, now_ns)
        except (ChannelError, BenchError) as exc:
            self._fail(str(exc))

    def _fail(self, why: str) -> None:
        super()._fail(why)
        if not self.subscribed.done():
            self.subscribed.set_exception(BenchError(why))


class ChannelPublisher(IdleSession):
    """The channels publisher on the protocol core: ``pub`` without a request ID."""

    __slots__ = ("pending",)

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.pending: deque[bytes] = deque()

    def publish(self, payloads: list[bytes]) -> None:
        request = envelopes.request
        self.pending.extend(request(envelopes.PUB, CHANNEL, None, data) for data in payloads)
        self._push()

    def _push(self) -> None:
        """As much of what waits as the daemon's window takes (the rest after its ACK)."""
        if self.failure is not None or self.closing:
            return
        sent = self.session.send_many(self.pending, self.loop.time())
        pending = self.pending
        for _ in range(sent):
            pending.popleft()
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.pending:
            self._push()


# --------------------------------------------------------------- mosquitto


class MqttSubscriber:
    """A paho client subscribed to the channel's topic at QoS 1, persistent session."""

    def __init__(self, window: int) -> None:
        from .mqtt_peer import MqttConnection  # noqa: PLC0415 - paho-mqtt: only when installed

        self.expected = 0
        self.gaps: set[int] = set()
        self.fanout: Fanout | None = None
        self.conn = MqttConnection(window, self._on_payloads, topic=CHANNEL)
        self._failure: str | None = None

    @property
    def failure(self) -> str | None:
        return self._failure or self.conn.failure

    def _on_payloads(self, payloads: list[bytes], now_ns: int) -> None:
        try:
            _deliver(self, payloads, now_ns)
        except BenchError as exc:
            self._failure = str(exc)


# ------------------------------------------------------------------ systems


@dataclass(slots=True)
class FanoutSystem:
    """A system under test with every client connected and subscribed."""

    name: str
    proc: ServerProcess
    subscribers: Sequence[Receiver]
    publish: Callable[[list[bytes]], None]
    publisher_failure: Callable[[], str | None]
    close: Callable[[], Coroutine[Any, Any, None]]
    setup_seconds: float
    sequence: int = 0  # messages published so far, in every pass
    notes: list[str] = field(default_factory=list)


async def open_daemon(proc: ServerProcess, count: int) -> FanoutSystem:
    """*count* subscribers and one publisher on the daemon's channels app."""
    params = Params()
    per_address = sessions_per_address()
    sources = source_addresses(per_address)
    t0 = time.perf_counter()
    subscribers = await open_sessions(
        proc.port, count, 50, lambda _index: ChannelSubscriber(params), sources
    )
    opened: list[IdleSession] = list(subscribers)
    try:
        for subscriber in subscribers:
            subscriber.subscribe(CHANNEL)
        await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in subscribers)), SETUP_TIMEOUT)
        publisher = (
            await open_sessions(
                proc.port, 1, 1, lambda _index: ChannelPublisher(params), lambda _: sources(count)
            )
        )[0]
        opened.append(publisher)
    except (BenchError, TimeoutError) as exc:
        await close_idle(opened, 5.0)
        raise BenchError(f"{DAEMON}: subscribing: {exc!r}") from None
    addresses = 1 + count // per_address

    async def close() -> None:
        await close_idle(opened, 10.0)

    return FanoutSystem(
        DAEMON,
        proc,
        subscribers,
        publisher.publish,
        lambda: publisher.failure,
        close,
        time.perf_counter() - t0,
        notes=[
            f"{count + 1:,} sessions from {addresses} loopback source "
            f"address{'es' if addresses > 1 else ''} "
            f"(127.0.0.x, at most {per_address} each: the daemon's default "
            "max_transports_per_peer is 256)"
        ],
    )


async def open_mosquitto(proc: ServerProcess, count: int, window: int) -> FanoutSystem:
    """*count* paho subscribers and one paho publisher on mosquitto."""
    from .mqtt_peer import MqttConnection  # noqa: PLC0415 - paho-mqtt: only when installed

    t0 = time.perf_counter()
    subscribers = [MqttSubscriber(window) for _ in range(count)]
    publisher = MqttConnection(window, topic=CHANNEL)
    connections = [s.conn for s in subscribers] + [publisher]

    async def close() -> None:
        await asyncio.gather(*(conn.close() for conn in connections), return_exceptions=True)

    try:
        await open_all(count, lambda index: subscribers[index].conn.open(proc.port))
        await asyncio.wait_for(publisher.open(proc.port, subscribe=False), 10.0)
    except (BenchError, TimeoutError) as exc:
        await close()
        raise BenchError(f"{MOSQUITTO}: subscribing: {exc!r}") from None

    def publish(payloads: list[bytes]) -> None:
        for payload in payloads:
            publisher.publish(payload)

    return FanoutSystem(
        MOSQUITTO,
        proc,
        subscribers,
        publish,
        lambda: publisher.failure,
        close,
        time.perf_counter() - t0,
    )


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class FanoutPlan:
    subscribers: int
    messages: int  # per windowed pass
    repeat: int
    window: int
    rates: tuple[float, ...]  # publishes/s of the paced passes
    duration: float  # seconds of a paced pass
    time_limit: float
    warmup: int
    sizes: tuple[int, ...]

    @property
    def loads(self) -> tuple[float, ...]:
        """What each kind of pass offers: 0 (as fast as the window allows), then each rate."""
        return (0.0, *self.rates)

    def messages_at(self, offered: float) -> int:
        return self.messages if not offered else max(1, round(offered * self.duration))

    def to_json(self) -> Json:
        return {**asdict(self), "sizes": list(self.sizes), "rates": list(self.rates)}


def load_key(offered: float) -> str:
    """How the results name a kind of pass: ``window`` or ``10/s``."""
    return f"{offered:g}/s" if offered else "window"


@dataclass(frozen=True, slots=True)
class FanoutResult:
    """One pass of one system."""

    system: str
    size: int
    offered: float  # publishes/s of a paced pass; 0: as fast as the window allows
    subscribers: int
    published: int
    deliveries: int  # messages taken by all the subscribers, each checked in order
    seconds: float  # first publish to the last delivery
    client_cpu: float
    server_cpu: float
    stopped_by: str
    late: int  # paced: messages the window held back past their time
    histogram: Histogram
    missing: int  # counted by the subscribers (Fanout.take)
    duplicates: int
    reordered: int
    others: tuple[float, float] | None = None

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    @property
    def lost(self) -> int:
        return self.missing

    def to_json(self) -> Json:
        summary = self.histogram.summary()
        return {
            "published": self.published,
            "deliveries": self.deliveries,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "out_of_order": self.reordered,
            "seconds": self.seconds,
            "deliveries_per_s": self.rate,
            "publishes_per_s": self.published / self.seconds,
            "latency_us": {k: v / 1e3 for k, v in summary.items() if k != "count"},
            "latency_samples": summary.get("count", 0),
            "client_cpu_s": self.client_cpu,
            "client_cpu_share": self.client_cpu / self.seconds,
            "client_cpu_us_per_delivery": self.client_cpu * 1e6 / self.deliveries,
            "server_cpu_s": self.server_cpu,
            "server_cpu_share": self.server_cpu / self.seconds,
            "server_cpu_us_per_delivery": self.server_cpu * 1e6 / self.deliveries,
            "stopped_by": self.stopped_by,
            "late": self.late,
            "p50_us": summary.get("p50", 0) / 1e3,
            "p99_us": summary.get("p99", 0) / 1e3,
            "max_us": summary.get("max", 0) / 1e3,
            **pace(self, self.others),
        }


async def fanout_pass(
    system: FanoutSystem, plan: FanoutPlan, size: int, messages: int, offered: float = 0.0
) -> FanoutResult:
    """Publish up to *messages* to every subscriber of *system* (*offered* per second
    if not 0); every delivery is checked."""
    loop = asyncio.get_running_loop()
    proc = system.proc
    subscribers = system.subscribers

    def clocks() -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), proc.cpu_seconds()

    fanout = Fanout(
        len(subscribers),
        system.sequence,
        messages,
        plan.window,
        offered,
        plan.time_limit,
        size,
        system.publish,
        clocks,
    )
    for subscriber in subscribers:
        subscriber.fanout = fanout
    deadline = loop.time() + plan.time_limit + DRAIN_SECONDS
    fanout.start()
    try:
        while not fanout.done.done():
            await asyncio.wait([fanout.done], timeout=WATCH_INTERVAL)
            failed = [s.failure for s in subscribers if s.failure is not None]
            publisher = system.publisher_failure()
            if publisher is not None or failed:
                why = publisher or f"{len(failed)} subscriber(s) failed, the first: {failed[0]}"
                fanout.fail(why)
            elif loop.time() > deadline:
                fanout.fail(_stalled(fanout, subscribers))
        fanout.done.result()
    except BenchError as exc:
        raise BenchError(f"{system.name}: {exc}") from None
    finally:
        system.sequence += fanout.published
        for subscriber in subscribers:
            subscriber.fanout = None
    expected = system.sequence
    behind = [s.expected for s in subscribers if s.expected != expected]
    if behind:
        raise BenchError(f"{system.name}: {len(behind)} subscribers short after the pass")
    if not fanout.deliveries:
        raise BenchError(f"{system.name}: nothing was published (--time-limit too short?)")
    wall = fanout.ended[0] - fanout.started[0]
    return FanoutResult(
        system.name,
        size,
        offered,
        len(subscribers),
        fanout.published,
        fanout.deliveries,
        wall,
        fanout.ended[1] - fanout.started[1],
        fanout.ended[2] - fanout.started[2],
        fanout.stopped_by,
        fanout.late,
        fanout.histogram,
        fanout.missing,
        fanout.duplicates,
        fanout.reordered,
    )


def _stalled(fanout: Fanout, subscribers: Sequence[Receiver]) -> str:
    target = fanout.base + fanout.published
    short = [target - s.expected for s in subscribers if s.expected < target]
    return (
        f"no progress: {fanout.published:,} published, {fanout.complete:,} received by every "
        f"subscriber; {len(short)} subscribers short of {sum(short):,} messages in all"
    )


def measure(ctx: Context, plan: FanoutPlan, under_test: Sequence[FanoutSystem]) -> Json:
    """Every system, *repeat* passes per size and load, their order rotated each repetition;
    per size, kind of pass (:func:`load_key`) and system, the spread of every figure."""

    def one(system: FanoutSystem, size: int, offered: float, messages: int) -> FanoutResult:
        coroutine = fanout_pass(system, plan, size, messages, offered)
        result, others = ctx.timed(system.proc, lambda: ctx.run(coroutine))
        return dataclasses.replace(cast(FanoutResult, result), others=others)

    def show(result: FanoutResult) -> str:
        trips = result.histogram.summary()
        return (
            f"fanout {result.size:>5} B  {load_key(result.offered):>8}  {result.system:<9} "
            f"{result.rate:>10,.0f} deliveries/s  p50 {trips['p50'] / 1e3:8,.0f} µs  p99 "
            f"{trips['p99'] / 1e3:8,.0f} µs  {bound_by(result)}-bound"
        )

    by_size: Json = {}
    runs: list[FanoutResult] = []
    for index, size in enumerate(plan.sizes):
        by_size[str(size)] = {}
        for offered in plan.loads:

            def timed(
                system: FanoutSystem, _rep: int, size: int = size, offered: float = offered
            ) -> FanoutResult:
                return one(system, size, offered, plan.messages_at(offered))

            def warm(system: FanoutSystem, size: int = size) -> FanoutResult:
                return one(system, size, 0.0, plan.warmup)

            first = index == 0 and not offered
            mine = ctx.passes(under_test, timed, plan.repeat, warm if first else None, show)
            runs += mine
            by_size[str(size)][load_key(offered)] = {
                system.name: _summary([r for r in mine if r.system == system.name])
                for system in under_test
            }
    by_size["other_load_share"] = other_load([run.others for run in runs])
    return by_size


def _summary(mine: list[FanoutResult]) -> Json:
    merged = Histogram()
    for run in mine:
        merged.merge(run.histogram)
    out = summarise([run.to_json() for run in mine])
    out["published"] = mine[0].published
    out["latency_all_passes_us"] = {k: v / 1e3 for k, v in merged.summary().items() if k != "count"}
    out["held_back_by_window"] = out.pop("late")
    out["histogram_ns"] = merged.to_json()
    return out


# ---------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subscribers",
        type=int,
        metavar="N",
        help=f"subscribers per system (default {DEFAULT_SUBSCRIBERS:,}; --quick "
        f"{QUICK_SUBSCRIBERS})",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        metavar="W",
        help="messages published and not yet received by every subscriber, at most "
        f"(default {DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--rates",
        metavar="R,R",
        help="publishes/s of the paced passes, after the windowed ones; empty: none "
        f"(default {_csv(RATES)}; --quick {_csv(QUICK_RATES)})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help=f"seconds of a paced pass (default {DURATION:g}; --quick {QUICK_DURATION:g})",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT,
        metavar="S",
        help=f"publish for at most this many seconds per pass (default {TIME_LIMIT:g})",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in SIZES),
        metavar="B,B",
        help=f"payload sizes in bytes, at least {HEAD.size} (default "
        f"{','.join(str(size) for size in SIZES)})",
    )
    parser.add_argument(
        "--two-processes",
        action=argparse.BooleanOptionalAction,
        help="also the daemon as 2 processes on one redis-server (bench/fanout_nodes.py; "
        "default: on, off with --quick)",
    )
    systems.add_arguments(parser)  # --systems (of them: daemon, mosquitto), --mosquitto


def _csv(values: Sequence[float]) -> str:
    return ",".join(f"{value:g}" for value in values)


def _numbers(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchError(f"{option}: not a list of numbers: {text!r}") from None


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(size) for size in _numbers(text, "--sizes"))
    limit = ChannelsConfig().max_message_size
    if not sizes or min(sizes) < HEAD.size or max(sizes) > limit:
        raise BenchError(f"--sizes must be {HEAD.size}..{limit} bytes")
    return sizes


def _plan(args: argparse.Namespace) -> FanoutPlan:
    quick: bool = args.quick
    messages: int = args.messages or (QUICK_MESSAGES if quick else DEFAULT_MESSAGES)
    repeat: int = args.repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT)
    subscribers: int = args.subscribers or (QUICK_SUBSCRIBERS if quick else DEFAULT_SUBSCRIBERS)
    if min(messages, repeat, subscribers, args.window) < 1:
        raise BenchError("--messages, --repeat, --subscribers and --window must be >= 1")
    rates = _numbers(args.rates, "--rates") if args.rates is not None else None
    if rates is None:
        rates = QUICK_RATES if quick else RATES
    duration: float = args.duration or (QUICK_DURATION if quick else DURATION)
    if any(rate <= 0 for rate in rates) or duration <= 0 or args.time_limit <= 0:
        raise BenchError("--rates, --duration and --time-limit must be positive")
    return FanoutPlan(
        subscribers,
        messages,
        repeat,
        args.window,
        rates,
        duration,
        args.time_limit,
        min(messages, WARMUP_MESSAGES),
        _sizes(args.sizes),
    )


def run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    wanted = [name for name in systems.parse_systems(args.systems) if name in SYSTEMS]
    if not wanted:
        raise BenchError(f"--systems: fanout runs {' and '.join(SYSTEMS)}")
    from . import fanout_nodes  # noqa: PLC0415 - it imports this module

    two = DAEMON in wanted and (
        args.two_processes or (args.two_processes is None and not args.quick)
    )

    banner = (
        f"{', '.join(wanted + [fanout_nodes.DAEMON2] * two)}; 1 publisher to "
        f"{plan.subscribers:,} subscribers, "
        f"{plan.messages:,} messages (or {plan.time_limit:g} s) x {plan.repeat}, window "
        f"{plan.window}"
        + (f"; paced at {_csv(plan.rates)}/s for {plan.duration:g} s" if plan.rates else "")
        + f"; {', '.join(f'{s} B' for s in plan.sizes)}"
    )

    def body(ctx: Context) -> Json:
        nonlocal plan
        fits = (ctx.nofile[0] - 64) // (len(wanted) + two) - 1
        if plan.subscribers > fits:
            ctx.notes.append(f"subscribers cut from {plan.subscribers:,} to {fits:,} (NOFILE)")
            plan = dataclasses.replace(plan, subscribers=fits)
        binaries, skipped = systems.find_peers(args, wanted)
        opened: list[FanoutSystem] = []
        peers: Json = {}
        try:
            if DAEMON in wanted:
                proc = ctx.server("daemon-channels", daemon_argv("channels"))
                opened.append(ctx.run(open_daemon(proc, plan.subscribers)))
            if two and (why := fanout_nodes.missing()) is None:
                procs = fanout_nodes.start(ctx)
                opened.append(ctx.run(fanout_nodes.open_two(procs, plan.subscribers)))
            elif two and why is not None:
                skipped[fanout_nodes.DAEMON2] = why
            if MOSQUITTO in binaries:
                proc, peers[MOSQUITTO] = start_peer(
                    ctx, PEERS[MOSQUITTO], binaries[MOSQUITTO], plan.window
                )
                opened.append(ctx.run(open_mosquitto(proc, plan.subscribers, plan.window)))
            if not opened:
                raise BenchError("nothing to run: " + "; ".join(skipped.values()))
            by_size = measure(ctx, plan, opened)
        finally:
            for system in opened:
                ctx.run(system.close())
        load = by_size.pop("other_load_share")
        ctx.notes += [note for system in opened for note in system.notes]
        return {
            "config": {
                "systems": [system.name for system in opened],
                "channel": CHANNEL,
                "fanout": plan.to_json(),
                "drain_s": DRAIN_SECONDS,
                "channels_app": asdict(ChannelsConfig()),
                "slow_subscriber_policy": "disconnect (the default: no drop_oldest patterns)",
                "client_params": asdict(Params()),
                "client_bound_threshold": CLIENT_BOUND,
                "timer": "time.perf_counter(_ns)",
            },
            "peers": peers,
            "skipped": skipped,
            "systems": {
                system.name: SYSTEM_NOTES.get(system.name, fanout_nodes.NOTE) for system in opened
            },
            "setup_s": {system.name: system.setup_seconds for system in opened},
            "other_load_share": load,
            "fanout": by_size,
            "ratios": _ratios(by_size),
            "markdown": markdown,
        }

    return scenario(args, SCENARIO, banner, body)


def _ratios(by_size: Json) -> Json:
    """The daemon over mosquitto, per size and kind of pass: deliveries/s and p99."""
    out: Json = {}
    for size, by_load in by_size.items():
        for key, entry in by_load.items():
            if DAEMON in entry and MOSQUITTO in entry:
                ours, peer = entry[DAEMON], entry[MOSQUITTO]
                out[f"{size}/{key}"] = {
                    "deliveries_per_s": ours["deliveries_per_s"]["median"]
                    / peer["deliveries_per_s"]["median"],
                    "p99": ours["p99_us"]["median"] / peer["p99_us"]["median"],
                }
    return out


SYSTEM_NOTES = {
    DAEMON: "`python -m sessiond serve --app channels` (default settings); clients: the "
    "protocol core driven directly with the channels envelopes (bench/fanout.py "
    "ChannelSubscriber, ChannelPublisher); exactly once, in order, acknowledged per session",
    MOSQUITTO: "mosquitto, MQTT 3.1.1, QoS 1 publish and QoS 1 subscriptions in persistent "
    "sessions (clean_session=False), in memory; clients: paho-mqtt on the asyncio loop "
    "(bench/mqtt_peer.py)",
}


# ------------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """Deliveries/s of the windowed passes, then p50 / p99 of each paced one, per system."""
    subscribers = entry["config"]["fanout"]["subscribers"]
    out = []
    for size, by_load in entry["fanout"].items():
        for key, by_system in by_load.items():
            windowed = key == load_key(0)
            out.append(
                Headline(
                    SCENARIO,
                    f"1 → {subscribers:,} subscribers, {size} B, "
                    + ("as fast as the window allows" if windowed else f"{key} published"),
                    "deliveries/s" if windowed else "p50 / p99 µs",
                    {
                        name: f"{stats['deliveries_per_s']['median']:,.0f}"
                        if windowed
                        else f"{stats['p50_us']['median']:,.0f} / {stats['p99_us']['median']:,.0f}"
                        for name, stats in by_system.items()
                    },
                )
            )
    return out


# ------------------------------------------------------------------ markdown


def _spread(stats: Json, digits: int = 0) -> str:
    return f"{stats['median']:,.{digits}f} [{stats['min']:,.{digits}f}-{stats['max']:,.{digits}f}]"


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## fanout`` section of RESULTS.md."""
    config = entry["config"]
    plan = config["fanout"]
    channels = config["channels_app"]
    subscribers = plan["subscribers"]
    lines = header(entry, commit, path)
    for reason in entry["skipped"].values():
        lines += [f"**{reason}.**", ""]
    paced = ", ".join(f"{rate:g}" for rate in plan["rates"])
    lines += [
        f"One publisher and {subscribers:,} subscribers on one channel "
        f"(`{config['channel']}`), all in the load generator on one asyncio loop. The "
        f"publisher keeps at most {plan['window']} messages outstanding (published and not "
        "yet received by every subscriber). Two kinds of pass: *window*, as fast as that "
        f"allows, up to {plan['messages']:,} messages or {plan['time_limit']:g} s of "
        "publishing (throughput; its latency is mostly the wait behind the messages ahead)"
        + (
            f"; *R/s*, paced at R = {paced} messages/s for {plan['duration']:g} s "
            f"({', '.join(f'{rate * subscribers:,.0f}' for rate in plan['rates'])} "
            "deliveries/s offered), for the latency at a load both systems carry (a message "
            "the window held back counts from when it was due)"
            if plan["rates"]
            else ""
        )
        + f". {plan['repeat']} passes per system, size and kind, interleaved, after a "
        "warm-up pass. Every subscriber must take every message once and in order (a "
        "repeated, missing or reordered message, or a client whose connection ends, fails "
        "the pass instead of giving a figure). *deliveries/s*: messages taken by all the "
        "subscribers over the pass's wall time, first publish to last delivery; "
        "*latency*: from the moment the publisher's client was handed the message to the "
        "subscriber's read (one clock, `time.perf_counter_ns`), every delivery counted. "
        "Median [min-max] over the passes. *÷ mosquitto*: the daemon's deliveries/s over "
        "mosquitto's in the windowed passes, its p99 over mosquitto's in the paced ones. "
        "*µs CPU/delivery*: the server's and the load "
        "generator's CPU per delivery; *bound*: `client` when the load generator kept more "
        f"than {config['client_bound_threshold']:.0%} of its core busy, `server` likewise, "
        "else `round-trip`; *cores full*: passes in which a pinned core was more than 90 % "
        "busy counting other processes on it.",
        "",
        "Systems: " + "; ".join(f"*{n}*: {note}" for n, note in entry["systems"].items()) + ".",
        "",
        f"Channels app: per-subscriber queue of {channels['queue_messages']:,} messages / "
        f"{channels['queue_bytes']:,} bytes beyond the session's window, slow-subscriber "
        f"policy {config['slow_subscriber_policy']}; the publisher's window keeps every "
        "subscriber within it, so no subscriber was closed as a slow consumer (one would "
        "have failed its pass).",
        "",
    ]
    for name, peer in entry["peers"].items():
        lines += [
            f"*{name}*: `{peer['version']}` (`{peer['binary']}`), client {peer['client']}; "
            "config: `" + " · ".join(peer["config"].strip().splitlines()) + "`.",
            "",
        ]
    lines += [
        markdown_table(
            [
                "payload",
                "pass",
                "system",
                "deliveries/s",
                "÷ mosquitto",
                "p50 µs",
                "p99 µs",
                "server µs CPU/delivery",
                "loadgen µs CPU/delivery",
                "server core busy",
                "loadgen core busy",
                "bound",
                "cores full",
                "lost / dup / reordered",
            ],
            _rows(entry),
        ),
        "",
    ]
    windowed = [
        (size, name, stats)
        for size, by_load in entry["fanout"].items()
        for name, stats in by_load[load_key(0)].items()
    ]
    limited = [f"{name} ({size} B)" for size, name, stats in windowed if any(stats["client_bound"])]
    if limited:
        extrapolated = "; ".join(
            f"{name} {1e6 / stats['server_cpu_us_per_delivery']['median']:,.0f}"
            for _size, name, stats in windowed
            if stats["server_cpu_us_per_delivery"]["median"] > 0
        )
        lines += [
            f"Client-bound windowed passes: {', '.join(limited)}. There the subscribers' "
            "clients (all of them in one Python process on one core), not the server, set "
            "the pace; the server's CPU per delivery is the figure to compare. At that cost "
            f"a fully busy server core would deliver about {extrapolated} messages/s: an "
            "extrapolation (1 / server CPU per delivery), not a measurement.",
            "",
        ]
    lines += other_load_note(entry["other_load_share"])
    if entry["notes"]:
        lines += ["Notes: " + "; ".join(entry["notes"]) + ".", ""]
    return "\n".join(lines)


def _rows(entry: Json) -> list[list[str]]:
    window = entry["config"]["fanout"]["window"]
    rows = []
    for size, by_load in entry["fanout"].items():
        for key, by_system in by_load.items():
            ratios = entry["ratios"].get(f"{size}/{key}")
            against = ""
            if ratios is not None:  # windowed: throughput; paced: p99 at the same load
                against = (
                    f"{ratios['deliveries_per_s']:.2f}x"
                    if key == load_key(0)
                    else f"p99 {ratios['p99']:.2f}x"
                )
            for name, stats in by_system.items():
                bounds = stats["bound"]
                rows.append(
                    [
                        f"{size} B",
                        f"window {window}" if key == load_key(0) else key,
                        f"`{name}`",
                        _spread(stats["deliveries_per_s"]),
                        against if name == DAEMON else "",
                        _spread(stats["p50_us"]),
                        _spread(stats["p99_us"]),
                        *(
                            cpu_cell(text, stats["seconds"])
                            for text in (
                                f"{stats['server_cpu_us_per_delivery']['median']:.2f}",
                                f"{stats['client_cpu_us_per_delivery']['median']:.2f}",
                                f"{stats['server_cpu_share']['median']:.0%}",
                                f"{stats['client_cpu_share']['median']:.0%}",
                                ", ".join(
                                    f"{b} {bounds.count(b)}/{len(bounds)}"
                                    for b in dict.fromkeys(bounds)
                                ),
                            )
                        ),
                        full_cores_cell(stats["cores_full"]),
                        f"{stats['lost']} / {stats['duplicates']} / {stats['out_of_order']}",
                    ]
                )
    return rows
