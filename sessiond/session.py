"""The handler's view of a session: :class:`Session` (send, recv, iterate, close).

A handler coroutine gets one Session per *session*, not per connection: it
never notices transports coming and going. When the session ends, ``recv()``
raises :class:`~sessiond_client.SessionLost` after the last message, and async
iteration simply stops.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from sessiond_client.protocol import CloseCode, InvalidState, PayloadTooLarge, SessionLost
from sessiond_client.protocol import Session as CoreSession


class Session:
    """One session, as the application handler sees it."""

    __slots__ = (
        "_core",
        "_flush",
        "_local",
        "_loop",
        "_recv_waiter",
        "_send_waiter",
        "data",
        "id",
        "identity",
    )

    def __init__(
        self, core: CoreSession, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]
    ) -> None:
        self._core = core
        self._loop = loop
        self._flush = flush
        self._local: deque[bytes] = deque()
        self._recv_waiter: asyncio.Future[None] | None = None
        self._send_waiter: asyncio.Future[None] | None = None
        self.id = (core.id or b"").hex()
        self.identity: Any = core.identity
        #: Application data that lives as long as the session.
        self.data: dict[str, Any] = {}

    @property
    def core(self) -> CoreSession:
        """The protocol core of this session (sequence numbers, state)."""
        return self._core

    @property
    def ended(self) -> bool:
        return self._core.end_code is not None

    async def send(self, payload: bytes) -> None:
        """Send one message; waits while the peer's window is full (backpressure)."""
        core = self._core
        size = len(payload)
        if size > core.max_payload:
            raise PayloadTooLarge(f"{size} bytes > {core.max_payload}")
        while not core.can_send(size):
            if core.end_code is not None:
                raise SessionLost(core.end_code)
            waiter = self._send_waiter
            if waiter is None or waiter.done():
                waiter = self._send_waiter = self._loop.create_future()
            await waiter
        core.send(payload, self._loop.time())
        self._flush()

    async def recv(self) -> bytes:
        """Return the next message; raise SessionLost once the session has ended."""
        local = self._local
        if local:
            return local.popleft()
        while True:
            batch = self._core.take_messages(self._loop.time())
            if batch:
                self._flush()
                local.extend(batch)
                return local.popleft()
            if self._core.end_code is not None:
                raise SessionLost(self._core.end_code)
            waiter = self._recv_waiter
            if waiter is None or waiter.done():
                waiter = self._recv_waiter = self._loop.create_future()
            await waiter

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except SessionLost:
            raise StopAsyncIteration from None

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session for good; the client is told with *code* if it is connected."""
        try:
            self._core.close(self._loop.time(), code, reason)
        except InvalidState:
            raise ValueError(f"{code.name} does not end a session") from None
        self._flush()

    def _wake(self) -> None:
        """Called by the server after input: wake a waiting recv() or send()."""
        core = self._core
        waiter = self._recv_waiter
        if (
            waiter is not None
            and not waiter.done()
            and (core.messages_waiting or core.end_code is not None)
        ):
            waiter.set_result(None)
        waiter = self._send_waiter
        if (
            waiter is not None
            and not waiter.done()
            and (core.end_code is not None or core.can_send(1))
        ):
            waiter.set_result(None)

    def __repr__(self) -> str:
        return (
            f"<sessiond.Session {self.id[:8]} {self._core.state.value} identity={self.identity!r}>"
        )
