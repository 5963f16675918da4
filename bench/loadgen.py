"""Load-generating clients for ``python -m bench throughput`` and ``idle``, over loopback.

Each client is an :class:`asyncio.Protocol` (on uvloop's loop when it is
installed) that does as little as an honest client can:

* :class:`SessionEcho` drives the protocol core's client :class:`Session`: one
  ``send_many`` per batch to fill the window, one ``take_messages`` per read,
  one ``transport.write`` per read (or timer tick), and one timer per
  connection armed at ``session.next_deadline()`` so coalesced ACKs and
  heartbeats go out as they would in a real client.
* :class:`FramedEcho` does the same over the barest framing (a 4-byte
  big-endian length, then the payload) against the ceiling server of
  ``bench/ceiling.py``.
* :class:`IdleSession` opens a session, completes its handshake and then only
  answers and sends heartbeats.

Every echoed payload is compared, in order, with the payload sent (payloads
begin with their index, and :class:`~bench.core.Checker` compares whole batches
in C), and a run ends only when every message sent has come back: a lost,
repeated or reordered message raises :class:`~bench.BenchError` instead of
producing a figure. :func:`echo` runs one pass over one session or many
(:func:`split` shares the messages out), all opened before the clocks start
and started together.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Protocol, TypeVar

from sessiond_client.protocol import (
    Connection,
    ConnectionState,
    Params,
    Role,
    Session,
    SessionStarted,
)

from sessiond.server import ServerConfig

from . import BenchError
from .core import POOL, Checker
from .processes import HOST, loop_name, new_loop, pace

__all__ = ["HOST", "loop_name", "new_loop"]

#: The ceiling's framing: a 4-byte big-endian payload length.
LENGTH = struct.Struct(">I")
#: Largest frame the framed client accepts from the ceiling server.
MAX_FRAME = 1 << 20
#: Connections opened at once when a pass uses many.
CONNECT_CONCURRENCY = 50
_OPEN = ConnectionState.OPEN

#: A session the load generator opens: an IdleSession or one that does more.
S = TypeVar("S", bound="IdleSession")

#: The server's CPU seconds so far (read from /proc by the caller).
CpuClock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class EchoResult:
    """One timed echo pass: first send to last echo, over *sessions* connections."""

    system: str
    size: int
    window: int  # messages in flight per session
    messages: int  # sent in the timed span, all sessions
    received: int  # echoed back and found equal, in order, to what was sent
    seconds: float
    client_cpu: float  # load generator CPU seconds over the same span
    server_cpu: float  # server CPU seconds over the same span
    reads: int | None  # data_received calls (None: not measured, as with nats-py)
    writes: int  # transport.write calls
    timer_fires: int  # core timers run (coalesced ACKs, heartbeats)
    timer_writes: int  # of which wrote something: an ACK (or PING) the timer released
    stopped_by: str  # "count" or "time"
    #: Share of the server's and the load generator's cores other processes used
    #: during the pass (None: not measured); see bench/processes.py CoreLoad.
    others: tuple[float, float] | None = None
    sessions: int = 1  # connections (sessions) the messages were shared out over
    #: Counted by the receivers' checks (bench/core.py Checker): messages skipped over
    #: by a later one, or never back by the end; messages that came back twice.
    lost: int = 0
    duplicates: int = 0

    @property
    def rate(self) -> float:
        return self.received / self.seconds

    def to_json(self) -> dict[str, object]:
        return {
            "sessions": self.sessions,
            "window_per_session": self.window,
            "messages": self.messages,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "rate": self.rate,
            "server_cpu_s_per_million": self.server_cpu * 1e6 / self.received,
            "client_cpu_us_per_message": self.client_cpu * 1e6 / self.received,
            "reads": self.reads,
            "writes": self.writes,
            "messages_per_read": None if self.reads is None else self.received / max(1, self.reads),
            "timer_fires": self.timer_fires,
            "timer_writes": self.timer_writes,
            "stopped_by": self.stopped_by,
            **pace(self, self.others),
        }


def frame(payloads: Sequence[bytes]) -> bytes:
    """*payloads* in the ceiling's framing."""
    prefix = LENGTH.pack
    return b"".join([part for payload in payloads for part in (prefix(len(payload)), payload)])


def unframe(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The whole frames at the head of *buffer* (the ceiling's framing), and the rest."""
    got: list[bytes] = []
    keep = got.append
    unpack_from = LENGTH.unpack_from
    size = len(buffer)
    pos = 0
    while size - pos >= 4:
        (length,) = unpack_from(buffer, pos)
        if length > MAX_FRAME:
            raise BenchError(f"frame of {length} bytes")
        stop = pos + 4 + length
        if stop > size:
            break
        keep(buffer[pos + 4 : stop])
        pos = stop
    return got, buffer[pos:]


class _Echo(asyncio.Protocol):
    """What both echo clients share: the window, the check, the clocks, the end.

    A client begins (starts its clocks and sends) as soon as its connection can
    carry payloads; a *held* one only sets :attr:`ready` then, and begins when
    :meth:`go` is called, so that :func:`echo` can start many together.
    """

    system = ""

    def __init__(
        self,
        pool: list[bytes],
        messages: int,
        window: int,
        time_limit: float,
        server_cpu: CpuClock,
        *,
        held: bool = False,
    ) -> None:
        if len(pool) != POOL or not 1 <= window <= POOL // 2:
            raise BenchError(f"window must be 1..{POOL // 2} and the pool {POOL} payloads")
        self.loop = asyncio.get_running_loop()
        self.size = len(pool[0])
        self.ring = pool + pool  # any run of up to POOL payloads is one slice
        self.checker = Checker(self.system, pool)
        self.limit = messages
        self.window = window
        self.time_limit = time_limit
        self.server_cpu = server_cpu
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.reads = 0
        self.writes = 0
        self.timer_fires = 0
        self.timer_writes = 0
        self.stopped_by = "count"
        self.started = False
        self.finished = False
        self.stop_at = 0.0
        self._t0 = self._cpu0 = self._server0 = 0.0
        self.held = held
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.done: asyncio.Future[EchoResult] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def can_begin(self) -> bool:
        """The connection can carry payloads: set :attr:`ready`; begin unless held."""
        if not self.ready.done():
            self.ready.set_result(None)
        if self.held:
            return False
        self.begin()
        return True

    def go(self) -> None:
        """Begin a held client (after :attr:`ready`): start its clocks, fill its window."""
        self.held = False
        self.begin()
        self.send_first()

    def send_first(self) -> None:
        """Send the first window (a held client, from :meth:`go`); each subclass sends
        it in its own framing."""
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.finished:
            self.fail(f"connection lost ({exc or 'EOF'})")

    def begin(self) -> None:
        """Start the clocks, just before the first payload is sent."""
        self.started = True
        self._server0 = self.server_cpu()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        self.stop_at = self.loop.time() + self.time_limit

    def next_batch(self, now: float) -> list[bytes]:
        """The payloads the window has room for (empty once the limit is reached).

        At the time bound the limit drops to what was sent: a caller that gets
        nothing must then :meth:`check_end`, since the window may already be back.
        """
        sent = self.sent
        room = self.window - (sent - self.checker.taken)
        if room <= 0 or sent >= self.limit:
            return []
        if now >= self.stop_at:
            self.limit = sent  # the time bound: drain what is in flight, send no more
            self.stopped_by = "time"
            return []
        start = sent & (POOL - 1)
        return self.ring[start : start + min(room, self.limit - sent)]

    def check_end(self) -> bool:
        """Once every payload sent has come back: stop the clocks, report, close."""
        if self.checker.taken < self.limit or self.finished:
            return False
        seconds = time.perf_counter() - self._t0
        cpu = time.process_time() - self._cpu0
        server = self.server_cpu() - self._server0
        self.verify_end()
        self.finished = True
        checker = self.checker
        self.done.set_result(
            EchoResult(
                self.system,
                self.size,
                self.window,
                self.sent,
                checker.received,
                seconds,
                cpu,
                server,
                self.reads,
                self.writes,
                self.timer_fires,
                self.timer_writes,
                self.stopped_by,
                lost=checker.missing + self.sent - checker.taken,
                duplicates=checker.duplicates,
            )
        )
        self.close()
        return True

    def verify_end(self) -> None:
        """Raise :class:`BenchError` if the end state contradicts the count."""

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def fail(self, why: str) -> None:
        self.finished = True
        error = BenchError(
            f"{self.system}: {why} after {self.sent:,} sent, {self.checker.taken:,} echoed back"
        )
        if not self.done.done():
            self.done.set_exception(error)
        if self.held and not self.ready.done():  # echo_many is waiting for it
            self.ready.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class _Driver(Protocol):
    """A load-generating protocol driving one client core session."""

    loop: asyncio.AbstractEventLoop
    session: Session
    conn: Connection | None
    transport: asyncio.Transport | None
    timer: asyncio.TimerHandle | None
    timer_at: float


def arm_timer(driver: _Driver, on_timer: Callable[[], None], off: bool = False) -> None:
    """Keep the driver's one timer at its core's next deadline (none if *off*)."""
    deadline = None if off else driver.session.next_deadline()
    timer = driver.timer
    if deadline is None:
        if timer is not None:
            timer.cancel()
            driver.timer = None
        return
    if timer is not None:
        if driver.timer_at <= deadline:
            return  # fires earlier: handle_timer is then a no-op and we re-arm
        timer.cancel()
    driver.timer_at = deadline
    driver.timer = driver.loop.call_at(deadline, on_timer)


def send_close(driver: _Driver) -> None:
    """Stop the timer and send CLOSE NORMAL at once (the daemon forgets the session)."""
    if driver.timer is not None:
        driver.timer.cancel()
        driver.timer = None
    conn = driver.conn
    if conn is not None and not conn.closed:
        driver.session.close(driver.loop.time())
        out = conn.data_to_send()
        if out and driver.transport is not None:
            driver.transport.write(out)


class SessionEcho(_Echo):
    """A sessiond client session echoing *messages* payloads through the daemon."""

    system = "daemon"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # _Echo's
        super().__init__(*args, **kwargs)
        self.session = Session(Role.CLIENT, Params())
        self.conn: Connection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn = self.session.connect(self.loop.time())
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        session = self.session
        now = self.loop.time()
        self.reads += 1
        conn.receive_data(data, now)
        try:
            if self.started:
                got = session.take_messages(now)
                if got:
                    self.checker.check(got)
                    if self.check_end():
                        return
            elif not self.ready.done() and conn.state is _OPEN:
                self._check_events(session)
                self.can_begin()
            batch = self.next_batch(now) if self.started else None
            if batch:
                self.sent += session.send_many(batch, now)
            elif self.started and self.check_end():
                return  # the time bound came as the whole window was back
        except BenchError as exc:
            self.fail(str(exc))
            return
        self._flush()
        self._arm()

    def send_first(self) -> None:
        now = self.loop.time()
        self.sent += self.session.send_many(self.next_batch(now), now)
        self._flush()
        self._arm()

    def _check_events(self, session: Session) -> None:
        events = session.events()
        if len(events) != 1 or not isinstance(events[0], SessionStarted):
            raise BenchError(f"unexpected events at the handshake: {events}")

    def _flush(self) -> None:
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None:
            return
        out = conn.data_to_send()
        if out:
            transport.write(out)
            self.writes += 1
        if conn.closed and not self.finished:
            self.fail(f"the core closed the connection: {conn.close_code!s} {conn.close_reason}")

    def _arm(self) -> None:
        arm_timer(self, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.finished:
            return
        self.timer_fires += 1
        self.session.handle_timer(self.loop.time())
        writes = self.writes
        self._flush()
        self.timer_writes += self.writes - writes
        self._arm()

    def close(self) -> None:
        """End the session with CLOSE NORMAL (the daemon forgets it), then the transport."""
        send_close(self)
        super().close()

    def verify_end(self) -> None:
        sent, _acked, received, consumed = self.session.sequence_numbers
        if not sent == received == consumed == self.checker.taken == self.sent:
            raise BenchError(
                f"sequence numbers: sent {sent}, received {received}, consumed {consumed}, "
                f"checked {self.checker.taken}"
            )
        events = self.session.events()
        if events:
            raise BenchError(f"unexpected events: {events}")


class FramedEcho(_Echo):
    """The ceiling's client: 4-byte length + payload frames, nothing else."""

    system = "ceiling"
    tail = b""  # the start of a frame the last read did not complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.can_begin():
            self._send(self.loop.time())

    def send_first(self) -> None:
        self._send(self.loop.time())

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            got, self.tail = unframe(self.tail + data if self.tail else data)
            if got:
                self.checker.check(got)
                if self.check_end():
                    return
        except BenchError as exc:
            self.fail(str(exc))
            return
        self._send(self.loop.time())

    def _send(self, now: float) -> None:
        batch = self.next_batch(now)
        if not batch:
            self.check_end()  # the time bound may have come as the whole window was back
            return
        if self.transport is None:
            return
        self.transport.write(frame(batch))
        self.writes += 1
        self.sent += len(batch)


async def echo(
    system: str,
    port: int,
    pool: list[bytes],
    messages: int,
    window: int,
    time_limit: float,
    server_cpu: CpuClock,
    *,
    ssl: SSLContext | None = None,
    sessions: int = 1,
) -> EchoResult:
    """One echo pass of *system* (``daemon`` or ``ceiling``) against 127.0.0.1:*port*.

    With *ssl*, over TLS: the handshake is done before the clocks start. With
    *sessions* above one, :func:`echo_many`.
    """
    if sessions > 1:
        return await echo_many(
            system, port, pool, messages, window, time_limit, server_cpu, sessions, ssl=ssl
        )
    loop = asyncio.get_running_loop()
    protocol = _echo_kind(system)(pool, messages, window, time_limit, server_cpu)
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: protocol, HOST, port, ssl=ssl), 10.0
    )
    try:
        result = await asyncio.wait_for(protocol.done, time_limit + 30.0)
    except TimeoutError:
        raise BenchError(
            f"{system}: no progress, timed out with {protocol.sent:,} sent, "
            f"{protocol.checker.taken:,} echoed back"
        ) from None
    finally:
        if not protocol.finished:
            protocol.finished = True
            transport.abort()
    # Let the server see the end before the next pass starts its clocks.
    try:
        await asyncio.wait_for(protocol.lost, 5.0)
    except TimeoutError:
        transport.abort()
    return result


def _echo_kind(system: str) -> type[_Echo]:
    """The echo client for *system*: ``daemon`` (the core) or ``ceiling`` (framed)."""
    for kind in (SessionEcho, FramedEcho):
        if system == kind.system:
            return kind
    raise ValueError(system)


def split(messages: int, sessions: int) -> list[int]:
    """*messages* shared out over *sessions* as evenly as can be, at least one each."""
    share, extra = divmod(max(messages, sessions), sessions)
    return [share + (1 if index < extra else 0) for index in range(sessions)]


class Share:
    """One client's share of a windowed echo pass through a client library (paho, nats-py,
    sessiond_client): its window, its check, its end (:attr:`done`)."""

    def __init__(self, system: str, pool: list[bytes], messages: int, window: int) -> None:
        if len(pool) != POOL or not 1 <= window <= POOL // 2:
            raise BenchError(f"window must be 1..{POOL // 2} and the pool {POOL} payloads")
        self.checker = Checker(system, pool)
        self.ring = pool + pool
        self.window = window
        self.limit = messages
        self.sent = 0
        self.stopped_by = "count"
        self.stop_at = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def batch(self) -> list[bytes]:
        """The payloads the window has room for now, counted as sent (none after the time
        bound, which drops the limit to what was sent)."""
        sent = self.sent
        if sent < self.limit and time.perf_counter() >= self.stop_at:
            self.limit = sent
            self.stopped_by = "time"
        room = min(self.window - (sent - self.checker.taken), self.limit - sent)
        if room <= 0:
            return []
        self.sent = sent + room
        start = sent & (POOL - 1)
        return self.ring[start : start + room]

    def take(self, payloads: list[bytes]) -> bool:
        """Check what came back; True while more is wanted (else :attr:`done` is set)."""
        if self.done.done():
            return False
        try:
            self.checker.check(payloads)
        except BenchError as exc:
            self.done.set_exception(exc)
            return False
        return not self.ended()

    def ended(self) -> bool:
        if self.checker.taken < self.limit:
            return False
        if not self.done.done():
            self.done.set_result(None)
        return True


async def shares_pass(
    system: str,
    shares: Sequence[Share],
    start: Callable[[], Awaitable[object]],
    server_cpu: CpuClock,
    time_limit: float,
    reads: Callable[[], int | None],
    writes: Callable[[], int] = lambda: 0,
) -> EchoResult:
    """Time *shares* (every client connected): *start* sends the first windows; the pass
    ends when every share is back. *reads* and *writes* count the clients' I/O after."""
    server0, cpu0, t0 = server_cpu(), time.process_time(), time.perf_counter()
    for share in shares:
        share.stop_at = t0 + time_limit
    await start()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(asyncio.shield(share.done) for share in shares)), time_limit + 30.0
        )
    except TimeoutError:
        raise BenchError(
            f"{system}: no progress, timed out with {sum(s.sent for s in shares):,} sent, "
            f"{sum(s.checker.taken for s in shares):,} echoed back"
        ) from None
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server = server_cpu() - server0
    checkers = [share.checker for share in shares]
    return EchoResult(
        system,
        len(shares[0].ring[0]),
        shares[0].window,
        sum(share.sent for share in shares),
        sum(c.received for c in checkers),
        seconds,
        cpu,
        server,
        reads(),
        writes(),
        0,
        0,
        "time" if any(share.stopped_by == "time" for share in shares) else "count",
        sessions=len(shares),
        lost=sum(c.missing + s.sent - c.taken for c, s in zip(checkers, shares, strict=True)),
        duplicates=sum(c.duplicates for c in checkers),
    )


def _no_clock() -> float:
    return 0.0


async def echo_many(
    system: str,
    port: int,
    pool: list[bytes],
    messages: int,
    window: int,
    time_limit: float,
    server_cpu: CpuClock,
    sessions: int,
    *,
    ssl: SSLContext | None = None,
) -> EchoResult:
    """One echo pass over *sessions* connections, each up to *window* messages in flight.

    The *messages* are shared out (:func:`split`); every connection is opened
    (and its handshake done) before the clocks start, then all begin at once,
    and the pass ends when the last one has every echo back. The clocks and
    both processes' CPU are read here, around the whole group.
    """
    loop = asyncio.get_running_loop()
    kind = _echo_kind(system)
    # The clients' own clocks are not read: only the group's figures count.
    protocols = [
        kind(pool, quota, window, time_limit, _no_clock, held=True)
        for quota in split(messages, sessions)
    ]
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(protocol: _Echo) -> None:
        async with semaphore:
            await loop.create_connection(lambda: protocol, HOST, port, ssl=ssl)
            await protocol.ready

    try:
        try:
            await asyncio.wait_for(asyncio.gather(*map(open_one, protocols)), 30.0)
        except (OSError, TimeoutError) as exc:
            raise BenchError(f"{system}: opening {sessions} sessions: {exc!r}") from None
        server0, cpu0, t0 = server_cpu(), time.process_time(), time.perf_counter()
        for protocol in protocols:
            protocol.go()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(protocol.done for protocol in protocols)), time_limit + 30.0
            )
        except TimeoutError:
            sent = sum(protocol.sent for protocol in protocols)
            taken = sum(protocol.checker.taken for protocol in protocols)
            raise BenchError(
                f"{system}: no progress, timed out with {sent:,} sent, {taken:,} echoed back"
            ) from None
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        server = server_cpu() - server0
    finally:
        for protocol in protocols:
            if not protocol.finished:
                protocol.finished = True
                if protocol.transport is not None:
                    protocol.transport.abort()
        lost = [protocol.lost for protocol in protocols if protocol.transport is not None]
        if lost:
            await asyncio.wait(lost, timeout=5.0)
    return EchoResult(
        system,
        len(pool[0]),
        window,
        sum(result.messages for result in results),
        sum(result.received for result in results),
        seconds,
        cpu,
        server,
        sum(result.reads or 0 for result in results),
        sum(result.writes for result in results),
        sum(result.timer_fires for result in results),
        sum(result.timer_writes for result in results),
        "time" if any(result.stopped_by == "time" for result in results) else "count",
        sessions=sessions,
        lost=sum(result.lost for result in results),
        duplicates=sum(result.duplicates for result in results),
    )


# --------------------------------------------------------------------- idle

#: Handshakes in flight when opening many sessions (the daemon's listen backlog is 4096).
DEFAULT_CONCURRENCY = 100


def source_addresses(per_address: int) -> Callable[[int], str]:
    """Session *i*'s source address: a new 127.x.y.z every *per_address* sessions.

    The daemon allows ``max_transports_per_peer`` transports per IP address; the
    whole of 127.0.0.0/8 is loopback, so many sessions come from several of its
    addresses (all of them connect to 127.0.0.1).
    """

    def source(index: int) -> str:
        number = 1 + index // per_address
        return f"127.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"

    return source


def sessions_per_address() -> int:
    """Sessions per source address: a margin below the daemon's per-peer transport limit."""
    limit = ServerConfig().max_transports_per_peer
    return max(1, limit - max(8, limit // 16))


class IdleSession(asyncio.Protocol):
    """A session that completes its handshake and then only keeps its heartbeats."""

    __slots__ = (
        "closing",
        "conn",
        "failure",
        "loop",
        "lost",
        "opened",
        "reads",
        "session",
        "timer",
        "timer_at",
        "timer_fires",
        "transport",
    )

    def __init__(self, params: Params) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = Session(Role.CLIENT, params)
        self.conn: Connection | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.timer_fires = 0
        self.reads = 0
        self.closing = False
        self.failure: str | None = None
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    @property
    def open(self) -> bool:
        return self.conn is not None and self.conn.state is _OPEN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn = self.session.connect(self.loop.time())
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        now = self.loop.time()
        self.reads += 1
        conn.receive_data(data, now)
        if conn.state is _OPEN and not self.opened.done():
            events = self.session.events()
            if len(events) != 1 or not isinstance(events[0], SessionStarted):
                self._fail(f"unexpected events at the handshake: {events}")
            else:
                self.opened.set_result(None)
        messages = self.session.take_messages(now)
        if messages:
            self.on_messages(messages, now)
        self._flush()
        self._arm()

    def on_messages(self, messages: list[bytes], now: float) -> None:
        """What one read brought (taken: acknowledged); a subclass that expects messages
        handles them here, then the read's output is written. An idle session expects none."""
        self._fail("an idle session received a message")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.closing:
            self._fail(f"connection lost ({exc or 'EOF'})")
        if not self.lost.done():
            self.lost.set_result(None)

    def _fail(self, why: str) -> None:
        if self.failure is None:
            code = self.conn.close_code if self.conn is not None else None
            self.failure = why if code is None else f"{why}; close code {code!s}"
        if not self.opened.done():
            self.opened.set_exception(BenchError(self.failure))
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        conn = self.conn
        if conn is None or self.transport is None:
            return
        out = conn.data_to_send()
        if out:
            self.transport.write(out)
        if conn.closed and not self.closing:
            self._fail(f"the core closed the connection: {conn.close_reason}")

    def _arm(self) -> None:
        arm_timer(self, self._on_timer, off=self.closing)

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_fires += 1
        self.session.handle_timer(self.loop.time())
        self._flush()
        self._arm()

    def close(self) -> None:
        """CLOSE NORMAL (the daemon ends the session), then close the transport."""
        self.closing = True
        send_close(self)
        if self.transport is not None:
            self.transport.close()


async def open_idle(
    port: int,
    count: int,
    concurrency: int,
    params: Params,
    sources: Callable[[int], str],
    timeout: float = 10.0,
    ssl: SSLContext | None = None,
) -> list[IdleSession]:
    """Open *count* idle sessions, at most *concurrency* handshakes at a time (over TLS
    with *ssl*).

    Session *i* connects from source address ``sources(i)`` (to 127.0.0.1).
    Returns once every handshake is complete; raises :class:`BenchError` if one fails.
    """
    return await open_sessions(
        port, count, concurrency, lambda _index: IdleSession(params), sources, timeout, ssl=ssl
    )


async def open_sessions(
    port: int,
    count: int,
    concurrency: int,
    make: Callable[[int], S],
    sources: Callable[[int], str] | None = None,
    timeout: float = 10.0,
    *,
    ssl: SSLContext | None = None,
    keep: bool = True,
    deadline: float | None = None,
) -> list[S]:
    """Open *count* sessions ``make(i)``, at most *concurrency* handshakes at a time.

    Session *i* connects from ``sources(i)`` when given (to 127.0.0.1), over TLS
    with *ssl*. Returns them once every handshake is complete; raises
    :class:`BenchError` if one fails. With *keep* false each session is closed
    (CLOSE NORMAL) as soon as its handshake completes, so that at most
    *concurrency* are open at a time (a handshake-rate loop); then await
    :func:`close_idle` on what it returns to see every transport closed. No
    handshake starts after *deadline* (the loop's clock), if given.
    """
    loop = asyncio.get_running_loop()
    opened: list[S] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and (deadline is None or loop.time() < deadline):
            index = next_index
            next_index += 1
            session = make(index)
            local = None if sources is None else (sources(index), 0)
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        _factory(session), HOST, port, ssl=ssl, local_addr=local
                    ),
                    timeout,
                )
                await asyncio.wait_for(session.opened, timeout)
            except (OSError, TimeoutError) as exc:
                raise BenchError(
                    f"session {index + 1}: {exc!r} after {len(opened):,} opened"
                ) from None
            if not keep:
                session.close()
            opened.append(session)

    workers = [loop.create_task(worker()) for _ in range(min(concurrency, count))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await close_idle(opened, 5.0)
        raise
    return opened


def _factory(protocol: S) -> Callable[[], S]:
    return lambda: protocol


async def close_idle(sessions: Sequence[IdleSession], timeout: float) -> int:
    """Close every session; return how many transports were not closed within *timeout*."""
    for session in sessions:
        session.close()
    pending = [s.lost for s in sessions if not s.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    left = 0
    for session in sessions:
        if not session.lost.done():
            left += 1
            if session.transport is not None:
                session.transport.abort()
    return left
