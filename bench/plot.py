"""The PNG of a run: one panel per figure worth a picture, for every scenario that ran.

Throughput (msg/s per system by session count, per payload size, log scale), latency
(round trip against percentile, per offered rate), resume (distribution of cut →
connected / resumed / first message), storm (share of sessions resumed and caught up
against seconds since the cut), idle (server RSS per idle session against the count,
over TCP, over TLS and bare TLS), tls (handshakes/s and echo msg/s, TLS beside TCP) and
fanout (deliveries/s; paced delivery latency by percentile); three to a row, drawn on
matplotlib's Agg canvas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .results import Json
from .summary import order

#: One colour per system, the same in every panel.
COLOURS = {
    "daemon": "#1f77b4",
    "client": "#17becf",
    "ceiling": "#7f7f7f",
    "mosquitto": "#ff7f0e",
    "nats": "#2ca02c",
}
OTHER_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#d62728")
#: Percentiles marked on the percentile axes.
TICKS = (50.0, 90.0, 99.0, 99.9, 99.99)
COLUMNS = 3

Panel = Callable[[Any], None]


def _colour(name: str, names: Sequence[str]) -> str:
    if name in COLOURS:
        return COLOURS[name]
    others = [n for n in names if n not in COLOURS]
    return OTHER_COLOURS[others.index(name) % len(OTHER_COLOURS)]


def panels(entries: Mapping[str, Json]) -> list[Panel]:
    """Every panel the *entries* of a run have figures for, in scenario order."""
    out: list[Panel] = []
    throughput = entries.get("throughput")
    if throughput and throughput.get("echo"):
        sizes = dict.fromkeys(s for by_size in throughput["echo"].values() for s in by_size)
        out += [partial(_throughput, entry=throughput, size=size) for size in sizes]
    latency = entries.get("latency")
    for rate, by_system in (latency or {}).get("rates", {}).items():
        title = f"latency: ping-pong at {int(rate):,}/s offered"
        out.append(partial(_percentiles, by_system=by_system, title=title, what="round trip"))
    resume = entries.get("resume")
    if resume and resume["resume"].get("from_cut_ms_quantiles"):
        out.append(partial(_resume, summary=resume["resume"]))
    storm = entries.get("storm")
    if storm and storm.get("storms"):
        out.append(partial(_storm, storms=storm["storms"]))
    idle = entries.get("idle")
    if idle and (idle.get("sessions") or idle.get("tls_sessions")):
        out.append(partial(_idle, entry=idle))
    tls = entries.get("tls")
    if tls and tls.get("handshakes") and tls.get("echo"):
        out.append(partial(_tls, entry=tls))
    fanout = entries.get("fanout")
    for size, by_load in (fanout or {}).get("fanout", {}).items():
        for key, by_system in by_load.items():
            if key == "window":
                out.append(partial(_deliveries, by_system=by_system, size=size))
            elif all("histogram_ns" in stats for stats in by_system.values()):
                title = f"fanout: delivery latency, {key} published, {size} B"
                out.append(partial(_percentiles, by_system=by_system, title=title, what="delivery"))
    return out


def plot(entries: Mapping[str, Json], path: Path, title: str) -> Path | None:
    """Draw every panel of a run's *entries* into *path*; None if there is none."""
    drawn = panels(entries)
    if not drawn:
        return None
    # Imported here: only a run that plots needs matplotlib (the `bench` extra).
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    columns = min(COLUMNS, len(drawn))
    rows = -(-len(drawn) // columns)
    figure = Figure(figsize=(6.5 * columns, 4.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(axes for row in grid for axes in row):
        if index < len(drawn):
            drawn[index](axes)
        else:
            axes.set_visible(False)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _bars(axes: Any, groups: Sequence[str], by_group: Mapping[str, Json], key: str) -> None:
    """Bars of the spread *key* per system, grouped; the range as the error bar."""
    names = order(name for stats in by_group.values() for name in stats)
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        xs, medians, below, above = [], [], [], []
        for position, group in enumerate(groups):
            stats = by_group[group].get(name)
            if stats is None:
                continue
            spread = stats[key]
            xs.append(position + (index - (len(names) - 1) / 2) * width)
            medians.append(spread["median"])
            below.append(spread["median"] - spread["min"])
            above.append(spread["max"] - spread["median"])
        axes.bar(
            xs,
            medians,
            width,
            yerr=[below, above],
            capsize=2,
            label=name,
            color=_colour(name, names),
        )
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(groups)
    axes.set_yscale("log")
    axes.grid(axis="y", which="both", alpha=0.3)
    axes.legend(fontsize="small")


def _throughput(axes: Any, entry: Json, size: str) -> None:
    counts = [count for count, by_size in entry["echo"].items() if size in by_size]
    labels = [f"{int(c):,} session" + ("" if c == "1" else "s") for c in counts]
    by_label = {label: entry["echo"][c][size] for label, c in zip(labels, counts, strict=True)}
    _bars(axes, labels, by_label, "rate")
    axes.set_ylabel("messages/s (median, range)")
    axes.set_title(f"throughput: windowed echo, {size} B")


def _deliveries(axes: Any, by_system: Json, size: str) -> None:
    _bars(axes, ["window"], {"window": by_system}, "deliveries_per_s")
    axes.set_ylabel("deliveries/s (median, range)")
    axes.set_title(f"fanout: 1 → many, as fast as the window allows, {size} B")


def _percentiles(axes: Any, by_system: Json, title: str, what: str) -> None:
    names = order(by_system)
    top = _x(99.0)
    for name in names:
        points = [
            (percent, value)
            for percent, value in by_system[name]["histogram_ns"]["percentile_distribution"]
            if percent < 100.0
        ]
        xs = [_x(percent) for percent, _ in points]
        top = max([top, *xs])
        ys = [value / 1000 for _, value in points]
        axes.step(xs, ys, where="post", label=name, color=_colour(name, names))
    _percentile_axis(axes, top)
    axes.set_ylabel(f"{what}, µs")
    axes.set_title(title)
    axes.legend(fontsize="small")


def _percentile_axis(axes: Any, top: float) -> None:
    shown = [p for p in TICKS if _x(p) <= top * 1.001]
    axes.set_xscale("log")
    axes.set_xticks([_x(p) for p in shown])
    axes.set_xticklabels([f"{p:g}%" for p in shown])
    axes.set_yscale("log")
    axes.set_xlabel("percentile")
    axes.grid(which="both", alpha=0.3)


def _resume(axes: Any, summary: Json) -> None:
    top = _x(99.0)
    for step, values in summary["from_cut_ms_quantiles"].items():
        percents = [100.0 * k / (len(values) - 1) for k in range(len(values) - 1)]
        xs = [_x(p) for p in percents]
        top = max([top, *xs])
        axes.step(xs, values[:-1], where="post", label=step.replace("_", " "))
    _percentile_axis(axes, top)
    axes.set_ylabel("from the cut, ms")
    axes.set_title(f"resume: {summary['cuts']:,} cuts, {summary['window']:,} in flight")
    axes.legend(fontsize="small")


def _storm(axes: Any, storms: Json) -> None:
    for count, stats in storms.items():
        for rep, run in enumerate(stats["repetitions"]):
            line = run.get("timeline_s")
            if line is None:
                continue
            shares = [
                100.0 * k / (len(line["caught_up"]) - 1) for k in range(len(line["caught_up"]))
            ]
            label = f"{int(count):,} sessions" if rep == 0 else None
            (caught,) = axes.plot(line["caught_up"], shares, label=label)
            axes.plot(line["resumed"], shares, linestyle=":", color=caught.get_color())
    axes.set_xlabel("seconds since the cut (dotted: resumed; solid: caught up)")
    axes.set_ylabel("sessions, %")
    axes.set_title("storm: every session cut at once")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")


def _idle(axes: Any, entry: Json) -> None:
    for key, label in (
        ("sessions", "session over TCP"),
        ("tls_sessions", "session over TLS"),
        ("tls_ceiling", "bare TLS connection (ceiling)"),
    ):
        points = sorted((int(n), s["rss_per_session_kib"]) for n, s in entry.get(key, {}).items())
        if points:
            ns, stats = [n for n, _ in points], [s for _, s in points]
            below = [s["median"] - s["min"] for s in stats]
            above = [s["max"] - s["median"] for s in stats]
            medians = [s["median"] for s in stats]
            axes.errorbar(ns, medians, yerr=[below, above], marker="o", capsize=2, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("idle sessions (connections)")
    axes.set_ylabel("server RSS per session, KiB (median, range)")
    axes.set_title("idle: server memory per idle session")
    axes.grid(which="both", alpha=0.3)
    axes.legend(fontsize="small")


def _tls(axes: Any, entry: Json) -> None:
    groups = {"handshakes/s": entry["handshakes"]}
    groups |= {f"echo {size} B, msg/s": by for size, by in entry["echo"].items()}
    by_group = {g: {t: by[t] for t in ("tcp", "tls") if t in by} for g, by in groups.items()}
    _bars(axes, list(by_group), by_group, "rate")
    axes.set_ylabel("per second (median, range)")
    axes.set_title("tls: the daemon over TLS and plain TCP")


def _x(percent: float) -> float:
    """HdrHistogram's axis: 1 / (1 - p), so that each added nine is one step."""
    return 1.0 / (1.0 - min(percent, 99.9999) / 100.0)


def title(command: str, commit: Json, quick: bool) -> str:
    state = " (uncommitted changes)" if commit.get("dirty") else ""
    return f"{command} · commit {commit['commit_short']}{state}" + (
        " · quick: toy sizes" if quick else ""
    )
