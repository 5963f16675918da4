"""sessiond: a session-layer server whose sessions outlive TCP and TLS connections.

The public names load on first use, so the ``sessiond`` command can set up its signal
dispositions before the daemon's modules (about a second of imports) are loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sessiond_client.protocol import CloseCode, SessiondError, SessionLost

    from .server import Server, ServerConfig, serve
    from .session import Session, SessionMoved

_HOMES = {
    "CloseCode": "sessiond_client.protocol",
    "SessiondError": "sessiond_client.protocol",
    "SessionLost": "sessiond_client.protocol",
    "Server": "sessiond.server",
    "ServerConfig": "sessiond.server",
    "serve": "sessiond.server",
    "Session": "sessiond.session",
    "SessionMoved": "sessiond.session",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sessiond' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
