"""``python -m bench store``'s two multi-process parts: kill -9 of a worker, and workers.

:func:`kill_worker`: a Redis-store ``--workers 2`` daemon (SO_REUSEPORT, supervised:
the heir already runs, as deployed) holds *sessions* sessions of the library
client (``sessiond_client``, reconnecting with backoff), each echoing a paced
stream of numbered payloads checked by :class:`bench.core.Checker`; the worker
holding the most of them (its connections, from ``/proc``) gets SIGKILL, and its
sessions reconnect to the same port: the other worker or the restarted one.
Measured: sessions active with their own id at the end, how many moved, messages
lost and duplicated, the time from the kill until the last moved session is active
again; target: all resumed, 0 lost, within the lease TTL (``store.lease_ttl``,
the default) + 2 s.

:func:`workers`: the echo of ``bench throughput`` at 100 sessions on
``--workers 2`` and on one daemon (both on the Redis store, unpinned), msg/s and
CPU per message summed over the daemon's processes (``/proc/PID/task/*/schedstat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable

import sessiond_client

from sessiond.config import StoreSection

from .core import Checker, make_pool
from .harness import Context, summarise
from .loadgen import EchoResult, echo
from .processes import HOST, Pinning, ServerProcess, cpu_seconds, daemon_argv
from .processes import server as start_server
from .results import Json

SIZE = 64
LEASE_TTL = StoreSection().lease_ttl  # the daemons run with the default
GRACE = 2.0  # the target: resumed within the lease TTL + 2 s
GAP = 0.2  # seconds between one session's sends (1,000 sessions: 5,000 msg/s)
BEFORE_KILL = 1.0  # seconds of traffic before the kill, and after the last resume


class Stream:
    """One library-client session echoing paced payloads, each echo checked."""

    def __init__(self, session: sessiond_client.Session, pool: list[bytes]) -> None:
        self.session = session
        self.id = session.id
        self.pool = pool
        self.checker = Checker("daemon", pool)
        self.sent = 0
        self.moved = False  # lost its transport after the kill
        self.resumed_at: float | None = None
        self.closed = False

    async def send(self, stop: asyncio.Event) -> None:
        mask = len(self.pool) - 1
        while not stop.is_set():
            await self.session.send(self.pool[self.sent & mask])
            self.sent += 1
            await asyncio.sleep(GAP)

    async def read(self) -> None:
        while True:
            self.checker.check([await self.session.recv()])


def children(pid: int) -> list[int]:
    """The child processes of *pid* (a supervisor's workers)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as found:
                pids += map(int, found.read().split())
    return pids


def tcp(port: int, state: str) -> list[str]:
    """Inodes of the 127.0.0.1:*port* TCP sockets in *state* (0A listen, 01 established)."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return [r[9] for r in rows if r[1].endswith(f":{port:04X}") and r[3] == state]


def listeners(port: int) -> int:
    """Listening TCP sockets on 127.0.0.1:*port* (one per worker: SO_REUSEPORT)."""
    return len(tcp(port, "0A"))


def held(pid: int, port: int) -> int:
    """Connections accepted on *port* that process *pid* holds (its sessions' transports)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[")[:-1])
    return len(inodes.intersection(tcp(port, "01")))


async def kill_run(daemon: ServerProcess, count: int) -> Json:
    pool = make_pool(SIZE)
    policy = sessiond_client.ReconnectPolicy(base=0.05, cap=0.5)
    url = f"tcp://{HOST}:{daemon.port}"
    streams: list[Stream] = []
    for first in range(0, count, 50):
        opened = await asyncio.gather(
            *(
                sessiond_client.connect(url, policy=policy)
                for _ in range(first, min(count, first + 50))
            )
        )
        streams += [Stream(session, pool) for session in opened]
    killed: list[float] = []

    def watch(stream: Stream) -> Callable[[sessiond_client.State], None]:
        def changed(state: sessiond_client.State) -> None:
            if killed and state is sessiond_client.State.RECONNECTING:
                stream.moved = True
            elif killed and stream.moved and stream.resumed_at is None:
                stream.resumed_at = time.monotonic()
            stream.closed = state is sessiond_client.State.CLOSED

        return changed

    for stream in streams:
        stream.session.on_state_change(watch(stream))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.send(stop)) for s in streams]
    readers = [asyncio.create_task(s.read()) for s in streams]
    await asyncio.sleep(BEFORE_KILL)
    per_worker = {pid: held(pid, daemon.port) for pid in children(daemon.pid)}
    victim = max(per_worker, key=lambda pid: per_worker[pid])
    os.kill(victim, signal.SIGKILL)
    killed.append(time.monotonic())
    cpu0 = time.process_time()
    restarted: list[float] = []
    gone = False  # the victim's listener closed; restarted once there are 2 again
    deadline = killed[0] + LEASE_TTL + 60.0
    while time.monotonic() < deadline and (
        sum(s.moved for s in streams) < per_worker[victim]
        or any(s.moved and s.resumed_at is None and not s.closed for s in streams)
    ):
        if not restarted:
            up = listeners(daemon.port)
            gone = gone or up < 2
            if gone and up >= 2:
                restarted.append(time.monotonic() - killed[0])
        await asyncio.sleep(0.02)
    client_share = (time.process_time() - cpu0) / (time.monotonic() - killed[0])
    await asyncio.sleep(BEFORE_KILL)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(TimeoutError):  # every echo back (a lost one: 30 s, then counted)
        async with asyncio.timeout(30.0):
            while any(s.checker.taken < s.sent for s in streams):
                await asyncio.sleep(0.02)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    active = sessiond_client.State.ACTIVE
    alive = sum(s.session.state is active and s.session.id == s.id for s in streams)
    for stream in streams:
        await stream.session.close()
    sent = sum(s.sent for s in streams)
    received = sum(s.checker.received for s in streams)
    times = sorted(s.resumed_at - killed[0] for s in streams if s.resumed_at is not None)
    return {
        "sessions": count,
        #: Sessions per worker PID at the kill (its accepted connections, from /proc).
        "per_worker": {str(pid): n for pid, n in per_worker.items()},
        "killed_pid": victim,
        "on_killed_worker": per_worker[victim],
        "moved": sum(s.moved for s in streams),  # sessions that lost their transport
        "resumed": alive,  # active with their own session id at the end
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "duplicates": sum(s.checker.duplicates for s in streams),
        "lease_ttl_s": LEASE_TTL,
        "kill_to_last_resumed_s": times[-1] if times else None,
        "kill_to_first_resumed_s": times[0] if times else None,
        "kill_to_median_resumed_s": times[len(times) // 2] if times else None,
        "kill_to_worker_restarted_s": restarted[0] if restarted else None,
        "send_gap_s": GAP,
        #: The load generator's CPU over the kill -> last resumed span, in cores.
        "client_cpu_share": client_share,
    }


def serving(daemon: ServerProcess, workers: int = 2) -> ServerProcess:
    """*daemon* once each of its *workers* listens on its port (<= 60 s)."""
    deadline = time.monotonic() + 60.0
    while listeners(daemon.port) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    return daemon


def kill_worker(ctx: Context, count: int, url: str) -> Json:
    """*count* sessions on ``--workers 2``; one worker gets SIGKILL, its sessions resume."""
    config = ctx.tmp / "kill.toml"  # one client address holds every session's transport
    config.write_text(f"[server]\nmax_transports_per_peer = {max(256, 2 * count)}\n")
    argv = [*daemon_argv(), "--store", url, "--config", str(config), "--workers", "2"]
    daemon = serving(ctx.server("daemon-kill", argv))
    out: Json = ctx.run(kill_run(daemon, count))
    ctx.servers[daemon.name]["killed_worker"] = f"pid {out['killed_pid']}: SIGKILL by the bench"
    print(
        f"  store kill -9  {out['resumed']:,}/{count:,} resumed ({out['moved']:,} moved off the "
        f"killed worker, which held {out['on_killed_worker']:,}), last "
        f"{out['kill_to_last_resumed_s'] or 0:.2f} s after the kill (lease {LEASE_TTL:g} s), "
        f"{out['lost']} lost, {out['duplicates']} duplicated",
        file=sys.stderr,
    )
    return out


# ------------------------------------------------------------------- workers


def tree_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds of *pid* and its children (a supervisor's workers)."""
    return lambda: sum(cpu_seconds(p) for p in [pid, *children(pid)])


def workers(
    ctx: Context, url: str, sessions: int, messages: int, window: int, repeat: int, limit: float
) -> Json:
    """Echo msg/s and CPU per message of ``--workers 2`` and of one daemon, unpinned."""
    unpinned = Pinning(None, None, "unpinned")
    base = [*daemon_argv(), "--store", url]
    daemons: dict[str, tuple[ServerProcess, Callable[[], float]]] = {}
    for name, argv in (("1", base), ("2", [*base, "--workers", "2"])):
        proc = ctx.stack.enter_context(
            start_server(f"daemon-workers-{name}", argv, unpinned, ctx.tmp)
        )
        ctx._keep(proc)
        daemons[name] = (proc, tree_cpu(proc.pid))
    proc = serving(daemons["2"][0])
    pool = make_pool(SIZE)

    by_name: dict[str, list[EchoResult]] = {name: [] for name in daemons}

    def one(name: str, _rep: int) -> EchoResult:
        daemon, clock = daemons[name]
        coroutine = echo(
            "daemon", daemon.port, pool, messages, window, limit, clock, sessions=sessions
        )
        echoed: EchoResult = ctx.run(coroutine)
        result = dataclasses.replace(echoed, system=f"{name} worker(s)")
        by_name[name].append(result)
        return result

    def show(result: EchoResult) -> str:
        cost = result.server_cpu * 1e6 / max(1, result.received)
        return f"{result.system} echo {result.rate:,.0f} msg/s, {cost:.1f} µs CPU/msg"

    ctx.passes(tuple(daemons), one, repeat, show=show)
    out: Json = {"sessions": sessions, "window": window, "listeners_2": listeners(proc.port)}
    for name, mine in by_name.items():
        out[name] = summarise(
            [
                {
                    **r.to_json(),
                    "server_cpu_us_per_message": r.server_cpu * 1e6 / max(1, r.received),
                }
                for r in mine
            ]
        )
    return out
