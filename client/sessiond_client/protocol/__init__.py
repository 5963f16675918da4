"""The sans-I/O protocol core shared by the client and the daemon (protocol.md).

Bytes and a clock reading in; bytes to send, events and the next deadline out.
Nothing here opens a socket, sleeps or reads a clock.
"""

from __future__ import annotations

from .codec import FrameDecoder
from .errors import (
    CODE_TABLE,
    WELCOME_REASONS,
    Backoff,
    CloseCode,
    InvalidState,
    LocalProtocolError,
    PayloadTooLarge,
    ProtocolError,
    RemoteProtocolError,
    SessiondError,
    SessionLost,
    WindowFull,
    is_terminal,
    welcome_reason,
)
from .events import (
    Event,
    GoawayReceived,
    SessionEnded,
    SessionLostEvent,
    SessionResumed,
    SessionStarted,
    TransportLost,
)
from .frames import PROTOCOL_VERSION, parse_frame
from .params import Params
from .session import Connection, ConnectionState, Role, Session, SessionState
from .snapshot import ServerSnapshot, Snapshot

__all__ = [
    "CODE_TABLE",
    "PROTOCOL_VERSION",
    "WELCOME_REASONS",
    "Backoff",
    "CloseCode",
    "Connection",
    "ConnectionState",
    "Event",
    "FrameDecoder",
    "GoawayReceived",
    "InvalidState",
    "LocalProtocolError",
    "Params",
    "PayloadTooLarge",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "ServerSnapshot",
    "Session",
    "SessionEnded",
    "SessionLost",
    "SessionLostEvent",
    "SessionResumed",
    "SessionStarted",
    "SessionState",
    "SessiondError",
    "Snapshot",
    "TransportLost",
    "WindowFull",
    "is_terminal",
    "parse_frame",
    "welcome_reason",
]
