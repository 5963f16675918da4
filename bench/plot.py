"""The PNG of a run: throughput bars per system, latency percentiles per system.

:func:`plot` draws what a run's ``throughput`` and ``latency`` entries hold: one
panel per payload size of messages per second per system, grouped by session
count (median, with the repetitions' range as the error bar, on a log scale:
the systems differ a hundredfold), and one panel per offered rate of the round
trip against the percentile (HdrHistogram's percentile-distribution plot, from
every pass's histogram merged). matplotlib draws with its Agg canvas: no
display, no pyplot state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
#: Percentiles marked on the latency panels' axis.
TICKS = (50.0, 90.0, 99.0, 99.9, 99.99)


def _colour(name: str, names: Sequence[str]) -> str:
    if name in COLOURS:
        return COLOURS[name]
    others = [n for n in names if n not in COLOURS]
    return OTHER_COLOURS[others.index(name) % len(OTHER_COLOURS)]


def plot(entries: Mapping[str, Json], path: Path, title: str) -> Path | None:
    """Draw the ``throughput`` and ``latency`` entries of a run into *path*; None if neither ran."""
    throughput = entries.get("throughput")
    latency = entries.get("latency")
    rows: list[str] = []
    if throughput is not None and throughput.get("echo"):
        rows.append("throughput")
    if latency is not None and latency.get("rates"):
        rows.append("latency")
    if not rows:
        return None
    # Imported here: only a run that plots needs matplotlib (the `bench` extra).
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    sizes = _sizes(throughput) if "throughput" in rows and throughput is not None else []
    rates = list(latency["rates"]) if "latency" in rows and latency is not None else []
    width = max(len(sizes), len(rates), 1)
    figure = Figure(figsize=(6.5 * width, 4.8 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(rows), width, squeeze=False)
    for row, kind in enumerate(rows):
        panels = sizes if kind == "throughput" else rates
        for column in range(width):
            axes = grid[row][column]
            if column >= len(panels):
                axes.set_visible(False)
            elif kind == "throughput" and throughput is not None:
                _throughput_panel(axes, throughput, panels[column])
            elif latency is not None:
                _latency_panel(axes, latency, panels[column])
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _sizes(entry: Json) -> list[str]:
    return list(dict.fromkeys(size for by_size in entry["echo"].values() for size in by_size))


def _throughput_panel(axes: Any, entry: Json, size: str) -> None:
    counts = [count for count, by_size in entry["echo"].items() if size in by_size]
    names = order(name for count in counts for name in entry["echo"][count][size])
    bar = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        xs, medians, below, above = [], [], [], []
        for position, count in enumerate(counts):
            stats = entry["echo"][count][size].get(name)
            if stats is None:
                continue
            rate = stats["rate"]
            xs.append(position + (index - (len(names) - 1) / 2) * bar)
            medians.append(rate["median"])
            below.append(rate["median"] - rate["min"])
            above.append(rate["max"] - rate["median"])
        axes.bar(
            xs,
            medians,
            bar,
            yerr=[below, above],
            capsize=2,
            label=name,
            color=_colour(name, names),
        )
    axes.set_xticks(range(len(counts)))
    axes.set_xticklabels([f"{int(c):,} session" + ("" if c == "1" else "s") for c in counts])
    axes.set_yscale("log")
    axes.set_ylabel("messages/s (median, range)")
    axes.set_title(f"throughput: windowed echo, {size} B")
    axes.grid(axis="y", which="both", alpha=0.3)
    axes.legend(fontsize="small")


def _latency_panel(axes: Any, entry: Json, rate: str) -> None:
    by_system = entry["rates"][rate]
    names = order(by_system)
    for name in names:
        points = by_system[name]["histogram_ns"]["percentile_distribution"]
        xs = [_x(percent) for percent, _ in points if percent < 100.0]
        ys = [value / 1000 for percent, value in points if percent < 100.0]
        axes.step(xs, ys, where="post", label=name, color=_colour(name, names))
    top = max((_x(percent) for percent, _ in _points(by_system)), default=_x(99.0))
    shown = [p for p in TICKS if _x(p) <= top * 1.001]
    axes.set_xscale("log")
    axes.set_xticks([_x(p) for p in shown])
    axes.set_xticklabels([f"{p:g}%" for p in shown])
    axes.set_yscale("log")
    axes.set_xlabel("percentile (all passes)")
    axes.set_ylabel("round trip, µs")
    axes.set_title(f"latency: ping-pong at {int(rate):,}/s offered")
    axes.grid(which="both", alpha=0.3)
    axes.legend(fontsize="small")


def _points(by_system: Json) -> list[tuple[float, int]]:
    return [
        (percent, value)
        for stats in by_system.values()
        for percent, value in stats["histogram_ns"]["percentile_distribution"]
        if percent < 100.0
    ]


def _x(percent: float) -> float:
    """HdrHistogram's axis: 1 / (1 - p), so that each added nine is one step."""
    return 1.0 / (1.0 - min(percent, 99.9999) / 100.0)


def title(command: str, commit: Json, quick: bool) -> str:
    state = " (uncommitted changes)" if commit.get("dirty") else ""
    return f"{command} · commit {commit['commit_short']}{state}" + (
        " · quick: toy sizes" if quick else ""
    )
