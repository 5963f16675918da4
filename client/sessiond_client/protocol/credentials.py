"""Session IDs and resume credentials (protocol.md §10).

IDs and credentials come from :mod:`secrets`. The server keeps only a SHA-256
digest of each credential and compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from .frames import CREDENTIAL_LEN, SESSION_ID_LEN


def new_session_id() -> bytes:
    """A fresh random session ID (128 bits)."""
    return secrets.token_bytes(SESSION_ID_LEN)


def new_credential() -> bytes:
    """A fresh random resume credential (256 bits)."""
    return secrets.token_bytes(CREDENTIAL_LEN)


def digest(credential: bytes) -> bytes:
    """The form in which a server stores a credential."""
    return hashlib.sha256(credential).digest()


def matches(credential_digest: bytes, stored: bytes | None) -> bool:
    """Constant-time comparison of a presented credential's digest with a stored one."""
    return stored is not None and hmac.compare_digest(credential_digest, stored)
