"""``python -m bench resume``: one session's transport cut again and again while messages flow.

One session against the echo app with about 1,000 64-byte messages in flight; *cuts*
times per pass (200), right after a batch was written, the client resets its transport
(``SO_LINGER`` 0, :meth:`~bench.loadgen.Driver.cut`) and at once resumes (protocol.md
§4.1, §4.4: each side replays what the other lacks). Figures: cut → connected, resumed,
first message.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from sessiond_client.protocol import Params, SessionResumed, SessionStarted

from . import BenchError
from .core import POOL, make_pool
from .harness import (
    Context,
    full_cores_cell,
    given,
    header,
    legend,
    notes_lines,
    option,
    other_load_note,
    positive,
    quantiles,
    scenario,
)
from .harness import summarise as summarise_passes
from .loadgen import HOST, CpuClock, Echo, EchoResult, Share, echo_pass
from .processes import CLIENT_BOUND, bound_by, daemon_argv
from .results import Json, markdown_table, spread
from .summary import NOT_MET, Headline, Target, cpu_cell, judged, values_range, verdict

HELP = "one session, ~1,000 messages in flight, its transport cut 200 times: time to resume"

SCENARIO = "resume"
SIZE = 64
DEFAULT_WINDOW = 1000
TIME_LIMIT = 60.0  # seconds of sending per pass; then it drains
#: Messages echoed between two cuts at the least (on average, more).
MIN_GAP = 100
WARMUP_CUTS = 5
WARMUP_MESSAGES = 6_000
CONNECT_TIMEOUT = 10.0
SEED = 20261122
#: Target (issue 5): cut → first message delivered, p99, on loopback.
TARGET_P99_MS = 5.0
#: The steps of a resume, timed from the cut: JSON key and table label.
STEPS = {
    "connected": "TCP connected",
    "resumed": "resumed (WELCOME in)",
    "first_message": "first message delivered",
}


def cut_gaps(messages: int, cuts: int, rng: random.Random) -> list[int]:
    """Messages echoed before each cut, counted from the start or from the previous
    resume's first message: *messages* spread evenly, each gap jittered by up to a quarter."""
    gap = messages / (cuts + 1)
    if gap < MIN_GAP:
        raise BenchError(f"{cuts} cuts need at least {(cuts + 1) * MIN_GAP:,} messages")
    return [max(1, round(gap + rng.uniform(-gap / 4, gap / 4))) for _ in range(cuts)]


class ResumeEcho(Echo):
    """A windowed echo whose transport is cut after given numbers of echoes and resumed at
    once, on *resume_ports* in turn if given (``bench store``: another daemon on the same
    store, while the owner is alive), else on *port*."""

    def __init__(self, share: Share, port: int, gaps: list[int], resume_ports: Sequence[int]):
        super().__init__(share)
        self.port = port
        self.resume_ports = resume_ports
        self.gaps = gaps
        self.next_cut = gaps[0] if gaps else 0  # a cut once this many echoes are checked
        self.cut_ns = 0  # when the latest cut happened, until its first message arrives
        self.samples: dict[str, list[int]] = {step: [] for step in STEPS}
        self.in_flight: list[int] = []  # messages sent and not echoed back, at each cut
        self.replayed: list[int] = []  # messages the client sent again after each resume
        self.reconnecting: asyncio.Task[None] | None = None

    @property
    def cuts(self) -> int:
        return len(self.in_flight)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.failure is not None:  # failed while reconnecting
            transport.close()
            return
        if self.cut_ns:
            self.samples["connected"].append(time.perf_counter_ns() - self.cut_ns)
        super().connection_made(transport)

    def on_open(self, event: SessionStarted | SessionResumed) -> None:
        if isinstance(event, SessionResumed):
            self.samples["resumed"].append(self.read_ns - self.cut_ns)
            self.replayed.append(event.replayed)

    def on_messages(self, messages: list[bytes], now: float) -> None:
        share = self.share
        if self.cuts < len(self.gaps) and share.stopped_by == "count":
            # Cuts still to come: keep a window in flight past --messages.
            share.limit = max(share.limit, share.checker.taken + len(messages) + share.window)
        super().on_messages(messages, now)
        if self.cut_ns:
            self.samples["first_message"].append(self.read_ns - self.cut_ns)
            self.cut_ns = 0
            if self.cuts < len(self.gaps):
                self.next_cut = share.checker.taken + self.gaps[self.cuts]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (
            self.cuts < len(self.gaps)
            and not self.cut_ns
            and not self.closing
            and self.opened.done()
            and self.share.checker.taken >= self.next_cut
            and self.share.stopped_by == "count"
        ):
            self._cut()

    def _cut(self) -> None:
        """Right after the read's batch was written: reset, report, reconnect at once."""
        self.in_flight.append(self.share.sent - self.share.checker.taken)
        self.reset_on_close()
        self.cut_ns = time.perf_counter_ns()
        try:
            self.cut()
        except BenchError as exc:
            self._fail(str(exc))
            return
        ports = self.resume_ports
        port = ports[(self.cuts - 1) % len(ports)] if ports else self.port
        self.reconnecting = self.loop.create_task(self._reconnect(port))

    async def _reconnect(self, port: int) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self, HOST, port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            self._fail(f"reconnecting after cut {self.cuts}: {exc!r}")


@dataclass(frozen=True, slots=True)
class ResumePass:
    """One pass: the echo's figures and, per cut, the time each step of the resume took."""

    echo: EchoResult
    samples: dict[str, list[int]]  # ns from the cut, per step
    in_flight: list[int]
    replayed: list[int]
    planned_cuts: int
    sequence_numbers: tuple[int, int, int, int]

    @property
    def cuts(self) -> int:
        return len(self.in_flight)

    def to_json(self) -> Json:
        keys = ("sent", "acked_by_server", "received", "consumed")
        return {
            **self.echo.to_json(),
            "cuts": self.cuts,
            "planned_cuts": self.planned_cuts,
            "bound": bound_by(self.echo),
            "core_sequence_numbers": dict(zip(keys, self.sequence_numbers, strict=True)),
            "in_flight_at_cut": spread(self.in_flight) if self.in_flight else None,
            "client_replayed": spread(self.replayed) if self.replayed else None,
            "from_cut_us": {step: summary_us(self.samples[step]) for step in STEPS},
        }


def summary_us(samples_ns: Sequence[int]) -> Json:
    """Count, min, p50, p90, p99 (nearest rank: exact for a few hundred samples), max and
    mean of nanosecond samples, in microseconds."""
    if not samples_ns:
        return {"count": 0}
    ordered = sorted(samples_ns)
    rank = {p: ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] / 1000 for p in (50, 90, 99)}
    return {
        "count": len(ordered),
        "min": ordered[0] / 1000,
        **{f"p{p}": value for p, value in rank.items()},
        "max": ordered[-1] / 1000,
        "mean": sum(ordered) / len(ordered) / 1000,
    }


async def resume_pass(
    port: int,
    pool: list[bytes],
    messages: int,
    window: int,
    cuts: int,
    time_limit: float,
    seed: int,
    server_cpu: CpuClock,
    resume_ports: Sequence[int] = (),
) -> ResumePass:
    """One session, *messages* echoed with *cuts* cuts along the way; every echo checked."""
    gaps = cut_gaps(messages, cuts, random.Random(seed))
    client = ResumeEcho(Share("daemon", pool, messages, window), port, gaps, resume_ports)
    echo = await echo_pass("daemon", port, [client], time_limit, server_cpu)
    if echo.stopped_by == "count" and client.cuts != cuts:
        raise BenchError(f"resume: {client.cuts} cuts made of {cuts} planned")
    seq = client.session.sequence_numbers
    return ResumePass(echo, client.samples, client.in_flight, client.replayed, cuts, seq)


def summarise(passes: list[ResumePass]) -> Json:
    """Every cut of every pass pooled per step, the per-pass spread, and the counts."""
    pooled = {step: [ns for p in passes for ns in p.samples[step]] for step in STEPS}
    per_pass = {step: [summary_us(p.samples[step]) for p in passes] for step in STEPS}
    echoes = [p.echo for p in passes]
    return summarise_passes([p.to_json() for p in passes]) | {
        "payload_size": echoes[0].size,
        "window": echoes[0].window,
        "passes": len(passes),
        "cuts": sum(p.cuts for p in passes),
        "from_cut_us": {step: summary_us(pooled[step]) for step in STEPS},
        "from_cut_ms_quantiles": {
            step: [ns / 1e6 for ns in quantiles(pooled[step], 100)] for step in STEPS
        },
        "from_cut_us_per_pass": {
            step: {
                key: spread([s[key] for s in per_pass[step] if s["count"]])
                for key in ("p50", "p99", "max")
            }
            for step in STEPS
            if any(s["count"] for s in per_pass[step])
        },
        "in_flight_at_cut": spread([n for p in passes for n in p.in_flight]),
        "client_replayed": spread([n for p in passes for n in p.replayed]),
        "sent": sum(e.messages for e in echoes),
        "received": sum(e.received for e in echoes),
        "echo_rate": spread([e.rate for e in echoes]),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "cuts", int, 200, 5, metavar="N", help="cuts per pass (--messages: echoed)")
    option(parser, "window", int, DEFAULT_WINDOW, metavar="W", help="messages in flight")
    option(parser, "time_limit", float, TIME_LIMIT, metavar="S", help="seconds of sending")


def run(args: argparse.Namespace) -> int:
    positive(args, "messages", "cuts", "repeat", "window", "time_limit")
    messages, cuts = given(args, "messages", 200_000, 6_000), given(args, "cuts", 200, 5)
    repeat, window = given(args, "repeat", 3, 2), args.window
    if window > POOL // 2:
        raise BenchError(f"--window must be 1..{POOL // 2}")
    cut_gaps(messages, cuts, random.Random(SEED))  # enough messages?
    banner = f"{cuts} cuts over {messages:,} messages x {repeat}, window {window}, {SIZE} B"

    def body(ctx: Context) -> Json:
        proc = ctx.server("daemon", daemon_argv())
        pool = make_pool(SIZE)

        def one(count: int, quota: int, seed: int) -> ResumePass:
            def go() -> ResumePass:
                coroutine = resume_pass(
                    proc.port, pool, quota, window, count, args.time_limit, seed, proc.cpu_seconds
                )
                return cast(ResumePass, ctx.run(coroutine))

            result, others = ctx.timed(proc, go)
            return dataclasses.replace(result, echo=dataclasses.replace(result.echo, others=others))

        def show(result: ResumePass) -> str:
            first, echo = summary_us(result.samples["first_message"]), result.echo
            return (
                f"{result.cuts} cuts, cut → first message p50 {first.get('p50', 0) / 1e3:.2f} "
                f"ms p99 {first.get('p99', 0) / 1e3:.2f} ms; {echo.received:,} echoed, "
                f"server {echo.server_cpu / echo.seconds:4.0%} loadgen "
                f"{echo.client_cpu / echo.seconds:4.0%} {bound_by(echo)}"
            )

        warm = min(cuts, WARMUP_CUTS), max(WARMUP_MESSAGES, 2 * window), SEED
        passes = ctx.passes(
            [proc],
            lambda _proc, rep: one(cuts, messages, SEED + 1 + rep),
            repeat,
            warmup=lambda _proc: one(*warm),
            show=show,
        )
        summary = summarise(passes)
        p99_ms = summary["from_cut_us"]["first_message"]["p99"] / 1000
        return {
            "config": {
                "messages": messages,
                "cuts": cuts,
                "repeat": repeat,
                "window": window,
                "payload_size": SIZE,
                "time_limit_s": args.time_limit,
                "warmup_cuts": warm[0],
                "seed": SEED,
                "cut": "SO_LINGER 0 then transport.abort() (RST) right after writing a batch, "
                "reported to the core at once; then a new connection at once (no backoff)",
                "client": "the protocol core in an asyncio.Protocol (bench/resume.py "
                "ResumeEcho on bench/loadgen.py's Driver), not the client library",
                "client_params": asdict(Params()),
                "daemon_config": "every setting at its default",
                "client_bound_threshold": CLIENT_BOUND,
                "timer": "time.perf_counter_ns from just before abort()",
                "percentiles": "nearest rank over the sorted samples",
            },
            "resume": summary,
            "target": {
                "first_message_p99_ms": TARGET_P99_MS,
                "p99_ms": p99_ms,
                "met": p99_ms < TARGET_P99_MS,
            },
            "markdown": markdown,
        }

    return scenario(args, SCENARIO, banner, body)


# ---------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """The daemon's cut → first message delivered, p50 and p99 over every cut."""
    summary = entry["resume"]
    first = summary["from_cut_us"]["first_message"]
    return [
        Headline(
            SCENARIO,
            f"{summary['cuts']:,} cuts, {summary['window']:,} msgs in flight",
            "cut → first message p50 / p99 ms",
            {"daemon": f"{first['p50'] / 1000:.2f} / {first['p99'] / 1000:.2f}"},
        )
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """Resume p99 under 5 ms on loopback (cut → first message), with nothing lost."""
    summary, target = entry["resume"], entry["target"]
    per_pass = [rep["from_cut_us"]["first_message"]["p99"] for rep in summary["repetitions"]]
    judgement = judged(entry, per_pass, target["first_message_p99_ms"] * 1000, higher=False)
    return [
        Target(
            SCENARIO,
            f"resume p99 < {target['first_message_p99_ms']:g} ms on loopback, nothing lost "
            "or duplicated",
            f"{target['p99_ms']:.2f} ms over {summary['cuts']:,} cuts (passes "
            f"{values_range([v / 1000 for v in per_pass], '{:.2f}')} ms); lost "
            f"{summary['lost']}, duplicated {summary['duplicates']}",
            NOT_MET if summary["lost"] or summary["duplicates"] else judgement,
        )
    ]


# ------------------------------------------------------------------ markdown


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def _ms_spread(stats: Json) -> str:
    return f"{stats['median'] / 1000:.2f} [{stats['min'] / 1000:.2f}-{stats['max'] / 1000:.2f}]"


def _pass_row(index: int, rep: Json) -> list[str]:
    """One pass: its cuts, counts, rate and CPU."""
    seq, seconds = rep["core_sequence_numbers"], {"median": rep["seconds"]}
    return [
        str(index + 1),
        f"{rep['cuts']}",
        *(
            f"{rep[k]['median']:,.0f}" if rep[k] else "-"
            for k in ("in_flight_at_cut", "client_replayed")
        ),
        f"{rep['messages']:,} / {rep['received']:,}",
        f"{seq['sent']:,} / {seq['received']:,}",
        f"{rep['lost']} / {rep['duplicates']}",
        f"{rep['rate']:,.0f}",
        cpu_cell(f"{rep['server_cpu_s']:.2f} s ({rep['server_cpu_share']:.0%})", seconds),
        cpu_cell(f"{rep['client_cpu_s']:.2f} s ({rep['client_cpu_share']:.0%})", seconds),
        cpu_cell(rep["bound"], seconds),
    ]


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## resume`` section of RESULTS.md."""
    config, summary, target = entry["config"], entry["resume"], entry["target"]
    size = f"{summary['payload_size']} B"
    steps = []
    for step, label in STEPS.items():
        stats, per_pass = summary["from_cut_us"][step], summary["from_cut_us_per_pass"].get(step)
        steps.append(
            [
                size,
                label,
                f"{stats['count']:,}",
                *(_ms(stats[k]) for k in ("p50", "p99", "max")),
                _ms_spread(per_pass["p99"]) if per_pass else "-",
            ]
        )
    passes = [[size, *_pass_row(i, rep)] for i, rep in enumerate(summary["repetitions"])]
    lines = [
        *header(entry, commit, path),
        f"One session (echo app), {config['window']:,} messages of {config['payload_size']} B "
        f"in flight, {config['cuts']} cuts per pass (one every "
        f"{config['messages'] // (config['cuts'] + 1):,} echoes or so, at least "
        f"{config['messages']:,} messages per pass), {config['repeat']} passes after a warm-up. "
        "A cut: right after writing a batch the client resets its transport (`SO_LINGER` 0, "
        "`abort()`) and at once resumes (HELLO with its last received sequence number, "
        "protocol.md §4), driving the protocol core (`bench/loadgen.py`'s Driver), not the "
        "client library. Times from just before `abort()`; percentiles over every cut "
        "(nearest rank); *per pass*: median [min-max] of each pass's percentile.",
        "",
        markdown_table(
            ["payload", "from the cut to", "cuts", "p50", "p99", "max", "p99 per pass (ms)"],
            steps,
        ),
        "",
        "Per pass. *in flight*: sent, not yet echoed at a cut (median); *client replayed*: "
        "sent again after a resume (median); *core seq*: the client core's last sent and "
        "received sequence numbers; *lost / duplicates*: counted as each echo came back; CPU "
        "over the whole pass (share of one core). " + legend(entry),
        "",
        markdown_table(
            "payload|pass|cuts|in flight|client replayed|sent / echoed|core seq sent / received"
            "|lost / duplicates|echo msg/s|server CPU|loadgen CPU|bound",
            passes,
        ),
        "",
        "Cores full (server or load generator core > 90 % busy, others included): "
        f"{full_cores_cell(summary['cores_full'])}.",
        "",
        *other_load_note(summary["other_load_share"]),
        f"Target: cut → first message p99 under {target['first_message_p99_ms']:g} ms on "
        f"loopback: {target['p99_ms']:.2f} ms over {summary['cuts']:,} cuts "
        f"({verdict(targets(entry, {})[0].verdict)}); messages lost {summary['lost']}, "
        f"duplicated {summary['duplicates']} ({summary['sent']:,} sent, "
        f"{summary['received']:,} echoed back in order).",
        "",
    ]
    return "\n".join(lines + notes_lines(entry))
