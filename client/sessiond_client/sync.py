"""The blocking facade: the asyncio client on one background thread.

For code with its own main loop (IoT scripts, game engines)::

    with sessiond_client.connect_sync("tcp://127.0.0.1:7420") as session:
        session.send(b"telemetry")
        for message in session.poll():  # once per frame: never blocks
            ...

Every method is safe to call from several threads. ``close()`` (or leaving the
``with`` block, or interpreter exit) stops the thread; none is left behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from .client import Session, State, connect
from .protocol import CloseCode, SessionLost

T = TypeVar("T")

_open: weakref.WeakSet[SyncSession] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for session in list(_open):
        session.close(timeout=1.0)


class SyncSession:
    """A :class:`~sessiond_client.client.Session` driven from plain threads."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sessiond-client", daemon=True
        )
        self._thread.start()
        self._inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._closed = False
        try:
            self._session: Session = self._call(connect(url, **options))
        except BaseException:
            self._stop()
            raise
        self._pump = asyncio.run_coroutine_threadsafe(self._receive_all(), self._loop)
        _open.add(self)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _receive_all(self) -> None:
        # Moves messages into a thread-safe queue as they arrive, so recv() and poll()
        # never wait on the event loop.
        async for message in self._session:
            self._inbox.put(message)

    @property
    def id(self) -> str | None:
        return self._session.id

    @property
    def state(self) -> State:
        return self._session.state

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        """Queue one message; blocks while the server's window is full."""
        if self._closed:
            raise SessionLost(CloseCode.NORMAL, "session closed")
        self._call(self._session.send(payload, timeout))

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message; raises TimeoutError, or SessionLost once the session ended."""
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            pass
        step = 0.05
        waited = 0.0
        while True:
            try:
                return self._inbox.get(timeout=step if timeout is None else min(step, timeout))
            except queue.Empty:
                if self._pump.done():  # the session ended and everything was handed over
                    lost = self._session._lost
                    raise lost or SessionLost(CloseCode.NORMAL, "session closed") from None
                waited += step
                if timeout is not None and waited >= timeout:
                    raise TimeoutError("no message within the timeout") from None

    def poll(self) -> list[bytes]:
        """Every message received since the last call; never blocks."""
        messages = []
        while True:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                return messages

    def close(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for sent messages to be acknowledged, end the session, stop the thread."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        with contextlib.suppress(Exception):  # the loop may be gone at interpreter exit
            self._call(self._session.close(timeout), timeout + 1.0)
        self._stop()

    def _stop(self) -> None:
        def cancel_all() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_soon(self._loop.stop)

        if self._loop.is_running():
            self._loop.call_soon_threadsafe(cancel_all)
        self._thread.join(5.0)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_sync(url: str, **options: Any) -> SyncSession:
    """Open a session for blocking code; the options are those of :func:`connect`."""
    return SyncSession(url, **options)
