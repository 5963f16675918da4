"""``python -m bench idle``: many idle sessions with heartbeats on: RSS per session, CPU.

Per count (1,000 and 10,000 sessions; TLS: 1,000 and 3,000), a fresh daemon, one warm-up
session, then N sessions opened (``--concurrency`` handshakes at a time, several loopback
source addresses) and left idle for ``--idle-seconds``. Figures: the server's RSS per
session, its CPU over the idle window, the handshake rate; over TLS also bare TLS
connections to the ceiling (the transport's own share). Targets (issue 5, 18): under 4 KiB
per session at 10,000 sessions, 12 KiB per idle TLS session.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from ssl import SSLContext

from sessiond_client import tls_context
from sessiond_client.protocol import Params

from . import BenchError, harness
from .harness import Context, given, option, spread_cell
from .loadgen import (
    DEFAULT_CONCURRENCY,
    Driver,
    close_idle,
    open_idle,
    open_sessions,
    source_addresses,
)
from .loadgen import sessions_per_address as per_address
from .processes import ServerProcess, ceiling_argv, daemon_argv, free_port
from .results import Json, markdown_table, spread
from .summary import NOT_MEASURED, Headline, Target, cpu_cell, judged, values_range, verdict
from .tls import make_certificate, tls_daemon_argv

HELP = "1,000 and 10,000 idle sessions (1,000 and 3,000 over TLS), heartbeats on: RSS/session, CPU"

SCENARIO = "idle"
TCP, TLS = "tcp", "tls"
#: A bare TLS connection to the ceiling (bench/ceiling.py) on the daemon's TLS transport, no
#: session: the transport's share.
CEILING_TLS = "tls-ceiling"
#: A TLS handshake per session, many at once, on a loaded machine: a generous bound.
HANDSHAKE_TIMEOUT = 30.0
#: Waits for the server to settle before reading its RSS.
SETTLE_SECONDS = 1.0
QUICK_SETTLE_SECONDS = 0.1
#: Below the open-file limit by this margin (listening sockets, logs, the event loop).
NOFILE_MARGIN = 64
#: The targets: server RSS per idle session (KiB) at a count of sessions, by transport.
TARGET_KIB, TARGET_COUNT = 4.0, 10_000
TLS_TARGET_KIB, TLS_TARGET_COUNT = 12.0, 3_000
#: The daemon's tls.idle_memory choices, its default first (bench/ceiling.py has the same).
TLS_IDLE_MEMORY = ("compact", "fast")


async def measure_idle(
    proc: ServerProcess,
    count: int,
    args: argparse.Namespace,
    port: int | None = None,
    ssl: SSLContext | None = None,
) -> Json:
    """RSS before and with *count* idle sessions, CPU over an idle window, then close."""
    port, settle, idle = port or proc.port, args.settle, args.idle
    params = Params(heartbeat_interval=args.heartbeat)
    each = per_address()
    sources = source_addresses(each)

    rss_fresh = proc.rss_kib()
    # One session first, so that what its first use allocates (lazy imports,
    # caches) is not counted as the cost of each of the N.
    await close_idle(await open_idle(port, 1, 1, params, sources, ssl=ssl), 5.0)
    await asyncio.sleep(settle)
    rss_before = proc.rss_kib()
    print(f"  idle: opening {count:,} sessions", file=sys.stderr, flush=True)
    t0, cpu0, lg0 = time.perf_counter(), proc.cpu_seconds(), time.process_time()
    sessions = await open_idle(
        port, count, args.concurrency, params, sources, HANDSHAKE_TIMEOUT, ssl
    )
    open_seconds = time.perf_counter() - t0
    open_cpu, open_lg = proc.cpu_seconds() - cpu0, time.process_time() - lg0
    try:
        await asyncio.sleep(settle)
        rss_open = proc.rss_kib()
        print(
            f"  idle: {count:,} open in {open_seconds:.1f} s; idle for {idle:g} s", file=sys.stderr
        )
        reads0, fires0 = sum(s.reads for s in sessions), sum(s.timer_fires for s in sessions)
        t1, cpu1, lg1 = time.perf_counter(), proc.cpu_seconds(), time.process_time()
        await asyncio.sleep(idle)
        window = time.perf_counter() - t1
        idle_cpu, idle_lg = proc.cpu_seconds() - cpu1, time.process_time() - lg1
        reads = sum(s.reads for s in sessions) - reads0
        fires = sum(s.timer_fires for s in sessions) - fires0
        rss_idle = proc.rss_kib()
        failures = [s.failure for s in sessions if s.failure is not None]
        still_open = sum(1 for s in sessions if s.open and s.failure is None)
    finally:
        t2 = time.perf_counter()
        not_closed = await close_idle(sessions, 30.0)
        close_seconds = time.perf_counter() - t2
    if failures or still_open != count:
        raise BenchError(
            f"idle: {count - still_open} of {count} sessions did not stay open"
            + (f" (first: {failures[0]})" if failures else "")
        )
    await asyncio.sleep(settle)
    delta = rss_idle - rss_before
    return {
        "transport": TCP if ssl is None else TLS,
        "sessions": count,
        "concurrency": args.concurrency,
        "heartbeat_s": args.heartbeat,
        "source_addresses": 1 + (count - 1) // each,
        "sessions_per_source_address": each,
        "open_seconds": open_seconds,
        "handshakes_per_s": count / open_seconds,
        "open_server_cpu_s": open_cpu,
        "open_server_cpu_ms_per_handshake": open_cpu * 1e3 / count,
        "open_loadgen_cpu_s": open_lg,
        "rss_kib": {
            "fresh": rss_fresh,
            "before": rss_before,
            "open": rss_open,
            "idle": rss_idle,
            "after_close": proc.rss_kib(),
        },
        "rss_delta_kib": delta,
        "rss_per_session_kib": delta / count,
        "rss_per_session_bytes": delta * 1024 / count,
        "idle_window_s": window,
        "idle_server_cpu_s": idle_cpu,
        "idle_server_cpu_percent": idle_cpu * 100 / window,
        "idle_loadgen_cpu_percent": idle_lg * 100 / window,
        "idle_client_reads": reads,
        "idle_client_timer_fires": fires,
        "still_open_after_idle": still_open,
        "close_seconds": close_seconds,
        "transports_not_closed": not_closed,
    }


async def measure_bare(
    proc: ServerProcess, count: int, args: argparse.Namespace, ssl: SSLContext
) -> Json:
    """The ceiling's RSS per idle TLS connection: no session, only the daemon's TLS
    transport (``sessiond.server.start_tls_server``: uvloop's TCP transport, asyncio's TLS
    protocol, OpenSSL's state) with the same certificate, client and handshakes."""
    sources = source_addresses(per_address())

    async def open_bare(n: int, first: int) -> list[Driver]:
        return await open_sessions(
            proc.port,
            n,
            args.concurrency,
            lambda _i: Driver(framed=True),
            lambda i: sources(first + i),
            HANDSHAKE_TIMEOUT,
            ssl=ssl,
        )

    opened = await open_bare(1, 0)  # the first connection's allocations are not each one's
    try:
        await asyncio.sleep(args.settle)
        before = proc.rss_kib()
        opened += await open_bare(count, 1)
        await asyncio.sleep(args.settle + args.idle)
        after = proc.rss_kib()
    finally:
        await close_idle(opened, 5.0)
    return {
        "transport": CEILING_TLS,
        "sessions": count,
        "rss_kib": {"before": before, "idle": after},
        "rss_per_session_kib": (after - before) / count,
    }


# -------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "idle_sessions", str, "1000,10000", "20,100", metavar="N,N",
           help="idle sessions per measurement")  # fmt: skip
    option(parser, "idle_seconds", float, 15.0, 0.2, metavar="S", help="the CPU window")
    option(parser, "heartbeat", float, Params().heartbeat_interval, metavar="S",
           help="heartbeat interval the clients propose")  # fmt: skip
    option(parser, "concurrency", int, DEFAULT_CONCURRENCY, help="handshakes in flight")
    option(parser, "tls_sessions", str, "1000,3000", "20", metavar="N,N",
           help="idle sessions over TLS per measurement; 0: none")  # fmt: skip
    parser.add_argument(
        "--tls-idle-memory", choices=TLS_IDLE_MEMORY, default=TLS_IDLE_MEMORY[0],
        help="the TLS transport of the daemon (its tls.idle_memory) and of the ceiling: "
        "compact, the daemon's default, or fast, uvloop's TLS protocol (default compact)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    harness.positive(args, "repeat", "concurrency", "idle_seconds", "heartbeat")
    sizes = harness.counts(given(args, "idle_sessions", "1000,10000", "20,100"), "--idle-sessions")
    repeat, args.idle = given(args, "repeat", 3, 2), given(args, "idle_seconds", 15.0, 0.2)
    args.settle = QUICK_SETTLE_SECONDS if args.quick else SETTLE_SECONDS
    tls = given(args, "tls_sessions", "1000,3000", "20")
    tls_sizes = () if tls.strip() == "0" else harness.counts(tls, "--tls-sessions")
    banner = (
        f"{', '.join(f'{c:,}' for c in sizes)} sessions (TLS: "
        f"{', '.join(f'{c:,}' for c in tls_sizes) or 'none'}) x {repeat}, idle for {args.idle:g} s"
    )

    def body(ctx: Context) -> Json:
        fit = ctx.nofile[0] - NOFILE_MARGIN
        if max([*sizes, *tls_sizes]) > fit:
            ctx.notes.append(f"idle sessions cut to {fit:,} to fit RLIMIT_NOFILE {ctx.nofile[0]:,}")
        plans = [
            (transport, n)
            for transport, wanted in ((TCP, sizes), (TLS, tls_sizes), (CEILING_TLS, tls_sizes))
            for n in dict.fromkeys(min(n, fit) for n in wanted)
        ]
        certificate = make_certificate(ctx.tmp / "certs") if tls_sizes else None
        tls_memory = args.tls_idle_memory
        settings = ctx.tmp / "tls-idle-memory.toml"  # the daemon's tls.idle_memory
        settings.write_text(f'[tls]\nidle_memory = "{tls_memory}"\n', encoding="utf-8")

        def one(plan: tuple[str, int], rep: int) -> Json:
            transport, n = plan
            name = f"daemon-idle-{transport}-{n}-{rep + 1}".replace("-tcp", "")
            if certificate is None or transport == TCP:
                with ctx.fresh_server(name, daemon_argv()) as proc:
                    return dict(ctx.run(measure_idle(proc, n, args)))
            context = tls_context(certificate.ca)
            if transport == CEILING_TLS:
                argv = [*ceiling_argv(), "--tls-cert", str(certificate.cert)]
                argv += ["--tls-key", str(certificate.key), "--tls-idle-memory", tls_memory]
                with ctx.fresh_server(name.replace("daemon", "ceiling"), argv) as proc:
                    return dict(ctx.run(measure_bare(proc, n, args, context)))
            port = free_port()
            argv = [*tls_daemon_argv(port, certificate), "--config", str(settings)]
            with ctx.fresh_server(name, argv) as proc:
                return dict(ctx.run(measure_idle(proc, n, args, port, context)))

        def show(r: Json) -> str:
            if r["transport"] == CEILING_TLS:
                return (
                    f"{r['sessions']:>6,} bare TLS connections to the ceiling  "
                    f"{r['rss_per_session_kib']:6.2f} KiB/connection"
                )
            return (
                f"{r['sessions']:>6,} {r['transport']} sessions  {r['rss_per_session_kib']:6.2f} "
                f"KiB/session  server CPU {r['idle_server_cpu_percent']:5.2f} %  "
                f"{r['handshakes_per_s']:7,.0f} handshakes/s"
            )

        results = ctx.passes(plans, one, repeat, show=show)
        return {
            "config": {
                "counts": [n for transport, n in plans if transport == TCP],
                "tls_counts": [n for transport, n in plans if transport == TLS],
                "tls": None if certificate is None else certificate.to_json(),
                "repeat": repeat,
                "idle_seconds": args.idle,
                "heartbeat_s": args.heartbeat,
                "concurrency": args.concurrency,
                "sessions_per_source_address": per_address(),
                "settle_seconds": args.settle,
                "server": "a fresh daemon per measurement",
                "tls_idle_memory": tls_memory,  # the daemon's and the ceiling's
            },
            "sessions": by_count(results, TCP),
            "tls_sessions": by_count(results, TLS),
            "tls_ceiling": by_count(results, CEILING_TLS),
            "markdown": markdown,
        }

    return harness.scenario(args, SCENARIO, banner, body)


def by_count(results: list[Json], transport: str) -> Json:
    """The measurements over *transport* per session count: each figure's spread, and the
    sessions that did not stay open."""
    out: Json = {}
    for n in dict.fromkeys(r["sessions"] for r in results if r["transport"] == transport):
        mine = [r for r in results if r["transport"] == transport and r["sessions"] == n]
        out[str(n)] = harness.summarise(mine) | {
            "rss_idle_kib": spread([r["rss_kib"]["idle"] for r in mine]),
            "rss_before_kib": spread([r["rss_kib"]["before"] for r in mine]),
            "lost": sum(
                r["sessions"] - r.get("still_open_after_idle", r["sessions"]) for r in mine
            ),
        }
    return out


# ---------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """The daemon's RSS per idle session and its CPU on heartbeats, per transport and count."""
    return [
        Headline(
            SCENARIO,
            f"{int(count):,} idle {label}sessions",
            "RSS/session, server CPU",
            {
                "daemon": f"{stats['rss_per_session_kib']['median']:.2f} KiB, "
                + cpu_cell(
                    f"{stats['idle_server_cpu_percent']['median']:.2f} %", stats["idle_window_s"]
                )
            },
        )
        for key, label in (("sessions", ""), ("tls_sessions", "TLS "))
        for count, stats in entry.get(key, {}).items()
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """Under 4 KiB of RSS per session at 10,000 sessions, at most 12 KiB per idle TLS session
    at 3,000 (each judged at the largest count run, each measurement on its own)."""
    out = []
    for key, goal, at, below, label in (
        ("sessions", TARGET_KIB, TARGET_COUNT, "<", ""),
        ("tls_sessions", TLS_TARGET_KIB, TLS_TARGET_COUNT, "≤", "TLS "),
    ):
        if not entry.get(key):
            continue
        count = max(entry[key], key=int)
        stats = entry[key][count]["rss_per_session_kib"]
        exact = int(count) == at
        out.append(
            Target(
                SCENARIO,
                f"{below} {goal:g} KiB server RSS per idle {label}session at {at:,} sessions",
                f"{stats['median']:.2f} KiB at {int(count):,} (measurements "
                f"{values_range(stats['values'], '{:.2f}')})"
                + ("" if exact else " (not the target's count)"),
                judged(entry, stats["values"], goal, higher=False)
                if exact or entry.get("quick")
                else NOT_MEASURED,
            )
        )
    return out


def _rows(by_count: Json, label: str) -> list[list[str]]:
    return [
        [
            f"{int(count):,}{label}",
            spread_cell(stats["rss_per_session_kib"], 2, " KiB"),
            *(
                cpu_cell(spread_cell(stats[key], 2, " %"), stats["idle_window_s"])
                for key in ("idle_server_cpu_percent", "idle_loadgen_cpu_percent")
            ),
            f"{stats['rss_before_kib']['median'] / 1024:,.1f} MiB",
            f"{stats['rss_idle_kib']['median'] / 1024:,.1f} MiB",
            f"{stats['handshakes_per_s']['median']:,.0f}",
            f"{stats['open_server_cpu_ms_per_handshake']['median']:.3f}",
            str(stats["lost"]),
        ]
        for count, stats in by_count.items()
    ]


#: What each --tls-idle-memory runs, daemon and ceiling alike.
TLS_TRANSPORTS = {
    "compact": "Both with `tls.idle_memory = compact` (the default): uvloop's TCP transport "
    "under asyncio's TLS protocol reading into one ciphertext buffer shared by every "
    "transport, OpenSSL's `SSL` object and its two `MemoryBIO`s.",
    "fast": "Both with `tls.idle_memory = fast` (`--tls-idle-memory fast`): uvloop's own "
    "TLS protocol, a 256 KiB read buffer per transport, and OpenSSL's `SSL` object.",
}


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## idle`` section of RESULTS.md."""
    config = entry["config"]
    rows = [*_rows(entry["sessions"], ""), *_rows(entry.get("tls_sessions", {}), " over TLS")]
    rows += [
        [f"{int(n):,} bare TLS connections", spread_cell(stats["rss_per_session_kib"], 2, " KiB")]
        + ["-"] * 7
        for n, stats in entry.get("tls_ceiling", {}).items()
    ]
    lines = [
        *harness.header(entry, commit, path),
        f"Per count a fresh daemon (`python -m sessiond serve --app echo`), one warm-up session "
        f"opened and closed, then the sessions opened ({config['concurrency']} handshakes in "
        "flight, from 127.0.0.x source addresses, at most "
        f"{config['sessions_per_source_address']} each under the default "
        "`max_transports_per_peer` of 256) and left idle for "
        f"{config['idle_seconds']:g} s, the clients proposing a {config['heartbeat_s']:g} s "
        "heartbeat. *RSS per session*: the server's VmRSS after the idle window less before, "
        "per session; CPU: share of one core over the idle window; "
        f"{config['repeat']} measurements per count, median [min-max]; *lost*: sessions not "
        "open after the window (then each closed with CLOSE NORMAL). *over TLS*: a `tls://` "
        "listener with a `sessiond gen-cert` certificate (ECDSA P-256) the clients verify. "
        "*bare TLS connections*: as many idle TLS connections to the ceiling "
        "(`bench/ceiling.py --tls-cert`), same certificate, client and handshakes, each on "
        "the daemon's own TLS transport (`sessiond.server.start_tls_server`) with a framed "
        "echo behind it and no session: the transport's own share of a TLS session's "
        "memory; the rest of the TLS row is the session's (the split: `bench/PROFILE.md`). "
        + TLS_TRANSPORTS[config.get("tls_idle_memory", TLS_IDLE_MEMORY[0])],
        "",
        markdown_table(
            "sessions|RSS per session|server CPU idle|loadgen CPU idle|RSS before"
            "|RSS with sessions|handshakes/s|server ms CPU/handshake|lost",
            rows,
        ),
        "",
        *(f"Target: {t.target}: {t.measured}: {verdict(t.verdict)}." for t in targets(entry, {})),
    ]
    return "\n".join([*lines, "", *harness.notes_lines(entry)])
