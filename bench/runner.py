"""Running scenarios one after another: the options, the failures, the summary, the plot.

Scenario names come first; each scenario parses the common options and its own (an
option no selected scenario takes is an error). A failing scenario is reported and the
run goes on. At the end: every entry checked for lost messages, the summary printed and
added to the JSON, the PNG drawn and, for a clean full run, ``## summary`` of RESULTS.md
rewritten.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from . import BenchError
from .plot import plot, title
from .results import (
    QUICK_DIR,
    RESULTS_DIR,
    Json,
    command_line,
    commit_info,
    display_path,
    machine_info,
    partial_reasons,
    read_document,
    results_path,
    update_document,
    update_results_md,
)
from .summary import (
    Headline,
    Outcome,
    Target,
    lost_fields,
    markdown,
)

SUMMARY = "summary"


class Scenario(Protocol):
    """What ``python -m bench`` needs from a scenario module."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


@dataclass(frozen=True, slots=True)
class Registry:
    """The scenarios, which run by default and in what order, and the old names."""

    scenarios: Mapping[str, Scenario]
    order: Sequence[str]  # the default run's order; registered names not here come after
    on_demand: Sequence[str]  # registered, run only when named
    aliases: Mapping[str, Sequence[str]]  # an old name -> the scenarios it now means

    def default(self) -> list[str]:
        first = [name for name in self.order if name in self.scenarios]
        rest = [name for name in self.scenarios if name not in first]
        return first + [name for name in rest if name not in self.on_demand]


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes, a few seconds each; results to bench/results/quick/, RESULTS.md untouched",
    )
    common.add_argument("--messages", type=int, metavar="N", help="messages per pass")
    common.add_argument("--repeat", type=int, metavar="K", help="passes per system and size")
    common.add_argument(
        "--out", type=Path, metavar="DIR", help="directory for the results JSON and plot"
    )
    return common


def scenario_parser(name: str, scenario: Scenario, common: argparse.ArgumentParser) -> Any:
    parser = argparse.ArgumentParser(
        prog=f"python -m bench {name}",
        description=scenario.HELP,
        parents=[common],
        allow_abbrev=False,
    )
    scenario.add_arguments(parser)
    return parser


def top_parser(registry: Registry) -> argparse.ArgumentParser:
    default = registry.default()
    lines = [
        f"  {name:<12} {registry.scenarios[name].HELP}"
        + ("" if name in default else "  (only when named)")
        for name in [*default, *[n for n in registry.scenarios if n not in default]]
    ]
    lines += [
        f"  {alias:<12} the same as: {' '.join(names)}" for alias, names in registry.aliases.items()
    ]
    return argparse.ArgumentParser(
        prog="python -m bench",
        usage="python -m bench [SCENARIO ...] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="sessiond benchmarks, run from the repository root. Without a scenario, "
        f"every default one runs, in this order: {', '.join(default)}.",
        epilog="scenarios:\n"
        + "\n".join(lines)
        + "\n\nAn option goes to every scenario run that takes it; see each one's options "
        "with `python -m bench SCENARIO --help`.",
        parents=[common_options()],
        allow_abbrev=False,
    )


@dataclass(frozen=True, slots=True)
class Selection:
    names: list[str]
    namespaces: dict[str, argparse.Namespace]
    options: argparse.Namespace  # every option of the run, as the union of the scenarios'
    full: bool  # every default scenario, no more, no fewer


def select(argv: Sequence[str], registry: Registry) -> Selection:
    """The scenarios *argv* names (leading words) and the options each one gets."""
    words = list(argv)
    named: list[str] = []
    while words and not words[0].startswith("-"):
        word = words.pop(0)
        if word in registry.scenarios:
            named.append(word)
        elif word in registry.aliases:
            named += registry.aliases[word]
        else:
            known = [*registry.scenarios, *registry.aliases]
            top_parser(registry).error(
                f"unknown scenario {word!r} (choose from {', '.join(known)}); "
                "scenarios come before the options"
            )
    names = list(dict.fromkeys(named)) or registry.default()
    common = common_options()
    parsers = {name: scenario_parser(name, registry.scenarios[name], common) for name in names}
    if "-h" in words or "--help" in words:
        if not named:
            top_parser(registry).print_help()
        else:
            for name in names:
                parsers[name].print_help()
                print()
        raise SystemExit(0)
    union = argparse.ArgumentParser(
        prog=" ".join(["python -m bench", *named]),
        parents=[common],
        allow_abbrev=False,
        conflict_handler="resolve",
    )
    for name in names:
        registry.scenarios[name].add_arguments(union)
    options, extra = union.parse_known_args(words)
    late = [word for word in extra if word in registry.scenarios or word in registry.aliases]
    if late:
        union.error(
            f"scenarios come before the options: python -m bench {' '.join([*named, *late])} ..."
        )
    if extra:
        union.error(f"unrecognized arguments: {' '.join(extra)}")
    out = options.out or (QUICK_DIR if options.quick else RESULTS_DIR)
    namespaces = {}
    for name, parser in parsers.items():
        namespace, _others = parser.parse_known_args(words)
        defaults = vars(parser.parse_known_args([])[0])
        namespace.changed = [
            key for key, value in vars(namespace).items() if defaults.get(key) != value
        ]
        namespace.scenario = name
        namespace.out = out
        namespaces[name] = namespace
    options.out = out
    return Selection(names, namespaces, options, names == registry.default())


def run_scenario(name: str, scenario: Scenario, args: argparse.Namespace) -> tuple[str, str | None]:
    """Run one scenario; return its status and, if it failed, why. Never raises but ^C."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        code = scenario.run(args)
    except BenchError as exc:
        print(f"bench {name}: {exc}", file=sys.stderr, flush=True)
        return "failed", str(exc)
    except Exception as exc:  # a bug in one scenario must not cost the others' results
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {exc}"
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
        gc.collect()
    if code != 0:
        return "failed", f"exited with status {code}"
    return "ok", None


def run(argv: Sequence[str], registry: Registry) -> int:
    selection = select(argv, registry)
    options = selection.options
    out: Path = options.out
    command = command_line()
    started = datetime.datetime.now(datetime.UTC)
    begun = time.perf_counter()
    commit = commit_info()
    json_path = results_path(out, commit)
    outcomes: list[Outcome] = []
    interrupted = False
    for index, name in enumerate(selection.names, 1):
        if interrupted:
            outcomes.append(Outcome(name, "not run", 0.0))
            continue
        before = _entry(json_path, name)
        where = f"bench [{index}/{len(selection.names)}] {name}"
        print(f"{where}: starting", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            status, error = run_scenario(name, registry.scenarios[name], selection.namespaces[name])
        except KeyboardInterrupt:
            status, error, interrupted = "interrupted", "interrupted (^C)", True
        after = _entry(json_path, name)
        lost: list[tuple[str, float]] = []
        if status == "ok":
            if after is None or after == before:
                status = "failed"
                error = f"wrote no results under scenarios.{name} of {display_path(json_path)}"
            else:
                lost = lost_fields(after)
                if lost:
                    status, error = "failed", f"{len(lost)} figure(s) show lost messages"
        outcome = Outcome(name, status, time.perf_counter() - t0, error, tuple(lost))
        outcomes.append(outcome)
        print(f"{where}: {_ended(outcome)}", file=sys.stderr, flush=True)
    ok = [outcome.scenario for outcome in outcomes if outcome.status == "ok"]
    document = read_document(json_path) or {}
    scenarios = document.get("scenarios", {})
    entries = {name: scenarios[name] for name in ok if name in scenarios}
    notes: list[str] = []
    heads: list[Headline] = _hook("headlines", ok, registry, entries, notes)
    goals: list[Target] = _hook("targets", ok, registry, entries, notes)
    plot_path: Path | None = None
    try:
        plot_path = plot(
            entries, results_path(out, commit, ".png"), title(command, commit, options.quick)
        )
    except ImportError as exc:
        notes.append(
            f"no plot: {exc.name or 'matplotlib'} is not installed (`pip install -e '.[bench]'`)"
        )
    except Exception as exc:  # the figures are written; say why the picture is not
        traceback.print_exc()
        notes.append(f"the plot failed: {type(exc).__name__}: {exc}")
    run: Json = {
        "command": command,
        "argv": list(argv),
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - begun, 3),
        "quick": options.quick,
        "full": selection.full,
        "scenarios": selection.names,
        "outcomes": {outcome.scenario: outcome.to_json() for outcome in outcomes},
        "headlines": [asdict(headline) for headline in heads],
        "targets": [asdict(target) for target in goals],
        "plot": None if plot_path is None else display_path(plot_path),
        "notes": notes,
        "machine": machine_info(),
        "commit": commit,
    }
    json_path = update_document(out, commit, lambda doc: _put_run(doc, run))
    report = markdown(run, heads, goals, outcomes, json_path, plot_path, not options.quick)
    if notes:
        report += "\nNotes: " + "; ".join(notes) + ".\n"
    print(f"\n## {SUMMARY}\n\n{report}")
    print(f"results: {display_path(json_path)}", file=sys.stderr)
    if plot_path is not None:
        print(f"plot: {display_path(plot_path)}", file=sys.stderr)
    options.changed = sorted(
        {key for namespace in selection.namespaces.values() for key in namespace.changed}
    )
    reasons = partial_reasons(options, commit, list(entries.values()))
    if not selection.full:
        reasons.append("not every default scenario ran")
    if failed_any := [o.scenario for o in outcomes if o.status != "ok"]:
        reasons.append("failed: " + ", ".join(failed_any))
    if reasons:
        print(
            f"bench/RESULTS.md: ## {SUMMARY} left as it is ({'; '.join(reasons)})",
            file=sys.stderr,
        )
    else:
        update_results_md(SUMMARY, report)
        print(f"updated bench/RESULTS.md (## {SUMMARY})", file=sys.stderr)
    failed = [o for o in outcomes if o.status != "ok"]
    for outcome in failed:
        print(f"bench {outcome.scenario}: {outcome.status}: {outcome.error}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failed or any(note.startswith("the plot failed") for note in notes) else 0


def _ended(outcome: Outcome) -> str:
    if outcome.status == "ok":
        return f"ok in {outcome.seconds:,.1f} s"
    why = f": {outcome.error.splitlines()[0]}" if outcome.error else ""
    return f"{outcome.status.upper()} after {outcome.seconds:,.1f} s{why}"


def _entry(path: Path, name: str) -> Json | None:
    document = read_document(path)
    if document is None:
        return None
    entry: Json | None = document.get("scenarios", {}).get(name)
    return entry


def _put_run(document: Json, run: Json) -> None:
    document["machine"] = run["machine"]
    document["run"] = {key: value for key, value in run.items() if key not in ("machine", "commit")}


def _hook(
    hook: str,
    names: Sequence[str],
    registry: Registry,
    entries: Mapping[str, Json],
    notes: list[str],
) -> list[Any]:
    """Every scenario's ``headlines(entry)`` or ``targets(entry, entries)``; a scenario
    without ``headlines`` gets a row pointing to its section."""
    out: list[Any] = []
    for name in names:
        function = getattr(registry.scenarios[name], hook, None)
        if function is None or name not in entries:
            if hook == "headlines":
                out.append(Headline(name, "-", f"see `## {name}`", {}))
            continue
        try:
            args = (entries[name],) if hook == "headlines" else (entries[name], entries)
            out += function(*args)
        except Exception as exc:  # the summary is not worth a lost run
            notes.append(f"{name}.{hook} failed: {type(exc).__name__}: {exc}")
    return out
