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


@dataclass(frozen=True, slots=True)
class Claimable:
    """What a resume of a session held elsewhere decides its claim from
    (:meth:`~sessiond.store.redisstore.RedisStore.resume`): the epoch to claim from, the
    owner and whether it was asked to release, and the credential's state."""

    epoch: int
    owner: str  # "" when released
    #: Processes the release request reached: -1 when none was sent (no owner, or
    #: this process), 0 when nobody listens for the owner's requests (it was killed).
    listeners: int
    identity: Any
    credential_digest: bytes
    previous_digest: bytes | None
    retired: tuple[bytes, ...]
    confirmed: bool
    rotation_salt: bytes | None
    lifetime: float  # the stored terms' detached lifetime (seconds)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A resume's new credential state (protocol.md §10.4), decided before its claim
    and written by it if the current credential is still *from_digest* (and, when the
    previous one was presented, still unconfirmed: confirmed, that one is theft).
    Unconfirmed, so the core restored from it issues the credential derived with
    *rotation_salt* again (§10.3) and changes nothing."""

    from_digest: bytes
    from_previous: bool  # decided from the previous credential, the current unconfirmed
    credential_digest: bytes
    previous_digest: bytes
    retired: tuple[bytes, ...]
    rotation_salt: bytes
