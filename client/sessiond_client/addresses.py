"""Addresses: ``tcp://HOST:PORT``, ``tls://HOST:PORT`` (IPv6 in brackets), for clients
and for the daemon's listeners alike.

One parser, :func:`parse_address`: the client's ``connect(url)`` and the daemon's
``--listen``, ``listen =`` and ``--metrics`` values all go through it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

SCHEMES = ("tcp", "tls")


@dataclass(frozen=True, slots=True)
class Address:
    """Where to connect or listen, and with which scheme."""

    scheme: str  # "tcp", "tls" (or what the caller allowed)
    host: str  # IPv6 without brackets
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{format_host(self.host)}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.scheme == "tls"

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can reach it (``localhost`` counts)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.split("%")[0]).is_loopback
        except ValueError:
            return False


def format_host(host: str) -> str:
    """*host* as it goes before ``:PORT`` (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


def parse_address(
    value: str, schemes: tuple[str, ...] = SCHEMES, default: str | None = None
) -> Address:
    """``SCHEME://HOST:PORT`` with a scheme from *schemes*, or ``HOST:PORT`` when a
    *default* scheme is given; ``ValueError`` naming what was expected if not."""
    scheme, sep, address = value.partition("://")
    if not sep:
        if default is None:
            wanted = " or ".join(f"{s}://HOST:PORT" for s in schemes)
            raise ValueError(f"expected {wanted}, got {value!r}")
        scheme, address = default, value
    if scheme not in schemes:
        wanted = ", ".join(f"{s}://HOST:PORT" for s in schemes)
        bare = " or HOST:PORT" if default is not None else ""
        raise ValueError(f"{value!r}: expected {wanted}{bare}")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"expected {scheme}://HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise ValueError(f"{value!r}: not an IPv6 address in brackets") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(
            f"{value!r}: write IPv6 addresses in brackets, e.g. {scheme}://[::1]:{port}"
        )
    return Address(scheme, host, int(port))
