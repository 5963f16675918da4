"""Load-generating clients over loopback: one :class:`Driver` for every session kind.

A :class:`Driver` is an :class:`asyncio.Protocol` around one client core :class:`Session`
doing what a lean honest client does: one ``take_messages`` and one ``transport.write`` per
read (or timer tick), one timer at ``session.next_deadline()`` for coalesced ACKs and
heartbeats; ``framed=True`` speaks the ceiling's framing (a 4-byte length, then the
payload) instead. Scenarios plug in through :meth:`Driver.on_messages`,
:meth:`Driver.after_read` and :meth:`Driver.on_open`: idle sessions, :class:`Echo`, ping-pong,
resume and storm (:meth:`Driver.cut`), fanout's channel clients. A windowed echo pass is a
:class:`Share` per connection (window, in-order check, end) timed by :func:`shares_pass`,
which the client library and the peers' Python clients use too.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import TypeVar

from sessiond_client.protocol import (
    Connection,
    ConnectionState,
    Params,
    Role,
    Session,
    SessionResumed,
    SessionStarted,
    TransportLost,
)

from sessiond.server import ServerConfig

from . import BenchError
from .core import POOL, Checker
from .processes import HOST, pace

__all__ = ["HOST"]  # re-exported: the peers' clients import it from here

#: The ceiling's framing: a 4-byte big-endian payload length.
LENGTH = struct.Struct(">I")
#: Largest frame the framed client accepts from the ceiling server.
MAX_FRAME = 1 << 20
#: Connections opened at once for an echo pass.
CONNECT_CONCURRENCY = 50
#: Handshakes in flight when opening many sessions (the daemon's listen backlog is 4096).
DEFAULT_CONCURRENCY = 100
_OPEN = ConnectionState.OPEN
#: ``struct linger`` with l_onoff 1, l_linger 0: close() resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)
#: The protocol of a transport that has been cut: its connection_lost is nobody's business.
_CUT = asyncio.Protocol()

#: The server's CPU seconds so far (read from /proc by the caller).
CpuClock = Callable[[], float]
D = TypeVar("D", bound="Driver")


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
    #: Counted by the receivers' checks: messages skipped over by a later one, or never
    #: back by the end; messages that came back twice.
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


# ------------------------------------------------------------ windowed echo


def split(messages: int, sessions: int) -> list[int]:
    """*messages* shared out over *sessions* as evenly as can be, at least one each."""
    share, extra = divmod(max(messages, sessions), sessions)
    return [share + (1 if index < extra else 0) for index in range(sessions)]


class Share:
    """One client's share of a windowed echo pass: its window, its check, its end
    (:attr:`done`; *verify*, if set, may refuse the end state with a reason)."""

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
        self.verify: Callable[[], str | None] | None = None
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
            why = None if self.verify is None else self.verify()
            if why is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(BenchError(f"{self.checker.system}: {why}"))
        return True


async def shares_pass(
    system: str,
    shares: Sequence[Share],
    start: Callable[[], Awaitable[object]],
    server_cpu: CpuClock,
    time_limit: float,
    reads: Callable[[], int | None],
    writes: Callable[[], int] = lambda: 0,
    timers: Callable[[], tuple[int, int]] = lambda: (0, 0),
) -> EchoResult:
    """Time *shares* (every client connected): *start* sends the first windows; the pass
    ends when every share is back. *reads*, *writes* and *timers* (fired, wrote) count the
    clients' I/O after."""
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
        *timers(),
        "time" if any(share.stopped_by == "time" for share in shares) else "count",
        sessions=len(shares),
        lost=sum(c.missing + s.sent - c.taken for c, s in zip(checkers, shares, strict=True)),
        duplicates=sum(c.duplicates for c in checkers),
    )


# ------------------------------------------------------------------ driver


class Driver(asyncio.Protocol):
    """One client: a core session (or, *framed*, the ceiling's framing). Idle as it is: it
    completes its handshake (:attr:`opened`), then only answers and keeps its heartbeats,
    until its transport is gone (:attr:`lost`)."""

    __slots__ = (
        "closing",
        "conn",
        "failure",
        "framed",
        "loop",
        "lost",
        "opened",
        "read_ns",
        "reads",
        "resuming",
        "session",
        "session_lost",
        "tail",
        "timer",
        "timer_at",
        "timer_fires",
        "timer_writes",
        "transport",
        "writes",
    )

    def __init__(self, params: Params | None = None, *, framed: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = Session(Role.CLIENT, params or Params())
        self.framed = framed
        self.conn: Connection | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.tail = b""  # framed: the start of a frame the last read did not complete
        self.reads = self.writes = self.timer_fires = self.timer_writes = self.read_ns = 0
        self.closing = self.resuming = self.session_lost = False
        self.failure: str | None = None
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    @property
    def open(self) -> bool:
        return self.conn is not None and self.conn.state is _OPEN

    def on_open(self, event: SessionStarted | SessionResumed) -> None:
        """The handshake is done (``SessionResumed`` after a :meth:`cut`)."""

    def on_messages(self, messages: list[bytes], now: float) -> None:
        """What one read brought (taken: acknowledged). An idle session expects none."""
        self._fail("an idle session received a message")

    def after_read(self, now: float) -> None:
        """After :meth:`on_messages` (if any), before the read's output is written."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.lost.done():  # the transport after a cut
            self.lost = self.loop.create_future()
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        if self.framed:
            self.opened.set_result(None)
            return
        self.conn = self.session.connect(self.loop.time())
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.read_ns = time.perf_counter_ns()  # the bytes are back: the clock before decoding
        now = self.loop.time()
        self.reads += 1
        if self.framed:
            try:
                messages, self.tail = unframe(self.tail + data if self.tail else data)
            except BenchError as exc:
                self._fail(str(exc))
                return
        else:
            conn = self.conn
            assert conn is not None
            conn.receive_data(data, now)
            if conn.state is _OPEN and not self.opened.done():
                self._handshake()
            messages = self.session.take_messages(now)
        if messages:
            self.on_messages(messages, now)
        self.after_read(now)
        self._flush()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.closing:
            self._fail(f"connection lost ({exc or 'EOF'})")
        if not self.lost.done():
            self.lost.set_result(None)

    def send_payloads(self, payloads: list[bytes], now: float) -> int:
        """Hand *payloads* over (the core takes as many as its window allows): how many."""
        if not self.framed:
            return self.session.send_many(payloads, now)
        if self.transport is not None:
            self.transport.write(frame(payloads))
            self.writes += 1
        return len(payloads)

    def _handshake(self) -> None:
        events = self.session.events()
        event = events[0] if len(events) == 1 else None
        if not isinstance(event, SessionResumed if self.resuming else SessionStarted):
            self.session_lost = self.resuming
            what = "resume (session lost?)" if self.resuming else "handshake"
            self._fail(f"unexpected events at the {what}: {events}")
            return
        self.on_open(event)
        if not self.opened.done():
            self.opened.set_result(None)

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
            self.writes += 1
        if conn.closed and not self.closing:
            self._fail(f"the core closed the connection: {conn.close_code!s} {conn.close_reason}")

    def _arm(self) -> None:
        """Keep the one timer at the core's next deadline."""
        deadline = None if self.closing or self.conn is None else self.session.next_deadline()
        timer = self.timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self.timer = None
            return
        if timer is not None:
            if self.timer_at <= deadline:
                return  # fires earlier: handle_timer is then a no-op and we re-arm
            timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closing:
            return
        self.timer_fires += 1
        self.session.handle_timer(self.loop.time())
        writes = self.writes
        self._flush()
        self.timer_writes += self.writes - writes
        self._arm()

    def close(self) -> None:
        """CLOSE NORMAL (the daemon forgets the session), then close the transport."""
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        if conn is not None and not conn.closed:
            self.session.close(self.loop.time())
            out = conn.data_to_send()
            if out and self.transport is not None:
                self.transport.write(out)
        if self.transport is not None:
            self.transport.close()

    def reset_on_close(self) -> None:
        """Make closing the transport send RST (``SO_LINGER`` 0; before a :meth:`cut`)."""
        sock = None if self.transport is None else self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)

    def cut(self) -> None:
        """Abort the transport now and report it to the core at once, as the client library
        does; the session detaches, and the next transport's HELLO resumes (protocol.md
        §4.1), setting :attr:`opened` again."""
        transport, conn = self.transport, self.conn
        self.transport = self.conn = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if transport is not None:
            transport.abort()
            transport.set_protocol(_CUT)
        if conn is not None:
            conn.connection_lost(self.loop.time())
        events = self.session.events()
        if len(events) != 1 or not isinstance(events[0], TransportLost):
            raise BenchError(f"unexpected events at the cut: {events}")
        self.resuming = True
        self.opened = self.loop.create_future()
        if not self.lost.done():
            self.lost.set_result(None)


#: The name the other bench modules know the bare driver by.
IdleSession = Driver


class Echo(Driver):
    """A windowed echo of one :class:`Share` (through the daemon, or *framed* through the
    ceiling): once open, :meth:`go` fills the window; every echo read sends more."""

    __slots__ = ("share", "started")

    def __init__(self, share: Share, params: Params | None = None, *, framed: bool = False):
        super().__init__(params, framed=framed)
        self.share = share
        self.started = False
        if not framed:
            share.verify = self.verify

    def go(self) -> None:
        self.started = True
        self.after_read(self.loop.time())
        self._flush()
        self._arm()

    def on_messages(self, messages: list[bytes], now: float) -> None:
        if not self.share.take(messages):
            self.close()

    def after_read(self, now: float) -> None:
        if not self.started or self.closing:
            return
        share = self.share
        batch = share.batch()
        if batch:
            share.sent -= len(batch) - self.send_payloads(batch, now)
        elif share.ended():  # the time bound came as the whole window was back
            self.close()

    def verify(self) -> str | None:
        """Why the core's end state contradicts the count, or None."""
        sent, _acked, received, consumed = self.session.sequence_numbers
        taken = self.share.checker.taken
        if not sent == received == consumed == taken == self.share.sent:
            return (
                f"sequence numbers: sent {sent}, received {received}, consumed {consumed}, "
                f"checked {taken}"
            )
        events = self.session.events()
        return f"unexpected events: {events}" if events else None

    def _fail(self, why: str) -> None:
        super()._fail(why)
        share = self.share
        if not share.done.done():
            share.done.set_exception(
                BenchError(
                    f"{share.checker.system}: {why} after {share.sent:,} sent, "
                    f"{share.checker.taken:,} echoed back"
                )
            )


async def echo_pass(
    system: str,
    port: int,
    clients: Sequence[Echo],
    time_limit: float,
    server_cpu: CpuClock,
    *,
    ssl: SSLContext | None = None,
) -> EchoResult:
    """Open *clients* (their handshakes done), then time them together (:func:`shares_pass`)."""
    opened = await open_sessions(
        port, len(clients), CONNECT_CONCURRENCY, clients.__getitem__, ssl=ssl
    )

    async def start() -> None:
        for client in opened:
            client.go()

    try:
        return await shares_pass(
            system,
            [client.share for client in clients],
            start,
            server_cpu,
            time_limit,
            lambda: sum(c.reads for c in opened),
            lambda: sum(c.writes for c in opened),
            lambda: (sum(c.timer_fires for c in opened), sum(c.timer_writes for c in opened)),
        )
    finally:  # let the server see the end before the next pass starts its clocks
        await close_idle(opened, 5.0)


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
    """One echo pass of *system* (``daemon``: the core; ``ceiling``: framed) against
    127.0.0.1:*port* (TLS with *ssl*), *messages* shared out over *sessions* connections,
    each with up to *window* in flight."""
    if system not in ("daemon", "ceiling"):
        raise ValueError(system)
    clients = [
        Echo(Share(system, pool, quota, window), framed=system == "ceiling")
        for quota in split(messages, sessions)
    ]
    return await echo_pass(system, port, clients, time_limit, server_cpu, ssl=ssl)


# -------------------------------------------------------------- many sessions


def source_addresses(per_address: int) -> Callable[[int], str]:
    """Session *i*'s source address: a new 127.x.y.z every *per_address* sessions (the
    daemon allows ``max_transports_per_peer`` per address; all of 127/8 is loopback)."""

    def source(index: int) -> str:
        number = 1 + index // per_address
        return f"127.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"

    return source


def sessions_per_address() -> int:
    """Sessions per source address: a margin below the daemon's per-peer transport limit."""
    limit = ServerConfig().max_transports_per_peer
    return max(1, limit - max(8, limit // 16))


async def open_idle(
    port: int,
    count: int,
    concurrency: int,
    params: Params,
    sources: Callable[[int], str],
    timeout: float = 10.0,
    ssl: SSLContext | None = None,
) -> list[Driver]:
    """Open *count* idle sessions (:func:`open_sessions`)."""
    return await open_sessions(
        port, count, concurrency, lambda _index: Driver(params), sources, timeout, ssl=ssl
    )


async def open_sessions(
    port: int,
    count: int,
    concurrency: int,
    make: Callable[[int], D],
    sources: Callable[[int], str] | None = None,
    timeout: float = 10.0,
    *,
    ssl: SSLContext | None = None,
    keep: bool = True,
    deadline: float | None = None,
) -> list[D]:
    """Open *count* sessions ``make(i)`` to 127.0.0.1 (from ``sources(i)``, over TLS with
    *ssl*), at most *concurrency* handshakes at a time, none after *deadline* (loop clock);
    return them, in the order their handshakes completed, or raise :class:`BenchError`.
    Without *keep* each is closed as soon as it is open (a handshake-rate loop: then
    :func:`close_idle` what it returns)."""
    loop = asyncio.get_running_loop()
    opened: list[D] = []
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


def _factory(protocol: D) -> Callable[[], D]:
    return lambda: protocol


async def close_idle(sessions: Sequence[Driver], timeout: float) -> int:
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
