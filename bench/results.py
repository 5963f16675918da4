"""Where the figures go and what they record besides themselves.

:func:`machine_info` and :func:`commit_info` say where a scenario ran, :func:`spread`
summarises repetitions. Every scenario of one ``python -m bench`` run writes into the same
``<date>-<commit>.json`` (:func:`update_document`); :func:`publish` prints a scenario's
section and, for a clean default run only (:func:`partial_reasons`), replaces it in
``bench/RESULTS.md`` (:func:`update_results_md`), leaving the others alone.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import msgpack
from sessiond_client.protocol import codec

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_DIR = RESULTS_DIR / "quick"  # --quick runs (ignored by git, see bench/.gitignore)
RESULTS_MD = BENCH_DIR / "RESULTS.md"

#: A JSON object as this package writes it.
Json = dict[str, Any]

#: The order of RESULTS.md's sections: a new one goes before the first that comes after it.
SECTION_ORDER = (
    "summary",
    "throughput",
    "latency",
    "resume",
    "storm",
    "idle",
    "tls",
    "fanout",
    "core",
)
#: Options that change how often a figure is measured, not which: RESULTS.md may take it.
NEUTRAL_OPTIONS = frozenset({"repeat", "scenario", "out", "quick", "changed"})


def command_line() -> str:
    """The command that is running, as it would be typed from the repository root."""
    return shlex.join(["python", "-m", "bench", *sys.argv[1:]])


def _proc_field(path: str, keys: Sequence[str]) -> str | None:
    """The value of the first ``key: value`` line of *path* whose key is one of *keys*."""
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> Json:
    """Cores, CPU model, OS, Python and the versions of the libraries that set the pace."""
    memory = _proc_field("/proc/meminfo", ["MemTotal"])
    model = _proc_field("/proc/cpuinfo", ["model name", "Hardware", "cpu model"])
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor() or platform.machine() or "unknown",
        "memory_kib": int(memory.split()[0]) if memory else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "msgpack": _version("msgpack"),
        "msgpack_impl": "c" if msgpack.Packer.__module__.endswith("_cmsgpack") else "python",
        "uvloop": _version("uvloop"),
        # The servers and load generators started from here inherit the environment.
        "receive_path": "compiled" if codec.take_data_run is not None else "pure Python",
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


@functools.cache
def _commit_info() -> Json:
    lines = _git("status", "--porcelain").splitlines()
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "commit_short": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": any(not line.startswith("??") for line in lines),
        "status": lines[:50],
    }


def commit_info() -> Json:
    """The commit measured (read once per process); ``dirty``: tracked files differ from it."""
    return dict(_commit_info())


@functools.cache
def run_date() -> str:
    """The day this process started measuring (its results file is named after it)."""
    return datetime.date.today().isoformat()


def spread(values: Sequence[float]) -> Json:
    """Median, min and max of repeated measurements, and the measurements themselves."""
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values), "values": list(values)}


def results_path(out_dir: Path, commit: Json, suffix: str = ".json") -> Path:
    """``<out_dir>/<date>-<commit><suffix>``: this run's results file (or plot)."""
    return out_dir / f"{run_date()}-{commit['commit_short']}{suffix}"


def read_document(path: Path) -> Json | None:
    """The results document at *path*, or None if there is none (or it is unreadable)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def update_document(out_dir: Path, commit: Json, change: Callable[[Json], None]) -> Path:
    """Apply *change* to the document of :func:`results_path` and write it back whole."""
    path = results_path(out_dir, commit)
    document: Json = {"schema": 2, "date": run_date(), **commit, "scenarios": {}}
    previous = read_document(path)
    if previous is not None and previous.get("commit") == commit["commit"]:
        document = {**previous, "schema": 2, **commit}
        document.setdefault("scenarios", {})
    change(document)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def display_path(path: Path | str) -> str:
    """An absolute *path* relative to the repository root when it lies inside it."""
    path = Path(path)
    if path.is_absolute() and path.resolve().is_relative_to(REPO_ROOT):
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    return path.as_posix()


def markdown_table(
    headers: str | Sequence[str], rows: Sequence[Sequence[str]], left: int = 1
) -> str:
    """A GitHub markdown table (*headers* a list or ``a|b|c``); the first *left* columns
    left-aligned, the rest right-aligned."""
    headers = headers.split("|") if isinstance(headers, str) else headers
    lines = ["| " + " | ".join(row) + " |" for row in [headers, *rows]]
    lines.insert(1, "|" + "|".join([":---"] * left + ["---:"] * (len(headers) - left)) + "|")
    return "\n".join(lines)


def update_results_md(heading: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the ``## {heading}`` section of *path* with *body*, or add it: before the
    first section :data:`SECTION_ORDER` puts after it, else at the end."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines, title = text.splitlines(), f"## {heading}"
    section = [title, "", *body.strip("\n").splitlines(), ""]
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
    later = SECTION_ORDER[SECTION_ORDER.index(heading) + 1 :] if heading in SECTION_ORDER else ()
    if mine := [i for i in heads if lines[i].rstrip() == title]:
        lines[mine[0] : next((i for i in heads if i > mine[0]), len(lines))] = section
    elif after := [i for i in heads if lines[i][3:].split(":")[0].strip() in later]:
        lines[after[0] : after[0]] = section
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *section]
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def partial_reasons(args: Any, commit: Json, entries: Sequence[Json] = ()) -> list[str]:
    """Why a run's figures must not replace RESULTS.md (empty: they may)."""
    changed = [name for name in getattr(args, "changed", ()) if name not in NEUTRAL_OPTIONS]
    skipped = sorted({name for entry in entries for name in entry.get("skipped", {})})
    elsewhere = args.out is not None and Path(args.out).resolve() != RESULTS_DIR
    reasons = [
        "a --quick run" if args.quick else "",
        f"--out {display_path(args.out)}" if elsewhere else "",
        "uncommitted changes in the tree" if commit.get("dirty") else "",
        "options set: " + ", ".join(f"--{n.replace('_', '-')}" for n in changed) if changed else "",
        "skipped: " + ", ".join(skipped) if skipped else "",
    ]
    return [reason for reason in reasons if reason]


def publish(
    args: Any, scenario: str, entry: Json, commit: Json, markdown: Callable[[Json, Json, Path], str]
) -> int:
    """Write *entry* as ``scenarios[scenario]`` of the results JSON under ``args.out``, print
    its section (``markdown(entry, commit, path)``) and, unless the run is partial
    (:func:`partial_reasons`), make it the scenario's section of RESULTS.md."""
    out = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    path = update_document(
        out, commit, lambda document: document["scenarios"].update({scenario: entry})
    )
    report = markdown(entry, commit, path)
    print(report)
    print(f"results: {display_path(path)}", file=sys.stderr)
    if reasons := partial_reasons(args, commit, [entry]):
        print(f"bench/RESULTS.md left as it is ({'; '.join(reasons)})", file=sys.stderr)
    else:
        update_results_md(scenario, report)
        print(f"updated bench/RESULTS.md (## {scenario})", file=sys.stderr)
    return 0
