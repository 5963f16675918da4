"""``[store] url`` values: ``memory``, ``redis://``, ``rediss://`` and ``unix://``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A checked store URL; ``kind`` is ``memory`` or ``redis``."""

    kind: str
    url: str

    @property
    def shared(self) -> bool:
        """True when other processes can see the sessions (a ``--workers`` requirement)."""
        return self.kind != "memory"


def parse_store_url(text: str) -> StoreUrl:
    """Check *text*; raises ValueError saying what is wrong with it."""
    if text == "memory":
        return StoreUrl("memory", text)
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"store URL {text!r}: expected memory, redis://HOST:PORT/DB, "
            "rediss://HOST:PORT/DB or unix:///path/to/redis.sock"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"store URL {text!r}: a unix:// URL needs a socket path")
    else:
        if not parts.hostname:
            raise ValueError(f"store URL {text!r}: no host")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"store URL {text!r}: bad port") from None
        database = parts.path.lstrip("/")
        if database and not database.isdigit():
            raise ValueError(f"store URL {text!r}: the database must be a number")
    return StoreUrl("redis", text)
