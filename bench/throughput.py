"""``python -m bench throughput``: windowed echo, every system side by side, 1 and 100 sessions.

In one run, on the same machine, sockets and pinning (:mod:`bench.processes`),
every system of :mod:`bench.systems` (the daemon through the protocol core, the
same daemon through the client library, the raw ceiling, mosquitto QoS 1, NATS)
echoes 64-byte and 1 KiB payloads: up to a window of messages in flight per
session (sent, not yet back), every message checked in order when it returns, a
pass ending once every message sent is back (:mod:`bench.systems`). With 100
sessions the messages are shared out over 100 connections, all opened before
the clocks start (:func:`bench.loadgen.echo_many` and its twins for the other
clients). Figures: messages per second delivered and acknowledged end to end,
and the server's CPU seconds per million messages; each the median and spread
of the repetitions, every repetition kept."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Mapping
from pathlib import Path

from . import BenchError, latency, systems
from .core import POOL
from .harness import (
    Context,
    bounds_cell,
    counts,
    full_cores_cell,
    given,
    header,
    legend,
    notes_lines,
    option,
    other_load,
    other_load_note,
    positive,
    scenario,
    spread_cell,
)
from .processes import CLIENT_BOUND
from .results import Json, markdown_table
from .summary import (
    NOT_MEASURED,
    Headline,
    Target,
    both,
    cpu_cell,
    judged,
    values_range,
    verdict,
)
from .systems import (
    CEILING,
    CLIENT,
    DAEMON,
    MOSQUITTO,
    NATS,
    SESSIOND,
    EchoPlan,
    measure_echo,
    summarise_echo,
)

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


def window_for(sessions: int, given: int | None) -> int:
    if given is not None:
        return given
    return ONE_SESSION_WINDOW if sessions == 1 else MANY_SESSIONS_WINDOW


def ceiling_target(sessions: int) -> float:
    return CEILING_TARGET[1] if sessions == 1 else CEILING_TARGET[100]


def plural(count: int) -> str:
    return f"{count:,} session" + ("" if count == 1 else "s")


# ---------------------------------------------------------------- options


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


# -------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    positive(args, "messages", "repeat", "time_limit")
    quick = bool(args.quick)
    messages = given(args, "messages", DEFAULT_MESSAGES, QUICK_MESSAGES)
    repeat = given(args, "repeat", 3, 2)
    sessions = counts(given(args, "sessions", "1,100", "1,10"), "--sessions")
    windows = {count: window_for(count, args.window) for count in sessions}
    if not all(1 <= window <= POOL // 2 for window in windows.values()):
        raise BenchError(f"--window must be 1..{POOL // 2}")
    wanted = systems.parse_systems(args.systems)
    warmup = 0 if quick else min(messages, WARMUP_MESSAGES)  # toy figures need no warm-up
    plans = {
        n: EchoPlan(messages, repeat, windows[n], args.time_limit, warmup, SIZES, n)
        for n in sessions
    }
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
        runs = {n: measure_echo(ctx, plans[n], started) for n in sessions}
        ran = [system.name for system in started]
        echo = {str(n): summarise_echo(runs[n], ran, SIZES) for n in sessions}
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
            "other_load_share": other_load(
                [result.others for results in runs.values() for result in results]
            ),
            "echo": echo,
            "ratios": ratios(echo),
            "markdown": markdown,
        }
        entry["notes"] = meaningless({**entry, "quick": quick})
        entry["targets"] = [
            dataclasses.asdict(target) for target in targets({**entry, "quick": quick}, {})
        ]
        return entry

    return scenario(args, SCENARIO, banner, body)


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
    out: Json = {}
    for count, by_size in echo.items():
        out[count] = {}
        for size, by_system in by_size.items():
            pairs = {
                f"{ours}/{other}": by_system[ours]["rate"]["median"]
                / by_system[other]["rate"]["median"]
                for ours in SESSIOND
                for other in (CEILING, MOSQUITTO, NATS)
                if ours in by_system and other in by_system
            }
            out[count][size] = pairs
    return out


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
    return [
        mine[key] / theirs[key]
        for mine, theirs in zip(
            by_system[ours]["repetitions"], by_system[other]["repetitions"], strict=False
        )
    ]


def targets(entry: Json, run: Mapping[str, Json]) -> list[Target]:
    """The daemon's share of the ceiling; the client library against each peer's client at an
    equal or better p99: each judged on the passes paired within their repetition."""
    size = str(TARGET_SIZE)
    out: list[Target] = []
    for count, by_size in entry["echo"].items():
        ratios = paired(by_size.get(size, {}), DAEMON, CEILING)
        goal = ceiling_target(int(count))
        median = entry["ratios"][count].get(size, {}).get(f"{DAEMON}/{CEILING}")
        out.append(
            Target(
                SCENARIO,
                f"`daemon` ≥ {goal:.0%} of the ceiling's msg/s ({plural(int(count))}, {size} B)",
                "-" if median is None else f"{median:.1%} (passes {values_range(ratios)})",
                judged(entry, ratios, goal),
            )
        )
    lat = run.get("latency")
    for peer, goal in PEER_TARGET.items():
        rates = {
            int(count): paired(by_size.get(size, {}), CLIENT, peer)
            for count, by_size in entry["echo"].items()
        }
        rates = {count: values for count, values in rates.items() if values}
        if not rates:
            continue
        rate_verdict = judged(entry, [v for values in rates.values() for v in values], goal)
        measured = "; ".join(
            f"{statistics.median(values):.2f}x ({plural(c)}; passes "
            f"{values_range(values, '{:.2f}')})"
            for c, values in rates.items()
        )
        tails = latency.p99_pairs(lat, CLIENT, peer) if lat is not None else {}
        if tails:
            measured += "; p99 " + ", ".join(
                f"{statistics.median(values):.2g}x at {int(rate):,}/s"
                for rate, values in tails.items()
            )
            tail_verdict = judged(
                entry, [v for values in tails.values() for v in values], 1.0, False
            )
        else:
            measured += "; p99 not measured (run `latency` too)"
            tail_verdict = NOT_MEASURED
        out.append(
            Target(
                SCENARIO,
                f"`client` ≥ {goal:g}x `{peer}` msg/s ({size} B, library against library) at an "
                "equal or better p99",
                measured,
                both(rate_verdict, tail_verdict),
            )
        )
    return out


# --------------------------------------------------------------- markdown


def _over(by_system: Json, name: str, other: str, fmt: str = "{:.2f}x") -> str:
    if other not in by_system or other == name:
        return ""
    return fmt.format(by_system[name]["rate"]["median"] / by_system[other]["rate"]["median"])


def echo_table(entry: Json) -> str:
    rows = []
    for count, by_size in entry["echo"].items():
        for size, by_system in by_size.items():
            for name in (n for n in entry["config"]["systems"] if n in by_system):
                stats = by_system[name]
                cpu = (
                    f"{stats['server_cpu_s_per_million']['median']:.2f}",
                    f"{stats['server_cpu_share']['median']:.0%}",
                    f"{stats['client_cpu_share']['median']:.0%}",
                    f"{stats['client_cpu_us_per_message']['median']:.1f}",
                )
                per_read = stats.get("messages_per_read")
                rows.append(
                    [
                        f"{int(count):,}",
                        f"{size} B",
                        f"`{name}`",
                        spread_cell(stats["rate"]),
                        _over(by_system, name, CEILING, "{:.1%}"),
                        _over(by_system, name, MOSQUITTO),
                        _over(by_system, name, NATS),
                        *(cpu_cell(text, stats["seconds"]) for text in cpu),
                        "-" if per_read is None else f"{per_read['median']:,.0f}",
                        cpu_cell(bounds_cell(stats["bound"]), stats["seconds"]),
                        full_cores_cell(stats["cores_full"]),
                        str(stats["lost"]),
                    ]
                )
    return markdown_table(
        "sessions|payload|system|msg/s|÷ ceiling|÷ mosquitto|÷ nats|server CPU s/M msg"
        "|server core busy|loadgen core busy|loadgen µs CPU/msg|msgs/read|bound|cores full|lost",
        rows,
    )


def markdown(entry: Json, commit: Json, path: Path) -> str:
    """The ``## throughput`` section of RESULTS.md."""
    config = entry["config"]
    windows = config["window_per_session"]
    lines = header(entry, commit, path)
    lines += systems.markdown_lines(entry)
    lines += [
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
        "where the client reads out of sight, as nats-py does); " + legend(entry),
        "",
        echo_table(entry),
        "",
    ]
    lines += _bound_notes(entry)
    lines += other_load_note(entry["other_load_share"])
    if entry["targets"]:
        lines += ["Targets:", ""]
        lines += [
            f"- {t['target']}: {t['measured']}: {verdict(t['verdict'])}." for t in entry["targets"]
        ]
        lines.append("")
    return "\n".join(lines + notes_lines(entry))


def _bound_notes(entry: Json) -> list[str]:
    lines: list[str] = []
    client_limited = sorted(
        {
            f"{name} ({plural(int(count))}, {size} B)"
            for count, by_size in entry["echo"].items()
            for size, by_system in by_size.items()
            for name, stats in by_system.items()
            if name not in SESSIOND and name != CEILING and any(stats["client_bound"])
        }
    )
    if client_limited:
        lines += [
            "Client-bound peers: "
            + ", ".join(client_limited)
            + ": there the Python client, not the broker, is the limit (the server CPU per "
            "message shows how much more the broker could carry).",
            "",
        ]
    one = entry["echo"].get("1", {})
    turns = [
        f"{size} B: daemon {1e6 / by_system[DAEMON]['server_cpu_s_per_million']['median']:,.0f}, "
        f"ceiling {1e6 / by_system[CEILING]['server_cpu_s_per_million']['median']:,.0f}"
        for size, by_system in one.items()
        if all(name in by_system for name in (DAEMON, CEILING))
        and all(b == "round-trip" for n in (DAEMON, CEILING) for b in by_system[n]["bound"])
        and all(by_system[n]["server_cpu_s_per_million"]["median"] > 0 for n in (DAEMON, CEILING))
    ]
    if turns:
        lines += [
            "Round-trip-bound with one session: the window travels in a few large batches, each "
            "side waiting while the other works. A fully busy server would echo about "
            f"{'; '.join(turns)} msg/s: an extrapolation (1 / server CPU per message), not a "
            "measurement; the many-session rows measure it.",
            "",
        ]
    return lines
