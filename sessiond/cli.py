"""Command line: ``sessiond serve`` (``python -m sessiond serve``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

try:
    import uvloop
except ImportError:  # Windows, or installed without it
    uvloop = None  # type: ignore[assignment]

from . import __version__
from .apps import load_app
from .server import Server, ServerConfig

DEFAULT_LISTEN = "127.0.0.1:7420"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``tcp://HOST:PORT`` (IPv6 hosts in brackets) to (host, port)."""
    address = value.removeprefix("tcp://")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond", description="Session-layer server: sessions that outlive connections."
    )
    parser.add_argument("--version", action="version", version=f"sessiond {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--listen",
        action="append",
        type=parse_listen,
        metavar="HOST:PORT",
        help=f"address to listen on, repeatable (default {DEFAULT_LISTEN})",
    )
    serve.add_argument("--app", default="echo", help="echo or module:callable (default echo)")
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


async def run_server(args: argparse.Namespace) -> int:
    handler = load_app(args.app)
    server = Server(handler, ServerConfig())
    for host, port in args.listen or [parse_listen(DEFAULT_LISTEN)]:
        await server.listen(host, port)
    for host, port in server.addresses:
        logging.getLogger("sessiond").info("listening on tcp://%s:%d app=%s", host, port, args.app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("sessiond").info("stopping")
    await server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        load_app(args.app)
    except ValueError as exc:
        print(f"sessiond: {exc}", file=sys.stderr)
        return 2
    if uvloop is not None:
        return uvloop.run(run_server(args))
    return asyncio.run(run_server(args))


if __name__ == "__main__":
    sys.exit(main())
