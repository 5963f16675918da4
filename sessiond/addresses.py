"""Listener addresses: ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``HOST:PORT`` (IPv6 in [])."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

SCHEMES = ("tcp", "tls")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A ``--listen`` value: where to listen, and whether with TLS."""

    scheme: str  # "tcp" or "tls"
    host: str  # IPv6 without brackets
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{format_host(self.host)}:{self.port}"

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


def parse_listen(value: str, schemes: tuple[str, ...] = SCHEMES) -> ListenAddress:
    """``HOST:PORT`` (TCP), ``tcp://HOST:PORT`` or ``tls://HOST:PORT``; ``ValueError`` if not."""
    scheme, sep, address = value.partition("://")
    if not sep:
        scheme, address = schemes[0], value
    if scheme not in schemes:
        wanted = ", ".join(f"{s}://HOST:PORT" for s in schemes)
        raise ValueError(f"{value!r}: expected {wanted} or HOST:PORT")
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
    return ListenAddress(scheme, host, int(port))
