"""``python -m bench latency``: round trips at a fixed offered rate, as percentiles.

Ping-pong (:mod:`bench.pingpong`) at each offered rate (1,000 and 10,000/s in all),
64-byte payloads, one ping in flight per connection and as many connections as the rate
needs (:data:`PER_CONNECTION_RATE` each), against every system of :mod:`bench.systems`
(the core-driven ``daemon``, the ``client`` library, the raw ``ceiling``, ``mosquitto``
QoS 1, ``nats``). Round trips go into HDR-style histograms (:mod:`bench.histogram`): p50,
p99, p99.9 and max per repetition, then the median and range. Targets: the daemon's p50
within 1.3x the ceiling's; sessiond's p99 against each peer's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from . import BenchError, systems
from .core import make_pool
from .harness import (
    Context,
    counts,
    full_cores_cell,
    given,
    header,
    option,
    other_load,
    other_load_note,
    scenario,
    summarise,
)
from .histogram import Histogram, percentile_key
from .pingpong import PingPlan, PingResult
from .processes import CLIENT_BOUND, bound_by
from .results import Json, markdown_table, spread
from .summary import Headline, cpu_cell, judged, values_range, verdict
from .summary import Target as TargetResult
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


@dataclass(frozen=True, slots=True)
class LatencyPlan:
    rates: tuple[int, ...]
    per_connection_rate: int
    size: int
    duration: float
    repeat: int
    time_limit: float
    warmup: float  # seconds of one warm-up pass per system (0: none, in a toy run)

    def connections(self, rate: int) -> int:
        return max(1, math.ceil(rate / self.per_connection_rate))

    def to_json(self) -> Json:
        return {
            "rates": list(self.rates),
            "connections": {str(rate): self.connections(rate) for rate in self.rates},
            "per_connection_rate": self.per_connection_rate,
            "payload_size": self.size,
            "duration_s": self.duration,
            "repeat": self.repeat,
            "time_limit_s": self.time_limit,
            "warmup_s": self.warmup,
            "in_flight_per_connection": 1,
            "histogram": "log-linear, 128 sub-buckets per power of two (< 0.8 % error), ns",
        }


def per_rate(runs: list[PingResult], names: Sequence[str], rates: Sequence[int]) -> Json:
    """Per rate and system: each percentile's spread over the passes, the merged histogram."""
    by_rate: Json = {}
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
            keys = ("min", "mean", *map(percentile_key, (50, 90, 99, 99.9)), "max")
            entry[name] = summarise([run.to_json() for run in mine]) | {
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


def p50_ratios(by_rate: Json, of: str, to: str) -> Json:
    """*of*'s median p50 over *to*'s, per rate (where both ran)."""
    return {
        rate: entry[of]["round_trip_us"]["p50"]["median"]
        / entry[to]["round_trip_us"]["p50"]["median"]
        for rate, entry in by_rate.items()
        if of in entry and to in entry
    }


def _us(stats: Json) -> str:
    if stats["max"] - stats["min"] < 0.5:
        return f"{stats['median']:,.0f}"
    return f"{stats['median']:,.0f} [{stats['min']:,.0f}-{stats['max']:,.0f}]"


def latency_table(by_rate: Json, names: Sequence[str]) -> str:
    """The markdown table of round trips: one row per rate and system."""
    rows = []
    for rate, entry in by_rate.items():
        for name in names:
            if name not in entry:
                continue
            stats = entry[name]
            trips = stats["round_trip_us"]
            bounds = stats["client_bound"]
            rows.append(
                [
                    f"{stats['payload_size']} B",
                    f"{int(rate):,}/s",
                    f"`{name}`",
                    str(stats["connections"]),
                    f"{stats['achieved_rate']['median']:,.0f}",
                    *(_us(trips[key]) for key in SHOWN),
                    cpu_cell(f"{stats['server_cpu_share']['median']:.0%}", stats["seconds"]),
                    cpu_cell(
                        f"{stats['client_cpu_share']['median']:.0%}"
                        + (f" (client-bound {sum(bounds)}/{len(bounds)})" if any(bounds) else ""),
                        stats["seconds"],
                    ),
                    cpu_cell(
                        f"{stats['client_cpu_us_per_message']['median']:,.0f}", stats["seconds"]
                    ),
                    full_cores_cell(stats["cores_full"]),
                    f"{stats['late']:,}",
                    f"{stats['lost']:,}",
                ]
            )
    return markdown_table(
        "payload|offered|system|conns|achieved msg/s|p50 µs|p99 µs|p99.9 µs|max µs"
        "|server core busy|loadgen core busy|loadgen µs CPU/msg|cores full|late|lost",
        rows,
    )


LATENCY_NOTES = (
    "Round trip: from the ping handed to the transport until its echo is read (for a "
    "*late* ping, held back by a slow reply, from its scheduled time). Percentiles from an "
    "HDR-style histogram (< 0.8 % bucket error, a bucket's highest value); median [min-max] "
    "over the passes. *core busy*: CPU over wall seconds of the pass; *client-bound*: the "
    "load generator above 90 % of its core; *cores full*: a pinned core above 90 % "
    "counting other processes."
)


# ----------------------------------------------------------------------- run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option(parser, "rates", str, "1000,10000", metavar="R,R", help="offered messages/s in all")
    option(parser, "per_connection_rate", int, PER_CONNECTION_RATE, metavar="R",
           help="messages/s per connection: connections = rate / this, rounded up")  # fmt: skip
    option(parser, "duration", float, 5.0, 0.1, metavar="S", help="seconds per pass")
    option(parser, "size", int, SIZE, help="payload bytes, at least 8")
    systems.add_arguments(parser)


def plan_from(args: argparse.Namespace) -> LatencyPlan:
    """The plan the options ask for (a pass is ``--duration`` at each rate)."""
    duration, repeat = given(args, "duration", 5.0, 0.1), given(args, "repeat", 3, 2)
    if duration <= 0 or repeat < 1 or args.per_connection_rate < 1 or args.size < 8:
        raise BenchError("--duration, --repeat, --per-connection-rate and --size out of range")
    rates = counts(args.rates or ",".join(map(str, RATES)), "--rates")
    warmup = 0.0 if args.quick else min(duration, WARMUP_SECONDS)
    return LatencyPlan(
        rates, args.per_connection_rate, args.size, duration, repeat, TIME_LIMIT, warmup
    )


def run(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    wanted = systems.parse_systems(args.systems)
    banner = (
        f"{', '.join(wanted)}; ping-pong at {', '.join(f'{r:,}/s' for r in plan.rates)} for "
        f"{plan.duration:g} s x {plan.repeat}, {plan.size} B"
    )

    def body(ctx: Context) -> Json:
        binaries, skipped = systems.find_peers(args, wanted)
        started, peers = systems.start(ctx, wanted, binaries, systems.WINDOW)
        pinged = [system for system in started if system.ping is not None]
        if not pinged:
            raise BenchError("nothing to run: " + "; ".join(skipped.values()))
        pool = make_pool(plan.size)

        def one(system: System, rate: int, duration: float) -> PingResult:
            assert system.ping is not None
            proc, connections = system.proc, plan.connections(rate)
            ping = PingPlan(system.name, pool, rate, connections, duration, plan.time_limit)
            coroutine = system.ping(ping, proc.port, proc.cpu_seconds)
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
            return one(system, plan.rates[0], plan.warmup)

        runs: list[PingResult] = []
        for index, rate in enumerate(plan.rates):

            def timed(system: System, _rep: int, rate: int = rate) -> PingResult:
                return one(system, rate, plan.duration)

            first = plan.warmup and index == 0
            runs += ctx.passes(pinged, timed, plan.repeat, warm if first else None, show)
        ran = [system.name for system in pinged]
        by_rate = per_rate(runs, ran, plan.rates)
        entry: Json = {
            "config": {
                "systems": ran,
                **plan.to_json(),
                "client_bound_threshold": CLIENT_BOUND,
                "timer": "time.perf_counter_ns",
            },
            "peers": peers,
            "skipped": skipped,
            "systems": {name: SYSTEM_NOTES[name] for name in ran},
            "rates": by_rate,
            "other_load_share": other_load([run.others for run in runs]),
            "p50_ratio_to_ceiling": {
                name: p50_ratios(by_rate, name, CEILING) for name in SESSIOND if name in ran
            },
            "p99_ratios": p99_ratios(by_rate),
            "markdown": markdown,
        }
        judged_entry = {**entry, "quick": bool(args.quick)}
        entry["targets"] = [dataclasses.asdict(target) for target in targets(judged_entry, {})]
        return entry

    return scenario(args, SCENARIO, banner, body)


def p99_ratios(by_rate: Json) -> Json:
    """sessiond's (daemon, client) median p99 over each other system's, per rate."""
    out: Json = {}
    for ours in SESSIOND:
        for other in (CEILING, MOSQUITTO, NATS):
            pair = {
                rate: entry[ours]["round_trip_us"]["p99"]["median"]
                / entry[other]["round_trip_us"]["p99"]["median"]
                for rate, entry in by_rate.items()
                if ours in entry and other in entry
            }
            if pair:
                out[f"{ours}/{other}"] = pair
    return out


def per_pass(by_system: Json, ours: str, other: str, key: str) -> list[float]:
    """*ours*'s percentile *key* over *other*'s, repetition by repetition."""
    if ours not in by_system or other not in by_system:
        return []
    return [
        mine["round_trip_us"][key] / theirs["round_trip_us"][key]
        for mine, theirs in zip(
            by_system[ours]["repetitions"], by_system[other]["repetitions"], strict=False
        )
    ]


def p99_pairs(entry: Json, ours: str, other: str) -> dict[str, list[float]]:
    """Per rate of a latency *entry*: *ours*'s p99 over *other*'s, per repetition."""
    out = {
        rate: per_pass(by_system, ours, other, "p99") for rate, by_system in entry["rates"].items()
    }
    return {rate: values for rate, values in out.items() if values}


SYSTEM_NOTES = {
    **systems.SYSTEM_NOTES,
    DAEMON: "`python -m sessiond serve` (echo app); client: the protocol core in an "
    "asyncio.Protocol (bench/pingpong.py SessionPing)",
    CLIENT: "the same daemon; client: the library, `sessiond_client.connect` and "
    "`await send()` / `await recv()` per ping",
    CEILING: "bench/ceiling.py (uvloop, 4-byte length prefix); client: bench/pingpong.py "
    "FramedPing",
}


# ---------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """p50 and p99 per system, one row per offered rate."""
    return [
        Headline(
            SCENARIO,
            f"{int(rate):,}/s offered, {_payload(by_system)}",
            "p50 / p99 µs",
            {
                name: f"{stats['round_trip_us']['p50']['median']:,.0f} / "
                f"{stats['round_trip_us']['p99']['median']:,.0f}"
                for name, stats in by_system.items()
            },
        )
        for rate, by_system in entry["rates"].items()
    ]


def _payload(by_system: Json) -> str:
    sizes = {stats["payload_size"] for stats in by_system.values()}
    return ", ".join(f"{size} B" for size in sorted(sizes))


def targets(entry: Json, run: Mapping[str, Json]) -> list[TargetResult]:
    """The daemon's p50 within 1.3x the ceiling's at every rate, judged pass by pass."""
    ratios = entry["p50_ratio_to_ceiling"].get(DAEMON, {})
    if not ratios:
        return []
    pairs = [
        value
        for by_system in entry["rates"].values()
        for value in per_pass(by_system, DAEMON, CEILING, "p50")
    ]
    return [
        TargetResult(
            SCENARIO,
            f"`daemon` p50 ≤ {TARGET_P50_RATIO:g}x the ceiling's",
            "; ".join(
                f"{ratio:.2f}x at {int(rate):,}/s (passes "
                f"{values_range(per_pass(entry['rates'][rate], DAEMON, CEILING, 'p50'), '{:.2f}')})"
                for rate, ratio in ratios.items()
            ),
            judged(entry, pairs, TARGET_P50_RATIO, higher=False),
        )
    ]


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## latency`` section of RESULTS.md."""
    config = entry["config"]
    ran: list[str] = config["systems"]
    lines = header(entry, commit, path)
    lines += systems.markdown_lines(entry)
    connections = ", ".join(
        f"{int(rate):,}/s: {count}" for rate, count in config["connections"].items()
    )
    lines += [
        f"Ping-pong, {config['payload_size']} B payloads, at most one ping in flight per "
        f"connection, {config['per_connection_rate']:,} pings/s per connection (connections: "
        f"{connections}), {config['duration_s']:g} s per pass, {config['repeat']} passes per "
        "system and rate, systems interleaved, after a warm-up pass. Every echo is compared "
        "with its ping.",
        "",
        latency_table(entry["rates"], ran),
        "",
        LATENCY_NOTES,
        "",
        *other_load_note(entry["other_load_share"]),
    ]
    ratios = entry["p50_ratio_to_ceiling"]
    for target in targets(entry, {}):
        client = [
            f"{int(rate):,}/s: {ratio:.2f}x" for rate, ratio in ratios.get(CLIENT, {}).items()
        ]
        lines.append(
            f"Target: {target.target}: {target.measured}: {verdict(target.verdict)}."
            + (" Through the client library: " + "; ".join(client) + "." if client else "")
        )
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
                f"`{pair}` "
                + ", ".join(f"{ratio:.2g}x at {int(rate):,}/s" for rate, ratio in by_rate.items())
                for pair, by_rate in tails.items()
            )
            + ".",
        ]
    if entry["notes"]:
        lines += ["", "Notes: " + "; ".join(entry["notes"]) + "."]
    return "\n".join(lines) + "\n"
