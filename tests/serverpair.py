"""A client core and the daemon's real :class:`sessiond.server.Server`, joined in memory.

The server side is the code users run: :class:`~sessiond.server.Server` (its
registry, HELLO answering, takeover, flush and timer paths) and one
:class:`~sessiond.server.ServerProtocol` per transport. Only what is below it is
replaced: the socket by :class:`MemoryTransport` (an ``asyncio.Transport`` that
keeps what the server writes), and the event loop's clock by :class:`Clock`,
which the test steps. Bytes move when the test calls :meth:`ServerPair.deliver`
or :meth:`ServerPair.pump`; the loop runs only until nothing is ready, so the
server's call_soon flushes and due timers run, and nothing waits in real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from sessiond_client.protocol import Connection, Event, Params, Role
from sessiond_client.protocol import Session as CoreSession

from sessiond.server import Server, ServerConfig, ServerProtocol, _Entry
from sessiond.session import Session as ServerSession
from tests.pair import Clock

T = TypeVar("T")


class SteppedLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is a :class:`Clock` the test steps by hand."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        # asyncio runs a timer up to the clock's resolution early; a core that finds
        # nothing due re-arms at the same time, and real time moves on. Here time
        # stands still until the test steps it: a timer runs only once it is due.
        setattr(self, "_clock_resolution", 0.0)  # noqa: B010 (private to asyncio)

    def time(self) -> float:
        return self.clock.now

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro*, then every callback and due timer until nothing is ready."""
        result = self.run_until_complete(coro)
        self.settle()
        return result

    def settle(self) -> None:
        """Run callbacks (and timers due at the clock's time) until none is ready."""
        self.run_until_complete(self._idle())

    async def _idle(self) -> None:
        ready = self._ready  # type: ignore[attr-defined]  # asyncio's callbacks to run
        for _ in range(1000):
            await asyncio.sleep(0)
            if not ready:
                return
        raise AssertionError(f"the event loop did not settle: {list(ready)[:4]}")


class MemoryTransport(asyncio.Transport):
    """The server's end of an in-memory transport: keeps what is written."""

    def __init__(self, loop: SteppedLoop, protocol: ServerProtocol, port: int) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._peer = ("127.0.0.1", port)
        self.written = bytearray()
        self.eof_written = False
        self.closing = False
        self.lost = False  # connection_lost was called
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing and not self.eof_written:
            self.written += data

    def can_write_eof(self) -> bool:
        return True

    # Everything written is taken at once: the buffer never reaches a high-water mark.
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        # asyncio flushes the buffer, then calls connection_lost on the next tick.
        self._lose()

    def abort(self) -> None:
        self._lose()

    def _lose(self) -> None:
        if not self.closing:
            self.closing = True
            self._loop.call_soon(self.lost_by_peer)

    def lost_by_peer(self) -> None:
        """The transport is gone: the server's protocol hears it (once)."""
        self.closing = True
        if not self.lost:
            self.lost = True
            self._protocol.connection_lost(None)

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


class ServerPair:
    """A client core session and a real Server, one in-memory transport at a time.

    The same surface as :class:`tests.pair.Pair` (``connect``, ``flush``,
    ``deliver``, ``pump``, ``cut``, ``tick``) plus :meth:`half_open`: the client
    loses its transport and reconnects while the server still holds the old one,
    so the resume takes the session over (protocol.md §9.2).
    """

    def __init__(
        self,
        client_params: Params | None = None,
        server_params: Params | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.loop = SteppedLoop(self.clock)
        self.params = server_params or Params()
        #: Every handler-facing session the server started, in order.
        self.started: list[ServerSession] = []
        self.server = self.loop.run(self._make_server())
        self.client = CoreSession(Role.CLIENT, client_params or Params())
        self.client_conn: Connection | None = None
        self.protocol: ServerProtocol | None = None
        self.transport: MemoryTransport | None = None
        self.client_events: list[Event] = []
        self.transports = 0  # opened so far (each gets its own client port)
        #: bytes written by each side and not yet delivered
        self.to_server = bytearray()
        self.to_client = bytearray()

    async def _make_server(self) -> Server:
        return Server(self._handler, ServerConfig(params=self.params))

    async def _handler(self, session: ServerSession) -> None:
        # The test plays the application through the session object; the handler
        # only has to stay alive (returning would end the session).
        self.started.append(session)
        await asyncio.get_running_loop().create_future()

    def close(self) -> None:
        """Stop the server and close the loop (call once, at the end of the test)."""
        self.loop.run(self.server.close())
        self.loop.close()

    # ------------------------------------------------------------ the server's state

    @property
    def entry(self) -> _Entry:
        """The server's record of the client's current session."""
        assert self.client.id is not None
        return self.server.sessions[self.client.id]

    @property
    def server_session(self) -> ServerSession:
        """The handler-facing session of the client's current session."""
        return self.entry.session

    @property
    def server_core(self) -> CoreSession:
        return self.entry.core

    @property
    def server_conn(self) -> Connection | None:
        """The server-side Connection of the current transport."""
        return None if self.protocol is None else self.protocol.conn

    # ------------------------------------------------------------ transports

    def connect(self, credentials: Any = None) -> None:
        """Open a new transport: the client sends HELLO; call :meth:`pump` to finish."""
        self.client_conn = self.client.connect(self.clock.now, credentials)
        self.transports += 1
        self.protocol = ServerProtocol(self.server)
        self.transport = MemoryTransport(self.loop, self.protocol, 40000 + self.transports)
        self.protocol.connection_made(self.transport)
        self.to_server.clear()
        self.to_client.clear()
        self.loop.settle()

    def flush(self) -> None:
        """Collect what both ends want to write onto the wire."""
        self.loop.settle()
        if self.client_conn is not None:
            self.to_server += self.client_conn.data_to_send()
        if self.transport is not None:
            self.to_client += self.transport.take()
        self.client_events += self.client.events()

    def deliver(self, to_server: int | None = None, to_client: int | None = None) -> None:
        """Deliver up to the given number of pending bytes each way (all if None)."""
        n = len(self.to_server) if to_server is None else min(to_server, len(self.to_server))
        if self.transport is not None and not self.transport.reading:
            n = 0  # the server stopped reading: the bytes wait (as in the kernel's buffer)
        if n:
            chunk = bytes(self.to_server[:n])
            del self.to_server[:n]
            if self.protocol is not None and self.transport is not None:
                if not self.transport.lost:
                    self.protocol.data_received(chunk)
                self.loop.settle()
        n = len(self.to_client) if to_client is None else min(to_client, len(self.to_client))
        if n and self.client_conn is not None:
            chunk = bytes(self.to_client[:n])
            del self.to_client[:n]
            self.client_conn.receive_data(chunk, self.clock.now)

    def pump(self, rounds: int = 50) -> None:
        """Move bytes both ways until neither side has anything more to say."""
        for _ in range(rounds):
            self.flush()
            if not self.to_server and not self.to_client:
                return
            self.deliver()
        raise AssertionError("pump did not settle")

    def cut(self, to_server: int = 0, to_client: int = 0) -> None:
        """Kill the transport after delivering only the given numbers of pending bytes."""
        self.flush()
        self.deliver(to_server, to_client)
        if self.client_conn is not None:
            self.client_conn.connection_lost(self.clock.now)
        if self.transport is not None:
            self.transport.lost_by_peer()
        self._forget_transport()

    def half_open(self) -> None:
        """The client loses its transport; the server does not notice (no FIN, no RST).

        The old server protocol keeps the session until a resume takes it over
        or its idle timeout fires.
        """
        self.flush()
        if self.client_conn is not None:
            self.client_conn.connection_lost(self.clock.now)
        self._forget_transport()

    def _forget_transport(self) -> None:
        self.client_conn = None
        self.protocol = None
        self.transport = None
        self.to_server.clear()
        self.to_client.clear()
        self.loop.settle()
        self.client_events += self.client.events()

    def tick(self, seconds: float) -> None:
        """Advance the clock and run every timer that is due, on both sides."""
        now = self.clock.advance(seconds)
        deadline = self.client.next_deadline()
        if deadline is not None and now >= deadline:
            self.client.handle_timer(now)
        self.loop.settle()
        self.flush()

    # ------------------------------------------------------------ the application

    def server_send(self, payload: bytes) -> None:
        """The server application sends (the window must have room: no waiting here)."""
        self.loop.run(self.server_session.send(payload))

    def server_take(self, limit: int | None = None) -> list[bytes]:
        """What the server application receives: everything waiting, or *limit* recv()s."""
        session = self.server_session
        if limit is None:
            return session.take_ready()
        got: list[bytes] = []
        for _ in range(limit):
            if not (session.core.messages_waiting or session._local):
                break
            got.append(self.loop.run(session.recv()))
        return got
