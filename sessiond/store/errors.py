"""The session store's exceptions.

Exception tree::

    StoreError                  the store could not do what was asked
    ├── StoreUnavailable        unreachable, timed out or refused: retry later
    ├── Fenced                  another process claimed the session (its epoch moved on)
    └── Gone                    the session is not in the store; ``code`` says why
"""

from __future__ import annotations

from sessiond_client.protocol import CloseCode


class StoreError(Exception):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The store is unreachable, slow beyond its timeout, or refused the command."""


class Fenced(StoreError):
    """The session's epoch moved on: another process owns it now; drop it here."""


class Gone(StoreError):
    """The session is not in the store; ``code`` says why (unknown, expired, ended)."""

    def __init__(self, code: CloseCode) -> None:
        super().__init__(code.name)
        self.code = code
