"""Load-generating clients for ``python -m bench daemon``, over loopback sockets.

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
producing a figure.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sessiond_client.protocol import (
    Connection,
    ConnectionState,
    Params,
    Role,
    Session,
    SessionStarted,
)

from . import BenchError
from .core import POOL, Checker

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

HOST = "127.0.0.1"
#: The ceiling's framing: a 4-byte big-endian payload length.
LENGTH = struct.Struct(">I")
#: Largest frame the framed client accepts from the ceiling server.
MAX_FRAME = 1 << 20
_OPEN = ConnectionState.OPEN

#: The server's CPU seconds so far (read from /proc by the caller).
CpuClock = Callable[[], float]


def other_load_json(others: tuple[float, float] | None) -> dict[str, object]:
    """A pass's ``others`` as JSON (nothing when it was not measured)."""
    if others is None:
        return {}
    return {"other_load_share": {"server_core": others[0], "loadgen_core": others[1]}}


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when available, else asyncio's default one."""
    if uvloop is not None:
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def loop_name() -> str:
    return "uvloop" if uvloop is not None else "asyncio"


@dataclass(frozen=True, slots=True)
class EchoResult:
    """One timed echo pass: first send to last echo, on one connection."""

    system: str
    size: int
    window: int
    messages: int  # sent in the timed span
    received: int  # echoed back and found equal, in order, to what was sent
    seconds: float
    client_cpu: float  # load generator CPU seconds over the same span
    server_cpu: float  # server CPU seconds over the same span
    reads: int  # data_received calls
    writes: int  # transport.write calls
    timer_fires: int  # core timers run (coalesced ACKs, heartbeats)
    timer_writes: int  # of which wrote something: an ACK (or PING) the timer released
    stopped_by: str  # "count" or "time"
    #: Share of the server's and the load generator's cores other processes used
    #: during the pass (None: not measured); see bench/processes.py CoreLoad.
    others: tuple[float, float] | None = None

    @property
    def rate(self) -> float:
        return self.received / self.seconds

    def to_json(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "received": self.received,
            "lost": self.messages - self.received,
            "seconds": self.seconds,
            "rate": self.rate,
            "client_cpu_s": self.client_cpu,
            "client_cpu_share": self.client_cpu / self.seconds,
            "server_cpu_s": self.server_cpu,
            "server_cpu_share": self.server_cpu / self.seconds,
            "server_cpu_s_per_million": self.server_cpu * 1e6 / self.received,
            "reads": self.reads,
            "writes": self.writes,
            "messages_per_read": self.received / max(1, self.reads),
            "timer_fires": self.timer_fires,
            "timer_writes": self.timer_writes,
            "stopped_by": self.stopped_by,
            **other_load_json(self.others),
        }


class _Echo(asyncio.Protocol):
    """What both echo clients share: the window, the check, the clocks, the end."""

    system = ""

    def __init__(
        self,
        pool: list[bytes],
        messages: int,
        window: int,
        time_limit: float,
        server_cpu: CpuClock,
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
        self.done: asyncio.Future[EchoResult] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

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
        """The payloads the window has room for (empty once the limit is reached)."""
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
        self.done.set_result(
            EchoResult(
                self.system,
                self.size,
                self.window,
                self.sent,
                self.checker.taken,
                seconds,
                cpu,
                server,
                self.reads,
                self.writes,
                self.timer_fires,
                self.timer_writes,
                self.stopped_by,
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
        if not self.done.done():
            self.done.set_exception(
                BenchError(
                    f"{self.system}: {why} after {self.sent:,} sent, "
                    f"{self.checker.taken:,} echoed back"
                )
            )
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

    def __init__(
        self,
        pool: list[bytes],
        messages: int,
        window: int,
        time_limit: float,
        server_cpu: CpuClock,
        params: Params | None = None,
    ) -> None:
        super().__init__(pool, messages, window, time_limit, server_cpu)
        self.session = Session(Role.CLIENT, params or Params())
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
            elif conn.state is _OPEN:
                self._check_events(session)
                self.begin()
            batch = self.next_batch(now)
            if batch:
                self.sent += session.send_many(batch, now)
        except BenchError as exc:
            self.fail(str(exc))
            return
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

    def __init__(
        self,
        pool: list[bytes],
        messages: int,
        window: int,
        time_limit: float,
        server_cpu: CpuClock,
    ) -> None:
        super().__init__(pool, messages, window, time_limit, server_cpu)
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.begin()
        self._send(self.loop.time())

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        buffer = self.tail + data if self.tail else data
        got: list[bytes] = []
        keep = got.append
        unpack_from = LENGTH.unpack_from
        size = len(buffer)
        pos = 0
        while size - pos >= 4:
            (length,) = unpack_from(buffer, pos)
            if length > MAX_FRAME:
                self.fail(f"frame of {length} bytes")
                return
            stop = pos + 4 + length
            if stop > size:
                break
            keep(buffer[pos + 4 : stop])
            pos = stop
        self.tail = buffer[pos:]
        try:
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
        if not batch or self.transport is None:
            return
        prefix = LENGTH.pack
        parts: list[bytes] = []
        append = parts.append
        for payload in batch:
            append(prefix(len(payload)))
            append(payload)
        self.transport.write(b"".join(parts))
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
) -> EchoResult:
    """One echo pass of *system* (``daemon`` or ``ceiling``) against 127.0.0.1:*port*."""
    loop = asyncio.get_running_loop()
    protocol: _Echo
    if system == SessionEcho.system:
        protocol = SessionEcho(pool, messages, window, time_limit, server_cpu)
    elif system == FramedEcho.system:
        protocol = FramedEcho(pool, messages, window, time_limit, server_cpu)
    else:
        raise ValueError(system)
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: protocol, HOST, port), 10.0
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


# --------------------------------------------------------------------- idle


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
        if self.session.take_messages(now):
            self._fail("an idle session received a message")
        if conn.state is _OPEN and not self.opened.done():
            events = self.session.events()
            if len(events) != 1 or not isinstance(events[0], SessionStarted):
                self._fail(f"unexpected events at the handshake: {events}")
            else:
                self.opened.set_result(None)
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
) -> list[IdleSession]:
    """Open *count* sessions, at most *concurrency* handshakes at a time.

    Session *i* connects from source address ``sources(i)`` (to 127.0.0.1).
    Returns once every handshake is complete; raises :class:`BenchError` if one fails.
    """
    loop = asyncio.get_running_loop()
    opened: list[IdleSession] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            session = IdleSession(params)
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        _factory(session), HOST, port, local_addr=(sources(index), 0)
                    ),
                    timeout,
                )
                await asyncio.wait_for(session.opened, timeout)
            except (OSError, TimeoutError) as exc:
                raise BenchError(
                    f"idle session {index + 1}: {exc!r} after {len(opened):,} opened"
                ) from None
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


def _factory(protocol: IdleSession) -> Callable[[], IdleSession]:
    return lambda: protocol


async def close_idle(sessions: list[IdleSession], timeout: float) -> int:
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
