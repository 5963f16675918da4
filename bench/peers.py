"""``python -m bench peers``: mosquitto and NATS from their Python clients, beside sessiond.

In one run, on the same machine, sockets and pinning, every system does the same
two things (64-byte and 1 KiB payloads for the first, 64 bytes for the second):

* **echo**: one connection, up to ``--window`` (1,024) messages in flight (sent,
  not yet back), each message checked in order when it returns: messages per
  second delivered end to end, as ``python -m bench daemon`` measures them;
* **ping-pong** at fixed offered rates (:mod:`bench.latency`): p50, p99, p99.9.

Systems (a message always goes from the load generator to the server and back
on the same connection):

* ``daemon``: the sessiond daemon, the protocol core driven by the bench
  (:mod:`bench.loadgen`, :class:`bench.pingpong.SessionPing`): exactly once,
  acknowledged both ways;
* ``client``: the same daemon through the client library
  (:mod:`bench.library_client`): what an application gets;
* ``ceiling``: the raw framed uvloop echo (no sessions, no acknowledgements);
* ``mosquitto``: QoS 1 publish to the client's own topic, to which it is
  subscribed at QoS 1 in a persistent session: the broker acknowledges the
  publish and delivers it back, the client acknowledges the delivery
  (:mod:`bench.mqtt_peer`, paho-mqtt);
* ``nats``: core NATS publish to the connection's own subject, delivered back
  by the server, nothing acknowledged: at most once (:mod:`bench.nats_peer`,
  nats-py).

The broker processes are started here on free ports of 127.0.0.1 with a
temporary configuration, pinned like the daemon, and stopped at the end. A peer
whose binary (or Python client) is missing is skipped with a one-line message
saying how to install it; the bench installs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import gc
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import BenchError, latency
from .core import POOL, make_pool
from .daemon import CLIENT_BOUND, bound_by, client_bound
from .library_client import client_echo, client_ping
from .loadgen import HOST, CpuClock, EchoResult, echo, loop_name, new_loop
from .pingpong import ping_protocols
from .processes import (
    CoreLoad,
    Pinning,
    ServerProcess,
    ceiling_argv,
    choose_pinning,
    daemon_argv,
    free_port,
    pinned_loadgen,
    process,
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

HELP = "mosquitto (QoS 1) and NATS from their Python clients beside sessiond: echo and latency"

SCENARIO = "peers"
DAEMON = "daemon"
CLIENT = "client"
CEILING = "ceiling"
MOSQUITTO = "mosquitto"
NATS = "nats"
SYSTEMS = (DAEMON, CLIENT, CEILING, MOSQUITTO, NATS)
SIZES = (64, 1024)

DEFAULT_MESSAGES = 200_000
QUICK_MESSAGES = 2_000
DEFAULT_REPEAT = 3
QUICK_REPEAT = 3
DEFAULT_WINDOW = 1024
TIME_LIMIT = 10.0  # seconds per echo pass, whichever of this and --messages comes first
WARMUP_MESSAGES = 10_000
#: Where a broker may be when it is not on PATH (Debian puts both in /usr/sbin).
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
PIP_INSTALL = "python3 -m pip install -e '.[bench]'"
#: The issue's targets: sessiond's echo rate over each peer's, at equal or better p99.
TARGET_RATIO = {MOSQUITTO: 5.0, NATS: 2.0}
TARGET_SIZE = 64

EchoFunction = Callable[
    [int, list[bytes], int, int, float, CpuClock], Coroutine[Any, Any, EchoResult]
]


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer broker: its binary, how to install it, and its Python client."""

    name: str
    binary: str
    install: str
    module: str  # the client library's import name
    package: str  # its PyPI distribution

    def skip_reason(self, binary: str | None) -> str | None:
        """Why this peer cannot run here (one line, with the install hint), or None."""
        if binary is None:
            return (
                f"{self.name}: skipped: no `{self.binary}` binary on PATH or in "
                f"{', '.join(SBIN)}; install it with `{self.install}`"
            )
        if importlib.util.find_spec(self.module.partition(".")[0]) is None:
            return (
                f"{self.name}: skipped: its Python client `{self.package}` is not installed; "
                f"install it with `{PIP_INSTALL}`"
            )
        return None


PEERS = {
    MOSQUITTO: Peer(
        MOSQUITTO,
        "mosquitto",
        "apt-get install mosquitto (Debian package `mosquitto`)",
        "paho.mqtt",
        "paho-mqtt",
    ),
    NATS: Peer(
        NATS,
        "nats-server",
        "apt-get install nats-server (Debian package `nats-server`)",
        "nats",
        "nats-py",
    ),
}


def find_binary(name: str, given: str | None = None) -> str | None:
    """*given* if it is an executable file, else *name* on PATH or in :data:`SBIN`."""
    if given is not None:
        return given if os.path.isfile(given) and os.access(given, os.X_OK) else None
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])
    return shutil.which(name, path=path)


def binary_version(binary: str) -> str:
    """The first line ``BINARY -h`` or ``--version`` prints (mosquitto has no --version)."""
    for flag in ("--version", "-h"):
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            done = subprocess.run(
                [binary, flag], capture_output=True, text=True, timeout=10, check=False
            )
            for line in (done.stdout + done.stderr).splitlines():
                if "version" in line.lower() or line.startswith("nats-server"):
                    return line.strip()
    return "?"


# ---------------------------------------------------------------- systems


@dataclass(frozen=True, slots=True)
class System:
    """A system under test: its server process and its two load generators."""

    name: str
    proc: ServerProcess
    echo: EchoFunction
    ping: latency.PingFunction


@contextlib.contextmanager
def start_peer(
    peer: Peer, binary: str, window: int, pinning: Pinning, tmp: Path
) -> Iterator[tuple[ServerProcess, str]]:
    """Start *peer*'s broker on a free port with a temporary config; yield it and the config."""
    port = free_port()
    if peer.name == MOSQUITTO:
        from . import mqtt_peer  # noqa: PLC0415 - imports paho-mqtt: only when it is installed

        text = mqtt_peer.config(port, window)
        path = tmp / "mosquitto.conf"
        make = mqtt_peer.command
        stop = signal.SIGTERM
    else:
        from . import nats_peer  # noqa: PLC0415 - imports nats-py: only when it is installed

        text = nats_peer.config(port)
        path = tmp / "nats-server.conf"
        make = nats_peer.command
        stop = nats_peer.STOP_SIGNAL
    path.write_text(text, encoding="utf-8")
    with process(peer.name, make(binary, str(path)), port, pinning, tmp, stop) as proc:
        yield proc, text


def peer_system(peer: Peer, proc: ServerProcess) -> System:
    if peer.name == MOSQUITTO:
        from . import mqtt_peer  # noqa: PLC0415

        return System(MOSQUITTO, proc, mqtt_peer.mqtt_echo, mqtt_peer.mqtt_ping)
    from . import nats_peer  # noqa: PLC0415

    return System(NATS, proc, nats_peer.nats_echo, nats_peer.nats_ping)


# ------------------------------------------------------------------- echo


@dataclass(frozen=True, slots=True)
class EchoPlan:
    messages: int
    repeat: int
    window: int
    time_limit: float
    warmup: int
    sizes: tuple[int, ...] = SIZES


def measure_echo(
    runner: asyncio.Runner, plan: EchoPlan, systems: Sequence[System], load: CoreLoad
) -> list[EchoResult]:
    """Every system, *repeat* passes per payload size, their order rotated each repetition."""
    runs: list[EchoResult] = []
    for size in plan.sizes:
        pool = make_pool(size)
        for system in systems:  # warm-up: connections, caches, first sessions
            _echo_pass(runner, system, pool, plan.warmup, plan, None)
        for rep in range(plan.repeat):
            shift = rep % len(systems)
            for system in [*systems[shift:], *systems[:shift]]:
                gc.collect()
                result = _echo_pass(runner, system, pool, plan.messages, plan, load)
                runs.append(result)
                print(
                    f"  echo {size:>5} B  rep {rep + 1}/{plan.repeat}  {system.name:<9} "
                    f"{result.rate:>11,.0f} msg/s  server {result.server_cpu / result.seconds:4.0%}"
                    f"  loadgen {result.client_cpu / result.seconds:4.0%}  "
                    f"{bound_by(result)}-bound",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def _echo_pass(
    runner: asyncio.Runner,
    system: System,
    pool: list[bytes],
    messages: int,
    plan: EchoPlan,
    load: CoreLoad | None,
) -> EchoResult:
    proc = system.proc
    proc.check_alive()
    server0, cpu0 = proc.cpu_seconds(), time.process_time()
    if load is not None:
        load.start()
    try:
        result = runner.run(
            system.echo(proc.port, pool, messages, plan.window, plan.time_limit, proc.cpu_seconds)
        )
    except BenchError:
        proc.check_alive()  # a dead server explains more than a lost connection
        raise
    others = None
    if load is not None:
        others = load.others(proc.cpu_seconds() - server0, time.process_time() - cpu0)
    # Every echo function reports under its own name; the tables use the system's.
    return dataclasses.replace(result, system=system.name, others=others)


def summarise_echo(runs: list[EchoResult], names: Sequence[str], sizes: Sequence[int]) -> Json:
    by_size: Json = {}
    for size in sizes:
        entry: Json = {}
        for name in names:
            mine = [run for run in runs if run.size == size and run.system == name]
            if not mine:
                continue
            entry[name] = {
                "rate": spread([run.rate for run in mine]),
                "server_cpu_s_per_million": spread(
                    [run.server_cpu * 1e6 / run.received for run in mine]
                ),
                "client_cpu_us_per_message": spread(
                    [run.client_cpu * 1e6 / run.received for run in mine]
                ),
                "server_cpu_share": spread([run.server_cpu / run.seconds for run in mine]),
                "client_cpu_share": spread([run.client_cpu / run.seconds for run in mine]),
                "client_bound": [client_bound(run) for run in mine],
                "other_load_share": latency.other_load([run.others for run in mine]),
                "cores_full": [
                    latency.full_cores(run.server_cpu, run.client_cpu, run.seconds, run.others)
                    for run in mine
                ],
                "bound": [bound_by(run) for run in mine],
                "lost": sum(run.messages - run.received for run in mine),
                "repetitions": [run.to_json() for run in mine],
            }
        by_size[str(size)] = entry
    return by_size


def ratios(echo: Json, lat: Json) -> Json:
    """sessiond (daemon, client) over each peer: echo rate per size, p99 per rate."""
    out: Json = {}
    for ours in (DAEMON, CLIENT):
        for peer in (MOSQUITTO, NATS, CEILING):
            rate_ratio = {
                size: entry[ours]["rate"]["median"] / entry[peer]["rate"]["median"]
                for size, entry in echo.items()
                if ours in entry and peer in entry
            }
            p99_ratio = {
                rate: entry[ours]["round_trip_us"]["p99"]["median"]
                / entry[peer]["round_trip_us"]["p99"]["median"]
                for rate, entry in lat.items()
                if ours in entry and peer in entry
            }
            if rate_ratio or p99_ratio:
                out[f"{ours}/{peer}"] = {"echo_rate": rate_ratio, "p99": p99_ratio}
    return out


def targets(pairs: Json) -> Json:
    """The issue's targets against each peer that ran: rate ratio at 64 B and p99 at every rate."""
    out: Json = {}
    for key, pair in pairs.items():
        peer = key.partition("/")[2]
        if peer not in TARGET_RATIO or str(TARGET_SIZE) not in pair["echo_rate"]:
            continue
        ratio = pair["echo_rate"][str(TARGET_SIZE)]
        p99_ok = all(value <= 1.0 for value in pair["p99"].values())
        out[key] = {
            "rate_ratio": ratio,
            "rate_target": TARGET_RATIO[peer],
            "rate_met": ratio >= TARGET_RATIO[peer],
            "p99_ratio": pair["p99"],
            "p99_equal_or_better": p99_ok,
            "met": ratio >= TARGET_RATIO[peer] and p99_ok,
        }
    return out


# -------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        metavar="S,S",
        help=f"systems to run, comma-separated (default {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"echo: messages in flight, sent and not yet back (default {DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT,
        metavar="S",
        help=f"echo: at most this many seconds per pass (default {TIME_LIMIT:g})",
    )
    parser.add_argument(
        "--mosquitto", metavar="PATH", help="the mosquitto binary (default: found on PATH, sbin)"
    )
    parser.add_argument(
        "--nats-server",
        metavar="PATH",
        help="the nats-server binary (default: found on PATH, sbin)",
    )
    parser.add_argument(
        "--rates",
        default=",".join(str(rate) for rate in latency.RATES),
        metavar="R,R",
        help="ping-pong: offered messages/s in total (default "
        f"{','.join(str(rate) for rate in latency.RATES)})",
    )
    parser.add_argument(
        "--per-connection-rate",
        type=int,
        default=latency.PER_CONNECTION_RATE,
        metavar="R",
        help=f"ping-pong: messages/s per connection (default {latency.PER_CONNECTION_RATE})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help=f"ping-pong: seconds per pass (default {latency.DEFAULT_DURATION:g}; "
        f"--quick {latency.QUICK_DURATION:g})",
    )
    parser.add_argument(
        "--size", type=int, default=latency.SIZE, help="ping-pong: payload bytes (default 64)"
    )


def _systems(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or not names:
        raise BenchError(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    return [name for name in SYSTEMS if name in names]


def run(args: argparse.Namespace) -> int:
    quick: bool = args.quick
    messages: int = args.messages
    if messages is None:
        messages = QUICK_MESSAGES if quick else DEFAULT_MESSAGES
    repeat: int = args.repeat
    if repeat is None:
        repeat = QUICK_REPEAT if quick else DEFAULT_REPEAT
    window: int = args.window
    if messages < 1 or repeat < 1:
        raise BenchError("--messages and --repeat must be at least 1")
    if not 1 <= window <= POOL // 2:
        raise BenchError(f"--window must be 1..{POOL // 2}")
    if args.time_limit <= 0:
        raise BenchError("--time-limit must be positive")
    wanted = _systems(args.systems)
    latency_args = argparse.Namespace(**{**vars(args), "messages": None, "repeat": repeat})
    lat_plan = latency.plan_from(latency_args)
    echo_plan = EchoPlan(messages, repeat, window, args.time_limit, min(messages, WARMUP_MESSAGES))
    out: Path = args.out or (QUICK_DIR if quick else RESULTS_DIR)
    command = command_line()
    started = datetime.datetime.now(datetime.UTC)
    begun = time.perf_counter()
    machine = machine_info()
    commit = commit_info()
    pinning = choose_pinning()
    raise_nofile()

    given = {MOSQUITTO: args.mosquitto, NATS: args.nats_server}
    binaries: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, peer in PEERS.items():
        if name not in wanted:
            continue
        binary = find_binary(peer.binary, given[name])
        reason = peer.skip_reason(binary)
        if reason is None and binary is not None:
            binaries[name] = binary
        else:
            skipped[name] = reason or name
            print(reason, file=sys.stderr, flush=True)
    print(
        f"bench peers: {', '.join(n for n in wanted if n not in skipped)}; echo "
        f"{messages:,} messages (or {args.time_limit:g} s) x {repeat}, window {window}, "
        f"{', '.join(f'{s} B' for s in SIZES)}; ping-pong at "
        f"{', '.join(f'{r:,}/s' for r in lat_plan.rates)} for {lat_plan.duration:g} s; "
        f"{pinning.note}",
        file=sys.stderr,
        flush=True,
    )

    servers_json: Json = {}
    peer_json: Json = {}
    with (
        pinned_loadgen(pinning),
        tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp,
        asyncio.Runner(loop_factory=new_loop) as runner,
        contextlib.ExitStack() as stack,
    ):
        log_dir = Path(tmp)
        procs: dict[str, ServerProcess] = {}
        systems: list[System] = []
        if DAEMON in wanted or CLIENT in wanted:
            procs["daemon"] = stack.enter_context(server("daemon", daemon_argv(), pinning, log_dir))
        if DAEMON in wanted:
            systems.append(
                System(DAEMON, procs["daemon"], functools.partial(echo, DAEMON), ping_protocols)
            )
        if CLIENT in wanted:
            systems.append(System(CLIENT, procs["daemon"], client_echo, client_ping))
        if CEILING in wanted:
            procs["ceiling"] = stack.enter_context(
                server("ceiling", ceiling_argv(), pinning, log_dir)
            )
            systems.append(
                System(CEILING, procs["ceiling"], functools.partial(echo, CEILING), ping_protocols)
            )
        for name, binary in binaries.items():
            peer = PEERS[name]
            proc, text = stack.enter_context(start_peer(peer, binary, window, pinning, log_dir))
            procs[name] = proc
            systems.append(peer_system(peer, proc))
            peer_json[name] = {
                "binary": binary,
                "version": binary_version(binary),
                "client": f"{peer.package} {_version(peer.package)}",
                "config": text,
            }
        for name, proc in procs.items():
            servers_json[name] = proc.describe()
        if not systems:
            raise BenchError("nothing to run: " + "; ".join(skipped.values()))
        load = CoreLoad(pinning)
        echo_runs = measure_echo(runner, echo_plan, systems, load)
        ping_runs = latency.measure(
            runner,
            lat_plan,
            [latency.Target(system.name, system.proc, system.ping) for system in systems],
            load,
        )
        loadgen_affinity = sorted(os.sched_getaffinity(0))
        for name, proc in procs.items():
            servers_json[name].update(proc.stop())

    ran = [system.name for system in systems]
    echo_summary = summarise_echo(echo_runs, ran, SIZES)
    ping_summary = latency.summarise(ping_runs, ran, lat_plan.rates)
    pairs = ratios(echo_summary, ping_summary)
    notes = [
        f"server {name} exited with {described['exit_code']}"
        for name, described in servers_json.items()
        if described.get("exit_code") not in (0, None)
    ]
    entry: Json = {
        "command": command,
        "argv": sys.argv[1:],
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - begun, 3),
        "quick": quick,
        "machine": machine,
        "pinning": {**pinning.to_json(), "loadgen_affinity": loadgen_affinity},
        "config": {
            "host": HOST,
            "event_loop": loop_name(),
            "systems": ran,
            "echo": {
                "messages": messages,
                "time_limit_s": args.time_limit,
                "repeat": repeat,
                "window": window,
                "warmup_messages": echo_plan.warmup,
                "payload_sizes": list(SIZES),
                "distinct_payloads": POOL,
            },
            "latency": lat_plan.to_json(),
            "client_bound_threshold": CLIENT_BOUND,
            "timer": "time.perf_counter(_ns); CPU: /proc/PID/stat (servers, all threads), "
            "time.process_time (load generator)",
            "gc": "enabled; gc.collect() before each pass",
        },
        "servers": servers_json,
        "peers": peer_json,
        "skipped": skipped,
        "systems": {name: SYSTEM_NOTES[name] for name in ran},
        "other_load_share": latency.other_load(
            [run.others for run in echo_runs] + [run.others for run in ping_runs]
        ),
        "echo": echo_summary,
        "latency": ping_summary,
        "ratios": pairs,
        "targets": targets(pairs),
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


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


SYSTEM_NOTES = {
    DAEMON: "`python -m sessiond serve` (echo app), exactly once, acknowledged both ways; "
    "client: the protocol core in an asyncio.Protocol (bench/loadgen.py, bench/pingpong.py)",
    CLIENT: "the same daemon; client: the library (`sessiond_client.connect`, `await send()`, "
    "`await recv()` + `received()`), bench/library_client.py",
    CEILING: "bench/ceiling.py, a raw uvloop framed echo: no sessions, no acknowledgements",
    MOSQUITTO: "mosquitto, MQTT 3.1.1 QoS 1 both ways, persistent session "
    "(clean_session=False), in-memory; the client publishes to a topic it is subscribed to; "
    "client: paho-mqtt on the asyncio loop (bench/mqtt_peer.py)",
    NATS: "nats-server, core NATS (at most once, nothing acknowledged); the client publishes to "
    "a subject it is subscribed to; client: nats-py, a subscription callback "
    "(bench/nats_peer.py)",
}


# --------------------------------------------------------------- markdown


def _rate(stats: Json) -> str:
    return f"{stats['median']:,.0f} [{stats['min']:,.0f}-{stats['max']:,.0f}]"


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## peers`` section of RESULTS.md."""
    config = entry["config"]
    echo_config = config["echo"]
    ran: list[str] = config["systems"]
    lines = latency.header(entry, commit, path)
    for reason in entry["skipped"].values():
        lines += [f"**{reason}.**", ""]
    lines += [
        "Systems: " + "; ".join(f"*{n}*: {note}" for n, note in entry["systems"].items()) + ".",
    ]
    for name, peer in entry["peers"].items():
        lines += [
            "",
            f"*{name}*: `{peer['version']}` (`{peer['binary']}`), client {peer['client']}; "
            "config: `" + " · ".join(peer["config"].strip().splitlines()) + "`.",
        ]
    lines += [
        "",
        "### echo",
        "",
        f"One connection per system, {echo_config['window']:,} messages in flight (sent, not "
        f"yet back), up to {echo_config['messages']:,} messages or "
        f"{echo_config['time_limit_s']:g} s per pass, {echo_config['repeat']} passes per "
        "system and size, interleaved, after a warm-up pass. Every message is checked, in "
        "order, when it comes back, and a pass ends once every message sent is back. Rates: "
        "median [min-max] messages/s; *÷ mosquitto*, *÷ nats*: this system's median over the "
        "peer's. *server CPU s/M msg*: the server's CPU seconds (all threads) per million "
        "messages; *loadgen µs CPU/msg*: the load generator's (the Python client's) CPU per "
        "message; *bound*: `client` when the load generator kept more than "
        f"{config['client_bound_threshold']:.0%} of its core busy (then the client, not the "
        "server, set the pace), `server` likewise, else `round-trip`; *cores full*: passes "
        "in which a pinned core was more than 90 % busy counting other processes on it.",
        "",
    ]
    rows = []
    for size, by_system in entry["echo"].items():
        for name in ran:
            if name not in by_system:
                continue
            stats = by_system[name]
            bounds = stats["bound"]
            rows.append(
                [
                    f"{size} B",
                    f"`{name}`",
                    _rate(stats["rate"]),
                    *(
                        _times(
                            stats["rate"]["median"] / by_system[peer]["rate"]["median"]
                            if peer in by_system and peer != name
                            else None
                        )
                        for peer in (MOSQUITTO, NATS)
                    ),
                    f"{stats['server_cpu_s_per_million']['median']:.2f}",
                    f"{stats['server_cpu_share']['median']:.0%}",
                    f"{stats['client_cpu_share']['median']:.0%}",
                    f"{stats['client_cpu_us_per_message']['median']:.1f}",
                    ", ".join(
                        f"{b} {bounds.count(b)}/{len(bounds)}" for b in dict.fromkeys(bounds)
                    ),
                    latency.full_cores_cell(stats["cores_full"]),
                    str(stats["lost"]),
                ]
            )
    lines += [
        markdown_table(
            [
                "payload",
                "system",
                "msg/s",
                "÷ mosquitto",
                "÷ nats",
                "server CPU s/M msg",
                "server core busy",
                "loadgen core busy",
                "loadgen µs CPU/msg",
                "bound",
                "cores full",
                "lost",
            ],
            rows,
        ),
        "",
    ]
    client_limited = sorted(
        {
            f"{name} ({size} B)"
            for size, by_system in entry["echo"].items()
            for name, stats in by_system.items()
            if name in PEERS and any(stats["client_bound"])
        }
    )
    if client_limited:
        lines += [
            "Client-bound peers: "
            + ", ".join(client_limited)
            + ": there the Python client, not the broker, is the limit (compare the "
            "server CPU per message to see how much more the broker could carry).",
            "",
        ]
    lines += latency.other_load_note(entry["other_load_share"])
    lat = config["latency"]
    lines += [
        "### latency",
        "",
        f"Ping-pong, {lat['payload_size']} B, one ping in flight per connection, "
        f"{lat['per_connection_rate']:,} pings/s per connection, {lat['duration_s']:g} s per "
        f"pass, {lat['repeat']} passes per system and rate (as `python -m bench latency`).",
        "",
        latency.latency_table(entry["latency"], ran),
        "",
        latency.LATENCY_NOTES,
        "",
    ]
    if entry["targets"]:
        lines += ["### targets", ""]
        for key, target in entry["targets"].items():
            ours, _, peer = key.partition("/")
            verdict = "met" if target["met"] else "**not met**"
            p99 = ", ".join(
                f"{ratio:.2g}x at {int(rate):,}/s" for rate, ratio in target["p99_ratio"].items()
            )
            lines.append(
                f"- `{ours}` vs `{peer}`: {target['rate_ratio']:.2f}x the echo rate at "
                f"{TARGET_SIZE} B (target ≥ {target['rate_target']:g}x); p99 over the peer's "
                f"{p99} (target ≤ 1 at every rate): {verdict}."
            )
        lines.append("")
    if entry["notes"]:
        lines += ["Notes: " + "; ".join(entry["notes"]) + ".", ""]
    return "\n".join(lines)
