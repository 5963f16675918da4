"""The raw ceiling of ``python -m bench throughput`` and ``latency``: the barest framed echo.

``python -m bench.ceiling --listen 127.0.0.1:PORT``: a uvloop
:class:`asyncio.Protocol` that parses 4-byte big-endian length-prefixed frames
from each read, takes every payload out as ``bytes`` (what an application would
be handed), frames it again and writes all of a read's echoes with one
``transport.write``. No sessions, sequence numbers, acknowledgements, windows
or timers: what the daemon is measured against, over the same sockets. With
``--tls-cert`` and ``--tls-key`` it listens over TLS: ``python -m bench idle``
measures a bare uvloop TLS connection's memory against it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import struct
import sys
from collections.abc import Sequence

from sessiond import heap

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 20


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


async def serve(host: str, port: int, context: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        FramedEchoServer, host, port, reuse_address=True, ssl=context, backlog=4096
    )
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
    args = parser.parse_args(argv)
    host, _, port = str(args.listen).rpartition(":")
    context = None
    if args.tls_cert:  # as the daemon makes its own (sessiond.tls.server_context)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_cert, args.tls_key)
        heap.map_large_blocks()  # and the same malloc setting (only bench idle uses TLS here)
    if uvloop is not None:
        uvloop.run(serve(host, int(port), context))
    else:
        asyncio.run(serve(host, int(port), context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
