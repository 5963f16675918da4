"""The systems under test, side by side, and the windowed echo passes over them.

``daemon`` (the protocol core driven by the bench), ``client`` (the same daemon through
the client library), ``ceiling`` (the raw framed uvloop echo), ``mosquitto`` (QoS 1,
paho-mqtt) and ``nats`` (core NATS, nats-py), each server in its own pinned process on
127.0.0.1 (:func:`start`); a peer whose binary or Python client is missing is skipped
with a line saying how to install it. :func:`measure_echo` runs every system *repeat*
times per payload size, their order rotated each repetition; :func:`summarise_echo`
gives each figure's median and spread, every repetition kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

from . import BenchError
from .core import make_pool
from .harness import Context, summarise
from .library_client import client_echo, client_ping
from .loadgen import CpuClock, EchoResult, echo
from .pingpong import PingPlan, PingResult, ping_protocols
from .processes import HOST, ServerProcess, bound_by, ceiling_argv, daemon_argv, free_port
from .results import Json

DAEMON = "daemon"
CLIENT = "client"
CEILING = "ceiling"
MOSQUITTO = "mosquitto"
NATS = "nats"
#: Every system, in the order of the tables and the plot.
SYSTEMS = (DAEMON, CLIENT, CEILING, MOSQUITTO, NATS)
#: The two ways sessiond is driven: the protocol core, and the client library.
SESSIOND = (DAEMON, CLIENT)
#: Messages a client keeps in flight unless a scenario says otherwise (mosquitto's
#: queue limits are raised to the most a scenario uses).
WINDOW = 1024
#: Where a broker may be when it is not on PATH (Debian puts both in /usr/sbin).
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
PIP_INSTALL = "python3 -m pip install -e '.[bench]'"

#: One windowed echo pass: ``echo(port, pool, messages, window, time_limit, server_cpu)``,
#: and ``sessions=N`` to share the messages out over N sessions (connections).
EchoFunction = Callable[..., Coroutine[Any, Any, EchoResult]]
#: One ping-pong pass: (plan, port, server_cpu).
PingFunction = Callable[[PingPlan, int, CpuClock], Coroutine[Any, Any, PingResult]]


def mosquitto_config(port: int, window: int) -> str:
    """One listener on 127.0.0.1:*port*, anonymous clients, sessions in memory only (as the
    daemon keeps its own), Nagle off (mosquitto leaves it on, which would add delayed-ACK
    stalls to every round trip), and the QoS 1 in-flight and queue limits raised to the
    echo window, so that the broker, not its defaults (20 in flight), holds as many
    messages as sessiond's window."""
    return (
        f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n"
        f"set_tcp_nodelay true\nmax_inflight_messages {window}\n"
        f"max_queued_messages {4 * window}\nlog_dest stderr\nlog_type error\n"
        "log_type warning\n"
    )


def nats_config(port: int, _window: int) -> str:
    """127.0.0.1:*port*, defaults otherwise (no JetStream: core NATS, at most once). Pinned
    to one core with ``taskset``, the Go runtime sizes GOMAXPROCS to that one core."""
    return f"host: {HOST}\nport: {port}\n"


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer broker: its binary (run as ``BINARY -c CONFIG``), how to install it, its
    config, the signal that stops it cleanly, its Python client and the bench module
    that drives it (with ``echo`` and ``ping``)."""

    name: str
    binary: str
    install: str
    module: str  # the client library's import name
    package: str  # its PyPI distribution
    config: Callable[[int, int], str]  # (port, window) -> the config file's text
    driver: str  # its module in bench/
    stop_signal: signal.Signals = signal.SIGTERM

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
        MOSQUITTO, "mosquitto", "apt-get install mosquitto (Debian package `mosquitto`)",
        "paho.mqtt", "paho-mqtt", mosquitto_config, "mqtt_peer",
    ),
    NATS: Peer(
        NATS, "nats-server", "apt-get install nats-server (Debian package `nats-server`)",
        "nats", "nats-py", nats_config, "nats_peer",
        signal.SIGINT,  # nats-server exits with 1 on SIGTERM, with 0 on SIGINT
    ),
}  # fmt: skip

SYSTEM_NOTES = {
    DAEMON: "`python -m sessiond serve` (echo app), exactly once, acknowledged both ways; "
    "client: the protocol core in an asyncio.Protocol (bench/loadgen.py, bench/pingpong.py)",
    CLIENT: "the same daemon; client: the library (`sessiond_client.connect`, `await send()`, "
    "`await recv()` + `received()`), bench/library_client.py",
    CEILING: "bench/ceiling.py, a raw uvloop framed echo (4-byte length prefix, one write per "
    "read): no sessions, no acknowledgements",
    MOSQUITTO: "mosquitto, MQTT 3.1.1 QoS 1 both ways, persistent session "
    "(clean_session=False), in-memory; the client publishes to a topic it is subscribed to; "
    "client: paho-mqtt on the asyncio loop (bench/mqtt_peer.py)",
    NATS: "nats-server, core NATS (at most once, nothing acknowledged); the client publishes to "
    "a subject it is subscribed to; client: nats-py, a subscription callback "
    "(bench/nats_peer.py)",
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


def package_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


# --------------------------------------------------------------- options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--systems``, ``--mosquitto`` and ``--nats-server`` (shared by throughput and latency)."""
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        metavar="S,S",
        help=f"systems to run, comma-separated (default {','.join(SYSTEMS)})",
    )
    for peer in PEERS.values():
        parser.add_argument(
            f"--{peer.binary}",
            metavar="PATH",
            help=f"the {peer.binary} binary (default: found on PATH, sbin)",
        )


def parse_systems(text: str) -> list[str]:
    """The systems ``--systems`` names, in the order of :data:`SYSTEMS`."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or not names:
        raise BenchError(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    return [name for name in SYSTEMS if name in names]


# ---------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class System:
    """A system under test: its server process and its two load generators."""

    name: str
    proc: ServerProcess
    echo: EchoFunction
    ping: PingFunction | None = None
    port: int | None = None


def find_peers(args: argparse.Namespace, wanted: Sequence[str]) -> tuple[dict[str, str], Json]:
    """The peers' binaries that can run, and a one-line reason for each that cannot."""
    binaries: dict[str, str] = {}
    skipped: Json = {}
    for name, peer in PEERS.items():
        if name not in wanted:
            continue
        binary = find_binary(peer.binary, getattr(args, peer.binary.replace("-", "_")))
        reason = peer.skip_reason(binary)
        if reason is None and binary is not None:
            binaries[name] = binary
        else:
            skipped[name] = reason or name
            print(reason, file=sys.stderr, flush=True)
    return binaries, skipped


def start(
    ctx: Context, wanted: Sequence[str], binaries: dict[str, str], window: int
) -> tuple[list[System], Json]:
    """Start the servers of the *wanted* systems (peers from *binaries*) for the scenario;
    return the systems and what the results say of each peer."""
    started: list[System] = []
    if DAEMON in wanted or CLIENT in wanted:
        daemon = ctx.server("daemon", daemon_argv())
        if DAEMON in wanted:
            started.append(System(DAEMON, daemon, functools.partial(echo, DAEMON), ping_protocols))
        if CLIENT in wanted:
            started.append(System(CLIENT, daemon, client_echo, client_ping))
    if CEILING in wanted:
        ceiling = ctx.server("ceiling", ceiling_argv())
        started.append(System(CEILING, ceiling, functools.partial(echo, CEILING), ping_protocols))
    peers: Json = {}
    for name, binary in binaries.items():
        proc, peers[name] = start_peer(ctx, PEERS[name], binary, window)
        # Imported here, once find_peers has seen the client library installed.
        driver = importlib.import_module(f"{__package__}.{PEERS[name].driver}")
        started.append(System(name, proc, driver.echo, driver.ping))
    return started, peers


def start_peer(ctx: Context, peer: Peer, binary: str, window: int) -> tuple[ServerProcess, Json]:
    """Start *peer*'s broker on a free port with a temporary config, for the scenario."""
    port = free_port()
    text = peer.config(port, window)
    path = ctx.tmp / f"{peer.binary}.conf"
    path.write_text(text, encoding="utf-8")
    command = [binary, "-c", str(path)]
    proc = ctx.process(peer.name, command, port, stop_signal=peer.stop_signal)
    described = {
        "binary": binary,
        "version": binary_version(binary),
        "client": f"{peer.package} {package_version(peer.package)}",
        "config": text,
    }
    return proc, described


def markdown_lines(state: Json) -> list[str]:
    """Skipped peers, the systems and each peer's version and config, for a section."""
    lines: list[str] = []
    for reason in state["skipped"].values():
        lines += [f"**{reason}.**", ""]
    lines.append(
        "Systems: " + "; ".join(f"*{n}*: {note}" for n, note in state["systems"].items()) + "."
    )
    for name, peer in state["peers"].items():
        lines += [
            "",
            f"*{name}*: `{peer['version']}` (`{peer['binary']}`), client {peer['client']}; "
            "config: `" + " · ".join(peer["config"].strip().splitlines()) + "`.",
        ]
    return [*lines, ""]


# ------------------------------------------------------------ echo passes


@dataclass(frozen=True, slots=True)
class EchoPlan:
    """*messages* per pass (or *time_limit* seconds), shared out over *sessions* sessions,
    each with up to *window* messages in flight."""

    messages: int
    repeat: int
    window: int
    time_limit: float
    warmup: int
    sizes: tuple[int, ...] = (64, 1024)
    sessions: int = 1


def measure_echo(ctx: Context, plan: EchoPlan, systems: Sequence[System]) -> list[EchoResult]:
    """Every system, *repeat* passes per payload size, their order rotated each repetition."""
    runs: list[EchoResult] = []
    many = f"{plan.sessions} sessions " if plan.sessions > 1 else ""
    for size in plan.sizes:
        pool = make_pool(size)

        def one(system: System, messages: int, pool: list[bytes] = pool) -> EchoResult:
            proc, port = system.proc, system.port or system.proc.port
            # Only a many-session pass names its sessions: an echo function written for
            # one connection (tls's) need not take the argument.
            kwargs = {"sessions": plan.sessions} if plan.sessions > 1 else {}
            coroutine = system.echo(
                port, pool, messages, plan.window, plan.time_limit, proc.cpu_seconds, **kwargs
            )
            result, others = ctx.timed(proc, lambda: ctx.run(coroutine))
            # Every echo function reports under its own name; the tables use the system's.
            return dataclasses.replace(cast(EchoResult, result), system=system.name, others=others)

        def show(result: EchoResult) -> str:
            return (
                f"echo {many}{result.size:>5} B  {result.system:<9} {result.rate:>11,.0f} msg/s  "
                f"server {result.server_cpu / result.seconds:4.0%}  "
                f"loadgen {result.client_cpu / result.seconds:4.0%}  {bound_by(result)}-bound"
            )

        runs += ctx.passes(
            systems,
            lambda system, _rep: one(system, plan.messages),
            plan.repeat,
            warmup=(lambda system: one(system, plan.warmup)) if plan.warmup else None,
            show=show,
        )
    return runs


def summarise_echo(runs: list[EchoResult], names: Sequence[str], sizes: Sequence[int]) -> Json:
    """Per payload size and system: every figure's median and spread, and every repetition."""
    return {
        str(size): {
            name: summarise([run.to_json() for run in mine])
            for name in names
            if (mine := [run for run in runs if run.size == size and run.system == name])
        }
        for size in sizes
    }
