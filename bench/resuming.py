"""Cutting a client session's transport and resuming it at once (``resume``, ``storm``).

A load-generating client of :mod:`bench.loadgen` drives one core client
:class:`~sessiond_client.protocol.Session` in an ``asyncio.Protocol``. To cut
its transport as a network failure would, :func:`reset_on_close` first makes
the socket's close a reset (``SO_LINGER`` 0: what is queued in the kernel is
dropped and the daemon gets RST rather than an orderly FIN), then :func:`cut`
hands the transport a protocol that ignores its last callbacks, aborts it and
tells the core at once, as the client library does when its transport fails.
The client object is then free to be the protocol of its next transport at
once (``loop.create_connection(lambda: client, ...)``), whose HELLO carries
the resume (protocol.md §4.1). :func:`handshake_event` checks that each
handshake ended as it must: a new session on the first transport, the same
session resumed on every later one; a resume answered with a new session is a
lost session and fails the pass.
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
