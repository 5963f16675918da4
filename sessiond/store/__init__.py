"""Where sessions are kept between processes (ARCHITECTURE.md "The session store").

:func:`open_store` reads a ``[store] url``: ``memory`` (the default: sessions
live in the daemon's memory, nothing is written anywhere) or a Redis URL
(``redis://HOST:PORT/DB``, ``rediss://`` for TLS, ``unix:///path/redis.sock``),
which gives a :class:`~sessiond.store.redisstore.RedisStore`.
"""

from __future__ import annotations

from .errors import Fenced, Gone, StoreError, StoreUnavailable
from .records import Claimable, Loaded, Positions, Rotation, SessionMeta, Terms
from .urls import StoreUrl, parse_store_url

__all__ = [
    "Claimable",
    "Fenced",
    "Gone",
    "Loaded",
    "Positions",
    "Rotation",
    "SessionMeta",
    "StoreError",
    "StoreUnavailable",
    "StoreUrl",
    "Terms",
    "parse_store_url",
]
