"""The blocking facade: the asyncio client on one background thread.

For code with its own main loop (IoT scripts, game engines)::

    with sessiond_client.connect_sync("tcp://127.0.0.1:7420") as session:
        session.send(b"telemetry")
        for message in session.poll():  # once per frame: never blocks
            ...

Every method runs its work on that thread, so all are safe to call from several
threads; ``poll()`` costs one hand-over to it (tens of microseconds), never a network
wait. ``close()`` (or leaving the ``with`` block, or interpreter exit) stops the
thread; none is left behind. ``close()`` raises :class:`SessionLost` (with
``undelivered``) when something sent was never acknowledged, as the asyncio
``close()`` does.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import ssl as ssl_module
import threading
import weakref
from collections.abc import Callable, Coroutine
from os import PathLike
from typing import Any, TypeVar

from .backoff import ReconnectPolicy
from .client import Credentials, Notice, Session, State, connect
from .protocol import CloseCode, Params, SessionLost

T = TypeVar("T")

_open: weakref.WeakSet[SyncSession] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for session in list(_open):
        with contextlib.suppress(SessionLost):  # already logged; nobody left to tell
            session.close(timeout=1.0)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (the ``speed`` extra), else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SyncSession:
    """A :class:`~sessiond_client.client.Session` driven from plain threads; open one
    with :func:`connect_sync`."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, Session]]) -> None:
        """Run *opener()* (such as ``connect(url, ...)``) on a new event-loop thread."""
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sessiond-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._session: Session = self._call(opener())
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
    def url(self) -> str:
        return self._session.url

    @property
    def notices(self) -> list[Notice]:
        """What the application may want to know besides messages, newest last."""
        return self._call(self._notices())

    async def _notices(self) -> list[Notice]:
        return list(self._session.notices)

    def send(self, payload: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Queue one message; blocks while the server's window is full. TypeError for a
        payload that is not bytes-like, SessionLost once the session has ended."""
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
        """Wait (at most *timeout*) for sent messages to be acknowledged, end the session,
        stop the thread. Raises :class:`SessionLost`, whose ``undelivered`` lists the
        messages never acknowledged, when there are any; again on a second call."""
        if not self._closed:
            self._closed = True
            _open.discard(self)
            try:
                self._call(self._session.close(timeout), timeout + 1.0)
            except SessionLost:
                pass  # raised below, from the session, after the thread has stopped
            except (RuntimeError, TimeoutError, asyncio.CancelledError):
                pass  # the loop is gone (interpreter exit): nothing left to close
            finally:
                self._stop()
        lost = self._session._lost
        if lost is not None and lost.undelivered:
            raise lost

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

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except SessionLost:
            if not isinstance(exc, SessionLost):
                raise


def connect_sync(
    url: str,
    *,
    credentials: Credentials = None,
    ssl: ssl_module.SSLContext | None = None,
    ca_file: str | PathLike[str] | None = None,
    cert_file: str | PathLike[str] | None = None,
    key_file: str | PathLike[str] | None = None,
    server_hostname: str | None = None,
    params: Params | None = None,
    policy: ReconnectPolicy | None = None,
    wait_for_server: bool = False,
    fresh_session: bool = False,
    state_file: str | PathLike[str] | None = None,
) -> SyncSession:
    """Open a session for blocking code; the options and exceptions are those of
    :func:`~sessiond_client.connect` (the first connection fails with
    :class:`~sessiond_client.ConnectFailed` unless *wait_for_server*)."""
    opener = functools.partial(
        connect,
        url,
        credentials=credentials,
        ssl=ssl,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        server_hostname=server_hostname,
        params=params,
        policy=policy,
        wait_for_server=wait_for_server,
        fresh_session=fresh_session,
        state_file=state_file,
    )
    return SyncSession(opener)
