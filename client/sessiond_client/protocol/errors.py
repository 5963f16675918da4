"""Wire close codes and the exception tree of the protocol core.

Every peer fault maps to exactly one :class:`CloseCode` here, and the table in
``protocol.md`` §12 is checked against :data:`CODE_TABLE` by the test suite.

Exception tree::

    SessiondError
    ├── ProtocolError                 the wire carried something protocol.md forbids
    │   └── RemoteProtocolError       the peer broke the protocol; carries the close code
    ├── LocalProtocolError            this program misused the core API; never touches the wire
    │   ├── WindowFull                send() without credit (wait, then retry)
    │   ├── PayloadTooLarge           payload above the negotiated frame limit
    │   └── InvalidState              call not allowed in the current state
    └── SessionLost                   the session ended: reason code, undelivered payloads
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CloseCode(enum.IntEnum):
    """Close and outcome codes (protocol.md §12)."""

    NORMAL = 0
    GOING_AWAY = 1
    PROTOCOL_ERROR = 2
    FRAME_TOO_LARGE = 3
    UNSUPPORTED_VERSION = 4
    UNEXPECTED_FRAME = 5
    SEQUENCE_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    HANDSHAKE_TIMEOUT = 8
    IDLE_TIMEOUT = 9
    AUTH_FAILED = 10
    TAKEN_OVER = 11
    SESSION_CONTESTED = 12
    CREDENTIAL_REUSED = 13
    LIMIT_EXCEEDED = 14
    INTERNAL_ERROR = 15
    SLOW_CONSUMER = 16
    UNKNOWN_SESSION = 20
    SESSION_EXPIRED = 21
    SESSION_REVOKED = 22
    REPLAY_UNAVAILABLE = 23
    IDENTITY_MISMATCH = 24
    CREDENTIAL_INVALID = 25
    TRANSPORT_LOST = 30


class Backoff(enum.Enum):
    """What a client does after a transport ends with a code (protocol.md §12)."""

    NONE = "none"  # terminal: do not reconnect this session
    IMMEDIATE = "immediate"  # reconnect at once (first attempt), then the policy's backoff
    POLICY = "policy"  # exponential backoff with full jitter from the first attempt
    RETRY_AFTER = "retry-after"  # wait the peer's retry_after, else as POLICY


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """One row of the code table."""

    terminal: bool
    backoff: Backoff
    meaning: str


CODE_TABLE: dict[CloseCode, CodeInfo] = {
    CloseCode.NORMAL: CodeInfo(True, Backoff.NONE, "the session ended normally"),
    CloseCode.GOING_AWAY: CodeInfo(
        False, Backoff.RETRY_AFTER, "the server is draining; resume after retry_after"
    ),
    CloseCode.PROTOCOL_ERROR: CodeInfo(True, Backoff.NONE, "malformed frame or invalid field"),
    CloseCode.FRAME_TOO_LARGE: CodeInfo(True, Backoff.NONE, "frame above the receiver's limit"),
    CloseCode.UNSUPPORTED_VERSION: CodeInfo(True, Backoff.NONE, "no common protocol version"),
    CloseCode.UNEXPECTED_FRAME: CodeInfo(True, Backoff.NONE, "frame type not allowed now"),
    CloseCode.SEQUENCE_ERROR: CodeInfo(True, Backoff.NONE, "gap, duplicate or impossible ack"),
    CloseCode.FLOW_CONTROL_ERROR: CodeInfo(True, Backoff.NONE, "peer exceeded the window"),
    CloseCode.HANDSHAKE_TIMEOUT: CodeInfo(False, Backoff.POLICY, "handshake not completed in time"),
    CloseCode.IDLE_TIMEOUT: CodeInfo(False, Backoff.IMMEDIATE, "receive silence: transport dead"),
    CloseCode.AUTH_FAILED: CodeInfo(True, Backoff.NONE, "credentials refused"),
    CloseCode.TAKEN_OVER: CodeInfo(True, Backoff.NONE, "another transport resumed this session"),
    CloseCode.SESSION_CONTESTED: CodeInfo(
        False, Backoff.RETRY_AFTER, "reserved: sent by version 1 servers only (§9.2)"
    ),
    CloseCode.CREDENTIAL_REUSED: CodeInfo(
        True, Backoff.NONE, "a rotated credential was presented again: session revoked"
    ),
    CloseCode.LIMIT_EXCEEDED: CodeInfo(False, Backoff.RETRY_AFTER, "a server limit was reached"),
    CloseCode.INTERNAL_ERROR: CodeInfo(False, Backoff.POLICY, "a bug on the sending side"),
    CloseCode.SLOW_CONSUMER: CodeInfo(True, Backoff.NONE, "the receiver fell too far behind"),
    CloseCode.UNKNOWN_SESSION: CodeInfo(True, Backoff.NONE, "no such session"),
    CloseCode.SESSION_EXPIRED: CodeInfo(True, Backoff.NONE, "detached longer than its lifetime"),
    CloseCode.SESSION_REVOKED: CodeInfo(
        True, Backoff.NONE, "the session was ended (by the server or by its client)"
    ),
    CloseCode.REPLAY_UNAVAILABLE: CodeInfo(
        True, Backoff.NONE, "the messages to replay are no longer held"
    ),
    CloseCode.IDENTITY_MISMATCH: CodeInfo(
        True, Backoff.NONE, "resume authenticated as another identity"
    ),
    CloseCode.CREDENTIAL_INVALID: CodeInfo(True, Backoff.NONE, "wrong resume credential"),
    CloseCode.TRANSPORT_LOST: CodeInfo(
        False, Backoff.IMMEDIATE, "local only: the transport closed without a CLOSE frame"
    ),
}


#: The codes a WELCOME ``reason`` may carry (protocol.md §12.1): checks 1 to 4 of §4.2,
#: and SLOW_CONSUMER for a channels subscriber the server ended (§15.6.2).
WELCOME_REASONS: frozenset[CloseCode] = frozenset(
    {
        CloseCode.CREDENTIAL_REUSED,
        CloseCode.SLOW_CONSUMER,
        CloseCode.UNKNOWN_SESSION,
        CloseCode.SESSION_EXPIRED,
        CloseCode.SESSION_REVOKED,
        CloseCode.REPLAY_UNAVAILABLE,
        CloseCode.IDENTITY_MISMATCH,
        CloseCode.CREDENTIAL_INVALID,
    }
)

#: How a session that has ended is named to a later resume (§4.2 check 1): every ending
#: other than these (a CLOSE NORMAL from its own client, a theft, any terminal close) is
#: SESSION_REVOKED.
_ENDED_AS = frozenset(
    {CloseCode.UNKNOWN_SESSION, CloseCode.SESSION_EXPIRED, CloseCode.SLOW_CONSUMER}
)


def welcome_reason(ended: CloseCode) -> CloseCode:
    """The WELCOME ``reason`` for resuming a session that ended with *ended* (§4.2, §12.1)."""
    return ended if ended in _ENDED_AS else CloseCode.SESSION_REVOKED


def is_terminal(code: int) -> bool:
    """True when a transport closed with *code* must not be resumed.

    Unknown codes are terminal: a peer newer than us may know reasons we do not.
    """
    try:
        return CODE_TABLE[CloseCode(code)].terminal
    except ValueError:
        return True


class SessiondError(Exception):
    """Base of every error raised by sessiond and sessiond_client."""


class ProtocolError(SessiondError):
    """The wire carried something protocol.md forbids."""

    code: CloseCode = CloseCode.PROTOCOL_ERROR

    def __init__(self, message: str, code: CloseCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the transport is closed with :attr:`code`."""


class LocalProtocolError(SessiondError):
    """This program called the core in a way it does not allow; nothing is sent."""


class WindowFull(LocalProtocolError):
    """No send credit: wait until :meth:`Session.can_send` is true."""


class PayloadTooLarge(LocalProtocolError):
    """The payload exceeds the largest frame the peer accepts."""


class InvalidState(LocalProtocolError):
    """The call is not allowed in the current state."""


class SessionLost(SessiondError):
    """The session ended and cannot be resumed; :attr:`reason` says why.

    :attr:`undelivered` lists the payloads sent but never acknowledged, oldest
    first (empty when nothing was lost): the peer may or may not have processed
    them, and the application decides whether to send them again.
    """

    def __init__(
        self, reason: CloseCode, message: str = "", undelivered: tuple[bytes, ...] = ()
    ) -> None:
        text = f"session lost: {reason.name}" + (f" ({message})" if message else "")
        if undelivered:
            text += f"; {len(undelivered)} message(s) not acknowledged"
        super().__init__(text)
        self.reason = reason
        self.message = message
        self.undelivered = undelivered
