"""``python -m bench tls``: the daemon over TLS beside plain TCP, in one process, in one run.

One daemon listens on ``tls://`` and plain TCP with a ``gen-cert`` certificate; clients
verify it as a real client does (:func:`sessiond_client.tls_context`). Interleaved,
*repeat* passes per transport: ``handshakes`` (connect, full TLS handshake, HELLO/WELCOME,
CLOSE; per second and CPU ms per connection each side) and ``echo`` (throughput's windowed
echo over one session, the handshake done before the clocks start).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import cast

from cryptography.hazmat.primitives.asymmetric import ec
from sessiond_client import tls_context
from sessiond_client.protocol import Params

from sessiond.tls import read_certificate

from . import BenchError
from .core import POOL
from .harness import (
    Context,
    bounds_cell,
    full_cores_cell,
    given,
    header,
    legend,
    notes_lines,
    option,
    other_load,
    other_load_note,
    positive,
    scenario,
    spread_cell,
    summarise,
)
from .loadgen import (
    HOST,
    CpuClock,
    IdleSession,
    close_idle,
    echo,
    open_sessions,
    source_addresses,
)
from .processes import CLIENT_BOUND, bound_by, daemon_argv, free_port, pace
from .results import REPO_ROOT, Json, markdown_table, spread
from .summary import Headline, cpu_cell
from .systems import EchoPlan, System, measure_echo, summarise_echo

HELP = "the daemon over TLS beside plain TCP: full handshakes/s and echo throughput ratio"

SCENARIO = "tls"
TCP = "tcp"
TLS = "tls"
TRANSPORTS = (TCP, TLS)
SIZES = (64, 1024)

DEFAULT_MESSAGES = 20_000_000  # a cap: a full echo pass is bounded by TIME_LIMIT
QUICK_MESSAGES = 1_000
DEFAULT_WINDOW = 1024
TIME_LIMIT = 2.0  # seconds per echo pass, whichever of this and --messages comes first
WARMUP_MESSAGES = 10_000
HANDSHAKE_TIME = 2.0  # seconds per handshake pass, whichever of this and --connections first
WARMUP_CONNECTIONS = 100
HANDSHAKE_TIMEOUT = 10.0  # for one connection: connect, TLS, HELLO/WELCOME
CLOSE_TIMEOUT = 10.0
# new sessions per source address over the whole run: well inside the daemon's per-address
# new-session burst (``limits.new_sessions_burst``, 20,000), so its rate limit never refuses
# a handshake of this load generator, which stands for many clients
PER_ADDRESS = 1_000
GEN_CERT_TIMEOUT = 60.0


# ------------------------------------------------------------- certificate


@dataclass(frozen=True, slots=True)
class Certificate:
    """What ``sessiond gen-cert`` wrote, and what the server certificate is."""

    ca: Path
    cert: Path
    key: Path
    key_kind: str

    def to_json(self) -> Json:
        return {"written_by": "python -m sessiond gen-cert --host 127.0.0.1", "key": self.key_kind}


def make_certificate(out: Path) -> Certificate:
    """A development CA and a server certificate for 127.0.0.1, by ``sessiond gen-cert``."""
    argv = [sys.executable, "-m", "sessiond", "gen-cert", "--host", HOST, "--out", str(out)]
    try:
        subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=GEN_CERT_TIMEOUT, check=True)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        why = f"exited with {exc.returncode}: {exc.stderr.strip()}"
        raise BenchError(f"sessiond gen-cert {why}") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"sessiond gen-cert: {exc}") from None
    cert = out / "server.pem"
    key = read_certificate(cert).public_key()
    kind = f"ECDSA {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else "other"
    return Certificate(out / "ca.pem", cert, out / "server.key", kind)


def tls_daemon_argv(tls_port: int, cert: Certificate) -> list[str]:
    """The echo daemon with a ``tls://`` listener; :func:`~bench.processes.server` adds the
    TCP one after it, so both listen by the time the TCP port answers."""
    tls = [f"tls://{HOST}:{tls_port}", "--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    return [*daemon_argv(), "--listen", *tls]


def describe_tls(port: int, context: SSLContext) -> Json:
    """The protocol version and cipher the daemon and this client agree on."""
    with (
        socket.create_connection((HOST, port), timeout=10.0) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        cipher = sock.cipher()
        return {
            "version": sock.version(),
            "cipher": cipher[0] if cipher else None,
            "client_verifies": "CA from gen-cert, host name checked",
        }


# -------------------------------------------------------------- handshakes


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """One pass: connections opened (with a session), then closed, ``--concurrency`` at a time;
    its seconds: first connect to the last transport closed."""

    system: str
    connections: int
    seconds: float
    client_cpu: float
    server_cpu: float
    stopped_by: str  # "count" or "time"
    not_closed: int  # transports still open CLOSE_TIMEOUT after the last handshake
    others: tuple[float, float] | None = None

    def to_json(self) -> Json:
        return {
            "connections": self.connections,
            "rate": self.connections / self.seconds,
            "server_cpu_ms_per_handshake": self.server_cpu * 1e3 / self.connections,
            "client_cpu_ms_per_handshake": self.client_cpu * 1e3 / self.connections,
            "stopped_by": self.stopped_by,
            "transports_not_closed": self.not_closed,
            **pace(self, self.others),
        }

    def show(self) -> str:
        return (
            f"handshakes {self.system:<4} {self.connections / self.seconds:>8,.0f}/s  server "
            f"{self.server_cpu * 1e3 / self.connections:.3f} ms CPU each  {bound_by(self)}-bound"
        )


async def handshakes(
    name: str, port: int, ssl: SSLContext | None, count: int, concurrency: int,
    time_limit: float, server_cpu: CpuClock, source: Callable[[], str],
) -> HandshakeResult:  # fmt: skip
    """Up to *count* sessions opened and closed, *concurrency* at a time, for at most
    *time_limit* seconds, each from the address ``source()`` gives."""
    loop, params = asyncio.get_running_loop(), Params()
    server0, cpu0, t0 = server_cpu(), time.process_time(), time.perf_counter()
    sessions = await open_sessions(
        port, count, concurrency, lambda _index: IdleSession(params), lambda _index: source(),
        HANDSHAKE_TIMEOUT, ssl=ssl, keep=False, deadline=loop.time() + time_limit,
    )  # fmt: skip
    not_closed = await close_idle(sessions, CLOSE_TIMEOUT)
    seconds = time.perf_counter() - t0
    if failures := [s.failure for s in sessions if s.failure is not None]:
        raise BenchError(f"{name}: {len(failures)} sessions failed: {failures[0]}")
    return HandshakeResult(
        name, len(sessions), seconds, time.process_time() - cpu0, server_cpu() - server0,
        "count" if len(sessions) == count else "time", not_closed,
    )  # fmt: skip


def _ratio(tls: list[Json], tcp: list[Json]) -> Json:
    """TLS over TCP: the ratio of the medians, and its spread within each repetition."""
    median = spread([run["rate"] for run in tls])["median"]
    return {
        "of_medians": median / spread([run["rate"] for run in tcp])["median"],
        "per_repetition": spread([a["rate"] / b["rate"] for a, b in zip(tls, tcp, strict=True)]),
    }


# --------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "connections", int, 50_000, 60, metavar="N", help="handshakes per pass")
    option(parser, "concurrency", int, 50, metavar="N", help="handshakes in flight")
    option(parser, "handshake_time", float, HANDSHAKE_TIME, metavar="S",
           help="seconds per handshake pass")  # fmt: skip
    option(parser, "window", int, DEFAULT_WINDOW, metavar="W", help="echo: messages in flight")
    option(parser, "time_limit", float, TIME_LIMIT, metavar="S", help="seconds per echo pass")


def run(args: argparse.Namespace) -> int:
    positive(args, "messages", "repeat", "connections", "concurrency", "time_limit")
    positive(args, "handshake_time", "window")
    messages = given(args, "messages", DEFAULT_MESSAGES, QUICK_MESSAGES)
    repeat, connections = given(args, "repeat", 3, 2), given(args, "connections", 50_000, 60)
    if args.window > POOL // 2:
        raise BenchError(f"--window must be 1..{POOL // 2}")
    # toy figures need no warm-up
    warm_connections = 0 if args.quick else min(connections, WARMUP_CONNECTIONS)
    warm_messages = 0 if args.quick else min(messages, WARMUP_MESSAGES)
    echo_plan = EchoPlan(messages, repeat, args.window, args.time_limit, warm_messages, SIZES)
    banner = (
        f"handshakes {connections:,} (or {args.handshake_time:g} s) x {repeat}, "
        f"{args.concurrency} in flight; echo {messages:,} messages (or {args.time_limit:g} s) "
        f"x {repeat}, window {args.window}, {', '.join(f'{s} B' for s in SIZES)}"
    )

    def body(ctx: Context) -> Json:
        certificate = make_certificate(ctx.tmp / "certs")
        context = tls_context(certificate.ca)
        tls_port = free_port()
        daemon = ctx.server("daemon", tls_daemon_argv(tls_port, certificate))
        endpoints = [(TCP, daemon.port, None), (TLS, tls_port, context)]
        addresses, numbers = source_addresses(PER_ADDRESS), itertools.count()

        def source() -> str:
            return addresses(next(numbers))

        def one(endpoint: tuple[str, int, SSLContext | None], count: int) -> HandshakeResult:
            coroutine = handshakes(
                *endpoint, count, args.concurrency, args.handshake_time, daemon.cpu_seconds,
                source,
            )  # fmt: skip
            result, others = ctx.timed(daemon, lambda: ctx.run(coroutine))
            return dataclasses.replace(cast(HandshakeResult, result), others=others)

        hs_runs = ctx.passes(
            endpoints,
            lambda endpoint, _rep: one(endpoint, connections),
            repeat,
            warmup=(lambda endpoint: one(endpoint, warm_connections)) if warm_connections else None,
            show=HandshakeResult.show,
        )
        hs = {n: summarise([r.to_json() for r in hs_runs if r.system == n]) for n in TRANSPORTS}
        hs["ratio"] = _ratio(hs[TLS]["repetitions"], hs[TCP]["repetitions"])
        hs["server_cpu_ratio"] = (
            hs[TLS]["server_cpu_ms_per_handshake"]["median"]
            / hs[TCP]["server_cpu_ms_per_handshake"]["median"]
        )
        systems = [
            System(TCP, daemon, functools.partial(echo, "daemon")),
            System(TLS, daemon, functools.partial(echo, "daemon", ssl=context), port=tls_port),
        ]
        echo_runs = measure_echo(ctx, echo_plan, systems)
        by_size = summarise_echo(echo_runs, TRANSPORTS, SIZES)
        for entry in by_size.values():
            entry["ratio"] = _ratio(entry[TLS]["repetitions"], entry[TCP]["repetitions"])
        return {
            "config": {
                "tls": {**describe_tls(tls_port, context), **certificate.to_json()},
                "handshakes": {
                    "connections": connections,
                    "concurrency": args.concurrency,
                    "time_limit_s": args.handshake_time,
                    "repeat": repeat,
                    "warmup_connections": warm_connections,
                    "connections_per_source_address": PER_ADDRESS,
                    "per_connection": "TCP connect, TLS handshake (tls), HELLO/WELCOME, CLOSE "
                    "NORMAL, transport closed; the pass ends when every transport is closed",
                },
                "echo": {
                    "messages": messages,
                    "time_limit_s": args.time_limit,
                    "repeat": repeat,
                    "window": args.window,
                    "warmup_messages": warm_messages,
                    "payload_sizes": list(SIZES),
                },
                "client_bound_threshold": CLIENT_BOUND,
            },
            "other_load_share": other_load(
                [r.others for r in hs_runs] + [r.others for r in echo_runs]
            ),
            "handshakes": hs,
            "echo": by_size,
            "markdown": markdown,
        }

    return scenario(args, SCENARIO, banner, body)


# ----------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """The daemon over TLS, and as a share of plain TCP: connections/s, then echo msg/s."""
    cases = [("full handshakes (new connection + session)", "TLS conn/s", entry["handshakes"])]
    cases += [(f"echo, 1 session, {size} B", "TLS msg/s", by) for size, by in entry["echo"].items()]
    return [
        Headline(SCENARIO, case, f"{figure} (÷ TCP)", {
            "daemon": f"{by[TLS]['rate']['median']:,.0f} ({by['ratio']['of_medians']:.2f}x)"
        })
        for case, figure, by in cases
    ]  # fmt: skip


# ---------------------------------------------------------------- markdown


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## tls`` section of RESULTS.md."""
    config, hs = entry["config"], entry["handshakes"]
    tls, hs_config, echo_config = config["tls"], config["handshakes"], config["echo"]
    per_address = hs_config.get("connections_per_source_address")
    sources = (
        f"; {per_address:,} connections per 127.x.y.z source address, each address used once "
        "(the daemon limits new sessions per address)"
        if per_address
        else ""
    )
    lines = [
        *header(entry, commit, path),
        "One daemon serves both transports (`serve --app echo --listen tls://127.0.0.1:PORT "
        "--tls-cert server.pem --tls-key server.key --listen 127.0.0.1:PORT`), its "
        f"certificate from `{tls['written_by']}` ({tls['key']}); negotiated {tls['version']}, "
        f"`{tls['cipher']}`; the client (`sessiond_client.tls_context`) verifies it and the "
        "host name.",
        "",
        "### handshakes",
        "",
        f"At most {hs_config['concurrency']} connections in flight, up to "
        f"{hs_config['connections']:,} or {hs_config['time_limit_s']:g} s per pass, "
        f"{hs_config['repeat']} passes per transport, interleaved, after a warm-up{sources}. "
        "Each connection: TCP connect, a full TLS handshake for `tls` (no resumption), HELLO/"
        "WELCOME, CLOSE NORMAL, the transport closed. Median [min-max]; *ms CPU/conn*: "
        "server and load generator CPU per connection; " + legend(entry),
        "",
    ]
    rows = [
        [
            f"`{name}`",
            spread_cell(stats["rate"]),
            f"{stats['rate']['median'] / hs[TCP]['rate']['median']:.2f}x",
            *(
                cpu_cell(text, stats["seconds"])
                for text in (
                    spread_cell(stats["server_cpu_ms_per_handshake"], 3),
                    spread_cell(stats["client_cpu_ms_per_handshake"], 3),
                    f"{stats['server_cpu_share']['median']:.0%}",
                    f"{stats['client_cpu_share']['median']:.0%}",
                    bounds_cell(stats["bound"]),
                )
            ),
            full_cores_cell(stats["cores_full"]),
        ]
        for name, stats in ((name, hs[name]) for name in TRANSPORTS)
    ]
    ratio = hs["ratio"]["per_repetition"]
    tls_ms = hs[TLS]["server_cpu_ms_per_handshake"]["median"]
    tcp_ms = hs[TCP]["server_cpu_ms_per_handshake"]["median"]
    lines += [
        markdown_table(
            "transport|connections/s|÷ tcp|server ms CPU/conn|loadgen ms CPU/conn"
            "|server core busy|loadgen core busy|bound|cores full",
            rows,
        ),
        "",
        f"TLS: {hs['ratio']['of_medians']:.2f}x the plain-TCP connection rate "
        f"[{ratio['min']:.2f}-{ratio['max']:.2f}x within each repetition]; the daemon spends "
        f"{tls_ms:.3f} ms of CPU per TLS connection against {tcp_ms:.3f} ms per plain one "
        f"({hs['server_cpu_ratio']:.1f}x): a fully busy core would accept about "
        f"{1e3 / tls_ms:,.0f} TLS connections/s ({1e3 / tcp_ms:,.0f} plain), an extrapolation "
        "(1 / server CPU per connection), not a measurement.",
        "",
        "### echo",
        "",
        f"One session per transport, {echo_config['window']:,} messages in flight, up to "
        f"{echo_config['messages']:,} messages or {echo_config['time_limit_s']:g} s per "
        f"pass, {echo_config['repeat']} passes per transport and size, interleaved, after a "
        "warm-up, as `python -m bench throughput` measures it. Median [min-max] messages/s; "
        "*tls/tcp*: ratio of the medians [min-max within each repetition].",
        "",
    ]
    rows = []
    for size, by_transport in entry["echo"].items():
        tcp, tls_stats, paired = by_transport[TCP], by_transport[TLS], by_transport["ratio"]
        both = [
            f"{tcp[key]['median']:{form}} / {tls_stats[key]['median']:{form}}"
            for key, form in (("server_cpu_s_per_million", ".2f"), ("client_cpu_share", ".0%"))
        ] + [f"{bounds_cell(tcp['bound'])} / {bounds_cell(tls_stats['bound'])}"]
        ratio = paired["per_repetition"]
        rows.append([
            f"{size} B", spread_cell(tcp["rate"]), spread_cell(tls_stats["rate"]),
            f"{paired['of_medians']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}]",
            *(cpu_cell(text, tcp["seconds"]) for text in both),
            f"{tcp['lost']} / {tls_stats['lost']}",
        ])  # fmt: skip
    lines += [
        markdown_table(
            "payload|tcp msg/s|tls msg/s|tls/tcp|server CPU s/M msg (tcp / tls)"
            "|loadgen core busy (tcp / tls)|bound (tcp / tls)|lost (tcp / tls)",
            rows,
        ),
        "",
    ]
    return "\n".join(lines + other_load_note(entry["other_load_share"]) + notes_lines(entry))
