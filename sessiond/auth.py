"""Authenticators: who is on the other end of a HELLO (protocol.md §3.5).

An authenticator is called on every HELLO, resumes included, with the
credentials the client presented and what the transport knows about the peer.
It returns the identity (any hashable value; ``None`` for anonymous) or raises
:class:`AuthenticationFailed`. It may be a coroutine function.

Built in: :class:`OpenAuthenticator` (the default: anyone, from loopback only),
:class:`TokenFileAuthenticator` (bearer tokens stored as SHA-256 hashes) and
:class:`MutualTLSAuthenticator` (the verified client certificate's identity).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessiond_client.protocol import SessiondError


class AuthenticationFailed(SessiondError):
    """Credentials refused; the transport is closed with AUTH_FAILED."""


@dataclass(frozen=True, slots=True)
class Peer:
    """What the transport knows about the client."""

    address: str  # "host:port"
    host: str
    tls_identity: str | None = None  # from a verified client certificate

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host.split("%")[0]).is_loopback
        except ValueError:
            return self.host in ("localhost", "")


Authenticator = Callable[[Any, Peer], Any | Awaitable[Any]]


class OpenAuthenticator:
    """Anyone may connect, but only from a loopback address; the identity is the
    client certificate's if there is one, else None."""

    def __call__(self, credentials: Any, peer: Peer) -> Any:
        if not peer.is_loopback:
            raise AuthenticationFailed("open authentication accepts loopback clients only")
        return peer.tls_identity


class MutualTLSAuthenticator:
    """The verified client certificate is the identity; HELLO credentials are ignored."""

    def __call__(self, credentials: Any, peer: Peer) -> Any:
        if peer.tls_identity is None:
            raise AuthenticationFailed("a client certificate is required")
        return peer.tls_identity


class TokenFileAuthenticator:
    """Bearer tokens from a file of ``IDENTITY SHA256-HEX`` lines (``#`` comments).

    The client sends its token as HELLO ``credentials``: a string, or a map with a
    ``"token"`` key. Only digests are held; every digest is compared in constant time.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries = self.load(self.path)

    @staticmethod
    def hash_token(token: str) -> str:
        """The line to put in a token file for *token*: its SHA-256 in hex."""
        return hashlib.sha256(token.encode()).hexdigest()

    @staticmethod
    def load(path: Path) -> list[tuple[bytes, str]]:
        entries = []
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"token file {path}: {exc.strerror}") from None
        for number, raw in enumerate(text.splitlines(), 1):
            parts = raw.split("#", 1)[0].split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                digest = bytes.fromhex(parts[1])
                if len(digest) != 32:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"token file {path}, line {number}: expected IDENTITY SHA256-HEX"
                ) from None
            entries.append((digest, parts[0]))
        return entries

    def __call__(self, credentials: Any, peer: Peer) -> Any:
        token = credentials.get("token") if isinstance(credentials, dict) else credentials
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed("a token is required")
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, identity in self.entries:  # no early exit: constant time in the match
            if hmac.compare_digest(presented, digest):
                found = identity
        if found is None:
            raise AuthenticationFailed("unknown token")
        return found
