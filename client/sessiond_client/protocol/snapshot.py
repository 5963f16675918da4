"""What a client keeps to resume its session after its own process restarts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A client session's durable state (see ``Session.snapshot`` and ``Session.restore``).

    ``unacked`` holds the payloads numbered ``acked+1 .. next_seq-1``. ``consumed`` is
    the number of messages the application has taken: a restored session resumes from
    there, so the server replays what was received but not yet taken.
    """

    session_id: bytes
    credential: bytes
    next_seq: int
    acked: int
    consumed: int
    window_messages: int
    window_bytes: int
    max_payload: int
    unacked: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.acked < self.next_seq or self.consumed < 0:
            raise ValueError("inconsistent sequence numbers")
        if len(self.unacked) != self.next_seq - 1 - self.acked:
            raise ValueError(
                f"{len(self.unacked)} unacknowledged payloads for seqs "
                f"{self.acked + 1}..{self.next_seq - 1}"
            )


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """A server session's state, for a daemon that keeps sessions in a shared store
    (see ``Session.server_snapshot`` and ``Session.restore_server``).

    The credential is held as digests only (protocol.md §10). ``unacked`` holds the
    payloads numbered ``acked+1 .. next_seq-1``; ``consumed`` is what the application
    took: a restored session has received exactly that much, so the client replays
    the rest. ``heartbeat``, ``idle_timeout``, ``lifetime``, the send window and
    ``max_payload`` are the terms the last WELCOME stated.
    """

    session_id: bytes
    identity: object
    credential_digest: bytes
    previous_digest: bytes | None
    retired: tuple[bytes, ...]
    confirmed: bool
    heartbeat: float
    idle_timeout: float
    lifetime: float
    window_messages: int
    window_bytes: int
    max_payload: int
    next_seq: int
    acked: int
    consumed: int
    unacked: tuple[bytes, ...]
    #: The salt the current credential was derived with while it is unconfirmed
    #: (protocol.md §10.3): without it a resume with the previous credential rotates
    #: again instead of being answered with the same credential (still accepted).
    rotation_salt: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.acked < self.next_seq or self.consumed < 0:
            raise ValueError("inconsistent sequence numbers")
        if len(self.unacked) != self.next_seq - 1 - self.acked:
            raise ValueError(
                f"{len(self.unacked)} unacknowledged payloads for seqs "
                f"{self.acked + 1}..{self.next_seq - 1}"
            )
