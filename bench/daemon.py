"""``python -m bench daemon``: the real daemon, a separate process, over loopback sockets.

The server is always its own process, ``python -m sessiond serve --listen
127.0.0.1:PORT --log-level WARNING`` (the default echo app), pinned to core 0
with ``taskset -c 0``; the load generator (this process, :mod:`bench.loadgen`)
is pinned to core 1 with ``os.sched_setaffinity``. Both processes' CPU time is
recorded: the server's from ``/proc/PID/stat``, ours from ``time.process_time``.
A pass in which the load generator used more than 90 % of its core is flagged
*client-bound*: its figure says more about the client than about the server.

* ``echo``: one session, a window of messages in flight (sent, not yet echoed
  back), 64-byte and 1 KiB payloads. Messages per second delivered end to end:
  sent, echoed, received and checked in order. In the same run, against the same
  sockets and pinning, the raw ceiling: the framed uvloop echo of
  ``bench/ceiling.py`` (4-byte length prefix, one write per read), so the
  daemon's share of it is reported.
* ``idle``: N sessions opened against a fresh daemon and left idle with their
  heartbeats running: the server's RSS before and with them (per session), and
  its CPU over an idle window.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from sessiond_client.protocol import Params

from sessiond.server import ServerConfig

from . import BenchError
from .core import POOL, make_pool
from .loadgen import HOST, EchoResult, close_idle, echo, loop_name, new_loop, open_idle
from .processes import (
    CPU_TICK,
    ServerProcess,
    ceiling_argv,
    choose_pinning,
    daemon_argv,
    raise_nofile,
    server,
)
from .results import (
    QUICK_DIR,
    RESULTS_DIR,
    Json,
    command_line,
    commit_info,
    display_path,
    machine_info,
    markdown_table,
    spread,
    update_results_md,
    write_json,
)

HELP = "the daemon as a separate process over loopback: echo msgs/s vs a raw ceiling, idle RSS"

SCENARIO = "daemon"
DAEMON = "daemon"
CEILING = "ceiling"
SYSTEMS = (DAEMON, CEILING)
SIZES = (64, 1024)

DEFAULT_MESSAGES = 500_000
QUICK_MESSAGES = 5_000
DEFAULT_REPEAT = 5
QUICK_REPEAT = 3
DEFAULT_WINDOW = 1024
TIME_LIMIT = 20.0  # seconds per echo pass, whichever of this and --messages comes first
WARMUP_MESSAGES = 20_000
DEFAULT_SESSIONS = 10_000
QUICK_SESSIONS = 200
DEFAULT_IDLE_SECONDS = 15.0  # one default heartbeat interval: every session beats once
QUICK_IDLE_SECONDS = 2.0
DEFAULT_HEARTBEAT = Params().heartbeat_interval
DEFAULT_CONCURRENCY = 100  # handshakes in flight; below the listen backlog (100)
#: A pass whose load generator used more than this share of one core is client-bound.
CLIENT_BOUND = 0.9
SETTLE_SECONDS = 1.0

T = TypeVar("T")


# ---------------------------------------------------------------------- echo


@dataclass(slots=True)
class EchoPlan:
    messages: int
    repeat: int
    window: int
    time_limit: float
    warmup: int
    sizes: tuple[int, ...] = SIZES


def measure_echo(
    runner: asyncio.Runner, plan: EchoPlan, servers: dict[str, ServerProcess]
) -> list[EchoResult]:
    """Every system, *repeat* passes per payload size, their order rotated each repetition."""
    names = list(SYSTEMS)
    runs: list[EchoResult] = []
    for size in plan.sizes:
        pool = make_pool(size)
        for name in names:  # warm-up: connections, caches, the server's first session
            _echo_pass(runner, name, servers[name], pool, plan.warmup, plan)
        for rep in range(plan.repeat):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                gc.collect()
                result = _echo_pass(runner, name, servers[name], pool, plan.messages, plan)
                runs.append(result)
                bound = f"  {bound_by(result)}-bound"
                print(
                    f"  echo {size:>5} B  rep {rep + 1}/{plan.repeat}  {name:<8} "
                    f"{result.rate:>11,.0f} msg/s  server {result.server_cpu / result.seconds:4.0%}"
                    f"  loadgen {result.client_cpu / result.seconds:4.0%}{bound}",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def _echo_pass(
    runner: asyncio.Runner,
    name: str,
    proc: ServerProcess,
    pool: list[bytes],
    messages: int,
    plan: EchoPlan,
) -> EchoResult:
    proc.check_alive()
    try:
        return runner.run(
            echo(name, proc.port, pool, messages, plan.window, plan.time_limit, proc.cpu_seconds)
        )
    except BenchError:
        proc.check_alive()  # a dead server explains more than a lost connection
        raise


def client_bound(result: EchoResult) -> bool:
    return result.client_cpu / result.seconds > CLIENT_BOUND


def bound_by(result: EchoResult) -> str:
    """What set the pace of a pass: the load generator's core, the server's, or neither.

    *round-trip*: neither process kept its core busy; they took turns (the whole
    window goes back and forth in a few large reads), so the rate is bounded by
    the sum of both sides' work per batch and the loopback wake-ups, not by one side.
    """
    if client_bound(result):
        return "client"
    if result.server_cpu / result.seconds > CLIENT_BOUND:
        return "server"
    return "round-trip"


def summarise_echo(runs: list[EchoResult], sizes: tuple[int, ...]) -> Json:
    by_size: Json = {}
    for size in sizes:
        entry: Json = {}
        for name in SYSTEMS:
            mine = [run for run in runs if run.size == size and run.system == name]
            entry[name] = {
                "rate": spread([run.rate for run in mine]),
                "server_cpu_s_per_million": spread(
                    [run.server_cpu * 1e6 / run.received for run in mine]
                ),
                "server_cpu_share": spread([run.server_cpu / run.seconds for run in mine]),
                "client_cpu_share": spread([run.client_cpu / run.seconds for run in mine]),
                "client_bound": [client_bound(run) for run in mine],
                "bound": [bound_by(run) for run in mine],
                "messages_per_read": spread([run.received / max(1, run.reads) for run in mine]),
                "lost": sum(run.messages - run.received for run in mine),
                "repetitions": [run.to_json() for run in mine],
            }
        daemon, ceiling = entry[DAEMON], entry[CEILING]
        entry["ratio"] = daemon["rate"]["median"] / ceiling["rate"]["median"]
        entry["ratio_per_repetition"] = spread(
            [
                d["rate"] / c["rate"]
                for d, c in zip(daemon["repetitions"], ceiling["repetitions"], strict=True)
            ]
        )
        by_size[str(size)] = entry
    return by_size


# ---------------------------------------------------------------------- idle


def source_addresses(per_address: int) -> Callable[[int], str]:
    """Session *i*'s source address: a new 127.x.y.z every *per_address* sessions.

    The daemon allows ``max_transports_per_peer`` transports per IP address; the
    whole of 127.0.0.0/8 is loopback, so many sessions come from several of its
    addresses (all of them connect to 127.0.0.1).
    """

    def source(index: int) -> str:
        number = 1 + index // per_address
        return f"127.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"

    return source


@dataclass(frozen=True, slots=True)
class IdlePlan:
    sessions: int
    concurrency: int
    idle_seconds: float
    heartbeat: float
    per_address: int


async def measure_idle(proc: ServerProcess, plan: IdlePlan) -> Json:
    """RSS before and with *sessions* idle sessions, CPU over an idle window, then close."""
    params = Params(heartbeat_interval=plan.heartbeat)
    sources = source_addresses(plan.per_address)
    rss_fresh = proc.rss_kib()
    # One session first, so that what its first use allocates (lazy imports,
    # caches) is not counted as the cost of each of the N.
    await close_idle(await open_idle(proc.port, 1, 1, params, sources), 5.0)
    await asyncio.sleep(SETTLE_SECONDS)
    rss_before = proc.rss_kib()

    print(f"  idle: opening {plan.sessions:,} sessions", file=sys.stderr, flush=True)
    t0, cpu0, lg0 = time.perf_counter(), proc.cpu_seconds(), time.process_time()
    sessions = await open_idle(proc.port, plan.sessions, plan.concurrency, params, sources)
    open_seconds = time.perf_counter() - t0
    open_cpu = proc.cpu_seconds() - cpu0
    open_lg = time.process_time() - lg0
    try:
        await asyncio.sleep(SETTLE_SECONDS)
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
    await asyncio.sleep(SETTLE_SECONDS)
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


# ----------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"echo: messages in flight, sent and not yet echoed (default {DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT,
        metavar="S",
        help=f"echo: at most this many seconds per pass (default {TIME_LIMIT:g})",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        metavar="N",
        help=f"idle: sessions to open (default {DEFAULT_SESSIONS:,}; --quick {QUICK_SESSIONS})",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        metavar="S",
        help=f"idle: CPU window (default {DEFAULT_IDLE_SECONDS:g}; --quick {QUICK_IDLE_SECONDS:g})",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        metavar="S",
        help="idle: heartbeat interval the clients propose in HELLO "
        f"(default {DEFAULT_HEARTBEAT:g}, the protocol default)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"idle: handshakes in flight while opening (default {DEFAULT_CONCURRENCY})",
    )


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    quick: bool = args.quick
    messages: int = _given(args.messages, QUICK_MESSAGES if quick else DEFAULT_MESSAGES)
    repeat: int = _given(args.repeat, QUICK_REPEAT if quick else DEFAULT_REPEAT)
    sessions: int = _given(args.sessions, QUICK_SESSIONS if quick else DEFAULT_SESSIONS)
    idle_seconds: float = _given(
        args.idle_seconds, QUICK_IDLE_SECONDS if quick else DEFAULT_IDLE_SECONDS
    )
    window: int = args.window
    if messages < 1 or repeat < 1 or sessions < 1 or args.concurrency < 1:
        raise BenchError("--messages, --repeat, --sessions and --concurrency must be at least 1")
    if not 1 <= window <= POOL // 2:
        raise BenchError(f"--window must be 1..{POOL // 2}")
    if args.time_limit <= 0 or idle_seconds <= 0 or args.heartbeat <= 0:
        raise BenchError("--time-limit, --idle-seconds and --heartbeat must be positive")
    out: Path = args.out or (QUICK_DIR if quick else RESULTS_DIR)
    command = command_line()
    started = datetime.datetime.now(datetime.UTC)
    begun = time.perf_counter()
    machine = machine_info()
    commit = commit_info()

    pinning = choose_pinning()
    affinity = os.sched_getaffinity(0) if pinning.pinned else None
    nofile = raise_nofile()
    notes: list[str] = []
    if sessions + 64 > nofile[0]:
        notes.append(f"idle sessions cut from {sessions:,} to fit RLIMIT_NOFILE {nofile[0]:,}")
        sessions = nofile[0] - 64
    per_address = _per_address()
    plan = EchoPlan(messages, repeat, window, args.time_limit, min(messages, WARMUP_MESSAGES))
    idle_plan = IdlePlan(sessions, args.concurrency, idle_seconds, args.heartbeat, per_address)
    print(
        f"bench daemon: echo {messages:,} messages (or {args.time_limit:g} s) x {repeat}, "
        f"window {window}, payloads {', '.join(f'{s} B' for s in SIZES)}; "
        f"idle {sessions:,} sessions for {idle_seconds:g} s; {pinning.note}",
        file=sys.stderr,
        flush=True,
    )
    servers_json: Json = {}
    try:
        if pinning.loadgen_cpu is not None:
            os.sched_setaffinity(0, {pinning.loadgen_cpu})
        with (
            tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp,
            asyncio.Runner(loop_factory=new_loop) as runner,
        ):
            log_dir = Path(tmp)
            with (
                server("daemon-echo", daemon_argv(), pinning, log_dir) as daemon,
                server("ceiling", ceiling_argv(), pinning, log_dir) as ceiling,
            ):
                servers_json["daemon_echo"] = daemon.describe()
                servers_json["ceiling"] = ceiling.describe()
                runs = measure_echo(runner, plan, {DAEMON: daemon, CEILING: ceiling})
                servers_json["daemon_echo"].update(daemon.stop())
                servers_json["ceiling"].update(ceiling.stop())
            with server("daemon-idle", daemon_argv(), pinning, log_dir) as idle_daemon:
                servers_json["daemon_idle"] = idle_daemon.describe()
                idle = runner.run(measure_idle(idle_daemon, idle_plan))
                servers_json["daemon_idle"].update(idle_daemon.stop())
            loadgen_affinity = sorted(os.sched_getaffinity(0))
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    for name, described in servers_json.items():
        if described.get("exit_code") not in (0, None):
            notes.append(f"server {name} exited with {described['exit_code']}")

    entry: Json = {
        "command": command,
        "argv": sys.argv[1:],
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - begun, 3),
        "quick": quick,
        "machine": machine,
        "pinning": {
            "pinned": pinning.pinned,
            "note": pinning.note,
            "server_cpu": pinning.server_cpu,
            "server_pinned_with": "taskset -c" if pinning.pinned else None,
            "loadgen_cpu": pinning.loadgen_cpu,
            "loadgen_pinned_with": "os.sched_setaffinity" if pinning.pinned else None,
            "loadgen_affinity": loadgen_affinity,
        },
        "config": {
            "host": HOST,
            "event_loop": loop_name(),
            "echo": {
                "messages": messages,
                "time_limit_s": args.time_limit,
                "repeat": repeat,
                "window": window,
                "warmup_messages": plan.warmup,
                "payload_sizes": list(SIZES),
                "distinct_payloads": POOL,
                "client_params": asdict(Params()),
            },
            "idle": asdict(idle_plan),
            "client_bound_threshold": CLIENT_BOUND,
            "nofile_soft_hard": list(nofile),
            "timer": "time.perf_counter; CPU: /proc/PID/stat (server), time.process_time (us)",
            "server_cpu_tick_s": 1 / CPU_TICK,
            "gc": "enabled; gc.collect() before each pass",
        },
        "servers": servers_json,
        "systems": {
            DAEMON: "`python -m sessiond serve` (echo app); client: the core Session in an "
            "asyncio.Protocol (bench/loadgen.py SessionEcho)",
            CEILING: "bench/ceiling.py: uvloop Protocol, 4-byte length prefix, payloads taken "
            "out and re-framed, one write per read; client: bench/loadgen.py FramedEcho",
        },
        "echo": summarise_echo(runs, SIZES),
        "idle": idle,
        "notes": notes,
    }
    path = write_json(out, SCENARIO, entry, commit)
    report = markdown(entry, commit, path)
    print(report)
    print(f"results: {display_path(path)}", file=sys.stderr)
    if not quick:
        update_results_md(SCENARIO, report)
        print(f"updated bench/RESULTS.md (## {SCENARIO})", file=sys.stderr)
    return 0


def _per_address() -> int:
    """Sessions per source address: a margin below the daemon's per-peer transport limit."""
    limit = ServerConfig().max_transports_per_peer
    return max(1, limit - max(8, limit // 16))


# ------------------------------------------------------------------ markdown


def _command(described: Json) -> str:
    command: str = described["command"]
    return command.rpartition(":")[0] + ":PORT"


def _rate(stats: Json) -> str:
    return f"{stats['median']:,.0f} [{stats['min']:,.0f}-{stats['max']:,.0f}]"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "es" if noun.endswith("s") else "s")


def _share(stats: Json) -> str:
    return f"{stats['median']:.0%}"


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## daemon`` section of RESULTS.md."""
    config = entry["config"]
    echo_config = config["echo"]
    machine = entry["machine"]
    pinning = entry["pinning"]
    state = " with uncommitted changes" if commit["dirty"] else ""
    if any(line.startswith("??") for line in commit["status"]):
        state += " (+ untracked files)"
    lines = [
        f"Command: `{entry['command']}` · JSON: `{display_path(path)}`",
        "",
        f"Commit `{commit['commit_short']}`{state}, {entry['started_at']}; "
        f"{machine['cpu_model']}, {machine['cores']} cores; "
        f"{machine['python_implementation']} {machine['python']}; msgpack {machine['msgpack']}; "
        f"uvloop {machine['uvloop']} ({config['event_loop']} loop in the load generator).",
        "",
        f"Servers in their own processes on {config['host']}, "
        + (
            f"pinned to core {pinning['server_cpu']} (`taskset -c {pinning['server_cpu']}`); "
            f"the load generator (`bench/loadgen.py`) pinned to core {pinning['loadgen_cpu']} "
            "(`os.sched_setaffinity`)."
            if pinning["pinned"]
            else f"**{pinning['note']}**."
        )
        + f" Daemon: `{_command(entry['servers']['daemon_echo'])}` (PORT: a free port).",
        "",
        "### echo",
        "",
        f"One session (daemon) or one connection (ceiling), {echo_config['window']:,} messages "
        f"in flight (sent, echo not yet back), up to {echo_config['messages']:,} messages or "
        f"{echo_config['time_limit_s']:g} s per pass, {echo_config['repeat']} passes per "
        "system and size, interleaved, after a warm-up pass. Every echo is compared, in order, "
        "with the payload sent, and a pass ends only once every message sent is back. "
        "*ceiling*: `bench/ceiling.py`, a uvloop Protocol with a 4-byte length prefix that "
        "takes each payload out and re-frames it, one write per read. Rates: median "
        "[min-max] messages/s; daemon/ceiling: ratio of the medians [min-max of the ratio "
        "within each repetition]; lost: messages sent and never echoed back (a pass with a "
        "lost, repeated or reordered message fails instead).",
        "",
    ]
    rows = []
    for size, by_system in entry["echo"].items():
        daemon, ceiling = by_system[DAEMON], by_system[CEILING]
        paired = by_system["ratio_per_repetition"]
        rows.append(
            [
                f"{size} B",
                _rate(daemon["rate"]),
                _rate(ceiling["rate"]),
                f"{by_system['ratio']:.1%} [{paired['min']:.1%}-{paired['max']:.1%}]",
                f"{daemon['lost']} / {ceiling['lost']}",
            ]
        )
    lines += [
        markdown_table(
            ["payload", "daemon msg/s", "ceiling msg/s", "daemon/ceiling", "lost (d / c)"], rows
        ),
        "",
        "Where the CPU went (medians over the passes). *server CPU s/M msg*: the server "
        "process's CPU seconds (user + system, `/proc/PID/stat`) per million messages echoed; "
        "*core busy*: CPU seconds over wall seconds of the pass; *msgs/read*: messages per "
        "`data_received` in the load generator; *bound*: per pass, `client` when the load "
        f"generator kept more than {config['client_bound_threshold']:.0%} of its core busy "
        "(client-bound), `server` likewise for the server, else `round-trip` (the two took "
        "turns, each mostly waiting for the other's batch; neither core was the limit).",
        "",
    ]
    rows = []
    for size, by_system in entry["echo"].items():
        for name in SYSTEMS:
            stats = by_system[name]
            bounds = stats["bound"]
            rows.append(
                [
                    f"{size} B",
                    f"`{name}`",
                    f"{stats['server_cpu_s_per_million']['median']:.2f}",
                    _share(stats["server_cpu_share"]),
                    _share(stats["client_cpu_share"]),
                    f"{stats['messages_per_read']['median']:,.0f}",
                    ", ".join(
                        f"{b} {bounds.count(b)}/{len(bounds)}" for b in dict.fromkeys(bounds)
                    ),
                ]
            )
    lines.append(
        markdown_table(
            [
                "payload",
                "system",
                "server CPU s/M msg",
                "server core busy",
                "loadgen core busy",
                "msgs/read",
                "bound",
            ],
            rows,
        )
    )
    turns = [
        f"{size} B: daemon {1e6 / by_system[DAEMON]['server_cpu_s_per_million']['median']:,.0f}, "
        f"ceiling {1e6 / by_system[CEILING]['server_cpu_s_per_million']['median']:,.0f}"
        for size, by_system in entry["echo"].items()
        if all(b == "round-trip" for name in SYSTEMS for b in by_system[name]["bound"])
        and all(by_system[name]["server_cpu_s_per_million"]["median"] > 0 for name in SYSTEMS)
    ]
    if turns:
        lines += [
            "",
            "Round-trip-bound passes: with one session the window travels in a few large "
            "batches (msgs/read), so each side waits while the other works and the rate is "
            "set by the sum of both sides' work per batch, not by the server alone. At the "
            "measured CPU per message, a server kept fully busy (by more sessions) would echo "
            f"about {'; '.join(turns)} msg/s: an extrapolation (1 / server CPU per message), "
            "not a measurement.",
        ]
    bound = [
        f"{size} B {name}"
        for size, by_system in entry["echo"].items()
        for name in SYSTEMS
        if any(by_system[name]["client_bound"])
    ]
    if bound:
        lines += [
            "",
            f"Client-bound: {', '.join(bound)}. There the load generator, not the server, "
            "set the pace: a client-bound ceiling understates the ceiling (so daemon/ceiling "
            "overstates the daemon's share); the server CPU per message is the figure to "
            "compare.",
        ]
    idle = entry["idle"]
    rss = idle["rss_kib"]
    sources = _count(idle["source_addresses"], "loopback source address")
    lines += [
        "",
        "### idle",
        "",
        f"{idle['sessions']:,} sessions opened against a fresh daemon, at most "
        f"{idle['concurrency']} handshakes in flight, from {sources} "
        f"(127.0.0.x, ≤ {idle['sessions_per_source_address']} sessions each: the "
        "daemon runs with its default `max_transports_per_peer` of 256), all "
        f"to 127.0.0.1; then idle for {idle['idle_window_s']:.1f} s with a "
        f"{idle['heartbeat_s']:g} s heartbeat proposed by the clients (the protocol default; "
        "the daemon's own bounds apply). RSS is the server's VmRSS; *before* is "
        "after one warm-up session was opened and closed. The server's CPU share is of one "
        f"core. All {idle['still_open_after_idle']:,} sessions were still open after the "
        "idle window; then each was closed with CLOSE NORMAL.",
        "",
        markdown_table(
            [
                "sessions",
                "opened in",
                "handshakes/s",
                "server ms CPU/handshake",
                "RSS before",
                "RSS with sessions",
                "RSS per session",
                "server CPU idle",
                "loadgen CPU idle",
                "client reads in window",
            ],
            [
                [
                    f"{idle['sessions']:,}",
                    f"{idle['open_seconds']:.2f} s",
                    f"{idle['handshakes_per_s']:,.0f}",
                    f"{idle['open_server_cpu_ms_per_handshake']:.3f}",
                    f"{rss['before'] / 1024:,.1f} MiB",
                    f"{rss['idle'] / 1024:,.1f} MiB",
                    f"{idle['rss_per_session_kib']:.2f} KiB",
                    f"{idle['idle_server_cpu_percent']:.2f} %",
                    f"{idle['idle_loadgen_cpu_percent']:.2f} %",
                    f"{idle['idle_client_reads']:,}",
                ]
            ],
        ),
        "",
        f"RSS (KiB): fresh {rss['fresh']:,}, before {rss['before']:,}, just opened "
        f"{rss['open']:,}, after the idle window {rss['idle']:,}, after closing them all "
        f"{rss['after_close']:,}.",
    ]
    if entry["notes"]:
        lines += ["", "Notes: " + "; ".join(entry["notes"]) + "."]
    return "\n".join(lines) + "\n"
