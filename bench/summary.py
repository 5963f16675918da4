"""The summary across scenarios: headline figures, targets, and what every run must show.

A scenario may define ``headlines(entry) -> list[Headline]`` (its headline figure per
system and case) and ``targets(entry, run) -> list[Target]`` (*run*: every entry of the
run by scenario, for targets needing another scenario's figure). :func:`lost_fields`
finds any non-zero ``lost``/``duplicates``; :func:`markdown` writes ``## summary``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .results import Json, display_path, markdown_table

#: The systems' columns, in this order; a system not listed here gets a column after them.
COLUMNS = ("daemon", "client", "ceiling", "mosquitto", "nats")
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
NOISE = "within noise"  # the repetitions fall on both sides of the goal: no verdict
TOY = "not judged at toy size"  # a --quick run
#: A pass shorter than this gives CPU shares made of scheduling noise and start-up: its CPU
#: figures are printed as :data:`TOO_SHORT` (the JSON keeps them).
MIN_CPU_SECONDS = 0.25
TOO_SHORT = "pass too short"


@dataclass(frozen=True, slots=True)
class Headline:
    """One row of the summary table: a scenario's headline figure per system for one case."""

    scenario: str
    case: str  # e.g. "1 session, 64 B"
    figure: str  # what the cells hold, e.g. "msg/s" or "p50 / p99 µs"
    cells: dict[str, str]  # system -> formatted value


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets and where this run stands (a :func:`judge` verdict)."""

    scenario: str
    target: str  # what is asked, e.g. "daemon ≥ 60% of the ceiling's msg/s (1 session, 64 B)"
    measured: str  # what was measured, formatted
    verdict: str  # MET, NOT_MET, NOISE, NOT_MEASURED or TOY


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one scenario of a run ended."""

    scenario: str
    status: str  # "ok", "failed", "interrupted", "not run"
    seconds: float
    error: str | None = None
    lost: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> Json:
        return {**asdict(self), "lost": [list(pair) for pair in self.lost]}


def cpu_cell(text: str, stats: Json) -> str:
    """*text* (a CPU figure), or :data:`TOO_SHORT` when the passes' median *stats*
    (a spread of seconds) is below :data:`MIN_CPU_SECONDS`."""
    return text if stats["median"] >= MIN_CPU_SECONDS else TOO_SHORT


def judge(values: Sequence[float], goal: float, higher: bool = True) -> str:
    """:data:`MET` when every repetition clears *goal*, :data:`NOT_MET` when none does,
    else :data:`NOISE`: the spread straddles the goal, so the median alone decides nothing."""
    cleared = [value >= goal if higher else value <= goal for value in values]
    if not values:
        return NOT_MEASURED
    return MET if all(cleared) else NOISE if any(cleared) else NOT_MET


def judged(entry: Json, values: Sequence[float], goal: float, higher: bool = True) -> str:
    """:func:`judge` for a scenario's results *entry*; :data:`TOY` for a ``--quick`` one."""
    return TOY if entry.get("quick") else judge(values, goal, higher)


def both(first: str, second: str) -> str:
    """The verdict of a target with two halves (a rate *and* a tail)."""
    for worst in (TOY, NOT_MET):
        if worst in (first, second):
            return worst
    if first == second:
        return first
    return NOT_MEASURED if NOT_MEASURED in (first, second) else NOISE


def verdict(verdict: str | bool | None) -> str:
    """A verdict as the markdown shows it (a bare bool from an older results file too)."""
    if isinstance(verdict, bool) or verdict is None:
        verdict = {True: MET, False: NOT_MET, None: NOT_MEASURED}[verdict]
    return f"**{verdict}**" if verdict == NOT_MET else verdict


def values_range(values: Sequence[float], fmt: str = "{:.1%}") -> str:
    """``min-max`` of per-repetition values, for a target's *measured* text."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}" if values else "-"


def lost_fields(entry: Any, path: str = "") -> list[tuple[str, float]]:
    """Every non-zero number under a ``lost`` or ``duplicates`` key (or ``*_lost``,
    ``*_duplicates``) of *entry*, with its path."""
    found: list[tuple[str, float]] = []
    if not isinstance(entry, dict | list):
        return found
    for key, value in entry.items() if isinstance(entry, dict) else enumerate(entry):
        where = f"{path}.{key}" if path else str(key)
        counted = isinstance(key, str) and key.rsplit("_", 1)[-1] in ("lost", "duplicates")
        if counted and isinstance(value, int | float) and not isinstance(value, bool):
            found += [(where, value)] if value else []
        else:
            found += lost_fields(value, where)
    return found


def order(names: Iterable[str]) -> list[str]:
    """*names* once each, those in :data:`COLUMNS` first in its order, then the rest sorted."""
    seen = set(names)
    return [name for name in COLUMNS if name in seen] + sorted(seen - set(COLUMNS))


def markdown(
    run: Json,
    headlines: Sequence[Headline],
    targets: Sequence[Target],
    outcomes: Sequence[Outcome],
    json_path: Path,
    plot_path: Path | None,
    sections: bool,
) -> str:
    """The ``## summary`` section: how each scenario ended, the headlines, the targets, the plot."""
    machine, commit = run["machine"], run["commit"]
    rows = []
    for o in outcomes:
        where = f"`## {o.scenario}` below" if sections else "printed above"
        where = where if o.status == "ok" else (o.error or "").split("\n")[0][:160]
        lost = ", ".join(f"{path} = {value:g}" for path, value in o.lost[:3]) or "0"
        status = o.status if o.status == "ok" else f"**{o.status}**"
        rows.append([f"`{o.scenario}`", status, f"{o.seconds:,.0f} s", lost, where])
    lines = [
        f"Command: `{run['command']}` · JSON: `{display_path(json_path)}`"
        + (f" · plot: `{display_path(plot_path)}`" if plot_path is not None else ""),
        "",
        f"Commit `{commit['commit_short']}`{' with uncommitted changes' * commit['dirty']}, "
        f"{run['started_at']}, {run['duration_s']:,.0f} s in all; {machine['cpu_model']}, "
        f"{machine['cores']} cores; {machine['python_implementation']} {machine['python']}; "
        f"msgpack {machine['msgpack']}; uvloop {machine['uvloop']}."
        + " **Quick run: toy sizes, the figures only show that it works.**"
        * run["quick"],
        "",
        markdown_table(["scenario", "status", "took", "lost", "figures"], rows, left=2),
        "",
    ]
    if headlines:
        names = order(name for headline in headlines for name in headline.cells)
        rows = [[f"`{h.scenario}`", h.case, h.figure, *(h.cells.get(n, "") for n in names)]
                for h in headlines]  # fmt: skip
        lines += [
            "Headline figure per system and scenario (medians over the repetitions; "
            "each scenario's section has the spread, the CPU and what bound each pass):",
            "",
            markdown_table(["scenario", "case", "figure", *(f"`{n}`" for n in names)], rows, 3),
            "",
        ]
    if targets:
        rows = [[f"`{t.scenario}`", t.target, t.measured, verdict(t.verdict)] for t in targets]
        lines += ["Targets:", "", markdown_table("scenario|target|measured|verdict", rows, 4), ""]
    if plot_path is not None:  # RESULTS.md sits in bench/, the plot in bench/results/
        relative = display_path(plot_path).removeprefix("bench/")
        lines += [f"![every scenario with a figure worth a picture]({relative})", ""]
    return "\n".join(lines)
