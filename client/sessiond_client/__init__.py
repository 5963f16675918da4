"""sessiond_client: sessions that outlive connections.

``session = await sessiond_client.connect("tcp://127.0.0.1:7420")`` gives a
session that reconnects and resumes by itself (:mod:`sessiond_client.client`);
the sans-I/O protocol core is :mod:`sessiond_client.protocol`.

Exceptions (all :class:`SessiondError`)::

    SessionLost         the session ended; .reason (CloseCode), .undelivered (payloads)
    └── ConnectFailed   the first connection failed; .address, the cause in the message
    StateFileError      the state file cannot be used (locked by another process, corrupt)
    ChannelError        the channels app refused a request; .code (ErrorCode)

plus ``TypeError`` from ``send`` for a payload that is not bytes-like, and
``TimeoutError`` from a call given a ``timeout``. Logs go to the
``sessiond_client`` logger (never payloads or credentials): configure logging
(``logging.basicConfig(level=logging.INFO)``) to see them.
"""

from __future__ import annotations

import logging

from .backoff import ReconnectPolicy
from .client import ConnectFailed, Credentials, Notice, Session, State, connect, tls_context
from .protocol import (
    CloseCode,
    GoawayReceived,
    Params,
    SessiondError,
    SessionLost,
    SessionLostEvent,
    SessionStarted,
)
from .state_file import StateFileError
from .sync import SyncSession, connect_sync

__version__ = "0.1.0"

__all__ = [
    "CloseCode",
    "ConnectFailed",
    "Credentials",
    "GoawayReceived",
    "Notice",
    "Params",
    "ReconnectPolicy",
    "Session",
    "SessionLost",
    "SessionLostEvent",
    "SessionStarted",
    "SessiondError",
    "State",
    "StateFileError",
    "SyncSession",
    "__version__",
    "connect",
    "connect_sync",
    "tls_context",
]

from .channels import ChannelError, Channels, SyncChannels

__all__ += ["ChannelError", "Channels", "SyncChannels"]

# A library configures no output of its own: the application's logging setup decides
# (without one, Python would print WARNING records to stderr through its last resort).
logging.getLogger("sessiond_client").addHandler(logging.NullHandler())
