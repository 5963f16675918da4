"""The PNG of a run: one panel per figure worth a picture, for every scenario that ran.

Bars of a spread per system (throughput per payload size, tls, fanout as fast as the
window allows) and curves against percentile on HdrHistogram's axis (latency per offered
rate, resume, paced fanout), storm's timeline and idle's RSS per session against the count;
three to a row, drawn on matplotlib's Agg canvas (:func:`panels` lists them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .results import Json
from .summary import order

#: One colour per system, the same in every panel; others take the spare ones in turn.
COLOURS = {"daemon": "#1f77b4", "client": "#17becf", "ceiling": "#7f7f7f"}
COLOURS |= {"mosquitto": "#ff7f0e", "nats": "#2ca02c"}
SPARE = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#d62728")
TICKS = (50.0, 90.0, 99.0, 99.9, 99.99)  # percentiles marked on the percentile axes
COLUMNS = 3

Panel = Callable[[Any], None]


def panels(entries: Mapping[str, Json]) -> list[Panel]:
    """Every panel the *entries* of a run have figures for, in scenario order."""
    out: list[Panel] = []
    echo = entries.get("throughput", {}).get("echo") or {}
    for size in dict.fromkeys(s for by_size in echo.values() for s in by_size):
        by_count = {c: by[size] for c, by in echo.items() if size in by}
        groups = {f"{int(c):,} session" + "s" * (c != "1"): by for c, by in by_count.items()}
        what = ("messages/s (median, range)", f"throughput: windowed echo, {size} B")
        out.append(partial(_bars, by_group=groups, key="rate", labels=what))
    for rate, by_system in entries.get("latency", {}).get("rates", {}).items():
        title = f"latency: ping-pong at {int(rate):,}/s offered"
        out.append(partial(_percentiles, by_system=by_system, title=title, what="round trip"))
    resume = entries.get("resume", {}).get("resume", {})
    if resume.get("from_cut_ms_quantiles"):
        title = f"resume: {resume['cuts']:,} cuts, {resume['window']:,} in flight"
        curves = {step.replace("_", " "): _quantiles(q) for step, q in
                  resume["from_cut_ms_quantiles"].items()}  # fmt: skip
        out.append(partial(_curves, curves=curves, title=title, what="from the cut, ms"))
    if storms := entries.get("storm", {}).get("storms"):
        out.append(partial(_storm, storms=storms))
    idle = entries.get("idle", {})
    if idle.get("sessions") or idle.get("tls_sessions"):
        out.append(partial(_idle, entry=idle))
    tls = entries.get("tls", {})
    if tls.get("handshakes") and tls.get("echo"):
        groups = {"handshakes/s": tls["handshakes"]}
        groups |= {f"echo {size} B, msg/s": by for size, by in tls["echo"].items()}
        groups = {g: {t: by[t] for t in ("tcp", "tls") if t in by} for g, by in groups.items()}
        what = ("per second (median, range)", "tls: the daemon over TLS and plain TCP")
        out.append(partial(_bars, by_group=groups, key="rate", labels=what))
    for size, by_load in entries.get("fanout", {}).get("fanout", {}).items():
        for key, by_system in by_load.items():
            if key == "window":
                title = f"fanout: 1 → many, as fast as the window allows, {size} B"
                what = ("deliveries/s (median, range)", title)
                groups = {"window": by_system}
                out.append(partial(_bars, by_group=groups, key="deliveries_per_s", labels=what))
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


def _colour(name: str, names: Sequence[str]) -> str:
    others = [n for n in names if n not in COLOURS]
    return COLOURS.get(name) or SPARE[others.index(name) % len(SPARE)]


def _bars(axes: Any, by_group: Mapping[str, Json], key: str, labels: tuple[str, str]) -> None:
    """Bars of the spread *key* per system, grouped; the range as the error bar."""
    names = order(name for stats in by_group.values() for name in stats)
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        at = [(x, by[name][key]) for x, by in enumerate(by_group.values()) if name in by]
        xs = [x + (index - (len(names) - 1) / 2) * width for x, _ in at]
        error = [[s["median"] - s["min"] for _, s in at], [s["max"] - s["median"] for _, s in at]]
        axes.bar(xs, [s["median"] for _, s in at], width, yerr=error, capsize=2, label=name,
                 color=_colour(name, names))  # fmt: skip
    axes.set_xticks(range(len(by_group)))
    axes.set_xticklabels(list(by_group))
    axes.set_yscale("log")
    axes.grid(axis="y", which="both", alpha=0.3)
    _finish(axes, *labels)


def _quantiles(values: Sequence[float]) -> list[tuple[float, float]]:
    """(percentile, value) of evenly spaced quantiles, the 100 % one left out."""
    return [(100.0 * k / (len(values) - 1), v) for k, v in enumerate(values[:-1])]


def _percentiles(axes: Any, by_system: Json, title: str, what: str) -> None:
    names = order(by_system)
    curves = {name: [(p, v / 1000) for p, v in by_system[name]["histogram_ns"]
                     ["percentile_distribution"] if p < 100.0] for name in names}  # fmt: skip
    colours = {name: _colour(name, names) for name in names}
    _curves(axes, curves, title, f"{what}, µs", colours)


def _curves(
    axes: Any,
    curves: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    what: str,
    colours: Mapping[str, str] | None = None,
) -> None:
    """Value against percentile on HdrHistogram's axis (each added nine one step)."""
    top = _x(99.0)
    for label, points in curves.items():
        xs = [_x(percent) for percent, _ in points]
        top = max([top, *xs])
        colour = (colours or {}).get(label)
        axes.step(xs, [v for _, v in points], where="post", label=label, color=colour)
    shown = [p for p in TICKS if _x(p) <= top * 1.001]
    axes.set_xscale("log")
    axes.set_xticks([_x(p) for p in shown])
    axes.set_xticklabels([f"{p:g}%" for p in shown])
    axes.set_yscale("log")
    axes.set_xlabel("percentile")
    axes.grid(which="both", alpha=0.3)
    _finish(axes, what, title)


def _storm(axes: Any, storms: Json) -> None:
    for count, stats in storms.items():
        lines = [run["timeline_s"] for run in stats["repetitions"] if run.get("timeline_s")]
        for rep, line in enumerate(lines):
            shares = [
                100.0 * k / (len(line["caught_up"]) - 1) for k in range(len(line["caught_up"]))
            ]
            label = f"{int(count):,} sessions" if rep == 0 else None
            (caught,) = axes.plot(line["caught_up"], shares, label=label)
            axes.plot(line["resumed"], shares, linestyle=":", color=caught.get_color())
    axes.set_xlabel("seconds since the cut (dotted: resumed; solid: caught up)")
    axes.grid(alpha=0.3)
    _finish(axes, "sessions, %", "storm: every session cut at once")


def _idle(axes: Any, entry: Json) -> None:
    for key, label in (("sessions", "session over TCP"), ("tls_sessions", "session over TLS"),
                       ("tls_ceiling", "bare TLS connection (ceiling)")):  # fmt: skip
        points = sorted((int(n), s["rss_per_session_kib"]) for n, s in entry.get(key, {}).items())
        if points:
            error = [[s["median"] - s["min"] for _, s in points],
                     [s["max"] - s["median"] for _, s in points]]  # fmt: skip
            axes.errorbar([n for n, _ in points], [s["median"] for _, s in points], yerr=error,
                          marker="o", capsize=2, label=label)  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("idle sessions (connections)")
    axes.grid(which="both", alpha=0.3)
    title = "idle: server memory per idle session"
    _finish(axes, "server RSS per session, KiB (median, range)", title)


def _finish(axes: Any, ylabel: str, title: str) -> None:
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")


def _x(percent: float) -> float:
    """HdrHistogram's axis: 1 / (1 - p), so that each added nine is one step."""
    return 1.0 / (1.0 - min(percent, 99.9999) / 100.0)


def title(command: str, commit: Json, quick: bool) -> str:
    state = " (uncommitted changes)" if commit.get("dirty") else ""
    return f"{command} · commit {commit['commit_short']}{state}" + " · quick: toy sizes" * quick
