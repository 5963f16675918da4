"""Listening sockets whose ``accept`` the daemon runs itself, so that running out of
file descriptors is seen, logged and waited out (guarantee 9, issue 12).

Why not ``loop.create_server``: when ``accept`` fails with EMFILE or ENFILE, uvloop
(libuv) closes its spare descriptor, accepts and closes every pending connection and
says nothing, so clients get an untyped end and the operator no log line; asyncio's own
loop logs a traceback per failure and pauses one second. :class:`Listener` instead:

* accepts at most :data:`ACCEPT_BATCH` connections per readiness event, so one listener
  cannot hold the loop;
* on EMFILE, ENFILE, ENOBUFS or ENOMEM, notes a refusal (``accept``: rate-limited by
  :class:`~sessiond.refusals.Refusals`, with counts) and stops accepting for
  ``limits.accept_pause`` seconds: pending connections wait in the kernel's backlog
  (``LISTEN_BACKLOG``) instead of being reset, and a process with no descriptor left
  does not spin on a listener that stays readable;
* hands each accepted socket to the loop's own transport (``connect_accepted_socket``).

The typed refusal before this happens is the server's (``limits.fd_reserve``: with fewer
descriptors left, new transports get LIMIT_EXCEEDED "server busy"); this is the floor
under it, for descriptors taken by anything else.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("sessiond")

#: Connections accepted per readiness event before other callbacks get a turn.
ACCEPT_BATCH = 64
#: accept errors that mean "no resources now": pause, then try again.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def bind(host: str | None, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening, non-blocking sockets for every address *host* resolves to (all
    interfaces when empty), as ``loop.create_server`` binds them."""
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            (info[0], info[1], info[2], info[3], info[4]) for info in infos
        ):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(exc.strerror or '').lower()}",
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener:
    """Accepts on some listening sockets and makes a transport with *factory*'s protocol
    for each connection; ``sockets``, ``close()`` and ``wait_closed()`` as an
    ``asyncio.Server``."""

    def __init__(
        self,
        server: Server,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.server = server
        self.loop = server.loop
        self.sockets = sockets
        self.factory = factory
        self.paused = False  # accepting is paused after a failure (accept_pause)
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        self._fallback: list[asyncio.Server] = []  # the loop's own accept, see start()

    @classmethod
    async def start(
        cls,
        server: Server,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        backlog: int,
    ) -> Listener:
        """Accept on *sockets* from now on. A loop that cannot watch a socket
        (``add_reader``: Windows' proactor loop) accepts with its own servers instead,
        without the log line and the pause."""
        listener = cls(server, sockets, factory)
        try:
            listener._resume_accepting()
        except NotImplementedError:
            listener._fallback = [
                await server.loop.create_server(factory, sock=sock, backlog=backlog)
                for sock in sockets
            ]
        return listener

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while queued
            except OSError as exc:
                self._failed(sock, exc)
                return
            try:
                conn.setblocking(False)
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset before we got to it
                conn.close()
                continue
            task = self.loop.create_task(self._connect(conn))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError as exc:  # the peer left before its transport was made
            log.debug("accepted connection lost before its transport: %r", exc)
            conn.close()

    def _failed(self, sock: socket.socket, exc: OSError) -> None:
        """accept failed: note it (rate-limited); pause every socket if out of resources."""
        where = f"listener {_address(sock)}"
        limits = self.server.config.limits
        if exc.errno not in EXHAUSTED:
            why = f"accept failed: {exc.strerror or exc}"
            self.server.refusals.note("accept", where, why, logging.WARNING)
            return
        why = (
            f"accept failed: {exc.strerror or exc} (no descriptor or buffer left); "
            f"not accepting for {limits.accept_pause:g} s"
        )
        self.server.refusals.note("accept", where, why, logging.WARNING, error=exc.errno)
        self._pause(limits.accept_pause)

    def _pause(self, delay: float) -> None:
        if self.paused or self._closed:
            return
        self.paused = True
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
        self._resume = self.loop.call_later(delay, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        self.paused = False
        if self._closed:
            return
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close the listening sockets (accepted transports stay)."""
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for fallback in self._fallback:
            fallback.close()
        for sock in self.sockets:
            if not self.paused and not self._fallback:
                self.loop.remove_reader(sock.fileno())
            sock.close()


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "listener"
    return f"{host}:{port}"
