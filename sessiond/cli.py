"""Command line: ``sessiond serve`` and ``sessiond gen-cert`` (also ``python -m sessiond``)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import secrets
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # Windows, or installed without it
    uvloop = None  # type: ignore[assignment]

from . import __version__, config
from .addresses import ListenAddress, format_host, parse_listen
from .admin import AdminError, format_table
from .admin import request as admin_request
from .auth import TokenFileAuthenticator
from .daemon import Daemon, prepare
from .logs import configure as configure_logging
from .logs import tag_process
from .tls import GeneratedFiles, generate, issue_clients
from .workers import Supervisor, WorkerLink

DEFAULT_LISTEN = "127.0.0.1:7420"

log = logging.getLogger("sessiond")

__all__ = ["ListenAddress", "format_host", "main", "parse_listen"]


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
        "then SESSIOND_SECTION_KEY environment variables, then these flags (every setting: "
        "CONFIG.md). SIGTERM drains and exits 0; SIGHUP reloads what can change live and "
        "never stops the daemon (README.md, Operating sessiond).",
    )
    serve.add_argument(
        "--config",
        metavar="FILE.toml",
        help="settings file (every setting: CONFIG.md); also $SESSIOND_CONFIG",
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="[tcp://|tls://]HOST:PORT",
        help=f"address to listen on, repeatable; IPv6 in brackets (default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--app",
        help="channels, echo, echo-async or module:callable (default channels, protocol.md §15)",
    )
    serve.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO; SIGHUP applies changes)"
    )
    serve.add_argument("--log-format", help="text or json (default text)")
    serve.add_argument(
        "--auth", metavar="MODE", help="open (loopback only, default), token-file or mutual-tls"
    )
    serve.add_argument("--token-file", metavar="FILE", help="for --auth token-file")
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz over HTTP here (default off)",
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="where sessions live: memory (default), redis://HOST:PORT/DB, rediss://... or "
        "unix:///path/redis.sock (sessions then survive restarts and move between processes)",
    )
    serve.add_argument(
        "--admin-socket",
        metavar="PATH",
        help="unix socket (mode 0600) for sessiond sessions list/end (default off)",
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        help="N worker processes on the same port, supervised (default 1: no supervisor; "
        "more needs a shared store: README.md, 'Several workers on one host')",
    )
    # A worker of --workers: its slot and its end of the supervisor's socket pair.
    serve.add_argument("--worker-link", metavar="SLOT:FD", help=argparse.SUPPRESS)
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
        "gen-cert",
        help="write a development CA, server and client certificates",
        description="Write a CA, a server certificate for --host and client certificates "
        "for --client. With --ca-key (a CA kept by --keep-ca-key), only issue more client "
        "certificates from that CA.",
    )
    gen.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name or IP address the server certificate is for, repeatable (required "
        "unless --ca-key)",
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
    gen.add_argument(
        "--keep-ca-key",
        action="store_true",
        help="also write the CA's private key (ca.key, mode 0600) to issue more client "
        "certificates later with --ca-key; keep it offline",
    )
    gen.add_argument(
        "--ca-key",
        metavar="FILE",
        help="issue only the --client certificates, signed by this kept CA key",
    )
    gen.add_argument(
        "--ca", metavar="FILE", help="with --ca-key: its certificate (default: ca.pem beside it)"
    )

    token = commands.add_parser(
        "hash-token",
        help="make a bearer token and its token-file line for --auth token-file",
        description="Print a new random token for IDENTITY (give it to that client) and "
        "the line to add to the token file (only the SHA-256 is stored); SIGHUP reloads "
        "the file.",
    )
    token.add_argument("identity", metavar="IDENTITY", help="who the token stands for")
    token.add_argument(
        "--stdin",
        action="store_true",
        help="hash a token read from standard input instead of making one",
    )

    conf = commands.add_parser(
        "config", help="check or show the settings", description="Settings: see CONFIG.md."
    )
    conf_commands = conf.add_subparsers(dest="config_command", required=True)
    check = conf_commands.add_parser(
        "check",
        help="check a config file (with the SESSIOND_* environment) as serve would, "
        "without starting",
    )
    check.add_argument("file", nargs="?", metavar="FILE.toml", help="default: $SESSIOND_CONFIG")
    show = conf_commands.add_parser(
        "show", help="print the effective settings as TOML, with where each came from"
    )
    show.add_argument("--config", metavar="FILE.toml", help="default: $SESSIOND_CONFIG")
    conf_commands.add_parser("reference", help="print the reference of every setting (CONFIG.md)")

    sessions = commands.add_parser(
        "sessions",
        help="list or end the sessions of a running daemon (over its admin socket)",
        description="Talks to a running daemon over its admin socket: --socket, else "
        "[admin] socket from --config / $SESSIOND_CONFIG / $SESSIOND_ADMIN_SOCKET.",
    )
    sessions_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = sessions_commands.add_parser(
        "list", help="ID prefix, identity, state, peer, age and buffered bytes of each session"
    )
    listing.add_argument("--json", action="store_true", help="one JSON document, all details")
    end = sessions_commands.add_parser(
        "end", help="end a session (the client is told SESSION_REVOKED and the reason)"
    )
    end.add_argument(
        "id", metavar="ID", help="the session ID or a unique prefix (from list or logs)"
    )
    end.add_argument("--reason", default="", help="sent to the client and logged")
    for sub in (listing, end):
        sub.add_argument("--socket", metavar="PATH", help="the daemon's admin socket")
        sub.add_argument("--config", metavar="FILE.toml", help="read [admin] socket from here")
    return parser


# -------------------------------------------------------------------- serve


def serve_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``section.key`` settings given as flags."""
    flags: dict[str, Any] = {}
    for name, flag in config.FLAGS.items():
        given = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if given is not None:
            flags[name] = given
    return flags


def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> config.Loaded:
    """Defaults < --config (or $SESSIOND_CONFIG) < environment < flags."""
    file = getattr(args, "config", None) or env.get("SESSIOND_CONFIG")
    return config.load_with_sources(Path(file) if file else None, env, serve_flags(args))


def serve_main(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """``sessiond serve``; *argv* (its command line) starts workers of ``--workers``."""
    try:
        worker = WorkerLink.parse(args.worker_link) if args.worker_link else None
        if worker is not None:
            tag_process(worker=worker.slot, pid=os.getpid())
        loaded = load_settings(args, os.environ)
        settings = loaded.settings
        configure_logging(settings.server.log_format, settings.server.log_level)
        for warning in loaded.warnings:
            log.warning("%s", warning, extra={"fields": {"event": "config-warning"}})
        prepared = prepare(settings)
    except ValueError as exc:
        start_up_error(args, exc)
        return 2
    sys.excepthook = _log_uncaught  # in JSON mode, even a crash is one JSON line
    sys.unraisablehook = _log_unraisable
    logging.captureWarnings(True)
    if worker is None and settings.server.workers > 1:
        supervisor = Supervisor(argv, settings, lambda: load_settings(args, os.environ).settings)
        return asyncio.run(supervisor.run())
    daemon = Daemon(loaded, prepared, lambda: load_settings(args, os.environ), worker)
    if uvloop is not None:
        return uvloop.run(daemon.run())
    return asyncio.run(daemon.run())


def start_up_error(args: argparse.Namespace, exc: Exception) -> None:
    """Report a configuration error: a JSON log line if JSON logs were asked for (even
    if that request is in the configuration that failed), else a line of text."""
    file = getattr(args, "config", None) or os.environ.get("SESSIOND_CONFIG")
    wanted = config.best_effort(
        "server.log_format", Path(file) if file else None, os.environ, serve_flags(args)
    )
    if wanted != "json":
        print(f"sessiond: {exc}", file=sys.stderr)
        return
    configure_logging("json")
    log.error("%s", exc, extra={"fields": {"event": "config-error"}})


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    log.critical("uncaught exception, exiting", exc_info=(kind, exc, tb))


def _log_unraisable(unraisable: Any) -> None:
    """An exception Python could not raise (in a finalizer, say): a log line, not stderr."""
    exc = unraisable.exc_value
    info = (type(exc), exc, unraisable.exc_traceback) if exc is not None else None
    log.error("%s: %r", unraisable.err_msg or "exception ignored", unraisable.object, exc_info=info)


# ------------------------------------------------------------------- config


def config_main(args: argparse.Namespace) -> int:
    if args.config_command == "reference":
        print(config.reference(), end="")
        return 0
    file = args.file if args.config_command == "check" else args.config
    file = file or os.environ.get("SESSIOND_CONFIG")
    try:
        loaded = config.load_with_sources(Path(file) if file else None, os.environ)
        if args.config_command == "check":
            prepare(loaded.settings)
    except ValueError as exc:
        for problem in getattr(exc, "problems", None) or [str(exc)]:  # one line each
            print(f"sessiond config: {problem}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.config_command == "show":
        print(config.show(loaded), end="")
    else:
        print(f"{file or 'defaults'}: ok")
    return 0


# ----------------------------------------------------------------- gen-cert


def gen_cert_main(args: argparse.Namespace) -> int:
    try:
        if args.ca_key:
            ca = Path(args.ca) if args.ca else Path(args.ca_key).with_name("ca.pem")
            clients = issue_clients(ca, args.ca_key, args.out, args.client, force=args.force)
            files = None
        else:
            if not args.host:
                raise ValueError("--host NAME is required (or --ca-key to add clients)")
            files = generate(
                args.out, args.host, args.client, force=args.force, keep_ca_key=args.keep_ca_key
            )
            ca, clients = files.ca, files.clients
    except FileExistsError as exc:
        print(f"sessiond gen-cert: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"sessiond gen-cert: {exc}", file=sys.stderr)
        return 2
    print("wrote:")
    if files is not None:
        kept = "" if files.ca_key else " (its private key was not kept)"
        print(f"  {files.ca}  CA certificate: clients trust it{kept}")
        if files.ca_key is not None:
            print(f"  {files.ca_key}  CA private key (mode 0600): signs more clients, keep it safe")
        print(f"  {files.server_cert}  server certificate for {', '.join(args.host)}")
        print(f"  {files.server_key}  server private key (mode 0600)")
    for client in clients:
        print(f"  {client.cert}  client certificate, commonName {client.name}")
        print(f"  {client.key}  client private key (mode 0600)")
    url = "tls://HOST:PORT"
    if files is None:
        print(f"a daemon run with --tls-client-ca {ca} accepts them as they are")
    else:
        command = serve_command(files, args.host)
        url = client_url(args.host)
        print("run the daemon with:")
        print("  " + shlex.join(command))
    if clients:
        first = clients[0]
        print("a client connects with:")
        print(
            f"  sessiond_client.connect({url!r}, ca_file={str(ca)!r}, "
            f"cert_file={str(first.cert)!r}, key_file={str(first.key)!r})"
        )
    return 0


def serve_command(files: GeneratedFiles, hosts: Sequence[str]) -> list[str]:
    """A ``sessiond serve`` command line that serves with what gen-cert wrote."""
    ips = [h for h in hosts if _is_ip(h)]
    listen = f"tls://{format_host(ips[0].strip('[]')) if ips else '127.0.0.1'}:7443"
    command = [
        "sessiond", "serve", "--listen", listen,
        "--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
    ]  # fmt: skip
    if files.clients or files.ca_key is not None:
        command += ["--tls-client-ca", str(files.ca), "--auth", "mutual-tls"]
    return command


def client_url(hosts: Sequence[str]) -> str:
    """The URL a client connects to :func:`serve_command`'s listener with: a name the
    server certificate is for (its address if one was given, else its first name)."""
    ips = [h.strip("[]") for h in hosts if _is_ip(h)]
    return f"tls://{format_host(ips[0] if ips else hosts[0])}:7443"


def hash_token_main(args: argparse.Namespace) -> int:
    identity = args.identity
    if not identity or any(c.isspace() for c in identity) or "#" in identity:
        print("sessiond hash-token: IDENTITY must be one word without #", file=sys.stderr)
        return 2
    if args.stdin:
        token = sys.stdin.readline().rstrip("\r\n")
        if not token:
            print("sessiond hash-token: no token on standard input", file=sys.stderr)
            return 2
    else:
        token = secrets.token_urlsafe(32)
        print(f"token for {identity} (give it to the client; it is stored nowhere):")
        print(f"  {token}")
    print("token file line:" if args.stdin else "token file line (--token-file, then SIGHUP):")
    print(f"{identity} {TokenFileAuthenticator.hash_token(token)}")
    return 0


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------- sessions


def sessions_main(args: argparse.Namespace) -> int:
    path = args.socket
    try:
        if not path:
            file = args.config or os.environ.get("SESSIOND_CONFIG")
            path = config.load(Path(file) if file else None, os.environ).admin.socket
        if not path:
            raise AdminError(
                "no admin socket: run serve with --admin-socket PATH ([admin] socket) "
                "and give it here with --socket PATH"
            )
        if args.sessions_command == "list":
            answer = admin_request(path, {"op": "list"})
        else:
            answer = admin_request(path, {"op": "end", "id": args.id, "reason": args.reason})
    except (AdminError, ValueError) as exc:
        print(f"sessiond sessions: {exc}", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"sessiond sessions: {answer.get('error')}", file=sys.stderr)
        return 1
    missing = answer.get("unreachable")
    if missing:  # a supervisor of --workers whose workers did not all answer
        print(
            f"sessiond sessions: worker {', '.join(map(str, missing))} did not answer: "
            "its sessions are not listed",
            file=sys.stderr,
        )
    if args.sessions_command == "end":
        print(f"ended {answer['ended']}")
    elif args.json:
        print(json.dumps(answer["sessions"], indent=2))
    else:
        print(format_table(answer["sessions"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "gen-cert":
        return gen_cert_main(args)
    if args.command == "hash-token":
        return hash_token_main(args)
    if args.command == "config":
        return config_main(args)
    if args.command == "sessions":
        return sessions_main(args)
    return serve_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
