"""Listener addresses: ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``HOST:PORT`` (IPv6 in []).

The parser is the client package's (:mod:`sessiond_client.addresses`): a URL the
daemon listens on is read exactly as a client reads it.
"""

from __future__ import annotations

from sessiond_client.addresses import SCHEMES, format_host, parse_address
from sessiond_client.addresses import Address as ListenAddress

__all__ = ["SCHEMES", "ListenAddress", "format_host", "parse_listen"]


def parse_listen(value: str, schemes: tuple[str, ...] = SCHEMES) -> ListenAddress:
    """``HOST:PORT`` (the first of *schemes*), ``tcp://HOST:PORT`` or ``tls://HOST:PORT``;
    ``ValueError`` if not."""
    return parse_address(value, schemes, default=schemes[0])
