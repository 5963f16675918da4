"""A daemon on its own event-loop thread, for tests of the blocking client facade."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import sessiond
from sessiond.server import Handler, Server


@dataclass(frozen=True)
class ThreadedDaemon:
    """The running server (touch it only through :meth:`call_soon`) and its URL."""

    server: Server
    loop: asyncio.AbstractEventLoop
    url: str

    def call_soon(self, callback: object) -> None:
        """Run *callback()* on the daemon's loop thread."""
        assert callable(callback)
        self.loop.call_soon_threadsafe(callback)


@contextlib.contextmanager
def daemon_thread(handler: Handler, timeout: float = 10.0) -> Iterator[ThreadedDaemon]:
    """Serve *handler* on 127.0.0.1 from a thread of its own for the body."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    servers: list[Server] = []

    async def run() -> None:
        async with sessiond.serve(handler, "127.0.0.1", 0) as server:
            servers.append(server)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(timeout), "the daemon did not start"
        host, port = servers[0].addresses[0][:2]
        yield ThreadedDaemon(servers[0], loop, f"tcp://{host}:{port}")
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        loop.close()
