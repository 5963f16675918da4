"""The handler's view of a session: :class:`Session` (send, recv, iterate, close).

A handler coroutine gets one Session per *session*, not per connection: it
never notices transports coming and going. When the session ends, ``recv()``
raises :class:`~sessiond_client.SessionLost` after the last message, and async
iteration simply stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sessiond_client.handoff import Handoff
from sessiond_client.protocol import CloseCode, InvalidState, SessionLost
from sessiond_client.protocol import Session as CoreSession


class Session:
    """One session, as the application handler sees it."""

    __slots__ = ("_core", "_data", "_flush", "_handoff", "_loop", "identity")

    def __init__(
        self, core: CoreSession, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]
    ) -> None:
        self._core = core
        self._loop = loop
        self._flush = flush
        self._handoff = Handoff(core, loop, flush, self._failure)
        self.identity: Any = core.identity
        self._data: dict[str, Any] | None = None

    @property
    def data(self) -> dict[str, Any]:
        """Application data that lives as long as the session (made on first use)."""
        if self._data is None:
            self._data = {}
        return self._data

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

    # send, recv and __anext__ return the handoff's coroutines themselves: no wrapping
    # coroutine per message (the echo benchmark's hot path).

    def send(self, payload: bytes) -> Coroutine[Any, Any, None]:
        """Send one message; waits while the peer's window is full (backpressure)."""
        return self._handoff.send(payload)

    def recv(self) -> Coroutine[Any, Any, bytes]:
        """Return the next message; raise SessionLost once the session has ended."""
        return self._handoff.recv()

    def send_many(self, payloads: Sequence[bytes]) -> Coroutine[Any, Any, None]:
        """Send messages in order, as many at a time as the window takes: the same as
        ``send`` for each, at a lower cost per message."""
        return self._handoff.send_many(payloads)

    def recv_many(self) -> Coroutine[Any, Any, list[bytes]]:
        """Every message waiting, in order (waits for at least one); raises
        SessionLost once the session has ended and nothing is left."""
        return self._handoff.recv_many()

    def __aiter__(self) -> Session:
        return self

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
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
