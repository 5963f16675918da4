"""The blocking facade: the asyncio client on one background thread.

For code with its own main loop (IoT scripts, game engines)::

    with sessiond_client.connect_sync("tcp://127.0.0.1:7420") as session:
        session.send(b"telemetry")
        for message in session.poll():  # once per frame: never blocks
            ...

Every method runs its work on that thread, so all are safe to call from several
threads; ``poll()`` costs one hand-over to it (tens of microseconds), never a network
wait. ``close()`` (or leaving the ``with`` block, or interpreter exit) stops the
thread; none is left behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (the ``speed`` extra), else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SyncSession:
    """A :class:`~sessiond_client.client.Session` driven from plain threads."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sessiond-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._session: Session = self._call(connect(url, **options))
        except BaseException:
            self._stop()
            raise
        _open.add(self)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def id(self) -> str | None:
        return self._session.id

    @property
    def state(self) -> State:
        return self._session.state

    @property
    def notices(self) -> list[object]:
        """Events the application may want (session replaced, goaway), newest last."""
        return self._call(self._notices())

    async def _notices(self) -> list[object]:
        return list(self._session.notices)

    def send(self, payload: bytes, timeout: float | None = None) -> None:
        """Queue one message; blocks while the server's window is full."""
        self._check_open()
        self._call(self._session.send(payload, timeout))

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message; raises TimeoutError, or SessionLost once the session ended."""
        self._check_open()
        return self._call(self._recv(timeout))

    async def _recv(self, timeout: float | None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._session.recv()
        except TimeoutError:
            raise TimeoutError("no message within the timeout") from None

    def poll(self) -> list[bytes]:
        """Every message received since the last call; never waits for the network.

        Raises SessionLost once the session has ended and every message was handed over.
        """
        self._check_open()
        return self._call(self._received())

    async def _received(self) -> list[bytes]:
        return self._session.received()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionLost(CloseCode.NORMAL, "session closed")

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
