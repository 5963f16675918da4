"""``python -m bench idle``: many idle sessions with heartbeats on: RSS per session, CPU.

For each count (1,000 and 10,000 sessions by default; this machine allows
20,000 open files per process, so 10,000 is the practical maximum), a fresh
daemon (``python -m sessiond serve``, echo app, pinned like every server) is
given one warm-up session, then N sessions are opened, at most
``--concurrency`` handshakes at a time, from several loopback source addresses
(:func:`bench.daemon.source_addresses`: the daemon limits transports per peer
address), and left idle with their heartbeats running for ``--idle-seconds``
(one heartbeat interval by default, so every session beats once). Figures: the
server's RSS before and with them (per session), its CPU share of one core over
the idle window (what heartbeats cost), the handshake rate while opening; each
repeated ``--repeat`` times (a fresh daemon each time), as the median and
spread, every repetition kept. Target (issue 5): under 4 KiB of server RSS per
session at 10,000 sessions (a bare uvloop connection costs about 1.3 KiB here).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from sessiond_client.protocol import Params

from . import BenchError
from .daemon import DEFAULT_CONCURRENCY, sessions_per_address, source_addresses
from .latency import header
from .loadgen import HOST, close_idle, loop_name, new_loop, open_idle
from .processes import (
    ServerProcess,
    choose_pinning,
    daemon_argv,
    pinned_loadgen,
    raise_nofile,
    server,
)
from .results import (
    Json,
    command_line,
    commit_info,
    entry_head,
    machine_info,
    markdown_table,
    publish,
    spread,
)
from .summary import NOT_MEASURED, Headline, Target, judged, values_range, verdict

HELP = "1,000 and 10,000 idle sessions with heartbeats on: server RSS per session, CPU"

SCENARIO = "idle"
COUNTS = (1_000, 10_000)
QUICK_COUNTS = (20, 100)
DEFAULT_REPEAT = 3
QUICK_REPEAT = 3
DEFAULT_IDLE_SECONDS = 15.0  # one default heartbeat interval: every session beats once
QUICK_IDLE_SECONDS = 0.2
DEFAULT_HEARTBEAT = Params().heartbeat_interval
#: Waits for the server to settle before reading its RSS.
SETTLE_SECONDS = 1.0
QUICK_SETTLE_SECONDS = 0.1
#: Below the open-file limit by this margin (listening sockets, logs, the event loop).
NOFILE_MARGIN = 64
#: The target: server RSS per idle session under this, at TARGET_COUNT sessions.
TARGET_KIB = 4.0
TARGET_COUNT = 10_000


@dataclass(frozen=True, slots=True)
class IdlePlan:
    sessions: int
    concurrency: int
    idle_seconds: float
    heartbeat: float
    per_address: int
    settle_seconds: float = SETTLE_SECONDS


async def measure_idle(proc: ServerProcess, plan: IdlePlan) -> Json:
    """RSS before and with *sessions* idle sessions, CPU over an idle window, then close."""
    params = Params(heartbeat_interval=plan.heartbeat)
    sources = source_addresses(plan.per_address)
    rss_fresh = proc.rss_kib()
    # One session first, so that what its first use allocates (lazy imports,
    # caches) is not counted as the cost of each of the N.
    await close_idle(await open_idle(proc.port, 1, 1, params, sources), 5.0)
    await asyncio.sleep(plan.settle_seconds)
    rss_before = proc.rss_kib()

    print(f"  idle: opening {plan.sessions:,} sessions", file=sys.stderr, flush=True)
    t0, cpu0, lg0 = time.perf_counter(), proc.cpu_seconds(), time.process_time()
    sessions = await open_idle(proc.port, plan.sessions, plan.concurrency, params, sources)
    open_seconds = time.perf_counter() - t0
    open_cpu = proc.cpu_seconds() - cpu0
    open_lg = time.process_time() - lg0
    try:
        await asyncio.sleep(plan.settle_seconds)
        rss_open = proc.rss_kib()
        print(
            f"  idle: {len(sessions):,} open in {open_seconds:.1f} s; "
            f"idle for {plan.idle_seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        reads0 = sum(s.reads for s in sessions)
        fires0 = sum(s.timer_fires for s in sessions)
        t1, cpu1, lg1 = time.perf_counter(), proc.cpu_seconds(), time.process_time()
        await asyncio.sleep(plan.idle_seconds)
        window = time.perf_counter() - t1
        idle_cpu = proc.cpu_seconds() - cpu1
        idle_lg = time.process_time() - lg1
        reads = sum(s.reads for s in sessions) - reads0
        fires = sum(s.timer_fires for s in sessions) - fires0
        rss_idle = proc.rss_kib()
        failures = [s.failure for s in sessions if s.failure is not None]
        still_open = sum(1 for s in sessions if s.open and s.failure is None)
    finally:
        t2 = time.perf_counter()
        not_closed = await close_idle(sessions, 30.0)
        close_seconds = time.perf_counter() - t2
    if failures or still_open != plan.sessions:
        raise BenchError(
            f"idle: {plan.sessions - still_open} of {plan.sessions} sessions did not stay open"
            + (f" (first: {failures[0]})" if failures else "")
        )
    await asyncio.sleep(plan.settle_seconds)
    rss_closed = proc.rss_kib()
    delta = rss_idle - rss_before
    return {
        "sessions": plan.sessions,
        "concurrency": plan.concurrency,
        "heartbeat_s": plan.heartbeat,
        "source_addresses": 1 + (plan.sessions - 1) // plan.per_address,
        "sessions_per_source_address": plan.per_address,
        "open_seconds": open_seconds,
        "handshakes_per_s": plan.sessions / open_seconds,
        "open_server_cpu_s": open_cpu,
        "open_server_cpu_ms_per_handshake": open_cpu * 1e3 / plan.sessions,
        "open_loadgen_cpu_s": open_lg,
        "rss_kib": {
            "fresh": rss_fresh,
            "before": rss_before,
            "open": rss_open,
            "idle": rss_idle,
            "after_close": rss_closed,
        },
        "rss_delta_kib": delta,
        "rss_per_session_kib": delta / plan.sessions,
        "rss_per_session_bytes": delta * 1024 / plan.sessions,
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


# -------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--idle-sessions",
        metavar="N,N",
        help="idle sessions per measurement, comma-separated (default "
        f"{','.join(str(c) for c in COUNTS)}; --quick {','.join(str(c) for c in QUICK_COUNTS)})",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        metavar="S",
        help=f"the CPU window (default {DEFAULT_IDLE_SECONDS:g}; --quick {QUICK_IDLE_SECONDS:g})",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        metavar="S",
        help="heartbeat interval the clients propose in HELLO "
        f"(default {DEFAULT_HEARTBEAT:g}, the protocol default)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"handshakes in flight while opening (default {DEFAULT_CONCURRENCY})",
    )


def _counts(text: str | None, quick: bool) -> tuple[int, ...]:
    if text is None:
        return QUICK_COUNTS if quick else COUNTS
    try:
        counts = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise BenchError(f"--idle-sessions {text!r}: expected integers") from None
    if not counts or any(count < 1 for count in counts):
        raise BenchError("--idle-sessions: at least one count, each at least 1")
    return counts


def run(args: argparse.Namespace) -> int:
    quick: bool = args.quick
    counts = _counts(args.idle_sessions, quick)
    repeat: int = args.repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT)
    idle_seconds: float = args.idle_seconds or (
        QUICK_IDLE_SECONDS if quick else DEFAULT_IDLE_SECONDS
    )
    settle = QUICK_SETTLE_SECONDS if quick else SETTLE_SECONDS
    if repeat < 1 or args.concurrency < 1:
        raise BenchError("--repeat and --concurrency must be at least 1")
    if idle_seconds <= 0 or args.heartbeat <= 0:
        raise BenchError("--idle-seconds and --heartbeat must be positive")
    command = command_line()
    started = datetime.datetime.now(datetime.UTC)
    begun = time.perf_counter()
    machine = machine_info()
    commit = commit_info()
    pinning = choose_pinning()
    nofile = raise_nofile()
    notes: list[str] = []
    if max(counts) + NOFILE_MARGIN > nofile[0]:
        fit = nofile[0] - NOFILE_MARGIN
        notes.append(f"idle sessions cut to {fit:,} to fit RLIMIT_NOFILE {nofile[0]:,}")
        counts = tuple(dict.fromkeys(min(count, fit) for count in counts))
    per_address = sessions_per_address()
    plans = {
        count: IdlePlan(count, args.concurrency, idle_seconds, args.heartbeat, per_address, settle)
        for count in counts
    }
    print(
        f"bench idle: {', '.join(f'{c:,}' for c in counts)} sessions x {repeat}, a fresh daemon "
        f"each time, idle for {idle_seconds:g} s; {pinning.note}",
        file=sys.stderr,
        flush=True,
    )
    measured: dict[int, list[Json]] = {count: [] for count in counts}
    servers: list[Json] = []
    with (
        pinned_loadgen(pinning),
        tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp,
        asyncio.Runner(loop_factory=new_loop) as runner,
    ):
        for rep in range(repeat):
            for count in counts:
                name = f"daemon-idle-{count}-{rep + 1}"
                with server(name, daemon_argv(), pinning, Path(tmp)) as daemon:
                    described = daemon.describe()
                    result = runner.run(measure_idle(daemon, plans[count]))
                    described.update(daemon.stop())
                servers.append({"name": name, **described})
                measured[count].append(result)
                print(
                    f"  idle {count:>6,} sessions  rep {rep + 1}/{repeat}  "
                    f"{result['rss_per_session_kib']:6.2f} KiB/session  server CPU "
                    f"{result['idle_server_cpu_percent']:5.2f} %  "
                    f"{result['handshakes_per_s']:7,.0f} handshakes/s",
                    file=sys.stderr,
                    flush=True,
                )
        loadgen_affinity = sorted(os.sched_getaffinity(0))
    notes += [
        f"server {described['name']} exited with {described['exit_code']}"
        for described in servers
        if described.get("exit_code") not in (0, None)
    ]
    entry: Json = {
        **entry_head(command, started, begun, quick, machine),
        "pinning": {**pinning.to_json(), "loadgen_affinity": loadgen_affinity},
        "config": {
            "host": HOST,
            "event_loop": loop_name(),
            "counts": list(counts),
            "repeat": repeat,
            "idle_seconds": idle_seconds,
            "heartbeat_s": args.heartbeat,
            "concurrency": args.concurrency,
            "sessions_per_source_address": per_address,
            "settle_seconds": settle,
            "nofile_soft_hard": list(nofile),
            "server": "a fresh daemon per measurement",
        },
        "servers": servers,
        "sessions": {str(count): summarise(results) for count, results in measured.items()},
        "notes": notes,
    }
    entry["targets"] = [asdict(target) for target in targets(entry, {})]
    return publish(args, SCENARIO, entry, commit, markdown)


#: The figures of one measurement that are summarised over the repetitions.
FIGURES = (
    "rss_per_session_kib",
    "rss_delta_kib",
    "idle_server_cpu_percent",
    "idle_loadgen_cpu_percent",
    "handshakes_per_s",
    "open_server_cpu_ms_per_handshake",
    "open_seconds",
)


def summarise(results: list[Json]) -> Json:
    """Each figure's median and spread over the repetitions, and every repetition."""
    return {
        **{figure: spread([result[figure] for result in results]) for figure in FIGURES},
        "rss_idle_kib": spread([result["rss_kib"]["idle"] for result in results]),
        "rss_before_kib": spread([result["rss_kib"]["before"] for result in results]),
        "still_open_after_idle": min(result["still_open_after_idle"] for result in results),
        "lost": sum(result["sessions"] - result["still_open_after_idle"] for result in results),
        "repetitions": results,
    }


# ---------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """The daemon's RSS per idle session and its CPU on heartbeats, per count."""
    return [
        Headline(
            SCENARIO,
            f"{int(count):,} idle sessions",
            "RSS/session, server CPU",
            {
                "daemon": f"{stats['rss_per_session_kib']['median']:.2f} KiB, "
                f"{stats['idle_server_cpu_percent']['median']:.2f} %"
            },
        )
        for count, stats in entry["sessions"].items()
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """Under 4 KiB of RSS per session at 10,000 sessions (judged at the largest count run,
    each measurement on its own)."""
    if not entry["sessions"]:
        return []
    count = max(entry["sessions"], key=int)
    stats = entry["sessions"][count]["rss_per_session_kib"]
    exact = int(count) == TARGET_COUNT
    return [
        Target(
            SCENARIO,
            f"< {TARGET_KIB:g} KiB server RSS per idle session at {TARGET_COUNT:,} sessions",
            f"{stats['median']:.2f} KiB at {int(count):,} (measurements "
            f"{values_range(stats['values'], '{:.2f}')})"
            + ("" if exact else " (not the target's count)"),
            judged(entry, stats["values"], TARGET_KIB, higher=False)
            if exact or entry.get("quick")
            else NOT_MEASURED,
        )
    ]


# --------------------------------------------------------------- markdown


def _kib(stats: Json) -> str:
    return f"{stats['median']:.2f} [{stats['min']:.2f}-{stats['max']:.2f}] KiB"


def _pct(stats: Json) -> str:
    return f"{stats['median']:.2f} [{stats['min']:.2f}-{stats['max']:.2f}] %"


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## idle`` section of RESULTS.md."""
    config = entry["config"]
    lines = header(entry, commit, path)
    lines += [
        f"For each count, a fresh daemon (`python -m sessiond serve --app echo`), one warm-up "
        f"session opened and closed, then the sessions opened, at most {config['concurrency']} "
        "handshakes in flight, from loopback source addresses 127.0.0.x (at most "
        f"{config['sessions_per_source_address']} sessions each: the daemon's default "
        "`max_transports_per_peer` is 256), all to 127.0.0.1; then idle for "
        f"{config['idle_seconds']:g} s with a {config['heartbeat_s']:g} s heartbeat proposed "
        "by the clients (the protocol default; the daemon's own bounds apply). RSS is the "
        "server's VmRSS; *per session*: (RSS after the idle window - RSS before) / sessions. "
        "CPU shares are of one core, over the idle window. "
        f"{config['repeat']} measurements per count; median [min-max]. Every session was "
        "still open after the idle window (*lost* counts those that were not), then each "
        "was closed with CLOSE NORMAL.",
        "",
        markdown_table(
            [
                "sessions",
                "RSS per session",
                "server CPU idle",
                "loadgen CPU idle",
                "RSS before",
                "RSS with sessions",
                "handshakes/s",
                "server ms CPU/handshake",
                "lost",
            ],
            [
                [
                    f"{int(count):,}",
                    _kib(stats["rss_per_session_kib"]),
                    _pct(stats["idle_server_cpu_percent"]),
                    _pct(stats["idle_loadgen_cpu_percent"]),
                    f"{stats['rss_before_kib']['median'] / 1024:,.1f} MiB",
                    f"{stats['rss_idle_kib']['median'] / 1024:,.1f} MiB",
                    f"{stats['handshakes_per_s']['median']:,.0f}",
                    f"{stats['open_server_cpu_ms_per_handshake']['median']:.3f}",
                    str(stats["lost"]),
                ]
                for count, stats in entry["sessions"].items()
            ],
        ),
        "",
    ]
    for target in entry["targets"]:
        lines.append(
            f"Target: {target['target']}: {target['measured']}: {verdict(target['verdict'])}."
        )
    if entry["notes"]:
        lines += ["", "Notes: " + "; ".join(entry["notes"]) + "."]
    return "\n".join(lines) + "\n"
