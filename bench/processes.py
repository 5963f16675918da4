"""Servers under test in their own processes: pinning, start, readiness, CPU, RSS, stop.

Every socket-level scenario runs its servers (the daemon, the ceiling, the peer brokers) as
separate processes on 127.0.0.1, pinned to one core with ``taskset`` while the load
generator (the bench process) is pinned to another (:func:`choose_pinning`).
:class:`ServerProcess` starts one, waits until it accepts connections, reads its CPU
seconds and RSS from ``/proc`` and stops it with SIGTERM (then SIGKILL), keeping its output
for the results. :func:`pace` says what bound a timed pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from . import BenchError
from .results import REPO_ROOT, Json

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

HOST = "127.0.0.1"
CPU_TICK = os.sysconf("SC_CLK_TCK")
#: How the servers' CPU is read, for the results.
CPU_CLOCK = (
    "servers: /proc/PID/task/*/schedstat (ns, every live thread); load generator: "
    "time.process_time (CLOCK_PROCESS_CPUTIME_ID, ns)"
)
#: A pass whose process used more than this share of its core was bound by that side.
CLIENT_BOUND = 0.9

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which core the servers and the load generator run on (None: unpinned)."""

    server_cpu: int | None
    loadgen_cpu: int | None
    note: str

    @property
    def pinned(self) -> bool:
        return self.server_cpu is not None

    def prefix(self) -> list[str]:
        return [] if self.server_cpu is None else ["taskset", "-c", str(self.server_cpu)]

    def to_json(self) -> Json:
        server, loadgen = ("taskset -c", "os.sched_setaffinity") if self.pinned else (None, None)
        return {"pinned": self.pinned, "note": self.note, "server_cpu": self.server_cpu,
                "server_pinned_with": server, "loadgen_cpu": self.loadgen_cpu,
                "loadgen_pinned_with": loadgen}  # fmt: skip


def choose_pinning() -> Pinning:
    """Server on core 0 with taskset, load generator on core 1, when both are possible."""
    if not hasattr(os, "sched_getaffinity"):
        return Pinning(None, None, "unpinned: no sched_setaffinity on this platform")
    usable = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None:
        return Pinning(None, None, "unpinned: taskset not found")
    if len(usable) < 2:
        return Pinning(None, None, f"unpinned: only {len(usable)} usable core(s)")
    server, loadgen = (0, 1) if {0, 1} <= set(usable) else (usable[0], usable[1])
    return Pinning(server, loadgen, f"server `taskset -c {server}`, load generator core {loadgen}")


@contextlib.contextmanager
def pinned_loadgen(pinning: Pinning) -> Iterator[None]:
    """Run the body on the load generator's core; restore this process's affinity after."""
    affinity = os.sched_getaffinity(0) if pinning.loadgen_cpu is not None else None
    if pinning.loadgen_cpu is not None:
        os.sched_setaffinity(0, {pinning.loadgen_cpu})
    try:
        yield
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


class CoreLoad:
    """How busy the pinned cores were, to tell what other processes took of them:
    :meth:`start` and :meth:`others` read ``/proc/stat`` (busy: user, nice, system, irq,
    softirq, steal) around a pass, less what the server and the load generator used."""

    def __init__(self, pinning: Pinning) -> None:
        self.cpus = (pinning.server_cpu, pinning.loadgen_cpu)
        self._ticks: dict[int, int] = {}
        self._t0 = 0.0

    @staticmethod
    def busy_ticks() -> dict[int, int]:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                rows = [line.split() for line in stat if line[:3] == "cpu" and line[3] != " "]
            # user, nice, system, (not idle, iowait,) irq, softirq, steal
            return {int(row[0][3:]): sum(int(row[i]) for i in (1, 2, 3, 6, 7, 8)) for row in rows}
        except (OSError, ValueError, IndexError):
            return {}

    def start(self) -> None:
        self._ticks, self._t0 = self.busy_ticks(), time.perf_counter()

    def others(self, server_cpu: float, loadgen_cpu: float) -> tuple[float, float] | None:
        """Share of each core (server's, load generator's) that others used since :meth:`start`."""
        seconds, ticks = time.perf_counter() - self._t0, self.busy_ticks()
        server, loadgen = self.cpus
        if server is None or loadgen is None or seconds <= 0 or not ticks or not self._ticks:
            return None
        busy = [(ticks.get(c, 0) - self._ticks.get(c, 0)) / CPU_TICK for c in (server, loadgen)]
        shares = [max(0.0, min(1.0, (b - ours) / seconds))
                  for b, ours in zip(busy, (server_cpu, loadgen_cpu), strict=True)]  # fmt: skip
        return shares[0], shares[1]


def cpu_seconds(pid: int) -> float:
    """CPU seconds process *pid* has run so far, in nanoseconds' resolution: the first field
    of ``/proc/PID/task/*/schedstat`` summed over its threads (``/proc/PID/stat`` ticks where
    a kernel has no schedstats)."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{tid}/schedstat"
            with contextlib.suppress(OSError, ValueError, IndexError), open(path, "rb") as stat:
                total += int(stat.read().split()[0])  # (a thread that just ended: skipped)
    if total:
        return total / 1e9
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CPU_TICK  # fields 14 and 15 of stat


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when available, else asyncio's default one."""
    loop: asyncio.AbstractEventLoop = (uvloop or asyncio).new_event_loop()
    return loop


def loop_name() -> str:
    return "uvloop" if uvloop is not None else "asyncio"


class Timed(Protocol):
    """A timed pass: its wall seconds and both processes' CPU seconds over them."""

    @property
    def seconds(self) -> float: ...
    @property
    def client_cpu(self) -> float: ...
    @property
    def server_cpu(self) -> float: ...


def bound_by(result: Timed) -> str:
    """What set the pace of a pass: the load generator's core (``client``), the
    server's, or neither (``round-trip``: they took turns, each waiting for the other)."""
    if result.client_cpu / result.seconds > CLIENT_BOUND:
        return "client"
    return "server" if result.server_cpu / result.seconds > CLIENT_BOUND else "round-trip"


def full_cores(
    server_cpu: float, client_cpu: float, seconds: float, others: Sequence[float] | None
) -> list[str]:
    """Which pinned cores were more than :data:`CLIENT_BOUND` busy during a pass, counting
    what other processes took of them: that side could not go faster on this machine."""
    server_other, loadgen_other = others if others is not None else (0.0, 0.0)
    shares = {"server": server_cpu / seconds + server_other}
    shares["loadgen"] = client_cpu / seconds + loadgen_other
    return [core for core, share in shares.items() if share > CLIENT_BOUND]


def pace(result: Timed, others: Sequence[float] | None) -> Json:
    """A pass's seconds, CPU seconds and shares, what bound it, which cores were full, and
    others' share."""
    client_share = result.client_cpu / result.seconds
    return {
        "seconds": result.seconds,
        "client_cpu_s": result.client_cpu,
        "server_cpu_s": result.server_cpu,
        "server_cpu_share": result.server_cpu / result.seconds,
        "client_cpu_share": client_share,
        "client_bound": client_share > CLIENT_BOUND,
        "bound": bound_by(result),
        "cores_full": full_cores(result.server_cpu, result.client_cpu, result.seconds, others),
        **({} if others is None else {"other_load_share": list(others)}),
    }


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file soft limit to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


#: Where :func:`free_port` starts looking (below it: well-known and registered services).
FIRST_FREE_PORT = 20000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (and of port 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):  # not Linux: Linux's default
        return 32768, 60999


def free_port(host: str = HOST) -> int:
    """A TCP port nothing uses on *host* now, for a server started next (by a process of
    its own, so the port cannot be bound here and handed over).

    Random below the kernel's ephemeral range, checked by binding it. Not port 0: that
    picks an ephemeral port, which any outgoing connection (a client, a store's
    connection, another test's) may take as its local port between this check and the
    server's bind; below the range, only a listener binds a port, on purpose.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = ephemeral_ports()[0]
    first = FIRST_FREE_PORT if low > FIRST_FREE_PORT + 1000 else 1024
    for _ in range(200):
        port = random.randrange(first, low)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # in use (or in TIME_WAIT): another one
        return port
    raise OSError(f"no free port found on {host} in {first}..{low - 1}")


class ServerProcess:
    """A server in its own process, listening on 127.0.0.1:*port*, pinned as asked; as a
    context manager, stopped when the body ends however it ends.

    *command* must make the server listen on *port*; its output goes to
    ``<log_dir>/<name>.log``. :meth:`stop` sends *stop_signal* (nats-server exits with 1
    on SIGTERM and 0 on SIGINT).
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        pinning: Pinning,
        log_dir: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name, self.port, self.stop_signal, self._command = name, port, stop_signal, command
        self.argv = [*pinning.prefix(), *command]
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w+b")
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_nofile,  # noqa: PLW1509 - only setrlimit, and no threads
            )  # fmt: skip
        except OSError as exc:
            self._log.close()
            raise BenchError(f"{name}: cannot start {command[0]}: {exc}") from None
        self.pid = self.proc.pid
        self.returncode: int | None = None
        deadline = time.monotonic() + 20.0
        while True:  # until it accepts connections
            self.check_alive()
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"{self.name}: not listening after 20 s") from None
                time.sleep(0.05)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.returncode is None:
            self.stop()

    def check_alive(self) -> None:
        if (code := self.proc.poll()) is not None:
            raise BenchError(f"{self.name} exited with {code}: {self.log_tail() or '(no output)'}")

    def cpu_seconds(self) -> float:
        """CPU seconds of the server process so far, all its threads, to the nanosecond."""
        return cpu_seconds(self.pid)

    def status(self, key: str) -> str:
        with open(f"/proc/{self.pid}/status", encoding="utf-8") as status:
            for name, _, value in (line.partition(":") for line in status):
                if name == key:
                    return value.strip()
        raise BenchError(f"{self.name}: no {key} in /proc/{self.pid}/status")

    def rss_kib(self) -> int:
        self.check_alive()
        return int(self.status("VmRSS").split()[0])

    def nofile_limit(self) -> str:
        with open(f"/proc/{self.pid}/limits", encoding="utf-8") as limits:
            found = [line.split()[3:5] for line in limits if line.startswith("Max open files")]
        return " ".join(found[0]) if found else "?"

    def describe(self) -> Json:
        return {
            "argv": self.argv,
            "command": " ".join(self._command).replace(sys.executable, "python"),
            "pid": self.pid,
            "affinity": sorted(os.sched_getaffinity(self.pid)),
            "nofile_soft_hard": self.nofile_limit(),
        }

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> Json:
        """The stop signal, then SIGKILL after 15 s; return the exit status and the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(15.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self.returncode = self.proc.returncode
        self._log.close()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return {"exit_code": self.returncode, "log_lines": len(text.splitlines()),
                "log": text[-4000:]}  # fmt: skip


@contextlib.contextmanager
def server(name: str, argv: list[str], pinning: Pinning, log_dir: Path) -> Iterator[ServerProcess]:
    """``python -m ARGV --listen 127.0.0.1:PORT`` on a free port, for the body."""
    port = free_port()
    command = [sys.executable, "-m", *argv, "--listen", f"{HOST}:{port}"]
    with ServerProcess(name, command, port, pinning, log_dir) as proc:
        yield proc


def daemon_argv(app: str = "echo") -> list[str]:
    """The daemon with *app* (echo unless told), named: the embedded default app may change."""
    return ["sessiond", "serve", "--app", app, "--log-level", "WARNING"]


def ceiling_argv() -> list[str]:
    return ["bench.ceiling"]
