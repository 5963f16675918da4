"""Session IDs and resume credentials (protocol.md §10).

IDs, first credentials and rotation salts come from :mod:`secrets`. The server keeps
only a SHA-256 digest of each credential and compares digests in constant time.

A credential issued by a resume is derived from the credential presented and a fresh
random salt (:func:`rotated_credential`), so that a server holding only digests and the
salt can answer a repeated resume with the same credential again (§10.3, idempotent
rotation): only someone presenting the previous credential can recompute it.
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


def new_salt() -> bytes:
    """A fresh random rotation salt (256 bits)."""
    return secrets.token_bytes(CREDENTIAL_LEN)


def rotated_credential(presented: bytes, salt: bytes) -> bytes:
    """The credential a resume presenting *presented* is issued: HMAC-SHA256 keyed
    with *salt* (protocol.md §10.4)."""
    return hmac.new(salt, presented, hashlib.sha256).digest()
