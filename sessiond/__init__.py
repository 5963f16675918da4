"""sessiond: a session-layer server whose sessions outlive TCP and TLS connections."""

from __future__ import annotations

from sessiond_client.protocol import CloseCode, SessiondError, SessionLost

__version__ = "0.1.0"

__all__ = ["CloseCode", "SessionLost", "SessiondError", "__version__"]
