"""A fault-injecting TCP proxy for tests, on 127.0.0.1 only.

:class:`FaultProxy` listens on an ephemeral port and opens one upstream
connection to its target per accepted client. Each proxied pair is a
:class:`ProxyConnection` with two directions, ``"c2s"`` (client to server) and
``"s2c"``, and the faults a test can switch on at any moment:

* :meth:`~ProxyConnection.cut`: both sockets reset at once (``SO_LINGER`` 0,
  so the peers see RST), whatever was queued is lost;
* :meth:`~ProxyConnection.cut_one_way`: one direction stops for good: what is
  queued and everything its source sends later is dropped, and its FIN is not
  passed on; with ``fin=True`` the destination also gets a FIN (a clean half-close);
* :meth:`~ProxyConnection.blackhole`: both sockets stay open and everything,
  FIN and close included, is dropped both ways: a half-open, dead path;
* :meth:`~ProxyConnection.stall`: one direction stops and the proxy stops reading its
  source, so the sender's buffers fill up as if the receiver had stopped reading (a zero
  window) or the path had lost its ACKs: nothing is dropped, nothing moves;
  :meth:`~ProxyConnection.unstall` lets it move again, queued bytes first;
* :meth:`~ProxyConnection.delay`: bytes are forwarded a fixed time after they arrived;
* :meth:`~ProxyConnection.chunk`: bytes are forwarded in writes of at most
  *size* bytes, one write per event-loop iteration (1 = byte by byte);
* :meth:`~ProxyConnection.inject`: extra bytes go into one direction, after
  what was already queued there.

The same controls on :class:`FaultProxy` act on every open connection; ``delay``
and ``chunk`` also become the settings of connections accepted later.

Buffering is bounded: a direction whose queue holds more than
:data:`HIGH_WATER` bytes pauses reading from its source until it drops below
:data:`LOW_WATER`, and nothing is written to a destination whose transport
asked to pause writing. Dropped bytes are read and discarded (a dead path does
not push back on the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from typing import Literal, cast

Direction = Literal["c2s", "s2c"]
C2S: Direction = "c2s"
S2C: Direction = "s2c"
DIRECTIONS: tuple[Direction, Direction] = (C2S, S2C)

#: A direction's queue above this many bytes pauses reading from its source ...
HIGH_WATER = 256 * 1024
#: ... until it is down to this many.
LOW_WATER = 64 * 1024

LOOPBACK = "127.0.0.1"


class _Side(asyncio.Protocol):
    """One of the two sockets of a proxied connection."""

    def __init__(self, conn: ProxyConnection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.closed = False  # connection_lost was called
        self.write_paused = False
        self.read_paused = False

    # asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn._made(self)

    def data_received(self, data: bytes) -> None:
        self.conn._incoming(self, data)

    def eof_received(self) -> bool:
        self.conn._eof(self)
        return True  # keep the socket open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conn._lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.conn._writable(self)

    # helpers ----------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Connected, and neither closed nor closing."""
        transport = self.transport
        return transport is not None and not self.closed and not transport.is_closing()

    def pause_reading(self) -> None:
        if self.usable and not self.read_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.read_paused = True

    def resume_reading(self) -> None:
        if self.usable and self.read_paused:
            assert self.transport is not None
            self.transport.resume_reading()
        self.read_paused = False

    def write_eof(self) -> None:
        transport = self.transport
        if self.usable and transport is not None and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        """Close after writing what the transport holds (the peer sees FIN)."""
        if self.usable:
            assert self.transport is not None
            self.transport.close()

    def abort(self, rst: bool) -> None:
        """Close now, dropping what the transport holds; with *rst* the peer sees RST."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


class _Pipe:
    """One direction of a proxied connection: its queue, its faults, its counters."""

    def __init__(self, source: _Side, dest: _Side, loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.dest = dest
        self.loop = loop
        self.queue: deque[tuple[float, bytes]] = deque()  # (due time, bytes), in order
        self.queued = 0
        self.forwarded = 0  # bytes written to the destination
        self.writes = 0  # transport.write() calls on the destination
        self.dropped = 0  # bytes thrown away (cut, blackhole, destination gone)
        self.injected = 0
        self.delay = 0.0
        self.chunk: int | None = None
        self.dead = False
        self.stalled = False
        self.eof = False  # the source sent FIN: pass it on once the queue is empty
        self.close_after = False  # the source closed: close the destination once empty
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None

    def push(self, data: bytes, injected: bool = False) -> None:
        if self.dead or self.dest.closed or self.eof or self.close_after:
            self.dropped += len(data)
            return
        self.queue.append((self.loop.time() + self.delay, data))
        self.queued += len(data)
        if injected:
            self.injected += len(data)
        elif self.queued > HIGH_WATER:
            self.source.pause_reading()
        self.kick()

    def kick(self) -> None:
        """Forward what is due, unless a scheduled pump will do it."""
        if self._soon is None and self._timer is None:
            self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _on_soon(self) -> None:
        self._soon = None
        self._pump()

    def _pump(self) -> None:
        if self.dead or self.stalled:
            return
        dest = self.dest
        if not dest.usable or dest.write_paused:
            return  # not connected yet, or resume_writing / connection_lost will follow
        transport = dest.transport
        assert transport is not None
        queue = self.queue
        now = self.loop.time()
        while queue:
            due, data = queue[0]
            if due > now:
                self._timer = self.loop.call_at(due, self._on_timer)
                break
            chunk = self.chunk
            if chunk is not None and len(data) > chunk:
                queue[0] = (due, data[chunk:])
                data = data[:chunk]
            else:
                queue.popleft()
            transport.write(data)
            self.queued -= len(data)
            self.forwarded += len(data)
            self.writes += 1
            if chunk is not None:
                if queue:  # one write per loop iteration, so the peer reads it alone
                    self._soon = self.loop.call_soon(self._on_soon)
                break
            if dest.write_paused:
                break
        if self.queued <= LOW_WATER and self.source.read_paused:
            self.source.resume_reading()
        if not queue:
            if self.close_after:
                dest.close()
            elif self.eof:
                dest.write_eof()

    def stall(self) -> None:
        """Stop this direction without dropping anything: stop reading the source."""
        self.stalled = True
        self.source.pause_reading()

    def unstall(self) -> None:
        """Move again after :meth:`stall`: what was held goes first, in order."""
        self.stalled = False
        self.source.resume_reading()
        self.kick()

    def kill(self) -> None:
        """Stop this direction for good: drop the queue and all later input."""
        self.dead = True
        self.dropped += self.queued
        self.queue.clear()
        self.queued = 0
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        self.source.resume_reading()  # keep draining the source into the void


class ProxyConnection:
    """One accepted client and its upstream connection."""

    def __init__(self, proxy: FaultProxy, index: int) -> None:
        self.proxy = proxy
        self.index = index
        self.loop = asyncio.get_running_loop()
        self.client = _Side(self, "client")
        self.server = _Side(self, "server")
        self.pipes: dict[Direction, _Pipe] = {
            C2S: _Pipe(self.client, self.server, self.loop),
            S2C: _Pipe(self.server, self.client, self.loop),
        }
        self._connecting: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self.upstream_error: OSError | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<ProxyConnection #{self.index} {state} c2s={self.forwarded(C2S)}"
            f" s2c={self.forwarded(S2C)}>"
        )

    # queries ------------------------------------------------------------------

    def forwarded(self, direction: Direction) -> int:
        """Bytes written to the destination in *direction* so far."""
        return self.pipes[direction].forwarded

    def writes(self, direction: Direction) -> int:
        """Writes made to the destination in *direction* so far."""
        return self.pipes[direction].writes

    def dropped(self, direction: Direction) -> int:
        """Bytes thrown away in *direction* so far."""
        return self.pipes[direction].dropped

    def queued(self, direction: Direction) -> int:
        """Bytes waiting in the proxy in *direction* (bounded by HIGH_WATER + one read)."""
        return self.pipes[direction].queued

    @property
    def bytes_c2s(self) -> int:
        return self.pipes[C2S].forwarded

    @property
    def bytes_s2c(self) -> int:
        return self.pipes[S2C].forwarded

    @property
    def closed(self) -> bool:
        """True once both sockets are gone."""
        return self._done.is_set()

    @property
    def upstream_address(self) -> tuple[str, int] | None:
        """The proxy's end of the upstream connection: the server sees it as the peer."""
        if self.server.transport is None:
            return None
        host, port = self.server.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def client_address(self) -> tuple[str, int] | None:
        """The client's address as the proxy sees it."""
        if self.client.transport is None:
            return None
        host, port = self.client.transport.get_extra_info("peername")[:2]
        return str(host), int(port)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._done.wait(), timeout)

    # controls -----------------------------------------------------------------

    def cut(self, rst: bool = True) -> None:
        """Close both sockets now, dropping what is queued; with *rst* both peers see RST."""
        for pipe in self.pipes.values():
            pipe.kill()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self.client.abort(rst)
        self.server.abort(rst)

    def cut_one_way(self, direction: Direction, fin: bool = False) -> None:
        """Stop forwarding *direction* for good; its destination sees silence (or a
        FIN with *fin*); the other direction keeps flowing."""
        pipe = self.pipes[direction]
        pipe.kill()
        if fin:
            pipe.dest.write_eof()

    def blackhole(self) -> None:
        """Keep both sockets open and drop everything both ways: neither peer sees a close."""
        for pipe in self.pipes.values():
            pipe.kill()

    def stall(self, direction: Direction | None = None) -> None:
        """Stop *direction* (default both) and stop reading its source: its sender's
        buffers fill up and nothing moves, nothing is dropped."""
        for name in DIRECTIONS if direction is None else (direction,):
            self.pipes[name].stall()

    def unstall(self, direction: Direction | None = None) -> None:
        """Let *direction* (default both) move again after :meth:`stall`."""
        for name in DIRECTIONS if direction is None else (direction,):
            self.pipes[name].unstall()

    def delay(self, seconds: float, direction: Direction | None = None) -> None:
        """Forward bytes arriving from now on *seconds* after they arrived. Order is kept:
        bytes already queued keep their due time, and later bytes wait behind them."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        for name in DIRECTIONS if direction is None else (direction,):
            self.pipes[name].delay = seconds

    def chunk(self, size: int | None, direction: Direction | None = None) -> None:
        """Forward in writes of at most *size* bytes, one per loop iteration (None: off)."""
        if size is not None and size < 1:
            raise ValueError("chunk size must be >= 1")
        for name in DIRECTIONS if direction is None else (direction,):
            self.pipes[name].chunk = size

    def inject(self, direction: Direction, data: bytes) -> None:
        """Forward *data* in *direction* after everything already queued there."""
        self.pipes[direction].push(bytes(data), injected=True)

    # plumbing -----------------------------------------------------------------

    def _pipe_from(self, side: _Side) -> _Pipe:
        return self.pipes[C2S] if side is self.client else self.pipes[S2C]

    def _pipe_to(self, side: _Side) -> _Pipe:
        return self.pipes[S2C] if side is self.client else self.pipes[C2S]

    def _made(self, side: _Side) -> None:
        if self._pipe_from(side).stalled:
            side.pause_reading()
        if side is self.client:
            self._connecting = self.loop.create_task(self._connect())
        else:
            for pipe in self.pipes.values():
                pipe.kick()

    async def _connect(self) -> None:
        proxy = self.proxy
        try:
            await self.loop.create_connection(
                lambda: self.server, proxy.target_host, proxy.target_port
            )
        except OSError as exc:
            self.upstream_error = exc
            self.cut()
        finally:
            self._check_done()

    def _incoming(self, side: _Side, data: bytes) -> None:
        self._pipe_from(side).push(data)

    def _eof(self, side: _Side) -> None:
        pipe = self._pipe_from(side)
        if not pipe.dead:
            pipe.eof = True
            pipe.kick()

    def _writable(self, side: _Side) -> None:
        self._pipe_to(side).kick()

    def _lost(self, side: _Side, exc: Exception | None) -> None:
        inbound = self._pipe_to(side)  # nothing more can reach this side
        inbound.kill()
        outbound = self._pipe_from(side)
        if not outbound.dead:
            other = outbound.dest
            if exc is not None:  # reset: pass the reset on, what was queued is lost
                outbound.kill()
                other.abort(rst=True)
            else:
                outbound.close_after = True
                outbound.kick()
        connecting = self._connecting
        if side is self.client and outbound.dead and connecting is not None:
            connecting.cancel()  # nothing left to deliver upstream
        self._check_done()

    def _check_done(self) -> None:
        connecting = self._connecting is not None and not self._connecting.done()
        server_gone = self.server.closed or (self.server.transport is None and not connecting)
        if self.client.closed and server_gone:
            self._done.set()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 whose connections a test can break at will.

    ``async with FaultProxy(host, port) as proxy:`` then connect to
    ``proxy.address``; ``proxy.connections`` lists every accepted connection,
    oldest first.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        if target_host != LOOPBACK:
            raise ValueError(f"the proxy only forwards to {LOOPBACK}, not {target_host!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.connections: list[ProxyConnection] = []
        self._listener: asyncio.Server | None = None
        self._delay: dict[Direction, float] = {C2S: 0.0, S2C: 0.0}
        self._chunk: dict[Direction, int | None] = {C2S: None, S2C: None}
        self._blackholed = False
        self._new_connection = asyncio.Event()

    async def start(self) -> FaultProxy:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._accept, LOOPBACK, 0)
        return self

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None, "start() the proxy first"
        host, port = self._listener.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def active(self) -> list[ProxyConnection]:
        """The connections not yet closed."""
        return [conn for conn in self.connections if not conn.closed]

    @property
    def last(self) -> ProxyConnection:
        """The connection accepted most recently."""
        return self.connections[-1]

    def forwarded(self, direction: Direction) -> int:
        """Bytes forwarded in *direction* over all connections."""
        return sum(conn.forwarded(direction) for conn in self.connections)

    def _accept(self) -> _Side:
        conn = ProxyConnection(self, len(self.connections))
        for direction in DIRECTIONS:
            conn.delay(self._delay[direction], direction)
            conn.chunk(self._chunk[direction], direction)
        if self._blackholed:
            conn.blackhole()
        self.connections.append(conn)
        self._new_connection.set()
        return conn.client

    async def wait_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until *count* connections have been accepted in all."""
        async with asyncio.timeout(timeout):
            while len(self.connections) < count:
                self._new_connection.clear()
                await self._new_connection.wait()

    # controls on every open connection ---------------------------------------------

    def cut(self, rst: bool = True) -> None:
        for conn in self.active:
            conn.cut(rst)

    def cut_one_way(self, direction: Direction, fin: bool = False) -> None:
        for conn in self.active:
            conn.cut_one_way(direction, fin)

    def blackhole(self, later: bool = False) -> None:
        """Blackhole every open connection (with *later*, also those accepted from now
        on: the target looks unreachable to a client that reconnects)."""
        self._blackholed = later
        for conn in self.active:
            conn.blackhole()

    def heal(self) -> None:
        """Connections accepted from now on are forwarded again (open ones stay dead)."""
        self._blackholed = False

    def stall(self, direction: Direction | None = None) -> None:
        for conn in self.active:
            conn.stall(direction)

    def delay(self, seconds: float, direction: Direction | None = None) -> None:
        """Delay every open connection and the ones accepted later."""
        for name in DIRECTIONS if direction is None else (direction,):
            self._delay[name] = seconds
        for conn in self.active:
            conn.delay(seconds, direction)

    def chunk(self, size: int | None, direction: Direction | None = None) -> None:
        """Re-chunk every open connection and the ones accepted later."""
        for name in DIRECTIONS if direction is None else (direction,):
            self._chunk[name] = size
        for conn in self.active:
            conn.chunk(size, direction)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._listener is not None:
            self._listener.close()
        for conn in self.connections:
            conn.cut(rst=False)
        for conn in self.connections:
            with contextlib.suppress(TimeoutError):
                await conn.wait_closed(2.0)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
