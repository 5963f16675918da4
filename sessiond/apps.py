"""Built-in applications, selectable with ``sessiond serve --app NAME``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sessiond_client.protocol import CloseCode, PayloadTooLarge, SessionLost

from .channels import ChannelsApp
from .config import Settings
from .server import Handler
from .session import Session


def echo_batch(session: Session, batch: list[bytes]) -> None:
    """The echo app's receiver: every message back, in order, from the read callback."""
    try:
        session.send_many_nowait(batch)
    except PayloadTooLarge:
        session.close(CloseCode.SESSION_REVOKED, "message larger than your max_frame")


async def echo(session: Session) -> None:
    """Send every message back, in order, for the life of the session.

    A synchronous receiver (``Session.receive_with``): the echo of a message leaves in
    the write that answers the read that brought it (README, "Two handler models").
    A client that sends a message larger than the frames it accepts (its HELLO
    ``max_frame``) cannot have it back: the session ends with SESSION_REVOKED.
    """
    await session.receive_with(echo_batch)


async def echo_async(session: Session) -> None:
    """The echo app as a coroutine that awaits its messages (``--app echo-async``): the
    same replies as :func:`echo`, each one loop iteration after its read (kept to
    compare the two handler models, and as the model of an awaiting handler)."""
    while True:
        try:
            # All that arrived (one call, not one each); recv_many() without its
            # coroutine: an idle session waits in one Future (wait_ready's docstring).
            # Waiting first, then taking: one take per batch (taking first would
            # take nothing once per round trip in ping-pong).
            await session.wait_ready()
            batch = session.take_ready()
        except SessionLost:
            return
        try:
            await session.send_many(batch)
        except PayloadTooLarge:
            session.close(CloseCode.SESSION_REVOKED, "message larger than your max_frame")
            return
        del batch  # not kept in this frame while it waits (56 bytes and its payloads)


#: Built-in apps by name, each made from the daemon's settings (an app with state,
#: such as channels, gets a fresh instance per server).
BUILTIN: dict[str, Callable[[Settings], Handler]] = {
    "channels": lambda settings: ChannelsApp(settings.channels),
    "echo": lambda settings: echo,
    "echo-async": lambda settings: echo_async,
}


def load_app(spec: str, settings: Settings | None = None) -> Handler:
    """Resolve ``NAME`` (a built-in app, configured from *settings*) or ``module:callable``."""
    if spec in BUILTIN:
        return BUILTIN[spec](settings or Settings())
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN))
        raise ValueError(f"--app {spec!r}: expected one of {known} or module:callable")
    try:
        handler = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--app {spec!r}: {exc}") from None
    except Exception as exc:  # the module itself failed (SyntaxError, an error at import)
        raise ValueError(
            f"--app {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(handler):
        raise ValueError(f"--app {spec!r} is not callable")
    return handler  # type: ignore[no-any-return]
