"""Built-in applications, selectable with ``sessiond serve --app NAME``."""

from __future__ import annotations

import importlib

from .server import Handler
from .session import Session


async def echo(session: Session) -> None:
    """Send every message back, in order, for the life of the session."""
    async for payload in session:
        await session.send(payload)


BUILTIN: dict[str, Handler] = {"echo": echo}


def load_app(spec: str) -> Handler:
    """Resolve ``NAME`` (a built-in app) or ``module:callable``."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN))
        raise ValueError(f"--app {spec!r}: expected one of {known} or module:callable")
    try:
        handler = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--app {spec!r}: {exc}") from None
    if not callable(handler):
        raise ValueError(f"--app {spec!r} is not callable")
    return handler  # type: ignore[no-any-return]
