"""A bare test client: the protocol core driven over real asyncio streams.

It does exactly what a test tells it to (no automatic reconnect), so daemon tests
can cut transports and resume by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from sessiond_client.protocol import Connection, ConnectionState, Event, Params, Role, Session


class CoreClient:
    """One client session; :meth:`open` starts a transport, :meth:`kill` drops it."""

    def __init__(self, host: str, port: int, params: Params | None = None) -> None:
        self.host = host
        self.port = port
        self.session = Session(Role.CLIENT, params or Params())
        self.conn: Connection | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events: list[Event] = []
        self.received: list[bytes] = []

    @staticmethod
    def now() -> float:
        return time.monotonic()

    async def open(self, timeout: float = 5.0) -> None:
        """Connect and complete the handshake (new session or resume)."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.conn = self.session.connect(self.now())
        self.flush()
        await self.pump_until(
            lambda: self.conn is not None and self.conn.state is ConnectionState.OPEN, timeout
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
            self.conn.receive_data(data, self.now())
        self.received += self.session.take_messages(self.now())
        self.events += self.session.events()
        if not self.conn.closed:
            self.flush()

    async def pump_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Read and process input until ``done()`` is true or the transport closes."""
        deadline = self.now() + timeout
        while not done():
            assert self.conn is not None
            if self.conn.closed:
                return
            remaining = deadline - self.now()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            await self.pump_once(remaining)

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
                await self.writer.wait_closed()
