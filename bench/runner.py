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
from .summary import Headline, Outcome, lost_fields, markdown

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
        return first + [n for n in self.scenarios if n not in first and n not in self.on_demand]


@dataclass(frozen=True, slots=True)
class Selection:
    names: list[str]
    namespaces: dict[str, argparse.Namespace]
    options: argparse.Namespace  # every option of the run, as the union of the scenarios'
    full: bool  # every default scenario, no more, no fewer


def parser(registry: Registry, name: str | None = None, **kw: Any) -> argparse.ArgumentParser:
    """The common options' parser, with scenario *name*'s own options if given."""
    common = argparse.ArgumentParser(allow_abbrev=False, **kw)
    common.add_argument("--quick", action="store_true", help="toy sizes, a few seconds each; "
                        "results to bench/results/quick/, RESULTS.md untouched")  # fmt: skip
    common.add_argument("--messages", type=int, metavar="N", help="messages per pass")
    common.add_argument("--repeat", type=int, metavar="K", help="passes per system and size")
    common.add_argument("--out", type=Path, metavar="DIR", help="directory for the JSON and plot")
    if name is not None:
        registry.scenarios[name].add_arguments(common)
    return common


def top_parser(registry: Registry) -> argparse.ArgumentParser:
    default = registry.default()
    lines = [f"  {name:<12} {registry.scenarios[name].HELP}" + "  (only when named)" * (
             name not in default) for name in [*default, *(n for n in registry.scenarios
                                                if n not in default)]]  # fmt: skip
    lines += [f"  {alias:<12} the same as: {' '.join(names)}"
              for alias, names in registry.aliases.items()]  # fmt: skip
    return parser(
        registry,
        prog="python -m bench",
        usage="python -m bench [SCENARIO ...] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="sessiond benchmarks, run from the repository root. Without a scenario, "
        f"every default one runs, in this order: {', '.join(default)}.",
        epilog="scenarios:\n" + "\n".join(lines) + "\n\nAn option goes to every scenario run "
        "that takes it; see each one's options with `python -m bench SCENARIO --help`.",
    )


def select(argv: Sequence[str], registry: Registry) -> Selection:
    """The scenarios *argv* names (leading words) and the options each one gets."""
    words, named = list(argv), list[str]()
    while words and not words[0].startswith("-"):
        word = words.pop(0)
        if word not in registry.scenarios and word not in registry.aliases:
            known = ", ".join([*registry.scenarios, *registry.aliases])
            top_parser(registry).error(f"unknown scenario {word!r} (choose from {known}); "
                                       "scenarios come before the options")  # fmt: skip
        named += registry.aliases.get(word, [word])
    names = list(dict.fromkeys(named)) or registry.default()
    own = {name: parser(registry, name, prog=f"python -m bench {name}",
                        description=registry.scenarios[name].HELP) for name in names}  # fmt: skip
    if "-h" in words or "--help" in words:
        for help_parser in own.values() if named else [top_parser(registry)]:
            help_parser.print_help()
            print()
        raise SystemExit(0)
    union = parser(registry, prog=" ".join(["python -m bench", *named]), conflict_handler="resolve")
    for name in names:
        registry.scenarios[name].add_arguments(union)
    options, extra = union.parse_known_args(words)
    if late := [word for word in extra if word in registry.scenarios or word in registry.aliases]:
        where = " ".join([*named, *late])
        union.error(f"scenarios come before the options: python -m bench {where} ...")
    if extra:
        union.error(f"unrecognized arguments: {' '.join(extra)}")
    options.out = options.out or (QUICK_DIR if options.quick else RESULTS_DIR)
    namespaces = {}
    for name, own_parser in own.items():
        namespace = own_parser.parse_known_args(words)[0]
        defaults = vars(own_parser.parse_known_args([])[0])
        namespace.changed = [k for k, v in vars(namespace).items() if defaults.get(k) != v]
        namespace.scenario, namespace.out = name, options.out
        namespaces[name] = namespace
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
    return ("failed", f"exited with status {code}") if code else ("ok", None)


def _entry(path: Path, name: str) -> Json | None:
    entry: Json | None = (read_document(path) or {}).get("scenarios", {}).get(name)
    return entry


def run(argv: Sequence[str], registry: Registry) -> int:
    selection = select(argv, registry)
    options, out = selection.options, selection.options.out
    command, commit, machine = command_line(), commit_info(), machine_info()
    started, begun = datetime.datetime.now(datetime.UTC), time.perf_counter()
    json_path = results_path(out, commit)
    outcomes: list[Outcome] = []
    for index, name in enumerate(selection.names, 1):
        if outcomes and outcomes[-1].status in ("interrupted", "not run"):
            outcomes.append(Outcome(name, "not run", 0.0))
            continue
        before, where = _entry(json_path, name), f"bench [{index}/{len(selection.names)}] {name}"
        print(f"{where}: starting", file=sys.stderr, flush=True)
        t0, lost = time.perf_counter(), list[tuple[str, float]]()
        try:
            status, error = run_scenario(name, registry.scenarios[name], selection.namespaces[name])
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted (^C)"
        after = _entry(json_path, name)
        if status == "ok" and (after is None or after == before):
            status = "failed"
            error = f"wrote no results under scenarios.{name} of {display_path(json_path)}"
        elif status == "ok" and (lost := lost_fields(after)):
            status, error = "failed", f"{len(lost)} figure(s) show lost messages"
        outcomes.append(Outcome(name, status, time.perf_counter() - t0, error, tuple(lost)))
        took = outcomes[-1].seconds
        why = f": {error.splitlines()[0]}" if error else ""
        ended = (
            f"ok in {took:,.1f} s"
            if status == "ok"
            else f"{status.upper()} after {took:,.1f} s{why}"
        )
        print(f"{where}: {ended}", file=sys.stderr, flush=True)
    ok = [outcome.scenario for outcome in outcomes if outcome.status == "ok"]
    scenarios = (read_document(json_path) or {}).get("scenarios", {})
    entries = {name: scenarios[name] for name in ok if name in scenarios}
    notes: list[str] = []
    heads: list[Headline] = _hook("headlines", registry, entries, notes)
    goals = _hook("targets", registry, entries, notes)
    plot_path: Path | None = None
    try:
        png = results_path(out, commit, ".png")
        plot_path = plot(entries, png, title(command, commit, options.quick))
    except ImportError as exc:
        notes.append(f"no plot: {exc.name or 'matplotlib'} is not installed "
                     "(`pip install -e '.[bench]'`)")  # fmt: skip
    except Exception as exc:  # the figures are written; say why the picture is not
        traceback.print_exc()
        notes.append(f"the plot failed: {type(exc).__name__}: {exc}")
    summary: Json = {
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
    }

    def put(document: Json) -> None:
        document["machine"], document["run"] = machine, summary

    json_path = update_document(out, commit, put)
    report = markdown({**summary, "machine": machine, "commit": commit}, heads, goals,
                      outcomes, json_path, plot_path, not options.quick)  # fmt: skip
    report += "\nNotes: " + "; ".join(notes) + ".\n" if notes else ""
    print(f"\n## {SUMMARY}\n\n{report}")
    print(f"results: {display_path(json_path)}", file=sys.stderr)
    if plot_path is not None:
        print(f"plot: {display_path(plot_path)}", file=sys.stderr)
    options.changed = sorted({key for ns in selection.namespaces.values() for key in ns.changed})
    reasons = partial_reasons(options, commit, list(entries.values()))
    failed = [o for o in outcomes if o.status != "ok"]
    reasons += ["not every default scenario ran"] * (not selection.full)
    reasons += ["failed: " + ", ".join(o.scenario for o in failed)] if failed else []
    if reasons:
        print(
            f"bench/RESULTS.md: ## {SUMMARY} left as it is ({'; '.join(reasons)})", file=sys.stderr
        )
    else:
        update_results_md(SUMMARY, report)
        print(f"updated bench/RESULTS.md (## {SUMMARY})", file=sys.stderr)
    for outcome in failed:
        print(f"bench {outcome.scenario}: {outcome.status}: {outcome.error}", file=sys.stderr)
    if any(outcome.status == "interrupted" for outcome in outcomes):
        return 130
    return 1 if failed or any(note.startswith("the plot failed") for note in notes) else 0


def _hook(
    hook: str, registry: Registry, entries: Mapping[str, Json], notes: list[str]
) -> list[Any]:
    """Every scenario's ``headlines(entry)`` or ``targets(entry, entries)``; a scenario
    without ``headlines`` gets a row pointing to its section."""
    out: list[Any] = []
    for name, entry in entries.items():
        function = getattr(registry.scenarios[name], hook, None)
        if function is None:
            out += [Headline(name, "-", f"see `## {name}`", {})] if hook == "headlines" else []
            continue
        try:
            out += function(entry) if hook == "headlines" else function(entry, entries)
        except Exception as exc:  # the summary is not worth a lost run
            notes.append(f"{name}.{hook} failed: {type(exc).__name__}: {exc}")
    return out
