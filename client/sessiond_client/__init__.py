"""sessiond_client: sessions that outlive connections.

``session = await sessiond_client.connect("tcp://127.0.0.1:7420")`` gives a
session that reconnects and resumes by itself (:mod:`sessiond_client.client`);
the sans-I/O protocol core is :mod:`sessiond_client.protocol`.
"""

from __future__ import annotations

from .backoff import ReconnectPolicy
from .client import Session, State, connect, tls_context
from .protocol import CloseCode, Params, SessiondError, SessionLost
from .sync import SyncSession, connect_sync

__version__ = "0.1.0"

__all__ = [
    "CloseCode",
    "Params",
    "ReconnectPolicy",
    "Session",
    "SessionLost",
    "SessiondError",
    "State",
    "SyncSession",
    "__version__",
    "connect",
    "connect_sync",
    "tls_context",
]

from .channels import ChannelError, Channels, SyncChannels

__all__ += ["ChannelError", "Channels", "SyncChannels"]
