"""sessiond: a session-layer server whose sessions outlive TCP and TLS connections."""

from __future__ import annotations

from sessiond_client.protocol import CloseCode, SessiondError, SessionLost

__version__ = "0.1.0"

from .server import Server, ServerConfig, serve
from .session import Session, SessionMoved

__all__ = [
    "CloseCode",
    "Server",
    "ServerConfig",
    "Session",
    "SessionLost",
    "SessionMoved",
    "SessiondError",
    "__version__",
    "serve",
]
