"""Events the core reports to its adapter; read them with ``Session.events()``.

Arriving messages are not events: the hot path keeps them in the session's
inbox (``Session.take_messages``). An event object per message would cost more
than the rest of the receive path (bench/RESULTS.md, "core: notes").
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CloseCode


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A new session is open. ``replaces`` says why a requested resume did not happen."""

    session_id: bytes
    replaces: CloseCode | None = None


@dataclass(frozen=True, slots=True)
class SessionResumed:
    """The session continues on a new transport; ``replayed`` messages were sent again."""

    session_id: bytes
    replayed: int


@dataclass(frozen=True, slots=True)
class SessionLostEvent:
    """Client: the server could not resume the session (protocol.md §4).

    ``unread`` holds messages received but not yet taken by the application;
    ``unacked`` holds messages sent that the peer never acknowledged, and may
    or may not have processed.
    """

    session_id: bytes
    reason: CloseCode
    unread: tuple[bytes, ...]
    unacked: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TransportLost:
    """The transport ended; the session is detached and may be resumed."""

    code: CloseCode
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class GoawayReceived:
    """Client: the server drains this transport (protocol.md §11)."""

    code: CloseCode
    retry_after: float
    redirect: str | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is over for good: closed by either side, expired or revoked."""

    session_id: bytes
    code: CloseCode
    reason: str
    by_peer: bool


Event = (
    SessionStarted
    | SessionResumed
    | SessionLostEvent
    | TransportLost
    | GoawayReceived
    | SessionEnded
)
