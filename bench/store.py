"""``python -m bench store``: the echo with sessions in Redis beside the memory store, one run.

Two daemons, ``--store memory`` and ``--store redis://127.0.0.1:PORT/0`` (issue 16), carry the
windowed echo of ``bench throughput`` (every message checked, none lost) at 64 B over 100
sessions and over one, the stores interleaved. redis-server (``/usr/bin/redis-server``, no
persistence) is started by the harness and pinned with the daemons to the server core, so a
pass measures both. Per pass: msg/s, CPU µs per message of the daemon and of Redis
(``/proc/PID/task/*/schedstat``), Redis commands per message (``INFO stats``). Targets: the
Redis store keeps 50 % of the memory store's msg/s at 100 sessions and 40 % at one, paired
within each repetition. Then one session cut ``--move-cuts`` times, each resume on the other
of two live daemons (cut -> resumed p99 < 10 ms); ``--kill-sessions`` library-client sessions
on ``--workers 2`` with one worker SIGKILLed (all resumed, 0 lost, within the lease TTL + 2 s);
``--workers 2`` against one daemon. Run only when named: it needs redis-server and the
``redis`` extra (``tests/test_bench_store.py`` runs its ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sessiond_client

from sessiond.config import StoreSection

from . import BenchError, resume, throughput
from .core import POOL, Checker, make_pool
from .harness import (
    Context,
    bounds_cell,
    counts,
    given,
    header,
    notes_lines,
    option,
    other_load,
    other_load_note,
    positive,
    scenario,
    spread_cell,
    summarise,
)
from .loadgen import echo
from .processes import HOST, Pinning, ServerProcess, cpu_seconds, daemon_argv, free_port
from .results import Json, markdown_table, spread
from .summary import Headline, Target, cpu_cell, judged, values_range
from .throughput import plural

HELP = "echo msg/s with --store redis:// beside the memory store, 100 sessions and 1"
SCENARIO, MEMORY, REDIS = "store", "memory", "redis"
STORES = (MEMORY, REDIS)
REDIS_SERVER = "/usr/bin/redis-server"
SIZE = 64
TARGET = {1: 0.40, 100: 0.50}  # the Redis store's share of the memory store's msg/s
MOVE_P99_MS = 10.0  # one session resumed on another live daemon: cut -> resumed p99
LEASE_TTL = StoreSection().lease_ttl  # the daemons run with the default
GRACE = 2.0  # kill -9 of a worker: every session resumed within the lease TTL + this
GAP = 0.2  # seconds between one session's sends in the kill (1,000 sessions: 5,000 msg/s)
BEFORE_KILL = 1.0  # seconds of traffic before the kill, and after the last resume


def goal(sessions: int) -> float:
    return TARGET[1] if sessions == 1 else TARGET[100]


def redis_command(port: int, directory: Path) -> list[str]:
    """redis-server on 127.0.0.1:*port*, in *directory*, with no persistence."""
    flags = f"--port {port} --bind {HOST} --appendonly no --daemonize no --protected-mode yes"
    return [REDIS_SERVER, *flags.split(), "--dir", str(directory), "--save", ""]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "sessions", str, "100,1", "10,1", metavar="N,N", help="sessions per pass")
    throughput.add_pass_arguments(parser)
    option(parser, "move_cuts", int, 100, 0, metavar="N",
           help="cuts of one session, each resumed on the other of two live daemons on the "
           f"same Redis (window 1000); cut -> resumed p99 (target {MOVE_P99_MS:g} ms)")  # fmt: skip
    option(parser, "kill_sessions", int, 1_000, 20, metavar="N",
           help="library-client sessions on a --workers 2 daemon, one worker killed with "
           "SIGKILL, its sessions resumed on the same port (0: not measured)")  # fmt: skip
    option(parser, "redis_server", str, REDIS_SERVER, metavar="PATH", help="redis-server")


def run(args: argparse.Namespace) -> int:
    positive(args, "messages", "repeat", "time_limit", "window")
    quick = bool(args.quick)
    messages = given(args, "messages", 20_000_000, 500)  # a full pass is bounded by time
    repeat = given(args, "repeat", 3, 3)
    sessions = counts(given(args, "sessions", "100,1", "10,1"), "--sessions")
    one_window, many_window = throughput.ONE_SESSION_WINDOW, throughput.MANY_SESSIONS_WINDOW
    windows = {n: args.window or (one_window if n == 1 else many_window) for n in sessions}
    if max(windows.values()) > POOL // 2:
        raise BenchError(f"--window must be 1..{POOL // 2}")
    wanted = given(args, "redis_server", REDIS_SERVER, REDIS_SERVER)
    if (binary := shutil.which(wanted)) is None:
        raise BenchError(f"no redis-server at {wanted}: `apt-get install redis-server`")
    limit: float = args.time_limit
    warmup = 0 if quick else min(messages, 5_000)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    banner = (
        f"memory vs redis store; {', '.join(map(plural, sessions))}; {messages:,} "
        f"messages (or {args.time_limit:g} s) x {repeat}, {SIZE} B"
    )

    def body(ctx: Context) -> Json:
        port = free_port()
        (ctx.tmp / "redis").mkdir()
        command = [binary, *redis_command(port, ctx.tmp / "redis")[1:]]
        redis_proc = ctx.process("redis", command, port)
        url = f"redis://{HOST}:{port}/0"
        daemons = {
            MEMORY: ctx.server("daemon-memory", daemon_argv()),
            REDIS: ctx.server("daemon-redis", [*daemon_argv(), "--store", url]),
        }
        import redis  # noqa: PLC0415 - the `redis` extra: only when this scenario runs

        client: Any = redis.Redis(host=HOST, port=port, socket_timeout=10.0)
        ctx.stack.callback(client.close)
        pool = make_pool(SIZE)

        def one(store: str, count: int, n: int) -> tuple[str, Json]:
            daemon = daemons[store]
            clock, window = daemon.cpu_seconds, windows[n]
            coroutine = echo("daemon", daemon.port, pool, count, window, limit, clock, sessions=n)
            commands0 = client.info("stats")["total_commands_processed"]
            redis0 = redis_proc.cpu_seconds()
            result, others = ctx.timed(daemon, lambda: ctx.run(coroutine))
            redis_cpu = redis_proc.cpu_seconds() - redis0
            # INFO itself is a command: not counted against the pass.
            commands = client.info("stats")["total_commands_processed"] - commands0 - 1
            received = max(1, result.received)
            return store, {
                **dataclasses.replace(result, system=store, others=others).to_json(),
                "server_cpu_us_per_message": result.server_cpu * 1e6 / received,
                "redis_cpu_s": redis_cpu,
                "redis_cpu_us_per_message": redis_cpu * 1e6 / received,
                "redis_commands": commands,
                "redis_commands_per_message": commands / received,
            }

        def show(got: tuple[str, Json]) -> str:
            store, rep = got
            return (
                f"echo {plural(rep['sessions']):>12} {SIZE} B  {store:<6} {rep['rate']:>9,.0f}"
                f" msg/s  daemon {rep['server_cpu_us_per_message']:5.1f} µs/msg  redis "
                f"{rep['redis_cpu_us_per_message']:5.1f} µs/msg "
                f"{rep['redis_commands_per_message']:.2f} cmd/msg  {rep['bound']}-bound"
            )

        def measure(n: int) -> Json:
            warm = (lambda store: one(store, warmup, n)) if warmup else None
            reps = ctx.passes(STORES, lambda s, _: one(s, messages, n), repeat, warm, show)
            out: Json = {s: summarise([rep for t, rep in reps if t == s]) for s in STORES}
            of_medians = out[REDIS]["rate"]["median"] / out[MEMORY]["rate"]["median"]
            out["ratio"] = {"of_medians": of_medians, "per_repetition": spread(ratios(out))}
            loads.extend(rep.get("other_load_share") for _, rep in reps)
            return out

        loads: list[Any] = []
        by_count = {str(n): measure(n) for n in sessions}
        cuts = given(args, "move_cuts", 100, 0)
        kills = given(args, "kill_sessions", 1_000, 20)
        entry: Json = {
            "config": {
                "stores": {MEMORY: "--store memory (default)", REDIS: f"--store {url}"},
                "redis": {
                    "binary": binary,
                    "version": version.stdout.strip(),
                    "persistence": "none (--save '' --appendonly no)",
                    "pinned_with": "the daemons, on the server core",
                },
                "sessions": list(sessions),
                "messages": messages,
                "messages_are": "per pass, shared out over its sessions",
                "time_limit_s": args.time_limit,
                "repeat": repeat,
                "window_per_session": {str(n): windows[n] for n in sessions},
                "warmup_messages": warmup,
                "payload_size": SIZE,
                "targets": {str(n): goal(n) for n in sessions},
            },
            "other_load_share": other_load(loads),
            "echo": by_count,
            "move": move(ctx, cuts, daemons[REDIS], url) if cuts > 0 else None,
            "kill": kill_worker(ctx, kills, url) if kills > 0 else None,
            "workers": workers(
                ctx, url, 10 if quick else 100, messages, many_window, repeat, limit
            ),
            "redis_keys_after": int(client.dbsize()),
            "markdown": markdown,
        }
        entry["targets"] = [dataclasses.asdict(t) for t in targets({**entry, "quick": quick}, {})]
        return entry

    return scenario(args, SCENARIO, banner, body)


def ratios(by_store: Json) -> list[float]:
    """Redis over memory, repetition by repetition (they ran side by side in each)."""
    pairs = zip(by_store[REDIS]["repetitions"], by_store[MEMORY]["repetitions"], strict=True)
    return [redis_rep["rate"] / memory_rep["rate"] for redis_rep, memory_rep in pairs]


def move(ctx: Context, cuts: int, owner: ServerProcess, url: str) -> Json:
    """One session of ``bench resume``'s client cut *cuts* times, each resume on the
    other daemon of the same store while the owner is alive (a takeover, README)."""
    other = ctx.server("daemon-redis-2", [*daemon_argv(), "--store", url])
    messages = max(resume.MIN_GAP * (cuts + 1) * 2, 20_000)
    result = ctx.run(
        resume.resume_pass(
            owner.port,
            make_pool(SIZE),
            messages,
            resume.DEFAULT_WINDOW,
            cuts,
            resume.TIME_LIMIT,
            resume.SEED,
            owner.cpu_seconds,
            resume_ports=(other.port, owner.port),
        )
    )
    out: Json = result.to_json()
    first = out["from_cut_us"]["first_message"]
    print(
        f"  {SCENARIO} move  {result.cuts} cuts across two daemons, cut -> first message "
        f"p50 {first.get('p50', 0) / 1e3:.2f} ms p99 {first.get('p99', 0) / 1e3:.2f} ms",
        file=sys.stderr,
    )
    return out


# ------------------------------------------------------- kill -9 of a worker, --workers 2


class Stream:
    """One library-client session echoing paced payloads, each echo checked; *killed* holds
    the kill's time once it has happened."""

    def __init__(self, session: sessiond_client.Session, pool: list[bytes], killed: list[float]):
        self.session, self.id, self.pool, self.killed = session, session.id, pool, killed
        self.checker = Checker("daemon", pool)
        self.sent = 0
        self.moved = self.closed = False  # moved: lost its transport after the kill
        self.resumed_at: float | None = None
        session.on_state_change(self.changed)

    def changed(self, state: sessiond_client.State) -> None:
        if self.killed and state is sessiond_client.State.RECONNECTING:
            self.moved = True
        elif self.killed and self.moved and self.resumed_at is None:
            self.resumed_at = time.monotonic()
        self.closed = state is sessiond_client.State.CLOSED

    async def send(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.session.send(self.pool[self.sent % len(self.pool)])
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
    with open("/proc/net/tcp", encoding="ascii") as found:
        rows = [line.split() for line in found.readlines()[1:]]
    return [row[9] for row in rows if row[1].endswith(f":{port:04X}") and row[3] == state]


def held(pid: int, port: int) -> int:
    """Connections accepted on *port* that process *pid* holds (its sessions' transports)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[")[:-1])
    return len(inodes.intersection(tcp(port, "01")))


def serving(daemon: ServerProcess, workers: int = 2) -> ServerProcess:
    """*daemon* once each of its *workers* listens on its port (SO_REUSEPORT; <= 60 s)."""
    deadline = time.monotonic() + 60.0
    while len(tcp(daemon.port, "0A")) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    return daemon


async def kill_run(daemon: ServerProcess, count: int) -> Json:
    policy = sessiond_client.ReconnectPolicy(base=0.05, cap=0.5)
    pool, url, killed = make_pool(SIZE), f"tcp://{HOST}:{daemon.port}", list[float]()
    streams: list[Stream] = []
    for first in range(0, count, 50):
        batch = range(first, min(count, first + 50))
        opened = [sessiond_client.connect(url, policy=policy) for _ in batch]
        streams += [Stream(session, pool, killed) for session in await asyncio.gather(*opened)]
    stop = asyncio.Event()
    senders = [asyncio.create_task(s.send(stop)) for s in streams]
    readers = [asyncio.create_task(s.read()) for s in streams]
    await asyncio.sleep(BEFORE_KILL)
    per_worker = {pid: held(pid, daemon.port) for pid in children(daemon.pid)}
    victim = max(per_worker, key=lambda pid: per_worker[pid])
    os.kill(victim, signal.SIGKILL)
    killed.append(time.monotonic())
    cpu0, restarted, gone = time.process_time(), list[float](), False
    while time.monotonic() < killed[0] + LEASE_TTL + 60.0 and (
        sum(s.moved for s in streams) < per_worker[victim]
        or any(s.moved and s.resumed_at is None and not s.closed for s in streams)
    ):
        if not restarted:  # the victim's listener closed; restarted once there are 2 again
            up = len(tcp(daemon.port, "0A"))
            gone = gone or up < 2
            if gone and up >= 2:
                restarted.append(time.monotonic() - killed[0])
        await asyncio.sleep(0.02)
    client_share = (time.process_time() - cpu0) / (time.monotonic() - killed[0])
    await asyncio.sleep(BEFORE_KILL)
    stop.set()
    await asyncio.gather(*senders, return_exceptions=True)
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
    sent, received = sum(s.sent for s in streams), sum(s.checker.received for s in streams)
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


def kill_worker(ctx: Context, count: int, url: str) -> Json:
    """*count* sessions on ``--workers 2`` (supervised: the heir already runs, as deployed);
    the worker holding most of them gets SIGKILL and they reconnect to the same port."""
    config = ctx.tmp / "kill.toml"  # one client address holds every session's transport
    config.write_text(f"[server]\nmax_transports_per_peer = {max(256, 2 * count)}\n")
    argv = [*daemon_argv(), "--store", url, "--config", str(config), "--workers", "2"]
    daemon = serving(ctx.server("daemon-kill", argv))
    out: Json = ctx.run(kill_run(daemon, count))
    ctx.servers[daemon.name]["killed_worker"] = f"pid {out['killed_pid']}: SIGKILL by the bench"
    print(
        f"  store kill -9  {out['resumed']:,}/{count:,} resumed ({out['moved']:,} moved off "
        f"the killed worker, which held {out['on_killed_worker']:,}), last "
        f"{out['kill_to_last_resumed_s'] or 0:.2f} s after the kill (lease {LEASE_TTL:g} s), "
        f"{out['lost']} lost, {out['duplicates']} duplicated",
        file=sys.stderr,
    )
    return out


def workers(
    ctx: Context, url: str, sessions: int, messages: int, window: int, repeat: int, limit: float
) -> Json:
    """Echo msg/s and CPU per message (summed over the daemon's processes) of ``--workers 2``
    and of one daemon, both on the Redis store and unpinned."""
    unpinned, base = Pinning(None, None, "unpinned"), [*daemon_argv(), "--store", url]
    daemons = {
        name: ctx.server(f"daemon-workers-{name}", [*base, *extra], pinning=unpinned)
        for name, extra in (("1", []), ("2", ["--workers", "2"]))
    }
    serving(daemons["2"])
    pool = make_pool(SIZE)

    def one(name: str, _rep: int) -> tuple[str, Json]:
        port, pid = daemons[name].port, daemons[name].pid

        def clock() -> float:  # the supervisor and its workers
            return sum(cpu_seconds(p) for p in [pid, *children(pid)])

        result = ctx.run(
            echo("daemon", port, pool, messages, window, limit, clock, sessions=sessions)
        )
        cost = result.server_cpu * 1e6 / max(1, result.received)
        return name, {**result.to_json(), "server_cpu_us_per_message": cost}

    def show(got: tuple[str, Json]) -> str:
        name, rep = got
        return (
            f"{name} worker(s) echo {rep['rate']:,.0f} msg/s, "
            f"{rep['server_cpu_us_per_message']:.1f} µs CPU/msg"
        )

    reps = ctx.passes(tuple(daemons), one, repeat, show=show)
    out: Json = {name: summarise([r for n, r in reps if n == name]) for name in daemons}
    listeners = len(tcp(daemons["2"].port, "0A"))
    return {"sessions": sessions, "window": window, "listeners_2": listeners, **out}


# -------------------------------------------------------------- summary and markdown


def headlines(entry: Json) -> list[Headline]:
    """The Redis store's msg/s and its share of the memory store's, per session count."""
    out = []
    for count, by in entry["echo"].items():
        cell = f"{by[REDIS]['rate']['median']:,.0f} ({by['ratio']['of_medians']:.0%})"
        case = f"echo with --store redis, {plural(int(count))}, {SIZE} B"
        out.append(Headline(SCENARIO, case, "msg/s (÷ memory store)", {"daemon": cell}))
    return out


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """The p99 from cut to resumed of a session moving between live daemons; the kill -9 of a
    worker; the Redis store's share of the memory store's msg/s, paired per repetition."""
    out = []
    if moves := entry.get("move"):
        p99 = moves["from_cut_us"]["resumed"]["p99"] / 1e3
        what = f"p99 < {MOVE_P99_MS:g} ms (cut -> resumed, {moves['cuts']} cuts)"
        verdict = judged(entry, [p99], MOVE_P99_MS, higher=False)
        out.append(Target(SCENARIO, f"resume on another process, owner alive: {what}",
                          f"{p99:.1f} ms", verdict))  # fmt: skip
    if kill := entry.get("kill"):
        took, ttl = kill["kill_to_last_resumed_s"], kill["lease_ttl_s"]
        whole = kill["resumed"] == kill["sessions"] and kill["lost"] == kill["duplicates"] == 0
        whole = whole and kill["moved"] >= kill["on_killed_worker"] and took is not None
        what = f"all resumed, 0 lost, within lease TTL {ttl:g} s + {GRACE:g} s"
        measured = (f"{kill['resumed']:,} resumed ({kill['moved']:,} moved), {kill['lost']} "
                    f"lost, {kill['duplicates']} duplicated, last {nan(took):.2f} s")  # fmt: skip
        verdict = judged(entry, [took if whole else 1e9], ttl + GRACE, higher=False)
        out.append(Target(SCENARIO, f"kill -9 of a worker, {kill['sessions']:,} sessions: {what}",
                          measured, verdict))  # fmt: skip
    for count, by in entry["echo"].items():
        share, pairs = goal(int(count)), ratios(by)
        what = f"`--store redis` ≥ {share:.0%} of `--store memory` msg/s"
        measured = f"{by['ratio']['of_medians']:.1%} (passes {values_range(pairs)})"
        out.append(Target(SCENARIO, f"{what} ({plural(int(count))}, {SIZE} B)", measured,
                          judged(entry, pairs, share)))  # fmt: skip
    return out


def nan(value: float | None) -> float:
    return float("nan") if value is None else value


def echo_row(count: str, name: str, by_store: Json) -> list[str]:
    stats, memory = by_store[name], by_store[MEMORY]["rate"]["median"]
    return [
        plural(int(count)),
        f"`{name}`",
        spread_cell(stats["rate"]),
        f"{stats['rate']['median'] / memory:.0%}",
        cpu_cell(spread_cell(stats["server_cpu_us_per_message"], 1), stats["seconds"]),
        cpu_cell(spread_cell(stats["redis_cpu_us_per_message"], 1), stats["seconds"]),
        spread_cell(stats["redis_commands_per_message"], 2),
        bounds_cell(stats["bound"]),
        str(stats["lost"]),
    ]


def worker_row(name: str, workers: Json) -> list[str]:
    stats, plural_s = workers[name], "s" * (name == "2")
    cpu = spread_cell(stats["server_cpu_us_per_message"], 1)
    return [f"{name} worker{plural_s}", spread_cell(stats["rate"]), cpu, str(stats["lost"])]


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## store`` section."""
    config, lines = entry["config"], header(entry, commit, path)
    lines += [
        "Two daemons, `python -m sessiond serve --app echo --log-level WARNING` with "
        "`--store memory` and with `--store redis://127.0.0.1:PORT/0`; "
        f"{config['redis']['version']} with no persistence, pinned to the server core with "
        "the daemons (it shares that core with the Redis store's daemon). The windowed echo "
        f"of `python -m bench throughput`, {SIZE} B, up to {config['messages']:,} messages "
        f"or {config['time_limit_s']:g} s per pass, {config['repeat']} passes per store, "
        "interleaved, after a warm-up. Median [min-max] over the passes; *µs CPU/msg*: "
        "CPU microseconds per message of the daemon and of redis-server "
        "(`/proc/PID/task/*/schedstat`); *cmd/msg*: Redis commands per message (`INFO stats`).",
        "",
        markdown_table(
            "sessions|store|msg/s|÷ memory|daemon µs CPU/msg|redis µs CPU/msg|cmd/msg|bound|lost",
            [echo_row(count, name, by) for count, by in entry["echo"].items() for name in STORES],
            left=2,
        ),
        "",
        *[f"- {t['target']}: {t['measured']}, {t['verdict']}" for t in entry.get("targets", [])],
        "",
    ]
    if moves := entry.get("move"):
        steps = moves["from_cut_us"]
        lines += [
            f"Resume on another process: one session (window {moves['window_per_session']:,}) "
            f"cut {moves['cuts']} times with a reset, each resume on the other of two Redis-store "
            "daemons while the owner is alive (`bench/resume.py`'s client, every echo checked, "
            "exactly once). From the cut, µs: "
            + "; ".join(
                f"{step} p50 {steps[step]['p50']:,.0f}, p99 {steps[step]['p99']:,.0f}"
                for step in ("connected", "resumed", "first_message")
            )
            + f" ({moves['received']:,} echoes, {moves['lost']} lost).",
            "",
        ]
    if kill := entry.get("kill"):
        at = {k: nan(kill[f"kill_to_{k}_resumed_s"]) for k in ("first", "median", "last")}
        lines += [
            f"kill -9 of a worker: {kill['sessions']:,} library-client sessions (reconnect "
            "backoff 0.05-0.5 s) on one Redis-store daemon `--workers 2` (SO_REUSEPORT, "
            f"supervised), each echoing a {SIZE} B payload every {kill['send_gap_s']:g} s, "
            f"every echo checked; the worker holding {kill['on_killed_worker']:,} of them gets "
            "SIGKILL; they reconnect to the same port and resume on the other worker or the "
            f"restarted one once the dead lease ({kill['lease_ttl_s']:g} s) has run out: "
            f"{kill['resumed']:,} resumed ({kill['moved']:,} moved), {kill['sent']:,} sent, "
            f"{kill['lost']} lost, {kill['duplicates']} duplicated; from the kill, s: moved "
            f"sessions resumed first {at['first']:.2f}, median {at['median']:.2f}, last "
            f"{at['last']:.2f}; worker restarted {nan(kill['kill_to_worker_restarted_s']):.2f} "
            f"(the load generator meanwhile busy {kill['client_cpu_share']:.0%} of its core).",
            "",
        ]
    if workers := entry.get("workers"):
        lines += [
            f"`--workers 2` vs one daemon, Redis store, {workers['sessions']} sessions, the echo "
            "above, CPU summed over the daemon's processes. Both daemons are *not* pinned: on "
            "2 cores, the workers share them with redis-server and the load generator, so this "
            "says what a second worker gains when no core is spare.",
            "",
            markdown_table("daemon|msg/s|µs CPU/msg|lost", [worker_row(n, workers) for n in "12"]),
            "",
        ]
    return "\n".join(lines + other_load_note(entry["other_load_share"]) + notes_lines(entry))
