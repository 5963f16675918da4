"""The raw ceiling of ``python -m bench throughput`` and ``latency``: the barest framed echo.

``python -m bench.ceiling --listen 127.0.0.1:PORT``: a uvloop
:class:`asyncio.Protocol` that parses 4-byte big-endian length-prefixed frames
from each read, takes every payload out as ``bytes`` (what an application would
be handed), frames it again and writes all of a read's echoes with one
``transport.write``. No sessions, sequence numbers, acknowledgements, windows
or timers: what the daemon is measured against, over the same sockets.

With ``--tls-cert`` and ``--tls-key`` it listens over TLS with the daemon's own TLS
transport (``sessiond.server.start_tls_server`` on each accepted uvloop TCP transport):
``--tls-idle-memory compact`` (the default, as the daemon's ``tls.idle_memory``) is
asyncio's TLS protocol reading into one shared ciphertext buffer, ``fast`` uvloop's
own TLS protocol. ``python -m bench idle`` measures a bare TLS connection's memory
against it: the transport's own share of an idle TLS session.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import struct
import sys
from collections.abc import Callable, Sequence
from typing import cast

from sessiond.server import start_tls_server
from sessiond.tls import server_context

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 20
#: As generous as ``bench idle``'s clients are: many handshakes at once on a busy machine.
HANDSHAKE_TIMEOUT = 60.0


class FramedEchoServer(asyncio.Protocol):
    """Echo every length-prefixed frame; one write per read."""

    __slots__ = ("tail", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.tail + data if self.tail else data
        unpack_from = LENGTH.unpack_from
        prefix = LENGTH.pack
        out: list[bytes] = []
        append = out.append
        size = len(buffer)
        pos = 0
        while size - pos >= 4:
            (length,) = unpack_from(buffer, pos)
            stop = pos + 4 + length
            if length > MAX_FRAME:
                assert self.transport is not None
                self.transport.abort()
                return
            if stop > size:
                break
            payload = buffer[pos + 4 : stop]
            append(prefix(len(payload)))
            append(payload)
            pos = stop
        self.tail = buffer[pos:]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class TlsStart(asyncio.Protocol):
    """An accepted TCP transport of the TLS listener: the daemon's TLS transport goes on
    it at once, with a :class:`FramedEchoServer` behind (nothing of this object is kept)."""

    __slots__ = ("context", "shared_buffer")

    def __init__(self, context: ssl.SSLContext, shared_buffer: bool) -> None:
        self.context = context
        self.shared_buffer = shared_buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiter.add_done_callback(lambda done: _abort_on_failure(done, raw))
        start_tls_server(
            loop,
            raw,
            FramedEchoServer(),
            self.context,
            waiter,
            shared_buffer=self.shared_buffer,
            handshake_timeout=HANDSHAKE_TIMEOUT,
        )


def _abort_on_failure(handshake: asyncio.Future[None], raw: asyncio.Transport) -> None:
    if handshake.cancelled() or handshake.exception() is not None:
        raw.abort()


async def serve(
    host: str, port: int, context: ssl.SSLContext | None = None, shared_buffer: bool = True
) -> None:
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.Protocol] = FramedEchoServer
    if context is not None:
        factory = lambda: TlsStart(context, shared_buffer)  # noqa: E731
    server = await loop.create_server(factory, host, port, reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--tls-cert", metavar="PEM", help="listen over TLS with this chain")
    parser.add_argument("--tls-key", metavar="PEM", help="and this key")
    parser.add_argument(
        "--tls-idle-memory",
        choices=("compact", "fast"),
        default="compact",
        help="the daemon's TLS protocol (compact, its default) or uvloop's own (fast), "
        "as the daemon's tls.idle_memory setting",
    )
    args = parser.parse_args(argv)
    host, _, port = str(args.listen).rpartition(":")
    context = None
    if args.tls_cert:
        context = server_context(args.tls_cert, args.tls_key)  # the daemon's own
    shared_buffer = args.tls_idle_memory == "compact"
    if uvloop is not None:
        uvloop.run(serve(host, int(port), context, shared_buffer))
    else:
        asyncio.run(serve(host, int(port), context, shared_buffer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
