"""``python -m bench latency``: round trips at a fixed offered rate, as percentiles.

Ping-pong (:mod:`bench.pingpong`) at each offered rate (1,000 and 10,000/s in all),
64-byte payloads, one ping in flight per connection and as many connections as the rate
needs (:data:`PER_CONNECTION_RATE` each), against every system of :mod:`bench.systems`.
Round trips go into HDR-style histograms (:mod:`bench.histogram`): p50, p99, p99.9 and max
per repetition, then the median and range. Targets: the daemon's p50 within 1.3x the
ceiling's; sessiond's p99 against each peer's.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

from . import BenchError, harness, systems
from .core import make_pool
from .harness import Context, given, option
from .histogram import Histogram, percentile_key
from .pingpong import PingPlan, PingResult
from .processes import CLIENT_BOUND, bound_by
from .results import Json, markdown_table, spread
from .summary import Headline, Target, both, cpu_cell, judged, values_range, verdict
from .systems import CEILING, CLIENT, DAEMON, MOSQUITTO, NATS, SESSIOND, System

HELP = "ping-pong at fixed offered rates, p50/p99/p99.9: sessiond vs the ceiling, mosquitto, NATS"

SCENARIO = "latency"
SYSTEMS = systems.SYSTEMS
RATES = (1_000, 10_000)
#: Offered messages per second per connection: one ping per millisecond at most,
#: the event loop timers' resolution.
PER_CONNECTION_RATE = 1_000
SIZE = 64
WARMUP_SECONDS = 0.5
#: Beyond its duration, a pass may run this long (slow replies) before no more pings go.
TIME_LIMIT = 10.0
#: The percentiles in the tables, in order.
SHOWN = ("p50", "p99", "p99.9", "max")
#: The target: the daemon's p50 within this factor of the ceiling's.
TARGET_P50_RATIO = 1.3
SYSTEM_NOTES = {
    **systems.SYSTEM_NOTES,
    DAEMON: "`python -m sessiond serve` (echo app); client: the protocol core in an "
    "asyncio.Protocol (bench/pingpong.py Ping on bench/loadgen.py's Driver)",
    CLIENT: "the same daemon; client: the library, `sessiond_client.connect` and "
    "`await send()` / `await recv()` per ping",
    CEILING: "bench/ceiling.py (uvloop, 4-byte length prefix); client: bench/pingpong.py "
    "Ping, framed",
}


def per_rate(runs: list[PingResult], names: Sequence[str], rates: Sequence[int]) -> Json:
    """Per rate and system: each percentile's spread over the passes, the merged histogram."""
    by_rate: Json = {}
    keys = ("min", "mean", *map(percentile_key, (50, 90, 99, 99.9)), "max")
    for rate in rates:
        by_rate[str(rate)] = entry = {}
        for name in names:
            mine = [run for run in runs if run.plan.rate == rate and run.plan.system == name]
            if not mine:
                continue
            merged = Histogram()
            for run in mine:
                merged.merge(run.plan.histogram)
            trips = [run.plan.histogram.summary() for run in mine]
            entry[name] = harness.summarise([run.to_json() for run in mine]) | {
                "payload_size": mine[0].plan.size,
                "connections": mine[0].plan.connections,
                "round_trip_us": {key: spread([t[key] / 1000 for t in trips]) for key in keys},
                "all_passes_us": {
                    key: value / 1000 if key != "count" else value
                    for key, value in merged.summary().items()
                },
                "client_cpu_us_per_message": spread(
                    [run.client_cpu * 1e6 / run.plan.received for run in mine]
                ),
                "samples": sum(run.plan.received for run in mine),
                "histogram_ns": merged.to_json(),
            }
    return by_rate


def _median(entry: Json, name: str, key: str) -> float:
    return float(entry[name]["round_trip_us"][key]["median"])


def p99_ratios(by_rate: Json) -> Json:
    """sessiond's (daemon, client) median p99 over each other system's, per rate."""
    pairs = {
        f"{ours}/{other}": {
            rate: _median(entry, ours, "p99") / _median(entry, other, "p99")
            for rate, entry in by_rate.items()
            if ours in entry and other in entry
        }
        for ours in SESSIOND
        for other in (CEILING, MOSQUITTO, NATS)
    }
    return {pair: by_rate for pair, by_rate in pairs.items() if by_rate}


def per_pass(by_system: Json, ours: str, other: str, key: str) -> list[float]:
    """*ours*'s percentile *key* over *other*'s, repetition by repetition."""
    if ours not in by_system or other not in by_system:
        return []
    reps = zip(by_system[ours]["repetitions"], by_system[other]["repetitions"], strict=False)
    return [mine["round_trip_us"][key] / theirs["round_trip_us"][key] for mine, theirs in reps]


def p99_pairs(entry: Json, ours: str, other: str) -> dict[str, list[float]]:
    """Per rate of a latency *entry*: *ours*'s p99 over *other*'s, per repetition."""
    out = {rate: per_pass(by, ours, other, "p99") for rate, by in entry["rates"].items()}
    return {rate: values for rate, values in out.items() if values}


# ----------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "rates", str, "1000,10000", metavar="R,R", help="offered messages/s in all")
    option(parser, "per_connection_rate", int, PER_CONNECTION_RATE, metavar="R",
           help="messages/s per connection: connections = rate / this, rounded up")  # fmt: skip
    option(parser, "duration", float, 5.0, 0.1, metavar="S", help="seconds per pass")
    option(parser, "size", int, SIZE, help="payload bytes, at least 8")
    systems.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    duration, repeat = given(args, "duration", 5.0, 0.1), given(args, "repeat", 3, 2)
    if duration <= 0 or repeat < 1 or args.per_connection_rate < 1 or args.size < 8:
        raise BenchError("--duration, --repeat, --per-connection-rate and --size out of range")
    rates = harness.counts(args.rates or ",".join(map(str, RATES)), "--rates")
    warmup = 0.0 if args.quick else min(duration, WARMUP_SECONDS)
    connections = {rate: max(1, math.ceil(rate / args.per_connection_rate)) for rate in rates}
    wanted = systems.parse_systems(args.systems)
    banner = (
        f"{', '.join(wanted)}; ping-pong at {', '.join(f'{r:,}/s' for r in rates)} for "
        f"{duration:g} s x {repeat}, {args.size} B"
    )

    def body(ctx: Context) -> Json:
        binaries, skipped = systems.find_peers(args, wanted)
        started, peers = systems.start(ctx, wanted, binaries, systems.WINDOW)
        pinged = [system for system in started if system.ping is not None]
        if not pinged:
            raise BenchError("nothing to run: " + "; ".join(skipped.values()))
        pool = make_pool(args.size)

        def one(system: System, rate: int, seconds: float) -> PingResult:
            assert system.ping is not None
            proc = system.proc
            plan = PingPlan(system.name, pool, rate, connections[rate], seconds, TIME_LIMIT)
            coroutine = system.ping(plan, proc.port, proc.cpu_seconds)
            result, others = ctx.timed(proc, lambda: ctx.run(coroutine))
            return dataclasses.replace(cast(PingResult, result), others=others)

        def show(result: PingResult) -> str:
            ping, trips = result.plan, result.plan.histogram.summary()
            return (
                f"ping {ping.rate:>6,.0f}/s  {ping.system:<9} p50 {trips['p50'] / 1e3:7.0f} "
                f"µs  p99 {trips['p99'] / 1e3:7.0f} µs  p99.9 {trips['p99.9'] / 1e3:7.0f} µs  "
                f"server {result.server_cpu / result.seconds:4.0%}  "
                f"loadgen {result.client_cpu / result.seconds:4.0%}  {bound_by(result)}-bound"
            )

        def warm(system: System) -> PingResult:
            return one(system, rates[0], warmup)

        runs: list[PingResult] = []
        for index, rate in enumerate(rates):
            timed = functools.partial(lambda r, s, _rep: one(s, r, duration), rate)
            runs += ctx.passes(pinged, timed, repeat, warm if warmup and not index else None, show)
        ran = [system.name for system in pinged]
        by_rate = per_rate(runs, ran, rates)
        entry: Json = {
            "config": {
                "systems": ran,
                "rates": list(rates),
                "connections": {str(rate): count for rate, count in connections.items()},
                "per_connection_rate": args.per_connection_rate,
                "payload_size": args.size,
                "duration_s": duration,
                "repeat": repeat,
                "time_limit_s": TIME_LIMIT,
                "warmup_s": warmup,
                "in_flight_per_connection": 1,
                "histogram": "log-linear, 128 sub-buckets per power of two (< 0.8 % error), ns",
                "client_bound_threshold": CLIENT_BOUND,
                "timer": "time.perf_counter_ns",
            },
            "peers": peers,
            "skipped": skipped,
            "systems": {name: SYSTEM_NOTES[name] for name in ran},
            "rates": by_rate,
            "other_load_share": harness.other_load([run.others for run in runs]),
            "p50_ratio_to_ceiling": {
                name: {
                    rate: _median(entry, name, "p50") / _median(entry, CEILING, "p50")
                    for rate, entry in by_rate.items()
                    if name in entry and CEILING in entry
                }
                for name in SESSIOND
                if name in ran
            },
            "p99_ratios": p99_ratios(by_rate),
            "markdown": markdown,
        }
        judged_entry = {**entry, "quick": bool(args.quick)}
        entry["targets"] = [dataclasses.asdict(target) for target in targets(judged_entry, {})]
        return entry

    return harness.scenario(args, SCENARIO, banner, body)


# ---------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """p50 and p99 per system, one row per offered rate."""
    return [
        Headline(
            SCENARIO,
            f"{int(rate):,}/s offered, "
            + ", ".join(f"{s} B" for s in sorted({v["payload_size"] for v in by_system.values()})),
            "p50 / p99 µs",
            {
                name: f"{_median(by_system, name, 'p50'):,.0f} / "
                f"{_median(by_system, name, 'p99'):,.0f}"
                for name in by_system
            },
        )
        for rate, by_system in entry["rates"].items()
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """The daemon's p50 within 1.3x the ceiling's at every rate, judged pass by pass."""
    ratios = entry["p50_ratio_to_ceiling"].get(DAEMON, {})
    if not ratios:
        return []
    passes = {rate: per_pass(entry["rates"][rate], DAEMON, CEILING, "p50") for rate in ratios}
    return [
        Target(
            SCENARIO,
            f"`daemon` p50 ≤ {TARGET_P50_RATIO:g}x the ceiling's",
            "; ".join(
                f"{ratio:.2f}x at {int(rate):,}/s (passes {values_range(passes[rate], '{:.2f}')})"
                for rate, ratio in ratios.items()
            ),
            # every rate must clear it: a rate whose passes all miss is not met, whatever
            # the other rate's passes say
            functools.reduce(
                both, [judged(entry, vs, TARGET_P50_RATIO, False) for vs in passes.values()]
            ),
        )
    ]


# ---------------------------------------------------------------- markdown


def _row(rate: str, name: str, stats: Json) -> list[str]:
    trips, bounds, seconds = stats["round_trip_us"], stats["client_bound"], stats["seconds"]
    bound = f" (client-bound {sum(bounds)}/{len(bounds)})" if any(bounds) else ""
    return [
        f"{stats['payload_size']} B",
        f"{int(rate):,}/s",
        f"`{name}`",
        str(stats["connections"]),
        f"{stats['achieved_rate']['median']:,.0f}",
        *(harness.spread_cell(trips[key]) for key in SHOWN),
        cpu_cell(f"{stats['server_cpu_share']['median']:.0%}", seconds),
        cpu_cell(f"{stats['client_cpu_share']['median']:.0%}{bound}", seconds),
        cpu_cell(f"{stats['client_cpu_us_per_message']['median']:,.0f}", seconds),
        harness.full_cores_cell(stats["cores_full"]),
        f"{stats['late']:,}",
        f"{stats['lost']:,}",
    ]


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## latency`` section of RESULTS.md."""
    config = entry["config"]
    rows = [
        _row(rate, name, by_system[name])
        for rate, by_system in entry["rates"].items()
        for name in config["systems"]
        if name in by_system
    ]
    connections = ", ".join(f"{int(r):,}/s: {n}" for r, n in config["connections"].items())
    lines = [
        *harness.header(entry, commit, path),
        *systems.markdown_lines(entry),
        f"Ping-pong, {config['payload_size']} B payloads, at most one ping in flight per "
        f"connection, {config['per_connection_rate']:,} pings/s per connection (connections: "
        f"{connections}), {config['duration_s']:g} s per pass, {config['repeat']} passes per "
        "system and rate, systems interleaved, after a warm-up pass. Every echo is compared "
        "with its ping.",
        "",
        markdown_table(
            "payload|offered|system|conns|achieved msg/s|p50 µs|p99 µs|p99.9 µs|max µs"
            "|server core busy|loadgen core busy|loadgen µs CPU/msg|cores full|late|lost",
            rows,
        ),
        "",
        "Round trip: from the ping handed to the transport until its echo is read (for a "
        "*late* ping, held back by a slow reply, from its scheduled time). Percentiles from an "
        "HDR-style histogram (< 0.8 % bucket error, a bucket's highest value); median [min-max] "
        "over the passes. *core busy*: CPU over wall seconds of the pass; *client-bound*: the "
        "load generator above 90 % of its core; *cores full*: a pinned core above 90 % "
        "counting other processes.",
        "",
        *harness.other_load_note(entry["other_load_share"]),
    ]
    client = entry["p50_ratio_to_ceiling"].get(CLIENT, {})
    through = "; ".join(f"{int(rate):,}/s: {ratio:.2f}x" for rate, ratio in client.items())
    lines += [
        f"Target: {t.target}: {t.measured}: {verdict(t.verdict)}."
        + (f" Through the client library: {through}." if through else "")
        for t in targets(entry, {})
    ]
    tails = {
        pair: by_rate
        for pair, by_rate in entry["p99_ratios"].items()
        if pair.partition("/")[2] in (MOSQUITTO, NATS)
    }
    if tails:
        lines += [
            "",
            "sessiond's p99 over each peer's (≤ 1: equal or better; the rate half of the "
            "target is in `## throughput`): "
            + "; ".join(
                f"`{pair}` " + ", ".join(f"{r:.2g}x at {int(rate):,}/s" for rate, r in by.items())
                for pair, by in tails.items()
            )
            + ".",
        ]
    return "\n".join([*lines, "", *harness.notes_lines(entry)])
