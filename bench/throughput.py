"""``python -m bench throughput``: windowed echo, every system side by side, 1 and 100 sessions.

In one run, on the same machine, sockets and pinning, every system of :mod:`bench.systems`
(the daemon through the protocol core and through the client library, the raw ceiling,
mosquitto QoS 1, NATS) echoes 64-byte and 1 KiB payloads, up to a window in flight per
session, every message checked in order; with 100 sessions the messages are shared out over
100 connections, all opened before the clocks start. Figures: messages per second and the
server's CPU per million messages, each the median and spread of the repetitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Mapping
from pathlib import Path

from . import BenchError, harness, latency, systems
from .core import POOL
from .harness import Context, given, option, spread_cell
from .processes import CLIENT_BOUND
from .results import Json, markdown_table
from .summary import NOT_MEASURED, Headline, Target, both, cpu_cell, judged, values_range
from .summary import verdict as shown
from .systems import CEILING, CLIENT, DAEMON, MOSQUITTO, NATS, SESSIOND, EchoPlan

HELP = "windowed echo msg/s, 1 and 100 sessions: sessiond vs the raw ceiling, mosquitto, NATS"

SCENARIO = "throughput"
SIZES = (64, 1024)
#: A full pass is bounded by time (TIME_LIMIT): a second or more of every system, so
#: that its CPU figures rest on more than a few scheduler ticks; this only caps it.
DEFAULT_MESSAGES = 20_000_000
QUICK_MESSAGES = 1_000
#: Messages in flight per session: one session keeps a deep window; with many,
#: each keeps less (100 x 128 is still 12,800 in flight, 12.5 MiB at 1 KiB).
ONE_SESSION_WINDOW = 1024
MANY_SESSIONS_WINDOW = 128
TIME_LIMIT = 2.0  # seconds per pass, whichever of this and --messages comes first
WARMUP_MESSAGES = 10_000
#: The issue's targets at 64 B: the daemon's share of the ceiling's rate, by sessions
#: (one session, and more), and sessiond's rate over each peer's.
TARGET_SIZE = 64
CEILING_TARGET = {1: 0.60, 100: 0.75}
PEER_TARGET = {MOSQUITTO: 5.0, NATS: 2.0}


def plural(count: int) -> str:
    return f"{count:,} session" + ("" if count == 1 else "s")


def add_pass_arguments(parser: argparse.ArgumentParser) -> None:
    """``--window`` and ``--time-limit``: an echo pass's shape (bench/store.py too)."""
    shown = f"{ONE_SESSION_WINDOW} with one session, {MANY_SESSIONS_WINDOW} each with more"
    option(parser, "window", int, shown, metavar="W", help="messages in flight per session")
    option(parser, "time_limit", float, TIME_LIMIT, metavar="S", help="seconds per pass")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    systems.add_arguments(parser)
    option(parser, "sessions", str, "1,100", "1,10", metavar="N,N",
           help="sessions per pass, the messages shared out over them")  # fmt: skip
    add_pass_arguments(parser)


def run(args: argparse.Namespace) -> int:
    harness.positive(args, "messages", "repeat", "time_limit")
    messages = given(args, "messages", DEFAULT_MESSAGES, QUICK_MESSAGES)
    repeat = given(args, "repeat", 3, 2)
    sessions = harness.counts(given(args, "sessions", "1,100", "1,10"), "--sessions")
    windows = {
        n: args.window or (ONE_SESSION_WINDOW if n == 1 else MANY_SESSIONS_WINDOW) for n in sessions
    }
    if not all(1 <= window <= POOL // 2 for window in windows.values()):
        raise BenchError(f"--window must be 1..{POOL // 2}")
    wanted = systems.parse_systems(args.systems)
    warmup = 0 if args.quick else min(messages, WARMUP_MESSAGES)  # toy figures need no warm-up
    banner = (
        f"{', '.join(wanted)}; {', '.join(plural(n) for n in sessions)}; {messages:,} messages "
        f"(or {args.time_limit:g} s) x {repeat}, window {', '.join(map(str, windows.values()))} "
        f"per session, {', '.join(f'{s} B' for s in SIZES)}"
    )

    def body(ctx: Context) -> Json:
        binaries, skipped = systems.find_peers(args, wanted)
        started, peers = systems.start(ctx, wanted, binaries, max(windows.values()))
        if not started:
            raise BenchError("nothing to run: " + "; ".join(skipped.values()))
        runs = {
            n: systems.measure_echo(
                ctx,
                EchoPlan(messages, repeat, windows[n], args.time_limit, warmup, SIZES, n),
                started,
            )
            for n in sessions
        }
        ran = [system.name for system in started]
        echo = {str(n): systems.summarise_echo(runs[n], ran, SIZES) for n in sessions}
        entry: Json = {
            "config": {
                "systems": ran,
                "sessions": list(sessions),
                "messages": messages,
                "messages_are": "per pass, shared out over its sessions",
                "time_limit_s": args.time_limit,
                "repeat": repeat,
                "window_per_session": {str(n): windows[n] for n in sessions},
                "warmup_messages": warmup,
                "payload_sizes": list(SIZES),
                "distinct_payloads": POOL,
                "client_bound_threshold": CLIENT_BOUND,
            },
            "peers": peers,
            "skipped": skipped,
            "systems": {name: systems.SYSTEM_NOTES[name] for name in ran},
            "other_load_share": harness.other_load([r.others for rs in runs.values() for r in rs]),
            "echo": echo,
            "ratios": ratios(echo),
            "markdown": markdown,
        }
        judged_entry = {**entry, "quick": bool(args.quick)}
        entry["notes"] = meaningless(judged_entry)
        entry["targets"] = [dataclasses.asdict(t) for t in targets(judged_entry, {})]
        return entry

    return harness.scenario(args, SCENARIO, banner, body)


def meaningless(entry: Json) -> list[str]:
    """In a toy run, a note for every case where the daemon beat the raw ceiling: at that
    size the passes measure start-up and scheduling, not the systems."""
    beaten = [
        f"{plural(int(count))}, {size} B: {pairs[f'{DAEMON}/{CEILING}']:.0%} of the ceiling"
        for count, by_size in entry["ratios"].items()
        for size, pairs in by_size.items()
        if pairs.get(f"{DAEMON}/{CEILING}", 0.0) > 1.0
    ]
    if not beaten or not entry["quick"]:
        return []
    return [
        "**meaningless: the daemon beat the raw ceiling in this toy run ("
        + "; ".join(beaten)
        + "), which it cannot do with real passes; the toy figures only show that every "
        "system runs**"
    ]


def ratios(echo: Json) -> Json:
    """Per sessions and size: sessiond's median rate over the ceiling's and each peer's."""
    return {
        count: {
            size: {
                f"{ours}/{other}": by_system[ours]["rate"]["median"]
                / by_system[other]["rate"]["median"]
                for ours in SESSIOND
                for other in (CEILING, MOSQUITTO, NATS)
                if ours in by_system and other in by_system
            }
            for size, by_system in by_size.items()
        }
        for count, by_size in echo.items()
    }


# ---------------------------------------------------------------- summary


def headlines(entry: Json) -> list[Headline]:
    """Messages per second per system, one row per session count and payload size."""
    return [
        Headline(
            SCENARIO,
            f"{plural(int(count))}, {size} B",
            "msg/s",
            {name: f"{stats['rate']['median']:,.0f}" for name, stats in by_system.items()},
        )
        for count, by_size in entry["echo"].items()
        for size, by_system in by_size.items()
    ]


def paired(by_system: Json, ours: str, other: str, key: str = "rate") -> list[float]:
    """*ours* over *other*, repetition by repetition (they ran side by side in each)."""
    if ours not in by_system or other not in by_system:
        return []
    reps = zip(by_system[ours]["repetitions"], by_system[other]["repetitions"], strict=False)
    return [mine[key] / theirs[key] for mine, theirs in reps]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """The daemon's share of the ceiling; the client library against each peer's client at an
    equal or better p99: each judged on the passes paired within their repetition."""
    size = str(TARGET_SIZE)
    out: list[Target] = []
    for count, by_size in entry["echo"].items():
        values = paired(by_size.get(size, {}), DAEMON, CEILING)
        goal = CEILING_TARGET[1] if count == "1" else CEILING_TARGET[100]
        median = entry["ratios"][count].get(size, {}).get(f"{DAEMON}/{CEILING}")
        out.append(
            Target(
                SCENARIO,
                f"`daemon` ≥ {goal:.0%} of the ceiling's msg/s ({plural(int(count))}, {size} B)",
                "-" if median is None else f"{median:.1%} (passes {values_range(values)})",
                judged(entry, values, goal),
            )
        )
    lat = run.get("latency")
    for peer, goal in PEER_TARGET.items():
        rates = {
            int(count): values
            for count, by_size in entry["echo"].items()
            if (values := paired(by_size.get(size, {}), CLIENT, peer))
        }
        if not rates:
            continue
        rate_verdict = judged(entry, [v for values in rates.values() for v in values], goal)
        measured = "; ".join(
            f"{statistics.median(values):.2f}x ({plural(c)}; passes "
            f"{values_range(values, '{:.2f}')})"
            for c, values in rates.items()
        )
        tails = latency.p99_pairs(lat, CLIENT, peer) if lat is not None else {}
        measured += (
            "; p99 "
            + ", ".join(
                f"{statistics.median(values):.2g}x at {int(rate):,}/s"
                for rate, values in tails.items()
            )
            if tails
            else "; p99 not measured (run `latency` too)"
        )
        tail = [v for values in tails.values() for v in values]
        out.append(
            Target(
                SCENARIO,
                f"`client` ≥ {goal:g}x `{peer}` msg/s ({size} B, library against library) at an "
                "equal or better p99",
                measured,
                both(rate_verdict, judged(entry, tail, 1.0, False) if tails else NOT_MEASURED),
            )
        )
    return out


# --------------------------------------------------------------- markdown


def _over(by_system: Json, name: str, other: str, fmt: str = "{:.2f}x") -> str:
    if other not in by_system or other == name:
        return ""
    return fmt.format(by_system[name]["rate"]["median"] / by_system[other]["rate"]["median"])


def _row(count: str, size: str, name: str, by_system: Json) -> list[str]:
    stats = by_system[name]
    seconds = stats["seconds"]
    per_read = stats.get("messages_per_read")
    return [
        f"{int(count):,}",
        f"{size} B",
        f"`{name}`",
        spread_cell(stats["rate"]),
        _over(by_system, name, CEILING, "{:.1%}"),
        _over(by_system, name, MOSQUITTO),
        _over(by_system, name, NATS),
        cpu_cell(f"{stats['server_cpu_s_per_million']['median']:.2f}", seconds),
        cpu_cell(f"{stats['server_cpu_share']['median']:.0%}", seconds),
        cpu_cell(f"{stats['client_cpu_share']['median']:.0%}", seconds),
        cpu_cell(f"{stats['client_cpu_us_per_message']['median']:.1f}", seconds),
        "-" if per_read is None else f"{per_read['median']:,.0f}",
        cpu_cell(harness.bounds_cell(stats["bound"]), seconds),
        harness.full_cores_cell(stats["cores_full"]),
        str(stats["lost"]),
    ]


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## throughput`` section of RESULTS.md."""
    config, echo = entry["config"], entry["echo"]
    windows = config["window_per_session"]
    rows = [
        _row(count, size, name, by_system)
        for count, by_size in echo.items()
        for size, by_system in by_size.items()
        for name in config["systems"]
        if name in by_system
    ]
    lines = [
        *harness.header(entry, commit, path),
        *systems.markdown_lines(entry),
        f"Windowed echo, {', '.join(plural(count) for count in config['sessions'])} per pass "
        "(one connection each), "
        + ", ".join(
            f"{windows[str(count)]:,} in flight per session with {plural(count)}"
            for count in config["sessions"]
        )
        + f"; up to {config['messages']:,} messages per pass (shared out over its sessions) or "
        f"{config['time_limit_s']:g} s, {config['repeat']} passes per system, sessions and "
        "size, interleaved, after a warm-up. Every session is open before the clocks start; "
        "every message is checked in order when it comes back. *msg/s*: median [min-max]; *÷ "
        "ceiling* etc.: the medians' ratio; *server CPU s/M msg*: server CPU (all threads) per "
        "million messages; *core busy*: CPU over wall seconds; *loadgen µs CPU/msg*: the "
        "Python client's CPU per message; *msgs/read*: per read in the load generator (- "
        "where the client reads out of sight, as nats-py does); " + harness.legend(entry),
        "",
        markdown_table(
            "sessions|payload|system|msg/s|÷ ceiling|÷ mosquitto|÷ nats|server CPU s/M msg"
            "|server core busy|loadgen core busy|loadgen µs CPU/msg|msgs/read|bound|cores full"
            "|lost",
            rows,
        ),
        "",
    ]
    client_bound = sorted(
        f"{name} ({plural(int(count))}, {size} B)"
        for count, by_size in echo.items()
        for size, by_system in by_size.items()
        for name, stats in by_system.items()
        if name not in (*SESSIOND, CEILING) and any(stats["client_bound"])
    )
    if client_bound:
        lines += [
            f"Client-bound peers: {', '.join(client_bound)}: there the Python client, not the "
            "broker, is the limit (the server CPU per message shows how much more the broker "
            "could carry).",
            "",
        ]
    pair = (DAEMON, CEILING)

    def per_million(by_system: Json, name: str) -> float:
        return float(by_system[name]["server_cpu_s_per_million"]["median"])

    turns = [
        f"{size} B: daemon {1e6 / per_million(by_system, DAEMON):,.0f}, "
        f"ceiling {1e6 / per_million(by_system, CEILING):,.0f}"
        for size, by_system in echo.get("1", {}).items()
        if all(n in by_system for n in pair)
        and all(b == "round-trip" for n in pair for b in by_system[n]["bound"])
        and all(per_million(by_system, n) > 0 for n in pair)
    ]
    if turns:
        lines += [
            "Round-trip-bound with one session: the window travels in a few large batches, each "
            "side waiting while the other works. A fully busy server would echo about "
            f"{'; '.join(turns)} msg/s: an extrapolation (1 / server CPU per message), not a "
            "measurement; the many-session rows measure it.",
            "",
        ]
    lines += harness.other_load_note(entry["other_load_share"])
    if entry["targets"]:
        lines += ["Targets:", ""]
        lines += [
            f"- {t['target']}: {t['measured']}: {shown(t['verdict'])}." for t in entry["targets"]
        ]
        lines.append("")
    return "\n".join(lines + harness.notes_lines(entry))
