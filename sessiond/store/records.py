"""What the session store holds for one session (see keys.py for how Redis holds it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Terms:
    """A session's negotiated terms (protocol.md §4.3), as the WELCOME stated them."""

    heartbeat: float
    idle_timeout: float
    lifetime: float
    window_messages: int  # the peer's window, i.e. our send window
    window_bytes: int
    max_payload: int

    def to_list(self) -> list[Any]:
        return [
            self.heartbeat,
            self.idle_timeout,
            self.lifetime,
            self.window_messages,
            self.window_bytes,
            self.max_payload,
        ]

    @classmethod
    def from_list(cls, values: list[Any]) -> Terms:
        heartbeat, idle, lifetime, messages, size, payload = values
        return cls(float(heartbeat), float(idle), float(lifetime), messages, size, payload)


@dataclass(slots=True)
class SessionMeta:
    """The slowly changing part: written at creation, on every resume and on release."""

    session_id: bytes
    identity: Any
    credential_digest: bytes
    previous_digest: bytes | None
    retired: tuple[bytes, ...]
    confirmed: bool
    terms: Terms
    data: dict[str, Any] = field(default_factory=dict)
    rotation_salt: bytes | None = None  # while the current credential is unconfirmed


@dataclass(frozen=True, slots=True)
class Positions:
    """Where both directions stand, and the outbound payloads not yet acknowledged.

    ``unacked`` holds the payloads numbered ``acked+1 .. next_seq-1``.
    """

    next_seq: int = 1
    acked: int = 0
    consumed: int = 0
    unacked: tuple[bytes, ...] = ()
    #: The app's position in a stream of its own (``Session.marker``), as of the
    #: payloads stored: a stream entry ID, the greatest stored winning.
    mark: str | None = None


@dataclass(slots=True)
class Loaded:
    """A stored session as :meth:`Store.load` finds it."""

    epoch: int
    owner: str  # "" when released
    meta: SessionMeta
    positions: Positions
