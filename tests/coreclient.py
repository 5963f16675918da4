"""A bare test client: the protocol core driven over real asyncio streams.

It does exactly what a test tells it to (no automatic reconnect), so daemon tests
can cut transports and resume by hand. :meth:`CoreClient.pump_once` only reads;
:meth:`CoreClient.step` also runs the core's timers (heartbeats, coalesced ACKs,
idle and handshake timeouts) and reports a reset transport as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable

from sessiond_client.protocol import Connection, ConnectionState, Event, Params, Role, Session


class CoreClient:
    """One client session; :meth:`open` starts a transport, :meth:`kill` drops it."""

    def __init__(
        self,
        host: str,
        port: int,
        params: Params | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl  # TLS when set; the server is checked against server_hostname or host
        self.server_hostname = server_hostname
        self.session = Session(Role.CLIENT, params or Params())
        self.conn: Connection | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events: list[Event] = []
        self.received: list[bytes] = []
        self.last_input: float | None = None  # when bytes last arrived (monotonic clock)

    @staticmethod
    def now() -> float:
        return time.monotonic()

    async def open(self, timeout: float = 5.0) -> None:
        """Connect and complete the handshake (new session or resume)."""
        await self.open_transport(timeout)
        self.conn = self.session.connect(self.now())
        self.flush()
        await self.pump_until(
            lambda: self.conn is not None and self.conn.state is ConnectionState.OPEN, timeout
        )

    async def open_transport(self, timeout: float = 5.0) -> None:
        """Open the transport only (TCP, or TLS with its handshake): no HELLO yet."""
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
            ),
            timeout,
        )

    def flush(self) -> None:
        """Write what the core queued (nothing while detached: it waits for resume)."""
        if self.conn is None or self.writer is None or self.writer.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def pump_once(self, timeout: float) -> None:
        assert self.reader is not None and self.conn is not None
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            self.conn.connection_lost(self.now())
        else:
            self.last_input = self.now()
            self.conn.receive_data(data, self.last_input)
        self.received += self.session.take_messages(self.now())
        self.events += self.session.events()
        if not self.conn.closed:
            self.flush()

    async def pump_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Read and process input until ``done()`` is true or the transport closes."""
        await self._until(self.pump_once, done, timeout)

    async def _until(
        self,
        advance: Callable[[float], Awaitable[None]],
        done: Callable[[], bool],
        timeout: float,
    ) -> None:
        deadline = self.now() + timeout
        while not done():
            assert self.conn is not None
            if self.conn.closed:
                return
            remaining = deadline - self.now()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            await advance(remaining)

    def send(self, payload: bytes) -> None:
        self.session.send(payload, self.now())
        self.flush()

    async def kill(self) -> None:
        """Drop the transport abruptly (no CLOSE frame), as a network failure would."""
        assert self.writer is not None and self.conn is not None
        self.writer.transport.abort()
        self.conn.connection_lost(self.now())
        self.events += self.session.events()
        self.conn = None

    async def close(self) -> None:
        """End the session with CLOSE NORMAL and close the transport."""
        if self.conn is not None and not self.conn.closed:
            self.session.close(self.now())
            self.flush()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(self.writer.wait_closed(), 5.0)  # TLS: close_notify

    # ------------------------------------------------- with timers (fault tests)

    @property
    def attached(self) -> bool:
        """True while a transport is open (handshake done, not closed)."""
        return self.conn is not None and self.conn.state is ConnectionState.OPEN

    async def connect(self, timeout: float = 5.0) -> bool:
        """Open a transport and handshake like :meth:`open`, with timers running and a
        reset reported as a lost transport: True once it is open, False if it closed."""
        await self.open_transport(timeout)
        self.conn = self.session.connect(self.now())
        self.flush()
        await self.run_until(lambda: self.attached, timeout)
        return self.attached

    async def step(self, timeout: float) -> None:
        """Wait for input (at most *timeout*, and never past the core's next deadline),
        feed it, run the timers that are due, take the messages and write the output.

        A reset or EOF is reported with ``connection_lost``; once the core has closed
        the transport its last bytes (a CLOSE) are written and the socket is closed.
        """
        conn = self.conn
        assert conn is not None and self.reader is not None
        if conn.closed:
            return
        wait = timeout
        deadline = self.session.next_deadline()
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - self.now()))
        data: bytes | None
        try:
            data = await asyncio.wait_for(self.reader.read(65536), wait)
        except TimeoutError:
            data = None
        except ConnectionError:
            data = b""
        now = self.now()
        if data == b"":
            conn.connection_lost(now)
        elif data:
            self.last_input = now
            conn.receive_data(data, now)
        deadline = self.session.next_deadline()
        if deadline is not None and now >= deadline:
            self.session.handle_timer(now)
        self.received += self.session.take_messages(now)
        self.events += self.session.events()
        self.flush()
        if conn.closed and self.writer is not None and not self.writer.is_closing():
            self.writer.close()

    async def run_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """:meth:`step` until ``done()`` is true or the transport closes;
        TimeoutError after *timeout* seconds."""
        await self._until(self.step, done, timeout)

    def clone(self) -> CoreClient:
        """A second client with a copy of this one's detached session (ID, credential,
        sequence numbers): two clients that both believe they own the session."""
        if self.session.connection is not None:
            raise ValueError("clone a detached session only")
        twin = CoreClient(
            self.host,
            self.port,
            self.session.params,
            ssl=self.ssl,
            server_hostname=self.server_hostname,
        )
        twin.session = copy.deepcopy(self.session)
        twin.received = list(self.received)
        return twin
