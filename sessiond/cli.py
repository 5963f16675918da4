"""Command line: ``sessiond serve`` and ``sessiond gen-cert`` (also ``python -m sessiond``)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import shlex
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # Windows, or installed without it
    uvloop = None  # type: ignore[assignment]

from . import __version__, config
from .apps import load_app
from .auth import Authenticator, MutualTLSAuthenticator, OpenAuthenticator, TokenFileAuthenticator
from .config import Settings, TlsSection
from .logs import configure as configure_logging
from .server import Server, ServerConfig
from .tls import CertificateReloader, describe, generate, server_context

DEFAULT_LISTEN = "127.0.0.1:7420"
SCHEMES = ("tcp", "tls")

log = logging.getLogger("sessiond")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A ``--listen`` value: where to listen, and whether with TLS."""

    scheme: str  # "tcp" or "tls"
    host: str  # IPv6 without brackets
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{format_host(self.host)}:{self.port}"


def format_host(host: str) -> str:
    """*host* as it goes before ``:PORT`` (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


def parse_listen(value: str) -> ListenAddress:
    """``HOST:PORT`` (TCP), ``tcp://HOST:PORT`` or ``tls://HOST:PORT``; IPv6 in brackets."""
    scheme, sep, address = value.partition("://")
    if not sep:
        scheme, address = "tcp", value
    if scheme not in SCHEMES:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected tcp://HOST:PORT, tls://HOST:PORT or HOST:PORT"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise argparse.ArgumentTypeError(f"expected {scheme}://HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r}: not an IPv6 address in brackets"
            ) from None
    elif ":" in host or "[" in host or "]" in host:
        raise argparse.ArgumentTypeError(
            f"{value!r}: write IPv6 addresses in brackets, e.g. {scheme}://[::1]:{port}"
        )
    return ListenAddress(scheme, host, int(port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond", description="Session-layer server: sessions that outlive connections."
    )
    parser.add_argument("--version", action="version", version=f"sessiond {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the daemon. Settings come from embedded defaults, then --config, "
        "then SESSIOND_SECTION_KEY environment variables, then these flags (README.md).",
    )
    serve.add_argument(
        "--config",
        metavar="FILE.toml",
        help="settings file ([server], [tls], [auth], [protocol], [channels]); "
        "also $SESSIOND_CONFIG",
    )
    serve.add_argument(
        "--listen",
        action="append",
        type=parse_listen,
        metavar="[tcp://|tls://]HOST:PORT",
        help=f"address to listen on, repeatable; IPv6 in brackets (default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--app", help="channels, echo or module:callable (default channels, protocol.md §15)"
    )
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    serve.add_argument("--log-format", help="text or json (default text)")
    serve.add_argument(
        "--auth", metavar="MODE", help="open (loopback only, default), token-file or mutual-tls"
    )
    serve.add_argument("--token-file", metavar="FILE", help="for --auth token-file")
    tls = serve.add_argument_group("TLS (for tls:// listeners; SIGHUP reloads cert and key)")
    tls.add_argument("--tls-cert", metavar="FILE", help="server certificate chain, PEM")
    tls.add_argument("--tls-key", metavar="FILE", help="server private key, PEM")
    tls.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates from this CA (mutual TLS); "
        "the certificate's commonName is the identity authenticators see",
    )

    gen = commands.add_parser(
        "gen-cert", help="write a development CA, server and client certificates"
    )
    gen.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="NAME",
        help="DNS name or IP address the server certificate is for, repeatable",
    )
    gen.add_argument("--out", required=True, metavar="DIR", help="directory to write to")
    gen.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also a client certificate with commonName NAME (mutual TLS), repeatable",
    )
    gen.add_argument("--force", action="store_true", help="replace existing files")
    return parser


# -------------------------------------------------------------------- serve


@dataclass(frozen=True, slots=True)
class TLSSetup:
    context: ssl.SSLContext
    reloader: CertificateReloader
    client_ca: str | None


def tls_setup(settings: TlsSection, listens: list[ListenAddress]) -> TLSSetup | None:
    """The server context for the tls:// listeners; ``ValueError`` on a configuration error."""
    tls_listens = [str(a) for a in listens if a.scheme == "tls"]
    options = {"--tls-cert": settings.cert, "--tls-key": settings.key}
    if not tls_listens:
        given = [
            name
            for name, value in [*options.items(), ("--tls-client-ca", settings.client_ca)]
            if value
        ]
        if given:  # almost certainly meant to be TLS: do not silently serve plaintext
            raise ValueError(f"{' and '.join(given)} given but no --listen tls://HOST:PORT")
        return None
    missing = [name for name, value in options.items() if not value]
    if missing:
        raise ValueError(f"--listen {tls_listens[0]} needs {' and '.join(missing)}")
    client_ca = settings.client_ca or None
    context = server_context(settings.cert, settings.key, client_ca)
    return TLSSetup(context, CertificateReloader(context, settings.cert, settings.key), client_ca)


def authenticator(settings: Settings) -> Authenticator:
    """The authenticator ``[auth] mode`` names; ``ValueError`` if it cannot work."""
    mode = settings.auth.mode
    if mode == "token-file":
        if not settings.auth.token_file:
            raise ValueError("--auth token-file needs --token-file (auth.token_file)")
        return TokenFileAuthenticator(settings.auth.token_file)
    if mode == "mutual-tls":
        if not settings.tls.client_ca:
            raise ValueError("--auth mutual-tls needs --tls-client-ca (tls.client_ca)")
        return MutualTLSAuthenticator()
    return OpenAuthenticator()


def server_config(settings: Settings) -> ServerConfig:
    return ServerConfig(
        params=settings.protocol,
        authenticator=authenticator(settings),
        max_sessions=settings.server.max_sessions,
        max_transports_per_peer=settings.server.max_transports_per_peer,
        drain_timeout=settings.server.drain_timeout,
        limits=settings.limits,
    )


async def run_server(settings: Settings, listens: list[ListenAddress], tls: TLSSetup | None) -> int:
    app = settings.server.app
    server = Server(load_app(app, settings), server_config(settings))
    for address in listens:
        context = tls.context if address.scheme == "tls" and tls is not None else None
        try:
            listener = await server.listen(address.host, address.port, ssl=context)
        except OSError as exc:
            log.error("cannot listen on %s: %s", address, exc.strerror or exc)
            await server.close()
            return 1
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening on %s://%s:%d app=%s", address.scheme, format_host(host), port, app)
    loop = asyncio.get_running_loop()
    if tls is not None:
        log.info("TLS certificate %s", describe(tls.reloader.certificate))
        if tls.client_ca is not None:
            log.info("TLS client certificates required, CA file %s", tls.client_ca)
        hangup = getattr(signal, "SIGHUP", None)
        if hangup is not None:
            loop.add_signal_handler(hangup, reload_certificate, tls.reloader)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (at most %.1f s)", settings.server.drain_timeout)
    await server.drain(settings.server.drain_timeout, settings.server.retry_after)
    log.info("stopped")
    return 0


def reload_certificate(reloader: CertificateReloader) -> None:
    """SIGHUP: new handshakes get the new certificate; open sessions are not touched."""
    try:
        cert = reloader.reload()
    except ValueError as exc:
        log.error("SIGHUP: TLS certificate not reloaded, still serving the old one: %s", exc)
        return
    log.info("SIGHUP: reloaded TLS certificate %s", describe(cert))


def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Defaults < --config (or $SESSIOND_CONFIG) < environment < flags."""
    flags: dict[str, Any] = {
        "server.app": args.app,
        "server.log_level": args.log_level,
        "server.log_format": args.log_format,
        "tls.cert": args.tls_cert,
        "tls.key": args.tls_key,
        "tls.client_ca": args.tls_client_ca,
        "auth.mode": args.auth,
        "auth.token_file": args.token_file,
    }
    if args.listen:
        flags["server.listen"] = [str(address) for address in args.listen]
    file = args.config or env.get("SESSIOND_CONFIG")
    return config.load(
        Path(file) if file else None, env, {k: v for k, v in flags.items() if v is not None}
    )


def serve_main(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args, os.environ)
        configure_logging(settings.server.log_format, settings.server.log_level)
        listens = [parse_listen(value) for value in settings.server.listen]
        load_app(settings.server.app, settings)
        tls = tls_setup(settings.tls, listens)
        server_config(settings)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"sessiond: {exc}", file=sys.stderr)
        return 2
    if uvloop is not None:
        return uvloop.run(run_server(settings, listens, tls))
    return asyncio.run(run_server(settings, listens, tls))


# ----------------------------------------------------------------- gen-cert


def gen_cert_main(args: argparse.Namespace) -> int:
    try:
        files = generate(args.out, args.host, args.client, force=args.force)
    except FileExistsError as exc:
        print(f"sessiond gen-cert: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"sessiond gen-cert: {exc}", file=sys.stderr)
        return 2
    hosts = ", ".join(args.host)
    print("wrote:")
    print(f"  {files.ca}  CA certificate: clients trust it (its private key was not kept)")
    print(f"  {files.server_cert}  server certificate for {hosts}")
    print(f"  {files.server_key}  server private key (mode 0600)")
    for client in files.clients:
        print(f"  {client.cert}  client certificate, commonName {client.name}")
        print(f"  {client.key}  client private key (mode 0600)")
    ips = [h for h in args.host if _is_ip(h)]
    listen = f"tls://{format_host(ips[0].strip('[]')) if ips else '127.0.0.1'}:7443"
    command = [
        "sessiond", "serve", "--listen", listen,
        "--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
    ]  # fmt: skip
    if files.clients:
        command += ["--tls-client-ca", str(files.ca)]
    print("run the daemon with:")
    print("  " + shlex.join(command))
    return 0


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gen-cert":
        return gen_cert_main(args)
    return serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
