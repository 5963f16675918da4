"""sessiond_client: sessions that outlive connections.

This release holds the sans-I/O protocol core (:mod:`sessiond_client.protocol`);
the asyncio client and the blocking facade build on it.
"""

from __future__ import annotations

from .protocol import CloseCode, SessiondError, SessionLost

__version__ = "0.1.0"

__all__ = ["CloseCode", "SessionLost", "SessiondError", "__version__"]
