"""``python -m bench storm``: every session's transport cut at once, then all resume.

Per pass a fresh daemon (echo app) and N sessions (1,000 and 10,000): each sends a few
messages with ``SO_LINGER`` 0 set, every transport is aborted in one loop (echoes and
unread input lost with them), then every session reconnects and resumes at once
(protocol.md §4; no backoff, at most ``--concurrency`` handshakes in flight, fresh
127.x.y.z source addresses). Measured from the cut: until all are resumed and until all
have every echo back (checked in order; a new session, a gap or a duplicate fails the
pass), per session p50/p99/max, the server's RSS (before, peak ``VmHWM``, after) and both
sides' CPU. Target (issue 5): 10,000 sessions resumed within 5 s with zero loss.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sessiond_client.protocol import Params, SessionResumed, SessionStarted

from . import BenchError
from .core import POOL, Checker, make_pool
from .harness import (
    Context,
    counts,
    full_cores_cell,
    given,
    header,
    option,
    other_load_note,
    positive,
    quantiles,
    scenario,
    summarise,
)
from .loadgen import (
    DEFAULT_CONCURRENCY,
    Driver,
    close_idle,
    open_sessions,
    sessions_per_address,
    source_addresses,
)
from .processes import CLIENT_BOUND, CoreLoad, ServerProcess, daemon_argv, full_cores
from .results import Json, markdown_table, spread
from .resume import summary_us
from .summary import (
    NOT_MEASURED,
    NOT_MET,
    TOY,
    Headline,
    Target,
    cpu_cell,
    judged,
    values_range,
    verdict,
)

HELP = "1,000 and 10,000 sessions cut at once, then all resume: seconds, loss, server RSS/CPU"

SCENARIO = "storm"
SIZE = 64
SETTLE_SECONDS = 0.5  # after opening, before the load: the server's handshake work is done
HANDSHAKE_TIMEOUT = 10.0  # per connection and handshake
#: Target (issue 5): this many sessions fully resumed within TARGET_SECONDS, nothing lost.
TARGET_SESSIONS = 10_000
TARGET_SECONDS = 5.0


class StormSession(Driver):
    """A session loaded with *count* messages (``pool[index * count]`` on), cut, resumed;
    *ring* is ``pool + pool``, shared (10,000 copies would take 640 MB)."""

    __slots__ = ("checker", "count", "done", "done_ns", "payloads", "replayed", "resumed_ns")

    def __init__(
        self, index: int, params: Params, pool: list[bytes], ring: list[bytes], count: int
    ):
        super().__init__(params)
        self.count = count
        self.checker = Checker(SCENARIO, pool, index * count, ring)
        start = (index * count) & (POOL - 1)
        self.payloads = ring[start : start + count]
        self.resumed_ns = self.done_ns = 0
        self.replayed = 0  # messages this client sent again after the resume
        self.done: asyncio.Future[None] = self.loop.create_future()

    def load(self, now: float) -> None:
        """Send every payload (they fit the window) and arm the reset for the cut."""
        if self.transport is None or self.session.send_many(self.payloads, now) != self.count:
            raise BenchError("storm: a session could not send its load")
        self.reset_on_close()
        self._flush()

    def on_open(self, event: SessionStarted | SessionResumed) -> None:
        if isinstance(event, SessionResumed):
            self.resumed_ns = self.read_ns
            self.replayed = event.replayed

    def on_messages(self, messages: list[bytes], now: float) -> None:
        checker = self.checker
        try:
            if not self.resuming:
                raise BenchError("an echo came back before the cut")
            checker.check(messages)
        except BenchError as exc:
            self._fail(str(exc))
            return
        if checker.missing or checker.duplicates:
            self._fail(f"{checker.missing} echoes missing, {checker.duplicates} repeated")
        elif checker.taken >= self.count and not self.done.done():
            self.done_ns = time.perf_counter_ns()
            self.done.set_result(None)

    def _fail(self, why: str) -> None:
        super()._fail(why)
        if not self.done.done():
            self.done.set_exception(BenchError(self.failure or why))

    def verify(self) -> str | None:
        """Why this session's end state contradicts its load, or None."""
        if self.failure is not None:
            return self.failure
        sent, _acked, received, consumed = self.session.sequence_numbers
        if not sent == received == consumed == self.checker.received == self.count:
            return (
                f"sequence numbers: sent {sent}, received {received}, consumed {consumed}, "
                f"echoes {self.checker.received} of {self.count}"
            )
        return None


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's ``VmHWM`` to its current RSS (``clear_refs`` 5); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class StormPlan:
    sessions: tuple[int, ...]
    in_flight: int
    repeat: int
    concurrency: int
    time_limit: float
    messages: int | None = None  # at most this many messages per storm (--messages)
    size: int = SIZE

    def in_flight_for(self, count: int) -> int:
        """Messages each of *count* sessions sends before the cut."""
        if self.messages is None:
            return self.in_flight
        return max(1, min(self.in_flight, self.messages // count))


async def storm(proc: ServerProcess, count: int, plan: StormPlan, load: CoreLoad) -> Json:
    """Open *count* sessions, load them, cut them all, and time their resumes."""
    loop = asyncio.get_running_loop()
    params = Params()
    pool = make_pool(plan.size)
    ring = pool + pool
    in_flight = plan.in_flight_for(count)
    per_address = sessions_per_address()
    sources = source_addresses(per_address)
    # Resumes come from the next addresses: the cut ones may still count on the server.
    offset = -(-count // per_address) * per_address
    print(f"  storm: opening {count:,} sessions", file=sys.stderr, flush=True)
    sessions = await open_sessions(
        proc.port,
        count,
        plan.concurrency,
        lambda i: StormSession(i, params, pool, ring, in_flight),
        sources,
        HANDSHAKE_TIMEOUT,
    )
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        gc.collect()
        rss_before = proc.rss_kib()
        peak_reset = reset_peak_rss(proc.pid)
        now = loop.time()
        for session in sessions:
            session.load(now)
        server0, client0 = proc.cpu_seconds(), time.process_time()
        load.start()
        t0 = time.perf_counter_ns()
        for session in sessions:
            session.cut()
        cut_loop = time.perf_counter_ns() - t0
        await open_sessions(
            proc.port,
            count,
            plan.concurrency,
            lambda i: sessions[i],
            lambda i: sources(offset + i),
            HANDSHAKE_TIMEOUT,
        )
        left = plan.time_limit - (time.perf_counter_ns() - t0) / 1e9
        _done, pending = await asyncio.wait([s.done for s in sessions], timeout=max(left, 1.0))
        server_cpu = proc.cpu_seconds() - server0
        client_cpu = time.process_time() - client0
        others = load.others(server_cpu, client_cpu)
        rss_after = proc.rss_kib()
        peak = int(proc.status("VmHWM").split()[0])
        failures = [why for s in sessions if (why := s.verify()) is not None]
        for session in sessions:  # retrieved, so that none is logged as never retrieved
            if session.done.done():
                session.done.exception()
        if pending or failures:
            raise BenchError(
                f"storm of {count:,}: {len(pending):,} sessions did not get every echo "
                f"within {plan.time_limit:g} s, {len(failures):,} failed"
                + (f" (first: {failures[0]})" if failures else "")
            )
    finally:
        await close_idle(sessions, 30.0)
    done = [s.done_ns - t0 for s in sessions]
    resumed = [s.resumed_ns - t0 for s in sessions]
    seconds = max(done) / 1e9
    return {
        "sessions": count,
        "in_flight_per_session": in_flight,
        "concurrency": plan.concurrency,
        "cut_loop_s": cut_loop / 1e9,
        "all_resumed_s": max(resumed) / 1e9,
        "all_replayed_s": seconds,
        "per_session_done_us": summary_us(done),
        "per_session_resumed_us": summary_us(resumed),
        "timeline_s": {  # cut → each session resumed / caught up, as quantiles
            "resumed": [ns / 1e9 for ns in quantiles(resumed)],
            "caught_up": [ns / 1e9 for ns in quantiles(done)],
        },
        "messages": count * in_flight,
        "echoes_received": sum(s.checker.received for s in sessions),
        "lost": sum(s.checker.missing + s.count - s.checker.taken for s in sessions),
        "duplicates": sum(s.checker.duplicates for s in sessions),
        "sessions_lost": sum(s.session_lost for s in sessions),
        "replayed_by_clients": sum(s.replayed for s in sessions),
        "server_cpu_s": server_cpu,
        "server_cpu_share": server_cpu / seconds,
        "client_cpu_s": client_cpu,
        "client_cpu_share": client_cpu / seconds,
        "client_bound": client_cpu / seconds > CLIENT_BOUND,
        "cores_full": full_cores(server_cpu, client_cpu, seconds, others),
        "server_rss_kib": {"before": rss_before, "peak": peak, "after": rss_after},
        "peak_is_storm_only": peak_reset,
        "source_addresses": 2 * (offset // per_address),
        **({} if others is None else {"other_load_share": list(others)}),
    }


def per_size(results: list[Json], sizes: Sequence[int]) -> Json:
    """Per size: the spread of each figure over the storms, and every storm."""
    by_size: Json = {}
    for count in sizes:
        mine = [r for r in results if r["sessions"] == count]
        out = summarise(mine)
        for key in ("cut_loop_s", "echoes_received", "replayed_by_clients", "client_cpu_s"):
            out.pop(key, None)
        out |= {
            "in_flight_per_session": mine[0]["in_flight_per_session"],
            "concurrency": mine[0]["concurrency"],
            "payload_size": SIZE,
            "messages": sum(r["messages"] for r in mine),
            "per_session_done_ms": {
                key: spread([r["per_session_done_us"][key] / 1000 for r in mine])
                for key in ("p50", "p99", "max")
            },
            "resumes_per_s": spread([count / r["all_resumed_s"] for r in mine]),
            "server_cpu_ms_per_session": spread([r["server_cpu_s"] * 1e3 / count for r in mine]),
            "client_bound": [r["client_bound"] for r in mine],
            "server_rss_kib": {
                key: spread([r["server_rss_kib"][key] for r in mine])
                for key in ("before", "peak", "after")
            },
        }
        by_size[str(count)] = out
    return by_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "sessions", str, "1000,10000", "20,100", metavar="N,N",
           help="sessions per storm (--messages: most in flight per storm)")  # fmt: skip
    option(parser, "in_flight", int, 4, metavar="N", help="messages per session at the cut")
    option(parser, "concurrency", int, DEFAULT_CONCURRENCY, help="handshakes in flight")
    option(parser, "time_limit", float, 60.0, metavar="S", help="seconds for every echo back")


def plan_from(args: argparse.Namespace) -> StormPlan:
    sizes = counts(given(args, "sessions", "1000,10000", "20,100"), "--sessions")
    repeat = given(args, "repeat", 3, 2)
    positive(args, "repeat", "concurrency", "messages", "time_limit")
    if not 1 <= args.in_flight <= Params().window_messages:
        raise BenchError(f"--in-flight must be 1..{Params().window_messages}")
    return StormPlan(
        sizes, args.in_flight, repeat, args.concurrency, args.time_limit, args.messages
    )


def run(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    banner = (
        f"{', '.join(f'{n:,}' for n in plan.sessions)} sessions x {plan.repeat}, "
        f"{plan.in_flight} messages of {plan.size} B each at the cut"
        + ("" if plan.messages is None else f" (at most {plan.messages:,} per storm)")
        + f", at most {plan.concurrency} handshakes in flight"
    )

    def body(ctx: Context) -> Json:
        if max(plan.sessions) + 64 > ctx.nofile[0]:
            raise BenchError(f"{max(plan.sessions):,} sessions do not fit RLIMIT_NOFILE")

        def one(count: int, rep: int) -> Json:
            with ctx.fresh_server(f"daemon-storm-{count}-{rep + 1}", daemon_argv()) as proc:
                try:
                    result: Json = ctx.run(storm(proc, count, plan, ctx.load))
                except BenchError:
                    proc.check_alive()  # a dead server explains more than a lost connection
                    raise
            return result

        def show(r: Json) -> str:
            per = r["per_session_done_us"]
            return (
                f"{r['sessions']:>6,} sessions: all resumed {r['all_resumed_s']:.2f} s, all "
                f"replayed {r['all_replayed_s']:.2f} s (per session p50 {per['p50'] / 1000:.1f} ms "
                f"p99 {per['p99'] / 1000:.1f} ms), lost {r['lost']}, server CPU "
                f"{r['server_cpu_s']:.2f} s, peak RSS {r['server_rss_kib']['peak'] / 1024:.1f} MiB"
            )

        results = [
            result
            for count in plan.sessions
            for result in ctx.passes([count], one, plan.repeat, show=show)
        ]
        by_size = per_size(results, plan.sessions)
        target = by_size.get(str(TARGET_SESSIONS))
        return {
            "config": {
                "sessions": list(plan.sessions),
                "in_flight_per_session": plan.in_flight,
                "messages_per_storm_at_most": plan.messages,
                "payload_size": plan.size,
                "repeat": plan.repeat,
                "concurrency": plan.concurrency,
                "time_limit_s": plan.time_limit,
                "sessions_per_source_address": sessions_per_address(),
                "reconnect": "at once, no backoff; at most `concurrency` handshakes in flight; "
                "each from a fresh 127.x.y.z source address",
                "cut": "SO_LINGER 0, then transport.abort() on every session in one loop, "
                "right after each sent its messages; nothing read in between",
                "client": "the protocol core in an asyncio.Protocol per session "
                "(bench/storm.py StormSession on bench/loadgen.py's Driver)",
                "daemon": "a fresh daemon per storm, default settings",
                "client_bound_threshold": CLIENT_BOUND,
                "timer": "time.perf_counter_ns from the start of the cut loop",
                "rss": "VmRSS before the load, VmHWM (reset through /proc/PID/clear_refs "
                "before the load) and VmRSS once every session has caught up",
            },
            "storms": by_size,
            "target": {
                "sessions": TARGET_SESSIONS,
                "seconds": TARGET_SECONDS,
                "measured": target is not None,
                "all_replayed_s": None if target is None else target["all_replayed_s"]["median"],
                "lost": None if target is None else target["lost"],
            },
            "markdown": markdown,
        }

    return scenario(args, SCENARIO, banner, body)


# ---------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """Seconds from the cut until every session had resumed and caught up, per size."""
    return [
        Headline(
            SCENARIO,
            f"{int(count):,} sessions cut at once",
            "cut → all caught up, s",
            {"daemon": f"{stats['all_replayed_s']['median']:.2f}"},
        )
        for count, stats in entry["storms"].items()
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """10,000 sessions fully resumed within 5 s with zero loss, judged storm by storm."""
    target = entry["target"]
    asked = (
        f"{target['sessions']:,} sessions cut at once all resumed and caught up "
        f"< {target['seconds']:g} s, zero loss"
    )
    if not target["measured"]:
        why = TOY if entry.get("quick") else NOT_MEASURED
        return [Target(SCENARIO, asked, "not run at that size", why)]
    storms = entry["storms"][str(target["sessions"])]["all_replayed_s"]["values"]
    judgement = NOT_MET if target["lost"] else judged(entry, storms, target["seconds"], False)
    return [
        Target(
            SCENARIO,
            asked,
            f"{target['all_replayed_s']:.2f} s (median; storms "
            f"{values_range(storms, '{:.2f}')} s), {target['lost']} lost",
            judgement,
        )
    ]


# ------------------------------------------------------------------ markdown


def _seconds(stats: Json) -> str:
    return f"{stats['median']:.2f} [{stats['min']:.2f}-{stats['max']:.2f}]"


def _mib(stats: Json) -> str:
    return f"{stats['median'] / 1024:,.1f}"


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## storm`` section of RESULTS.md."""
    config = entry["config"]
    lines = header(entry, commit, path)
    lines += [
        "Per storm, a fresh daemon (echo app) and N sessions; each sends *msgs each* messages "
        f"of {config['payload_size']} B and every transport is then reset in one loop, "
        "nothing read in between. At once, with no backoff, every session resumes, at most "
        f"{config['concurrency']} handshakes in flight, each from a fresh 127.x.y.z address "
        f"(≤ {config['sessions_per_source_address']} sessions each). From the cut: *all "
        "resumed* (the last WELCOME) and *all caught up* (the last session has every echo, "
        f"checked in order); median [min-max] over {config['repeat']} storms per size; *per "
        "session*: medians of each storm's percentiles; *lost*: echoes found missing. Server "
        "RSS (MiB): before the load, peak (`VmHWM`, reset before), after; CPU over the storm.",
        "",
    ]
    rows = []
    for count, stats in entry["storms"].items():
        per = stats["per_session_done_ms"]
        rss = stats["server_rss_kib"]
        bounds = stats["client_bound"]
        rows.append(
            [
                f"{stats['payload_size']} B",
                f"{int(count):,}",
                str(stats["in_flight_per_session"]),
                str(stats["concurrency"]),
                _seconds(stats["all_resumed_s"]),
                _seconds(stats["all_replayed_s"]),
                f"{per['p50']['median']:,.1f} / {per['p99']['median']:,.1f} ms",
                f"{stats['resumes_per_s']['median']:,.0f}",
                f"{stats['lost']:,} of {stats['messages']:,}",
                cpu_cell(
                    f"{stats['server_cpu_s']['median']:.2f} s "
                    f"({stats['server_cpu_share']['median']:.0%})",
                    stats["all_replayed_s"],
                ),
                f"{stats['server_cpu_ms_per_session']['median']:.3f}",
                f"{_mib(rss['before'])} / {_mib(rss['peak'])} / {_mib(rss['after'])}",
                cpu_cell(
                    f"{stats['client_cpu_share']['median']:.0%}"
                    + (f" (client-bound {sum(bounds)}/{len(bounds)})" if any(bounds) else ""),
                    stats["all_replayed_s"],
                ),
                full_cores_cell(stats["cores_full"]),
            ]
        )
    lines += [
        markdown_table(
            "payload|sessions|msgs each|handshakes in flight|cut → all resumed (s)"
            "|cut → all caught up (s)|per session p50 / p99|resumes/s|lost|server CPU"
            "|server ms CPU/session|server RSS before / peak / after|loadgen core busy|cores full",
            rows,
        ),
        "",
    ]
    for stats in entry["storms"].values():
        lines += other_load_note(stats["other_load_share"])[:1]
        if lines[-1]:
            lines[-1] = f"{stats['sessions']:,} sessions: " + lines[-1]
            lines.append("")
    target = entry["target"]
    if target["measured"]:
        lines.append(
            f"Target: {target['sessions']:,} sessions fully resumed within "
            f"{target['seconds']:g} s with zero loss: {target['all_replayed_s']:.2f} s "
            f"(median), {target['lost']} lost ({verdict(targets(entry, {})[0].verdict)})."
        )
    else:
        lines.append(
            f"Target: {target['sessions']:,} sessions fully resumed within "
            f"{target['seconds']:g} s with zero loss: not measured in this run."
        )
    if entry["notes"]:
        lines += ["", "Notes: " + "; ".join(entry["notes"]) + "."]
    return "\n".join(lines) + "\n"
