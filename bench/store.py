"""``python -m bench store``: the echo with sessions in Redis beside the memory store, one run.

Two daemons (``python -m sessiond serve --app echo``), one with the default
``--store memory`` and one with ``--store redis://127.0.0.1:PORT/0`` (the
session store of issue 16, README "The session store"), carry the windowed echo
of ``python -m bench throughput`` (:func:`bench.loadgen.echo`, every message
checked in order, none lost) at 64 B over 100 sessions and over one session,
*repeat* passes each, the two stores interleaved. Redis is Debian's
``/usr/bin/redis-server`` started by the harness (:meth:`Context.process`) on a
free port of 127.0.0.1 in the run's temporary directory, with no persistence
(no RDB snapshot, no append-only file), and stopped by PID at the end. Like the
daemons it is pinned to the server core (two cores: the load generator has the
other), so the daemon and Redis share one core and the pass measures both.

Per pass: messages/s; CPU per message of the daemon and of Redis (each from
``/proc/PID/task/*/schedstat``, ns); and Redis commands per message
(``INFO stats`` ``total_commands_processed`` around the pass, through redis-py,
which the Redis store needs anyway). Targets: the Redis store keeps at least
50 % of the memory store's msg/s with 100 sessions and 40 % with one, judged on
the ratio paired within each repetition. Then (``--move-cuts``, 100 by default, none
with ``--quick``) one session is cut and resumed on the other of two daemons on the
same Redis while its owner is alive, each time; target: cut -> resumed p99 < 10 ms.
Then (bench/store_cluster.py) ``--kill-sessions`` sessions (1,000; --quick 20) on a
``--workers 2`` daemon, one worker killed with SIGKILL, resume on the same port
(target: all, 0 lost, within the lease TTL + 2 s), and ``--workers 2`` against one
daemon at 100 sessions (--quick 10).

Registered on demand only (``python -m bench store``): it needs redis-server and
the ``redis`` extra, and the suite's ``python -m bench --quick`` stays as it was;
``tests/test_bench_store.py`` runs its ``--quick``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from . import BenchError, resume, store_cluster, throughput
from .core import POOL, make_pool
from .harness import (
    Context,
    bounds_cell,
    counts,
    header,
    notes_lines,
    other_load,
    other_load_note,
    positive,
    scenario,
    spread_cell,
    summarise,
)
from .loadgen import EchoResult, echo
from .processes import HOST, ServerProcess, bound_by, daemon_argv, free_port
from .results import Json, markdown_table, spread
from .summary import Headline, Target, cpu_cell, judged, values_range

HELP = "echo msg/s with --store redis:// beside the memory store, 100 sessions and 1"

SCENARIO = "store"
MEMORY = "memory"
REDIS = "redis"
STORES = (MEMORY, REDIS)
REDIS_SERVER = "/usr/bin/redis-server"
SIZE = 64
SESSIONS = (100, 1)
QUICK_SESSIONS = (10, 1)
#: A full pass is bounded by time; this only caps it (as in bench/throughput.py).
DEFAULT_MESSAGES = 20_000_000
QUICK_MESSAGES = 500
DEFAULT_REPEAT = 3
QUICK_REPEAT = 3
WARMUP_MESSAGES = 5_000
#: Messages in flight per session and the time a pass may take, as bench/throughput.py has them.
ONE_SESSION_WINDOW = throughput.ONE_SESSION_WINDOW
MANY_SESSIONS_WINDOW = throughput.MANY_SESSIONS_WINDOW
TIME_LIMIT = throughput.TIME_LIMIT
#: The Redis store's share of the memory store's msg/s, by sessions (one, and more).
TARGET = {1: 0.40, 100: 0.50}
MOVE_CUTS = 100  # resumes of one session on the other live daemon (--move-cuts)
MOVE_P99_MS = 10.0  # the target for them, cut -> resumed
KILL_SESSIONS = 1_000  # sessions on --workers 2, one worker killed (--kill-sessions)
QUICK_KILL_SESSIONS = 20
WORKERS_SESSIONS = 100  # sessions of the --workers 2 vs 1 echo (--quick 10)
QUICK_WORKERS_SESSIONS = 10


def target_for(sessions: int) -> float:
    return TARGET[1] if sessions == 1 else TARGET[100]


def plural(count: int) -> str:
    return f"{count:,} session" + ("" if count == 1 else "s")


# ------------------------------------------------------------------ redis


def redis_command(port: int, directory: Path) -> list[str]:
    """redis-server on 127.0.0.1:*port*, in *directory*, with no persistence."""
    return [
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]


def redis_version() -> str:
    out = subprocess.run(
        [REDIS_SERVER, "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    return out.stdout.strip()


class RedisStats:
    """``INFO stats`` of the bench's Redis, through redis-py's blocking client."""

    def __init__(self, port: int) -> None:
        import redis  # noqa: PLC0415 - the `redis` extra: only when this scenario runs

        self._client: Any = redis.Redis(host=HOST, port=port, socket_timeout=10.0)

    def commands(self) -> int:
        return int(self._client.info("stats")["total_commands_processed"])

    def keys(self) -> int:
        return int(self._client.dbsize())

    def close(self) -> None:
        self._client.close()


# -------------------------------------------------------------------- passes


@dataclass(frozen=True, slots=True)
class StorePass:
    """One echo pass against one store, with what Redis did meanwhile."""

    echo: EchoResult
    #: Redis CPU seconds and commands over the pass; in a memory-store pass, what the idle
    #: Redis-store daemon asked meanwhile (its lease renewals).
    redis_cpu: float
    redis_commands: int

    def to_json(self) -> Json:
        received = max(1, self.echo.received)
        return {
            **self.echo.to_json(),
            "server_cpu_us_per_message": self.echo.server_cpu * 1e6 / received,
            "redis_cpu_s": self.redis_cpu,
            "redis_cpu_us_per_message": self.redis_cpu * 1e6 / received,
            "redis_commands": self.redis_commands,
            "redis_commands_per_message": self.redis_commands / received,
        }


def show(result: StorePass) -> str:
    echo_result = result.echo
    received = max(1, echo_result.received)
    return (
        f"echo {plural(echo_result.sessions):>12} {echo_result.size} B  {echo_result.system:<6} "
        f"{echo_result.rate:>9,.0f} msg/s  daemon {echo_result.server_cpu * 1e6 / received:5.1f} "
        f"µs/msg  redis {result.redis_cpu * 1e6 / received:5.1f} µs/msg "
        f"{result.redis_commands / received:.2f} cmd/msg  {bound_by(echo_result)}-bound"
    )


def summarise_passes(runs: list[StorePass], sessions: int) -> Json:
    mine = [run for run in runs if run.echo.sessions == sessions]
    out: Json = {
        name: summarise([run.to_json() for run in mine if run.echo.system == name])
        for name in STORES
    }
    pairs = ratios(out)
    out["ratio"] = {
        "of_medians": out[REDIS]["rate"]["median"] / out[MEMORY]["rate"]["median"],
        "per_repetition": spread(pairs),
    }
    return out


def ratios(by_store: Json) -> list[float]:
    """Redis over memory, repetition by repetition (they ran side by side in each)."""
    redis_reps, memory_reps = by_store[REDIS]["repetitions"], by_store[MEMORY]["repetitions"]
    return [r["rate"] / m["rate"] for r, m in zip(redis_reps, memory_reps, strict=True)]


# -------------------------------------------------------------------- options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--move-cuts",
        type=int,
        metavar="N",
        help="also cut one session N times and resume it each time on the other of two "
        "daemons on the same Redis while its owner is alive (bench/resume.py's client, "
        f"window 1000); cut -> resumed p99, target < {MOVE_P99_MS:g} ms (default "
        f"{MOVE_CUTS}; --quick 0: not measured)",
    )
    parser.add_argument(
        "--kill-sessions",
        type=int,
        metavar="N",
        help="sessions of the library client on a --workers 2 daemon, one worker killed with "
        f"SIGKILL, its sessions resumed on the same port (default {KILL_SESSIONS:,}; --quick "
        f"{QUICK_KILL_SESSIONS}; 0: not measured)",
    )
    parser.add_argument(
        "--sessions",
        metavar="N,N",
        help="sessions per pass, comma-separated (default "
        f"{','.join(map(str, SESSIONS))}; --quick {','.join(map(str, QUICK_SESSIONS))})",
    )
    throughput.add_pass_arguments(parser)
    parser.add_argument(
        "--redis-server",
        default=REDIS_SERVER,
        metavar="PATH",
        help=f"the redis-server binary (default {REDIS_SERVER}, Debian's)",
    )


# ------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> int:
    positive(args, "messages", "repeat", "time_limit", "window")
    quick = bool(args.quick)
    messages: int = args.messages or (QUICK_MESSAGES if quick else DEFAULT_MESSAGES)
    repeat: int = args.repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT)
    sessions = (
        counts(args.sessions, "--sessions")
        if args.sessions
        else (QUICK_SESSIONS if quick else SESSIONS)
    )
    windows = {
        n: args.window or (ONE_SESSION_WINDOW if n == 1 else MANY_SESSIONS_WINDOW) for n in sessions
    }
    if max(windows.values()) > POOL // 2:
        raise BenchError(f"--window must be 1..{POOL // 2}")
    binary = shutil.which(args.redis_server)
    if binary is None:
        raise BenchError(
            f"no redis-server at {args.redis_server}: install it with "
            "`apt-get install redis-server` (Debian package `redis-server`)"
        )
    warmup = 0 if quick else min(messages, WARMUP_MESSAGES)
    banner = (
        f"memory vs redis store; {', '.join(plural(n) for n in sessions)}; {messages:,} "
        f"messages (or {args.time_limit:g} s) x {repeat}, {SIZE} B"
    )

    def body(ctx: Context) -> Json:
        port = free_port()
        (ctx.tmp / "redis").mkdir()
        command = redis_command(port, ctx.tmp / "redis")
        command[0] = binary
        redis_proc = ctx.process("redis", command, port)
        url = f"redis://{HOST}:{port}/0"
        daemons = {
            MEMORY: ctx.server("daemon-memory", daemon_argv()),
            REDIS: ctx.server("daemon-redis", [*daemon_argv(), "--store", url]),
        }
        stats = RedisStats(port)
        ctx.stack.callback(stats.close)
        pool = make_pool(SIZE)

        def one(store: str, count: int, n: int) -> StorePass:
            daemon = daemons[store]
            coroutine = echo(
                "daemon",
                daemon.port,
                pool,
                count,
                windows[n],
                args.time_limit,
                daemon.cpu_seconds,
                sessions=n,
            )
            commands0, redis0 = stats.commands(), redis_proc.cpu_seconds()
            result, others = ctx.timed(daemon, lambda: ctx.run(coroutine))
            redis_cpu = redis_proc.cpu_seconds() - redis0
            # INFO itself is a command: not counted against the pass.
            commands = stats.commands() - commands0 - 1
            echoed = dataclasses.replace(cast(EchoResult, result), system=store, others=others)
            return StorePass(echoed, redis_cpu, commands)

        def measure(n: int) -> list[StorePass]:
            return ctx.passes(
                STORES,
                lambda store, _rep: one(store, messages, n),
                repeat,
                warmup=(lambda store: one(store, warmup, n)) if warmup else None,
                show=show,
            )

        runs = [run for n in sessions for run in measure(n)]
        cuts = (0 if quick else MOVE_CUTS) if args.move_cuts is None else args.move_cuts
        moves = move(ctx, cuts, daemons[REDIS], url) if cuts > 0 else None
        kills = ctx.given("kill_sessions", KILL_SESSIONS, QUICK_KILL_SESSIONS)
        killed = store_cluster.kill_worker(ctx, kills, url) if kills > 0 else None
        workers = store_cluster.workers(
            ctx,
            url,
            QUICK_WORKERS_SESSIONS if quick else WORKERS_SESSIONS,
            messages,
            MANY_SESSIONS_WINDOW,
            repeat,
            args.time_limit,
        )
        keys_after = stats.keys()
        entry: Json = {
            "config": {
                "stores": {MEMORY: "--store memory (default)", REDIS: f"--store {url}"},
                "redis": {
                    "binary": binary,
                    "version": redis_version(),
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
                "targets": {str(n): target_for(n) for n in sessions},
            },
            "other_load_share": other_load([run.echo.others for run in runs]),
            "echo": {str(n): summarise_passes(runs, n) for n in sessions},
            "redis_keys_after": keys_after,
            "move": moves,
            "kill": killed,
            "workers": workers,
            "markdown": markdown,
        }
        entry["targets"] = [
            dataclasses.asdict(target) for target in targets({**entry, "quick": quick}, {})
        ]
        return entry

    return scenario(args, SCENARIO, banner, body)


def move(ctx: Context, cuts: int, owner: ServerProcess, url: str) -> Json:
    """One session of ``bench resume``'s client cut *cuts* times, each resume on the
    other daemon of the same store while the owner is alive (a takeover, README)."""
    other = ctx.server("daemon-redis-2", [*daemon_argv(), "--store", url])
    messages = max(resume.MIN_GAP * (cuts + 1) * 2, 20_000)
    coroutine = resume.resume_pass(
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
    result = cast(resume.ResumePass, ctx.run(coroutine))
    out: Json = result.to_json()
    first = out["from_cut_us"]["first_message"]
    print(
        f"  {SCENARIO} move  {result.cuts} cuts across two daemons, cut -> first message "
        f"p50 {first.get('p50', 0) / 1e3:.2f} ms p99 {first.get('p99', 0) / 1e3:.2f} ms",
        file=sys.stderr,
    )
    return out


# -------------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """The Redis store's msg/s and its share of the memory store's, per session count."""
    return [
        Headline(
            SCENARIO,
            f"echo with --store redis, {plural(int(count))}, {SIZE} B",
            "msg/s (÷ memory store)",
            {
                "daemon": f"{by_store[REDIS]['rate']['median']:,.0f} "
                f"({by_store['ratio']['of_medians']:.0%})"
            },
        )
        for count, by_store in entry["echo"].items()
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """The Redis store's share of the memory store's msg/s, paired within each repetition;
    the p99 from cut to resumed of a session moving between live daemons."""
    out = []
    moves = entry.get("move")
    if moves:
        p99 = moves["from_cut_us"]["resumed"]["p99"] / 1e3
        out.append(
            Target(
                SCENARIO,
                f"resume on another process, owner alive: p99 < {MOVE_P99_MS:g} ms "
                f"(cut -> resumed, {moves['cuts']} cuts)",
                f"{p99:.1f} ms",
                judged(entry, [p99], MOVE_P99_MS, higher=False),
            )
        )
    kill = entry.get("kill")
    if kill:
        limit = kill["lease_ttl_s"] + store_cluster.GRACE
        took = kill["kill_to_last_resumed_s"]
        whole = kill["resumed"] == kill["sessions"] and kill["lost"] == kill["duplicates"] == 0
        whole = whole and kill["moved"] >= kill["on_killed_worker"]
        out.append(
            Target(
                SCENARIO,
                f"kill -9 of a worker, {kill['sessions']:,} sessions: all resumed, 0 lost, "
                f"within lease TTL {kill['lease_ttl_s']:g} s + {store_cluster.GRACE:g} s",
                f"{kill['resumed']:,} resumed ({kill['moved']:,} moved), {kill['lost']} lost, "
                f"{kill['duplicates']} "
                f"duplicated, last {took if took is not None else float('nan'):.2f} s",
                judged(entry, [took if whole and took is not None else 1e9], limit, higher=False),
            )
        )
    for count, by_store in entry["echo"].items():
        goal = target_for(int(count))
        pairs = ratios(by_store)
        out.append(
            Target(
                SCENARIO,
                f"`--store redis` ≥ {goal:.0%} of `--store memory` msg/s "
                f"({plural(int(count))}, {SIZE} B)",
                f"{by_store['ratio']['of_medians']:.1%} (passes {values_range(pairs)})",
                judged(entry, pairs, goal),
            )
        )
    return out


# ------------------------------------------------------------------- markdown


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## store`` section."""
    config = entry["config"]
    lines = header(entry, commit, path)
    lines += [
        "Two daemons, `python -m sessiond serve --app echo --log-level WARNING` with "
        f"`--store memory` and with `--store redis://127.0.0.1:PORT/0`; "
        f"{config['redis']['version']} with no persistence, pinned to the server core with "
        "the daemons (it shares that core with the Redis store's daemon). The windowed echo "
        f"of `python -m bench throughput`, {SIZE} B, up to {config['messages']:,} messages "
        f"or {config['time_limit_s']:g} s per pass, {config['repeat']} passes per store, "
        "interleaved, after a warm-up. Median [min-max] over the passes; *µs CPU/msg*: "
        "CPU microseconds per message of the daemon and of redis-server "
        "(`/proc/PID/task/*/schedstat`); *cmd/msg*: Redis commands per message "
        "(`INFO stats`).",
        "",
    ]
    rows = []
    for count, by_store in entry["echo"].items():
        for name in STORES:
            stats = by_store[name]
            rows.append(
                [
                    plural(int(count)),
                    f"`{name}`",
                    spread_cell(stats["rate"]),
                    f"{stats['rate']['median'] / by_store[MEMORY]['rate']['median']:.0%}",
                    cpu_cell(spread_cell(stats["server_cpu_us_per_message"], 1), stats["seconds"]),
                    cpu_cell(spread_cell(stats["redis_cpu_us_per_message"], 1), stats["seconds"]),
                    spread_cell(stats["redis_commands_per_message"], 2),
                    bounds_cell(stats["bound"]),
                    str(stats["lost"]),
                ]
            )
    lines += [
        markdown_table(
            [
                "sessions",
                "store",
                "msg/s",
                "÷ memory",
                "daemon µs CPU/msg",
                "redis µs CPU/msg",
                "cmd/msg",
                "bound",
                "lost",
            ],
            rows,
            left=2,
        ),
        "",
    ]
    lines += [f"- {t['target']}: {t['measured']}, {t['verdict']}" for t in entry.get("targets", [])]
    lines += [""]
    moves = entry.get("move")
    if moves:
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
    kill = entry.get("kill")
    if kill:
        lines += [
            f"kill -9 of a worker: {kill['sessions']:,} sessions of the library client "
            "(`sessiond_client`, reconnect backoff 0.05-0.5 s) on one Redis-store daemon "
            "`--workers 2` (SO_REUSEPORT, supervised: the heir is already running), "
            f"each sending a {SIZE} B payload every {kill['send_gap_s']:g} s (echoes checked "
            f"per payload); the worker holding {kill['on_killed_worker']:,} of them gets "
            "SIGKILL; they reconnect to the same port and resume on the other worker or the "
            f"restarted one once the dead lease ({kill['lease_ttl_s']:g} s, the default) has "
            f"run out: {kill['resumed']:,} resumed ({kill['moved']:,} moved), "
            f"{kill['sent']:,} sent, {kill['lost']} lost, {kill['duplicates']} duplicated; "
            "from the kill, s: moved sessions resumed first "
            f"{kill['kill_to_first_resumed_s'] or float('nan'):.2f}, median "
            f"{kill['kill_to_median_resumed_s'] or float('nan'):.2f}, last "
            f"{kill['kill_to_last_resumed_s'] or float('nan'):.2f}; worker restarted "
            f"{kill['kill_to_worker_restarted_s'] or float('nan'):.2f} (the load generator "
            f"meanwhile busy {kill['client_cpu_share']:.0%} of its core).",
            "",
        ]
    workers = entry.get("workers")
    if workers:
        lines += [
            f"`--workers 2` vs one daemon, Redis store, {workers['sessions']} sessions, the echo "
            "above; CPU summed over the daemon's processes (supervisor and workers). Core "
            "budget, honestly: this machine has 2 cores; these two daemons are *not* pinned, so "
            "the 2 workers share both cores with redis-server (pinned to one) and the load "
            "generator (pinned to the other): the 2-worker figure says what a second worker "
            "gains when nothing is spare, not what it gains on a machine with a core per worker.",
            "",
            markdown_table(
                ["daemon", "msg/s", "µs CPU/msg", "lost"],
                [
                    [
                        f"{name} worker" + ("s" if name == "2" else ""),
                        spread_cell(workers[name]["rate"]),
                        spread_cell(workers[name]["server_cpu_us_per_message"], 1),
                        str(workers[name]["lost"]),
                    ]
                    for name in ("1", "2")
                ],
                left=1,
            ),
            "",
        ]
    lines += other_load_note(entry["other_load_share"])
    lines += notes_lines(entry)
    return "\n".join(lines)
