"""``python -m bench fanout``: one publisher, many subscribers on one channel.

Systems: ``daemon`` (``python -m sessiond serve --app channels``, protocol.md §15;
clients: the protocol core driven directly with :mod:`sessiond_client.envelopes`,
from several 127.0.0.x source addresses because of ``max_transports_per_peer``);
``daemon-2p`` (issue 17: two such daemons with ``--store redis://`` on one
redis-server started for the run, one channels space over the Redis bus; the first
holds the publisher and half the subscribers; server CPU: both daemons and
redis-server, all pinned to the server core, so this shows what crossing processes
costs, not a scale-out; off with ``--quick`` unless ``--two-processes``, skipped
without redis-server or the ``redis`` extra); and ``mosquitto`` (MQTT 3.1.1, QoS 1
publish, QoS 1 persistent subscriptions; paho-mqtt clients, :mod:`bench.mqtt_peer`;
skipped with an install hint where missing). The publisher keeps at most ``--window``
messages outstanding (not yet received by every subscriber). Passes: *window* (as
fast as that allows: deliveries/s) and *paced* at ``--rates`` for ``--duration``
seconds (latency at a load both carry; a message the window held back counts from
when it was due). Every payload carries its sequence number and publish time
(``perf_counter_ns``); every subscriber must take every message once and in order.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

from sessiond_client import envelopes
from sessiond_client.envelopes import ChannelError, Message, Reply
from sessiond_client.protocol import Params

from sessiond.channels import ChannelsConfig

from . import BenchError, systems
from .harness import (
    Context,
    bounds_cell,
    full_cores_cell,
    given,
    header,
    notes_lines,
    option,
    other_load,
    other_load_note,
    scenario,
    spread_cell,
    summarise,
)
from .histogram import Histogram
from .loadgen import IdleSession, close_idle, open_sessions, sessions_per_address, source_addresses
from .pingpong import open_all
from .processes import CLIENT_BOUND, HOST, ServerProcess, bound_by, daemon_argv, free_port, pace
from .results import Json, markdown_table
from .store import REDIS_SERVER, redis_command
from .summary import Headline, cpu_cell
from .systems import DAEMON, MOSQUITTO, PEERS, start_peer

HELP = "1 publisher to N subscribers on one channel: deliveries/s and latency, vs mosquitto QoS 1"

SCENARIO = "fanout"
DAEMON2 = "daemon-2p"
SYSTEMS = (DAEMON, MOSQUITTO)
CHANNEL = "bench/fanout"
SIZES = (64,)
WINDOW = 128
TIME_LIMIT = 5.0  # seconds of publishing per pass, whichever of this and --messages first
DRAIN_SECONDS = 30.0  # beyond the time limit, for the last deliveries
WARMUP_MESSAGES = 20
#: Paced passes: publishes/s (1,000 subscribers: 10,000 deliveries/s, below what either
#: system's clients can take, so the latency is not a queue's), and seconds each.
RATES, QUICK_RATES = (10.0,), (50.0,)
DURATION, QUICK_DURATION = 3.0, 0.3
SETUP_TIMEOUT = 60.0  # for every subscription of a system to be in place
WATCH_INTERVAL = 0.25  # how often a pass looks for a failed client
#: Every payload begins with its sequence number and its publish time (perf_counter_ns).
HEAD = struct.Struct(">QQ")


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

    def to_json(self) -> Json:
        return {**asdict(self), "sizes": list(self.sizes), "rates": list(self.rates)}


def load_key(offered: float) -> str:
    """How the results name a kind of pass: ``window`` or ``10/s``."""
    return f"{offered:g}/s" if offered else "window"


# ------------------------------------------------------------------- a pass


class Fanout:
    """One pass of one system: what the publisher sent, what every subscriber took, and
    when (its wall seconds: first publish to the last delivery)."""

    def __init__(
        self, system: FanoutSystem, plan: FanoutPlan, size: int, messages: int, rate: float
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.system, self.size, self.rate, self.window = system.name, size, rate, plan.window
        self.proc, self.send = system.proc, system.publish
        self.subscribers = len(system.subscribers)
        self.base = system.sequence  # the first sequence number of this pass
        self.limit = messages
        self.time_limit = plan.time_limit
        self.padding = bytes(size - HEAD.size)
        self.got = [0] * messages  # per message: subscribers that took it
        self.published = self.complete = self.deliveries = 0  # complete: taken by all (prefix)
        self.missing = self.duplicates = self.reordered = 0  # counted by take()
        self.held = self.late = 0  # messages held back by the window when due (paced passes)
        self.histogram = Histogram()
        self.stopped_by = "count"
        self.started = self.ended = (0.0, 0.0, 0.0)
        self.others: tuple[float, float] | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.start_ns = 0
        self._refill: asyncio.Handle | None = None

    def clocks(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), self.proc.cpu_seconds()

    @property
    def seconds(self) -> float:
        return self.ended[0] - self.started[0]

    @property
    def client_cpu(self) -> float:
        return self.ended[1] - self.started[1]

    @property
    def server_cpu(self) -> float:
        return self.ended[2] - self.started[2]

    def start(self) -> None:
        self.started = self.clocks()
        self.start_ns = time.perf_counter_ns()
        self.refill()

    def refill(self) -> None:
        """Publish what the window (and, in a paced pass, the clock) allow now."""
        self._refill = None
        if self.done.done():
            return
        published, rate, held = self.published, self.rate, self.held
        elapsed = time.perf_counter() - self.started[0]
        if published < self.limit and elapsed >= self.time_limit:
            self.limit = published  # the time bound: publish no more, wait for the rest
            self.stopped_by = "time"
            self._check_end()
            return
        room = min(self.window - (published - self.complete), self.limit - published)
        if rate:
            due = min(self.limit, int(elapsed * rate) + 1)
            if due - published > room:
                # The window holds back messages already due: they go when it opens
                # (take() calls again), and count from when they were due.
                self.held = max(held, due)
            else:
                room = due - published
                if due < self.limit:  # come back when the next one is due
                    self._refill = self.loop.call_later(max(due / rate - elapsed, 0.0), self.refill)
        if room <= 0:
            return
        now_ns, first, padding = time.perf_counter_ns(), self.base + published, self.padding
        self.published = published + room
        # Coordinated omission: a message the window held back is late by then.
        late = min(room, held - published) if rate and published < held else 0
        self.late += late
        period, start_ns, pack = 1e9 / (rate or 1.0), self.start_ns, HEAD.pack
        stamps = [start_ns + round((published + i) * period) for i in range(late)]
        stamps += [now_ns] * (room - late)
        self.send([pack(first + i, stamp) + padding for i, stamp in enumerate(stamps)])

    def take(self, receiver: Receiver, payloads: Sequence[bytes], now_ns: int) -> None:
        """A subscriber's read: check the order, count what is missing, repeated or late
        (:attr:`missing`, :attr:`duplicates`, :attr:`reordered`), record the latency."""
        got, base, record, unpack = self.got, self.base, self.histogram.record, HEAD.unpack_from
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
        complete, published, subscribers = self.complete, self.published, self.subscribers
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
        if not self.done.done():
            self.done.set_exception(BenchError(why))

    def show(self) -> str:
        trips = self.histogram.summary()
        return (
            f"fanout {self.size:>5} B  {load_key(self.rate):>8}  {self.system:<9} "
            f"{self.deliveries / self.seconds:>10,.0f} deliveries/s  p50 "
            f"{trips['p50'] / 1e3:8,.0f} µs  p99 {trips['p99'] / 1e3:8,.0f} µs  "
            f"{bound_by(self)}-bound"
        )

    def to_json(self) -> Json:
        summary, per = self.histogram.summary(), 1e6 / self.deliveries
        return {
            "published": self.published,
            "deliveries": self.deliveries,
            "lost": self.missing,
            "duplicates": self.duplicates,
            "out_of_order": self.reordered,
            "deliveries_per_s": self.deliveries / self.seconds,
            "publishes_per_s": self.published / self.seconds,
            "latency_us": {k: v / 1e3 for k, v in summary.items() if k != "count"},
            "latency_samples": summary.get("count", 0),
            "client_cpu_us_per_delivery": self.client_cpu * per,
            "server_cpu_us_per_delivery": self.server_cpu * per,
            "stopped_by": self.stopped_by,
            "late": self.late,
            **{f"{k}_us": summary.get(k, 0) / 1e3 for k in ("p50", "p99", "max")},
            **pace(self, self.others),
        }


class Receiver(Protocol):
    """A subscriber: where it is in the sequence, and whether its connection failed."""

    expected: int
    gaps: set[int]  # numbers skipped over, until they turn up
    fanout: Fanout | None

    @property
    def failure(self) -> str | None: ...


def _deliver(receiver: Receiver, payloads: list[bytes], now_ns: int) -> None:
    if receiver.fanout is None:
        raise BenchError("a subscriber received a message outside a pass")
    receiver.fanout.take(receiver, payloads, now_ns)


# ---------------------------------------------------------------- clients


class ChannelSubscriber(IdleSession):
    """A channels subscriber on the protocol core: ``sub`` (request ID 1), then deliveries."""

    __slots__ = ("expected", "fanout", "gaps", "subscribed")

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.expected = 0
        self.gaps: set[int] = set()
        self.fanout: Fanout | None = None
        self.subscribed: asyncio.Future[None] = self.loop.create_future()

    def subscribe(self, channel: str) -> None:
        self.session.send(envelopes.request(envelopes.SUB, channel, 1), self.loop.time())
        self._flush()
        self._arm()

    def on_messages(self, messages: list[bytes], now: float) -> None:
        now_ns = time.perf_counter_ns()
        payloads: list[bytes] = []
        try:
            for envelope in messages:
                event = envelopes.parse_server(envelope)
                if type(event) is Message:
                    payloads.append(event.payload)
                elif isinstance(event, Reply) and event.error is None and event.id == 1:
                    if not self.subscribed.done():
                        self.subscribed.set_result(None)
                else:
                    return self._fail(f"unexpected from the channels app: {event!r}")
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
        for _ in range(self.session.send_many(self.pending, self.loop.time())):
            self.pending.popleft()
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.pending:
            self._push()


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


# ---------------------------------------------------------------- systems


@dataclass(slots=True)
class FanoutSystem:
    """A system under test with every client connected and subscribed."""

    name: str
    proc: ServerProcess
    subscribers: Sequence[Receiver]
    publish: Callable[[list[bytes]], None]
    publisher_failure: Callable[[], str | None]
    close: Callable[[], Coroutine[Any, Any, object]]
    setup_seconds: float
    sequence: int = 0  # messages published so far, in every pass
    notes: list[str] = field(default_factory=list)


async def open_daemon(
    name: str, daemons: Sequence[ServerProcess], count: int, measured: ServerProcess | None = None
) -> FanoutSystem:
    """*count* subscribers and one publisher on the channels app of *daemons*: one takes
    them all; two (``daemon-2p``) take half (rounded down) and the rest, the publisher on
    the first. The server CPU is *measured*'s (default: the first daemon's)."""
    params, per_address = Params(), sessions_per_address()
    sources = source_addresses(per_address)
    t0 = time.perf_counter()
    half = max(1, count // 2)
    shares = [half, count - half] if daemons[1:] else [count]
    subscribers: list[ChannelSubscriber] = []
    opened: list[IdleSession] = []
    notes = [f"{name}: {' + '.join(f'{n:,}' for n in shares)} subscribers"] if daemons[1:] else []
    try:
        for proc, share in zip(daemons, shares, strict=True):
            mine = await open_sessions(
                proc.port, share, 50, lambda _index: ChannelSubscriber(params), sources
            )
            subscribers += mine
            opened += mine
            for subscriber in mine:
                subscriber.subscribe(CHANNEL)
            await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in mine)), SETUP_TIMEOUT)
            addresses = 1 + share // per_address
            notes.append(
                f"{share + (proc is daemons[0]):,} sessions from {addresses} loopback source "
                f"address{'es' if addresses > 1 else ''} (127.0.0.x, at most {per_address} "
                "each: the daemon's default max_transports_per_peer is 256)"
            )
        publishers = await open_sessions(
            daemons[0].port, 1, 1, lambda _: ChannelPublisher(params), lambda _: sources(shares[0])
        )
        opened += publishers
    except (BenchError, TimeoutError) as exc:
        await close_idle(opened, 5.0)
        raise BenchError(f"{name}: subscribing: {exc!r}") from None
    publisher = publishers[0]
    return FanoutSystem(
        name, measured or daemons[0], subscribers, publisher.publish, lambda: publisher.failure,
        lambda: close_idle(opened, 10.0), time.perf_counter() - t0, notes=["; ".join(notes)],
    )  # fmt: skip


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
        MOSQUITTO, proc, subscribers, publish, lambda: publisher.failure, close,
        time.perf_counter() - t0,
    )  # fmt: skip


class Servers:
    """Several server processes measured as one: alive if all are, their CPU summed."""

    def __init__(self, procs: Sequence[ServerProcess]) -> None:
        self.procs, self.port = procs, procs[0].port
        self.name = "+".join(proc.name for proc in procs)

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def cpu_seconds(self) -> float:
        return sum(proc.cpu_seconds() for proc in self.procs)


def missing_two() -> str | None:
    """Why ``daemon-2p`` cannot run here, or None."""
    if shutil.which(REDIS_SERVER) is None:
        return f"{DAEMON2}: no {REDIS_SERVER}: `apt-get install redis-server`"
    if importlib.util.find_spec("redis") is None:
        return f"{DAEMON2}: no redis-py: pip install -e '.[redis]'"
    return None


def open_two(ctx: Context, count: int) -> FanoutSystem:
    """redis-server, two channels daemons on it, and :func:`open_daemon` over both."""
    port = free_port()
    (ctx.tmp / "redis-fanout").mkdir()
    redis = ctx.process("redis-fanout", redis_command(port, ctx.tmp / "redis-fanout"), port)
    argv = [*daemon_argv("channels"), "--store", f"redis://{HOST}:{port}/0"]
    daemons = [ctx.server("daemon-2p-a", argv), ctx.server("daemon-2p-b", argv)]
    measured = cast(ServerProcess, Servers([redis, *daemons]))
    return cast(FanoutSystem, ctx.run(open_daemon(DAEMON2, daemons, count, measured)))


# ---------------------------------------------------------------- measuring


async def fanout_pass(
    system: FanoutSystem, plan: FanoutPlan, size: int, messages: int, offered: float = 0.0
) -> Fanout:
    """Publish up to *messages* to every subscriber of *system* (*offered* per second
    if not 0); every delivery is checked."""
    loop, subscribers = asyncio.get_running_loop(), system.subscribers
    fanout = Fanout(system, plan, size, messages, offered)
    for subscriber in subscribers:
        subscriber.fanout = fanout
    deadline = loop.time() + plan.time_limit + DRAIN_SECONDS
    fanout.start()
    try:
        while not fanout.done.done():
            await asyncio.wait([fanout.done], timeout=WATCH_INTERVAL)
            failed = [s.failure for s in subscribers if s.failure is not None]
            if (publisher := system.publisher_failure()) is not None or failed:
                fanout.fail(publisher or f"{len(failed)} subscriber(s) failed: {failed[0]}")
            elif loop.time() > deadline:
                target = fanout.base + fanout.published
                short = [target - s.expected for s in subscribers if s.expected < target]
                fanout.fail(
                    f"no progress: {fanout.published:,} published, {fanout.complete:,} received "
                    f"by all; {len(short)} subscribers short of {sum(short):,} messages"
                )
        fanout.done.result()
    except BenchError as exc:
        raise BenchError(f"{system.name}: {exc}") from None
    finally:
        system.sequence += fanout.published
        for subscriber in subscribers:
            subscriber.fanout = None
    if behind := [s for s in subscribers if s.expected != system.sequence]:
        raise BenchError(f"{system.name}: {len(behind)} subscribers short after the pass")
    if not fanout.deliveries:
        raise BenchError(f"{system.name}: nothing was published (--time-limit too short?)")
    return fanout


def measure(ctx: Context, plan: FanoutPlan, under_test: Sequence[FanoutSystem]) -> Json:
    """Every system, *repeat* passes per size and load (0: the window's pace, then each
    rate), their order rotated each repetition; per size, :func:`load_key` and system,
    the spread of every figure."""

    def one(system: FanoutSystem, size: int, offered: float, messages: int) -> Fanout:
        coroutine = fanout_pass(system, plan, size, messages, offered)
        result, others = ctx.timed(system.proc, lambda: ctx.run(coroutine))
        result.others = others
        return cast(Fanout, result)

    by_size: Json = {}
    runs: list[Fanout] = []
    for index, size in enumerate(plan.sizes):
        by_size[str(size)] = {}
        for offered in (0.0, *plan.rates):
            count = max(1, round(offered * plan.duration)) if offered else plan.messages

            def timed(
                system: FanoutSystem, _rep: int, s: int = size, o: float = offered, n: int = count
            ) -> Any:
                return one(system, s, o, n)

            def warm(system: FanoutSystem, s: int = size) -> Fanout:
                return one(system, s, 0.0, plan.warmup)

            first = index == 0 and not offered
            mine = ctx.passes(under_test, timed, plan.repeat, warm if first else None, Fanout.show)
            runs += mine
            by_size[str(size)][load_key(offered)] = {
                system.name: _summary([r for r in mine if r.system == system.name])
                for system in under_test
            }
    by_size["other_load_share"] = other_load([run.others for run in runs])
    return by_size


def _summary(mine: list[Fanout]) -> Json:
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
    option(parser, "subscribers", int, 1_000, 20, metavar="N", help="subscribers per system")
    option(parser, "window", int, WINDOW, metavar="W", help="most messages outstanding")
    option(parser, "rates", str, _csv(RATES), _csv(QUICK_RATES), metavar="R,R",
           help="publishes/s of the paced passes (empty: none)")  # fmt: skip
    option(parser, "duration", float, DURATION, QUICK_DURATION, metavar="S",
           help="seconds of a paced pass")  # fmt: skip
    option(parser, "time_limit", float, TIME_LIMIT, metavar="S", help="seconds of publishing")
    option(parser, "sizes", str, _csv(SIZES), metavar="B,B", help="payload sizes in bytes")
    parser.add_argument(
        "--two-processes",
        action=argparse.BooleanOptionalAction,
        help="also the daemon as 2 processes on one redis-server (default: on, off with --quick)",
    )
    systems.add_arguments(parser)  # --systems (of them: daemon, mosquitto), --mosquitto


def _csv(values: Sequence[float]) -> str:
    return ",".join(f"{value:g}" for value in values)


def _numbers(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchError(f"{option}: not a list of numbers: {text!r}") from None


def _plan(args: argparse.Namespace) -> FanoutPlan:
    messages = given(args, "messages", 1_000, 100)
    repeat, subscribers = given(args, "repeat", 3, 2), given(args, "subscribers", 1_000, 20)
    window, time_limit = given(args, "window", WINDOW, WINDOW), args.time_limit or TIME_LIMIT
    if min(messages, repeat, subscribers, window) < 1:
        raise BenchError("--messages, --repeat, --subscribers and --window must be >= 1")
    rates = _numbers(args.rates, "--rates") if args.rates is not None else None
    rates = (QUICK_RATES if args.quick else RATES) if rates is None else rates
    duration = given(args, "duration", DURATION, QUICK_DURATION)
    if any(rate <= 0 for rate in rates) or duration <= 0 or time_limit <= 0:
        raise BenchError("--rates, --duration and --time-limit must be positive")
    sizes = tuple(int(size) for size in _numbers(args.sizes or _csv(SIZES), "--sizes"))
    if not sizes or min(sizes) < HEAD.size or max(sizes) > ChannelsConfig().max_message_size:
        raise BenchError(f"--sizes must be {HEAD.size}..{ChannelsConfig().max_message_size} bytes")
    return FanoutPlan(
        subscribers, messages, repeat, window, rates, duration, time_limit,
        min(messages, WARMUP_MESSAGES), sizes,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    wanted = [name for name in systems.parse_systems(args.systems) if name in SYSTEMS]
    if not wanted:
        raise BenchError(f"--systems: fanout runs {' and '.join(SYSTEMS)}")
    two = DAEMON in wanted and (
        args.two_processes or (args.two_processes is None and not args.quick)
    )
    banner = (
        f"{', '.join(wanted + [DAEMON2] * two)}; 1 publisher to {plan.subscribers:,} "
        f"subscribers, {plan.messages:,} messages (or {plan.time_limit:g} s) x {plan.repeat}, "
        f"window {plan.window}; paced at {_csv(plan.rates) or '-'}/s for {plan.duration:g} s; "
        f"{_csv(plan.sizes)} B"
    )

    def body(ctx: Context) -> Json:
        nonlocal plan
        fits = (ctx.nofile[0] - 64) // (len(wanted) + two) - 1
        if plan.subscribers > fits:
            ctx.notes.append(f"subscribers cut from {plan.subscribers:,} to {fits:,} (NOFILE)")
            plan = replace(plan, subscribers=fits)
        binaries, skipped = systems.find_peers(args, wanted)
        opened: list[FanoutSystem] = []
        peers: Json = {}
        try:
            if DAEMON in wanted:
                proc = ctx.server("daemon-channels", daemon_argv("channels"))
                opened.append(ctx.run(open_daemon(DAEMON, [proc], plan.subscribers)))
            if two and (why := missing_two()) is None:
                opened.append(open_two(ctx, plan.subscribers))
            elif two and why is not None:
                skipped[DAEMON2] = why
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
            "systems": {system.name: SYSTEM_NOTES[system.name] for system in opened},
            "setup_s": {system.name: system.setup_seconds for system in opened},
            "other_load_share": by_size.pop("other_load_share"),
            "fanout": by_size,
            "ratios": {
                f"{size}/{key}": {
                    "deliveries_per_s": ours["deliveries_per_s"]["median"]
                    / peer["deliveries_per_s"]["median"],
                    "p99": ours["p99_us"]["median"] / peer["p99_us"]["median"],
                }
                for size, by_load in by_size.items()
                for key, entry in by_load.items()
                if (ours := entry.get(DAEMON)) and (peer := entry.get(MOSQUITTO))
            },
            "markdown": markdown,
        }

    return scenario(args, SCENARIO, banner, body)


SYSTEM_NOTES = {
    DAEMON: "`python -m sessiond serve --app channels` (default settings); clients: the "
    "protocol core driven directly with the channels envelopes (bench/fanout.py); exactly "
    "once, in order, acknowledged per session",
    DAEMON2: "two `sessiond serve --app channels --store redis://` processes sharing one "
    "redis-server (bench/fanout.py): the publisher and half the subscribers on the "
    "first, the other half on the second; server CPU: both daemons and redis-server",
    MOSQUITTO: "mosquitto, MQTT 3.1.1, QoS 1 publish and QoS 1 subscriptions in persistent "
    "sessions (clean_session=False), in memory; clients: paho-mqtt on the asyncio loop "
    "(bench/mqtt_peer.py)",
}


def headlines(entry: Json) -> list[Headline]:
    """Deliveries/s of the windowed passes, then p50 / p99 of each paced one, per system."""
    subscribers = entry["config"]["fanout"]["subscribers"]
    return [
        Headline(
            SCENARIO,
            f"1 → {subscribers:,} subscribers, {size} B, "
            + ("as fast as the window allows" if key == "window" else f"{key} published"),
            "deliveries/s" if key == "window" else "p50 / p99 µs",
            {
                name: f"{stats['deliveries_per_s']['median']:,.0f}"
                if key == "window"
                else f"{stats['p50_us']['median']:,.0f} / {stats['p99_us']['median']:,.0f}"
                for name, stats in by_system.items()
            },
        )
        for size, by_load in entry["fanout"].items()
        for key, by_system in by_load.items()
    ]


def _median(key: str, form: str) -> Callable[[Json], str]:
    return lambda stats: format(stats[key]["median"], form)


#: The table's columns after payload, pass, system and ÷ mosquitto: (header, cell, is CPU).
COLUMNS: tuple[tuple[str, Callable[[Json], str], bool], ...] = (
    ("deliveries/s", lambda s: spread_cell(s["deliveries_per_s"]), False),
    ("p50 µs", lambda s: spread_cell(s["p50_us"]), False),
    ("p99 µs", lambda s: spread_cell(s["p99_us"]), False),
    ("server µs CPU/delivery", _median("server_cpu_us_per_delivery", ".2f"), True),
    ("loadgen µs CPU/delivery", _median("client_cpu_us_per_delivery", ".2f"), True),
    ("server core busy", _median("server_cpu_share", ".0%"), True),
    ("loadgen core busy", _median("client_cpu_share", ".0%"), True),
    ("bound", lambda s: bounds_cell(s["bound"]), True),
    ("cores full", lambda s: full_cores_cell(s["cores_full"]), False),
    (
        "lost / dup / reordered",
        lambda s: "{lost} / {duplicates} / {out_of_order}".format(**s),
        False,
    ),
)


def _rows(entry: Json) -> list[list[str]]:
    rows = []
    for size, by_load in entry["fanout"].items():
        for key, by_system in by_load.items():
            ratios = entry["ratios"].get(f"{size}/{key}")
            against = (
                ""
                if ratios is None
                else f"{ratios['deliveries_per_s']:.2f}x"
                if key == "window"
                else f"p99 {ratios['p99']:.2f}x"
            )
            for name, stats in by_system.items():
                cells = [
                    cpu_cell(cell(stats), stats["seconds"]) if cpu else cell(stats)
                    for _, cell, cpu in COLUMNS
                ]
                window = f"window {entry['config']['fanout']['window']}"
                pass_ = window if key == "window" else key
                head = [f"{size} B", pass_, f"`{name}`", cells[0], against * (name == DAEMON)]
                rows.append(head + cells[1:])
    return rows


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## fanout`` section of RESULTS.md."""
    config, plan = entry["config"], entry["config"]["fanout"]
    channels, n = config["channels_app"], plan["subscribers"]
    rates = ", ".join(f"{rate:g}" for rate in plan["rates"])
    paced = (
        f"; *R/s*: paced at R = {rates} messages/s for {plan['duration']:g} s, for the "
        "latency at a load both carry (a message the window held back counts from when "
        "it was due)"
    )
    lines = header(entry, commit, path) + systems.markdown_lines(entry)
    lines += [
        f"One publisher and {n:,} subscribers on one channel (`{config['channel']}`), all in "
        f"the load generator on one asyncio loop; at most {plan['window']} messages "
        "outstanding (published, not yet received by every subscriber). *window* passes: as "
        f"fast as that allows, up to {plan['messages']:,} messages or {plan['time_limit']:g} "
        "s (throughput; the latency is mostly the wait behind the messages ahead)"
        + (paced if rates else "")
        + f". {plan['repeat']} passes per system, size and kind, interleaved, after a warm-up. "
        "Every subscriber must take every message once, in order (else the pass fails). "
        "*deliveries/s*: messages taken by all subscribers over first publish to last "
        "delivery; *latency*: publisher's client handed the message to the subscriber's read "
        "(`time.perf_counter_ns`). *÷ mosquitto*: deliveries/s (window) or p99 (paced) over "
        f"mosquitto's; *bound*: a side above {config['client_bound_threshold']:.0%} of its "
        "core, else `round-trip`; *cores full*: a pinned core above 90 % counting others. "
        f"Channels app: per-subscriber queue {channels['queue_messages']:,} messages / "
        f"{channels['queue_bytes']:,} bytes, slow subscribers: "
        f"{config['slow_subscriber_policy']}.",
        "",
        markdown_table(
            ["payload", "pass", "system", COLUMNS[0][0], "÷ mosquitto"]
            + [title for title, _, _ in COLUMNS[1:]],
            _rows(entry),
        ),
        "",
    ]
    windowed = [
        f"{name} {1e6 / stats['server_cpu_us_per_delivery']['median']:,.0f}"
        for by_load in entry["fanout"].values()
        for name, stats in by_load["window"].items()
        if any(stats["client_bound"]) and stats["server_cpu_us_per_delivery"]["median"] > 0
    ]
    if windowed:
        lines += [
            "Client-bound windowed passes: there the subscribers' clients (one Python process, "
            "one core) set the pace, and a fully busy server core would deliver about "
            + "; ".join(windowed)
            + " messages/s: an extrapolation (1 / server CPU per delivery), not a measurement.",
            "",
        ]
    return "\n".join(lines + other_load_note(entry["other_load_share"]) + notes_lines(entry))
