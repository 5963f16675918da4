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
from collections.abc import Callable, Mapping
from pathlib import Path

from sessiond_client.protocol import Params, SessionResumed, SessionStarted

from . import BenchError, harness
from .core import POOL, Checker, make_pool
from .harness import Context, given, option
from .loadgen import DEFAULT_CONCURRENCY, Driver, close_idle, open_sessions, source_addresses
from .loadgen import sessions_per_address as per_address
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
    ) -> None:
        super().__init__(params)
        self.count = count
        self.checker = Checker(SCENARIO, pool, index * count, ring)
        start = (index * count) & (POOL - 1)
        self.payloads = ring[start : start + count]
        self.resumed_ns = self.done_ns = self.replayed = 0
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
            self.replayed = event.replayed  # messages this client sent again

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
        if sent == received == consumed == self.checker.received == self.count:
            return None
        return (
            f"sequence numbers: sent {sent}, received {received}, consumed {consumed}, "
            f"echoes {self.checker.received} of {self.count}"
        )


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's ``VmHWM`` to its current RSS (``clear_refs`` 5); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


async def storm(proc: ServerProcess, count: int, args: argparse.Namespace, load: CoreLoad) -> Json:
    """Open *count* sessions, load them, cut them all, and time their resumes."""
    loop = asyncio.get_running_loop()
    params, pool = Params(), make_pool(SIZE)
    ring = pool + pool
    in_flight = args.in_flight if args.messages is None else args.messages // count
    in_flight = max(1, min(args.in_flight, in_flight))
    each = per_address()
    sources = source_addresses(each)
    # Resumes come from the next addresses: the cut ones may still count on the server.
    offset = -(-count // each) * each
    print(f"  storm: opening {count:,} sessions", file=sys.stderr, flush=True)
    sessions = await open_sessions(
        proc.port,
        count,
        args.concurrency,
        lambda i: StormSession(i, params, pool, ring, in_flight),
        sources,
        HANDSHAKE_TIMEOUT,
    )
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        gc.collect()
        rss_before, peak_reset = proc.rss_kib(), reset_peak_rss(proc.pid)
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
            args.concurrency,
            sessions.__getitem__,
            lambda i: sources(offset + i),
            HANDSHAKE_TIMEOUT,
        )
        left = args.time_limit - (time.perf_counter_ns() - t0) / 1e9
        _done, pending = await asyncio.wait([s.done for s in sessions], timeout=max(left, 1.0))
        server_cpu = proc.cpu_seconds() - server0
        client_cpu = time.process_time() - client0
        others = load.others(server_cpu, client_cpu)
        rss_after, peak = proc.rss_kib(), int(proc.status("VmHWM").split()[0])
        failures = [why for s in sessions if (why := s.verify()) is not None]
        for session in sessions:  # retrieved, so that none is logged as never retrieved
            if session.done.done():
                session.done.exception()
        if pending or failures:
            raise BenchError(
                f"storm of {count:,}: {len(pending):,} sessions did not get every echo "
                f"within {args.time_limit:g} s, {len(failures):,} failed"
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
        "concurrency": args.concurrency,
        "cut_loop_s": cut_loop / 1e9,
        "all_resumed_s": max(resumed) / 1e9,
        "all_replayed_s": seconds,
        "per_session_done_us": summary_us(done),
        "per_session_resumed_us": summary_us(resumed),
        "timeline_s": {  # cut → each session resumed / caught up, as quantiles
            "resumed": [ns / 1e9 for ns in harness.quantiles(resumed)],
            "caught_up": [ns / 1e9 for ns in harness.quantiles(done)],
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
        "source_addresses": 2 * (offset // each),
        **({} if others is None else {"other_load_share": list(others)}),
    }


def per_size(results: list[Json], count: int) -> Json:
    """The storms of *count* sessions: the spread of each figure, and every storm."""
    mine = [r for r in results if r["sessions"] == count]
    out = harness.summarise(mine)
    for key in ("cut_loop_s", "echoes_received", "replayed_by_clients", "client_cpu_s"):
        out.pop(key, None)
    return out | {
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "sessions", str, "1000,10000", "20,100", metavar="N,N",
           help="sessions per storm (--messages: most in flight per storm)")  # fmt: skip
    option(parser, "in_flight", int, 4, metavar="N", help="messages per session at the cut")
    option(parser, "concurrency", int, DEFAULT_CONCURRENCY, help="handshakes in flight")
    option(parser, "time_limit", float, 60.0, metavar="S", help="seconds for every echo back")


def run(args: argparse.Namespace) -> int:
    sizes = harness.counts(given(args, "sessions", "1000,10000", "20,100"), "--sessions")
    repeat = given(args, "repeat", 3, 2)
    harness.positive(args, "repeat", "concurrency", "messages", "time_limit")
    if not 1 <= args.in_flight <= Params().window_messages:
        raise BenchError(f"--in-flight must be 1..{Params().window_messages}")
    banner = (
        f"{', '.join(f'{n:,}' for n in sizes)} sessions x {repeat}, "
        f"{args.in_flight} messages of {SIZE} B each at the cut"
        + ("" if args.messages is None else f" (at most {args.messages:,} per storm)")
        + f", at most {args.concurrency} handshakes in flight"
    )

    def body(ctx: Context) -> Json:
        if max(sizes) + 64 > ctx.nofile[0]:
            raise BenchError(f"{max(sizes):,} sessions do not fit RLIMIT_NOFILE")

        def one(count: int, rep: int) -> Json:
            with ctx.fresh_server(f"daemon-storm-{count}-{rep + 1}", daemon_argv()) as proc:
                try:
                    result: Json = ctx.run(storm(proc, count, args, ctx.load))
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

        results = [r for count in sizes for r in ctx.passes([count], one, repeat, show=show)]
        by_size = {str(count): per_size(results, count) for count in sizes}
        target = by_size.get(str(TARGET_SESSIONS))
        return {
            "config": {
                "sessions": list(sizes),
                "in_flight_per_session": args.in_flight,
                "messages_per_storm_at_most": args.messages,
                "payload_size": SIZE,
                "repeat": repeat,
                "concurrency": args.concurrency,
                "time_limit_s": args.time_limit,
                "sessions_per_source_address": per_address(),
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

    return harness.scenario(args, SCENARIO, banner, body)


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
        return [
            Target(
                SCENARIO, asked, "not run at that size", TOY if entry.get("quick") else NOT_MEASURED
            )
        ]
    storms = entry["storms"][str(target["sessions"])]["all_replayed_s"]["values"]
    return [
        Target(
            SCENARIO,
            asked,
            f"{target['all_replayed_s']:.2f} s (median; storms "
            f"{values_range(storms, '{:.2f}')} s), {target['lost']} lost",
            NOT_MET if target["lost"] else judged(entry, storms, target["seconds"], False),
        )
    ]


# ------------------------------------------------------------------ markdown


def _seconds(key: str) -> str:
    """The format of a spread of seconds: ``median [min-max]``."""
    return f"{{{key}[median]:.2f}} [{{{key}[min]:.2f}}-{{{key}[max]:.2f}}]"


def _loadgen(stats: Json) -> str:
    bounds = stats["client_bound"]
    bound = f" (client-bound {sum(bounds)}/{len(bounds)})" if any(bounds) else ""
    return cpu_cell(f"{stats['client_cpu_share']['median']:.0%}{bound}", stats["all_replayed_s"])


#: The storm table: a header and each size's cell, a format of its figures or a function.
COLUMNS: dict[str, str | Callable[[Json], str]] = {
    "payload": "{payload_size} B",
    "sessions": "{sessions:,}",
    "msgs each": "{in_flight_per_session}",
    "handshakes in flight": "{concurrency}",
    "cut → all resumed (s)": _seconds("all_resumed_s"),
    "cut → all caught up (s)": _seconds("all_replayed_s"),
    "per session p50 / p99": "{per_session_done_ms[p50][median]:,.1f} / "
    "{per_session_done_ms[p99][median]:,.1f} ms",
    "resumes/s": "{resumes_per_s[median]:,.0f}",
    "lost": "{lost:,} of {messages:,}",
    "server CPU": lambda s: cpu_cell(
        f"{s['server_cpu_s']['median']:.2f} s ({s['server_cpu_share']['median']:.0%})",
        s["all_replayed_s"],
    ),
    "server ms CPU/session": "{server_cpu_ms_per_session[median]:.3f}",
    "server RSS before / peak / after": lambda s: " / ".join(
        f"{s['server_rss_kib'][k]['median'] / 1024:,.1f}" for k in ("before", "peak", "after")
    ),
    "loadgen core busy": _loadgen,
    "cores full": lambda s: harness.full_cores_cell(s["cores_full"]),
}


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## storm`` section of RESULTS.md."""
    config, target, storms = entry["config"], entry["target"], entry["storms"].values()
    rows = [
        [c.format(**s) if isinstance(c, str) else c(s) for c in COLUMNS.values()] for s in storms
    ]
    lines = [
        *harness.header(entry, commit, path),
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
        markdown_table(list(COLUMNS), rows),
        "",
    ]
    for stats in storms:
        if note := harness.other_load_note(stats["other_load_share"])[:1]:
            lines += [f"{stats['sessions']:,} sessions: {note[0]}", ""]
    asked = (
        f"Target: {target['sessions']:,} sessions fully resumed within {target['seconds']:g} s "
        "with zero loss: "
    )
    lines.append(
        asked + f"{target['all_replayed_s']:.2f} s (median), {target['lost']} lost "
        f"({verdict(targets(entry, {})[0].verdict)})."
        if target["measured"]
        else asked + "not measured in this run."
    )
    return "\n".join([*lines, "", *harness.notes_lines(entry)])
