"""The session store's exceptions.

Exception tree::

    StoreError                  the store could not do what was asked
    ├── StoreUnavailable        unreachable, timed out or refused: retry later
    └── Fenced                  another process claimed the session (its epoch moved on)
"""

from __future__ import annotations


class StoreError(Exception):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The store is unreachable, slow beyond its timeout, or refused the command."""


class Fenced(StoreError):
    """The session's epoch moved on: another process owns it now; drop it here."""
