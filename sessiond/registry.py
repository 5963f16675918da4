"""Where the daemon keeps its sessions: a small interface and the in-memory store.

The server talks to sessions only through :class:`Registry`: the life cycle
``create``, ``find``, ``attach``, ``detach`` and ``expire``; ``missing_reason``
(why an unknown ID is unknown); and the views ``values``, ``clear``, ``len``,
``in`` and ``[]`` for draining, shutdown and operations. A durable or
Redis-backed store, or a handover between worker processes, implements the
same interface; neither the adapter nor the protocol core changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from sessiond_client.protocol import CloseCode

T = TypeVar("T")


class Registry(Protocol[T]):
    """What the server needs from a session store: five life-cycle operations,
    ``missing_reason``, and the views for draining, shutdown and operations."""

    def create(self, session_id: bytes, entry: T) -> None:
        """Register a new session."""

    def find(self, session_id: bytes) -> T | None:
        """The live session with this ID, or None."""

    def attach(self, session_id: bytes) -> None:
        """A transport now carries the session (resume or creation)."""

    def detach(self, session_id: bytes, now: float) -> None:
        """The session's transport ended; it waits for a resume."""

    def expire(self, session_id: bytes, code: CloseCode) -> None:
        """The session ended for good with *code*: forget it, remember why."""

    def missing_reason(self, session_id: bytes) -> CloseCode:
        """Why a resume of an ID that :meth:`find` does not know fails."""

    def remove(self, session_id: bytes) -> None:
        """The session moved to another process: forget it without an end code."""

    def values(self) -> Iterable[T]:
        """Every live session (for draining, shutdown and operations)."""

    def clear(self) -> None:
        """Forget every session (shutdown)."""

    def __len__(self) -> int: ...

    def __contains__(self, session_id: object) -> bool: ...

    def __getitem__(self, session_id: bytes) -> T: ...


class MemoryRegistry(Generic[T], Mapping[bytes, T]):
    """Sessions in a dict; the last *remember* ended IDs are kept with their end code."""

    def __init__(self, remember: int = 10_000) -> None:
        self._live: dict[bytes, T] = {}
        self._detached_at: dict[bytes, float] = {}
        self._ended: OrderedDict[bytes, CloseCode] = OrderedDict()
        self._remember = remember

    def create(self, session_id: bytes, entry: T) -> None:
        self._live[session_id] = entry

    def find(self, session_id: bytes) -> T | None:
        return self._live.get(session_id)

    def attach(self, session_id: bytes) -> None:
        self._detached_at.pop(session_id, None)

    def detach(self, session_id: bytes, now: float) -> None:
        if session_id in self._live:
            self._detached_at[session_id] = now

    def expire(self, session_id: bytes, code: CloseCode) -> None:
        self._live.pop(session_id, None)
        self._detached_at.pop(session_id, None)
        self._ended[session_id] = code
        self._ended.move_to_end(session_id)
        while len(self._ended) > self._remember:
            self._ended.popitem(last=False)

    def missing_reason(self, session_id: bytes) -> CloseCode:
        return self._ended.get(session_id, CloseCode.UNKNOWN_SESSION)

    def remove(self, session_id: bytes) -> None:
        self._live.pop(session_id, None)
        self._detached_at.pop(session_id, None)

    @property
    def detached(self) -> int:
        """How many live sessions have no transport."""
        return len(self._detached_at)

    def clear(self) -> None:
        self._live.clear()
        self._detached_at.clear()

    # Mapping: read-only views for tests and operations tooling.
    def __getitem__(self, session_id: bytes) -> T:
        return self._live[session_id]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)
