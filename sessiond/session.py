"""The handler's view of a session: :class:`Session` (send, recv, iterate, close).

A handler coroutine gets one Session per *session*, not per connection: it
never notices transports coming and going. When the session ends, ``recv()``
raises :class:`~sessiond_client.SessionLost` after the last message, and async
iteration simply stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from sessiond_client.handoff import Handoff
from sessiond_client.protocol import CloseCode, InvalidState, SessionLost
from sessiond_client.protocol import Session as CoreSession


class Session:
    """One session, as the application handler sees it."""

    __slots__ = ("_core", "_flush", "_handoff", "_loop", "data", "identity")

    def __init__(
        self, core: CoreSession, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]
    ) -> None:
        self._core = core
        self._loop = loop
        self._flush = flush
        self._handoff = Handoff(core, loop, flush, self._failure)
        self.identity: Any = core.identity
        #: Application data that lives as long as the session.
        self.data: dict[str, Any] = {}

    @property
    def id(self) -> str:
        """The session ID, in hex."""
        return (self._core.id or b"").hex()

    @property
    def core(self) -> CoreSession:
        """The protocol core of this session (sequence numbers, state)."""
        return self._core

    @property
    def ended(self) -> bool:
        return self._core.end_code is not None

    def _failure(self) -> SessionLost | None:
        code = self._core.end_code
        return None if code is None else SessionLost(code)

    async def send(self, payload: bytes) -> None:
        """Send one message; waits while the peer's window is full (backpressure)."""
        await self._handoff.send(payload)

    async def recv(self) -> bytes:
        """Return the next message; raise SessionLost once the session has ended."""
        return await self._handoff.recv()

    def __aiter__(self) -> Session:
        return self

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        # The handoff's coroutine itself, not one wrapping it: a frame less per session.
        return self._handoff.recv(stop=True)

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session for good; the client is told with *code* if it is connected."""
        try:
            self._core.close(self._loop.time(), code, reason)
        except InvalidState:
            raise ValueError(f"{code.name} does not end a session") from None
        self._flush()

    def _wake(self) -> None:
        """Called by the server after input: wake a waiting recv() or send()."""
        self._handoff.wake()

    def __repr__(self) -> str:
        return (
            f"<sessiond.Session {self.id[:8]} {self._core.state.value} identity={self.identity!r}>"
        )
