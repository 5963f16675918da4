"""Cutting a client session's transport and resuming it at once (``resume``, ``storm``).

:func:`reset_on_close` makes the socket's close a reset (``SO_LINGER`` 0); :func:`cut`
aborts the transport and tells the core at once, as the client library does; the client
is then the protocol of its next transport, whose HELLO resumes (protocol.md §4.1).
:func:`handshake_event` checks each handshake: new session first, the same one after.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Protocol

from sessiond_client.protocol import (
    Connection,
    Session,
    SessionResumed,
    SessionStarted,
    TransportLost,
)

from . import BenchError

#: ``struct linger`` with l_onoff 1, l_linger 0: close() resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)
#: The protocol of a transport that has been cut: its connection_lost is nobody's business.
_CUT = asyncio.Protocol()


class Cuttable(Protocol):
    """A load-generating client of one core session (as bench/loadgen.py's are)."""

    loop: asyncio.AbstractEventLoop
    session: Session
    conn: Connection | None
    transport: asyncio.Transport | None
    timer: asyncio.TimerHandle | None


def reset_on_close(transport: asyncio.BaseTransport) -> None:
    """Make closing *transport* send RST (call before :func:`cut`; a few µs)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def cut(client: Cuttable) -> None:
    """Abort *client*'s transport now and report it to the core (the session detaches)."""
    transport = client.transport
    conn = client.conn
    client.transport = None
    client.conn = None
    if client.timer is not None:
        client.timer.cancel()
        client.timer = None
    if transport is not None:
        transport.abort()
        transport.set_protocol(_CUT)
    if conn is not None:
        conn.connection_lost(client.loop.time())
    events = client.session.events()
    if len(events) != 1 or not isinstance(events[0], TransportLost):
        raise BenchError(f"unexpected events at the cut: {events}")


def handshake_event(session: Session, resuming: bool) -> SessionStarted | SessionResumed:
    """The one event a completed handshake reports; a resume must not start a new session."""
    events = session.events()
    if len(events) == 1:
        event = events[0]
        if resuming and isinstance(event, SessionResumed):
            return event
        if not resuming and isinstance(event, SessionStarted):
            return event
    what = "resume" if resuming else "handshake"
    raise BenchError(f"unexpected events at the {what} (session lost?): {events}")
