"""What every scenario records besides its figures, and where the figures go.

A scenario measures; this module says where it ran (:func:`machine_info`,
:func:`commit_info`), summarises repetitions (:func:`spread`), writes the results
JSON (:func:`write_json`) and replaces the scenario's own section of
``bench/RESULTS.md`` (:func:`update_results_md`), leaving the others alone.
Every scenario of one ``python -m bench`` run writes into the same
``<date>-<commit>.json`` (the date and the commit are read once per process);
the run itself adds its summary with :func:`update_document`.
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
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import msgpack

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
#: Where ``--quick`` runs write their JSON (ignored by git, see ``bench/.gitignore``).
QUICK_DIR = RESULTS_DIR / "quick"
RESULTS_MD = BENCH_DIR / "RESULTS.md"

#: A JSON object as this package writes it.
Json = dict[str, Any]

#: The order of the sections of RESULTS.md (and of a whole run): a section not
#: yet there goes before the first one that comes after it here, or at the end.
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

#: A new RESULTS.md's first lines (the intro of the one in the repository says the rules).
_INTRO = "# Benchmark results\n"


def command_line() -> str:
    """The command that is running, as it would be typed from the repository root."""
    return shlex.join(["python", "-m", "bench", *sys.argv[1:]])


def machine_info() -> Json:
    """Cores, CPU model, OS, Python and the versions of the libraries that set the pace."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        usable = os.cpu_count() or 0
    msgpack_impl = "c" if msgpack.Packer.__module__.endswith("_cmsgpack") else "python"
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": _cpu_model(),
        "memory_kib": _mem_total_kib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "msgpack": _version("msgpack"),
        "msgpack_impl": msgpack_impl,
        "uvloop": _version("uvloop"),
    }


def _mem_total_kib() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def commit_info() -> Json:
    """The commit measured; ``dirty`` means tracked files differ from it (see ``status``)."""
    return dict(_commit_info())


@functools.cache
def run_date() -> str:
    """The day this process started measuring (its results file is named after it)."""
    return datetime.date.today().isoformat()


@functools.cache
def _commit_info() -> Json:
    status = _git("status", "--porcelain")
    lines = status.splitlines() if status else []
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "commit_short": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": any(not line.startswith("??") for line in lines),
        "status": lines[:50],
    }


def spread(values: Sequence[float]) -> Json:
    """Median, min and max of repeated measurements, and the measurements themselves."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


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
        document = {**previous, **{key: document[key] for key in ("schema", *commit)}}
        document.setdefault("scenarios", {})
    change(document)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def write_json(out_dir: Path, scenario: str, entry: Json, commit: Json) -> Path:
    """Write *entry* as ``scenarios[scenario]`` of ``<out_dir>/<date>-<commit>.json``."""

    def put(document: Json) -> None:
        document["scenarios"][scenario] = entry

    return update_document(out_dir, commit, put)


def display_path(path: Path | str) -> str:
    """An absolute *path* relative to the repository root when it lies inside it."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def markdown_table(
    headers: str | Sequence[str], rows: Sequence[Sequence[str]], left: int = 1
) -> str:
    """A GitHub markdown table (*headers* a list or ``a|b|c``); the first *left* columns
    left-aligned, the rest right-aligned."""
    headers = headers.split("|") if isinstance(headers, str) else headers
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---"] * left + ["---:"] * (len(headers) - left)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def update_results_md(heading: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the ``## {heading}`` section of *path* with *body*, or add it."""
    text = path.read_text(encoding="utf-8") if path.exists() else _INTRO
    lines = text.splitlines()
    title = f"## {heading}"
    section = [title, "", *body.strip("\n").splitlines(), ""]
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == title)
    except StopIteration:
        later = _later_section(lines, heading)
        if later is None:
            while lines and not lines[-1].strip():
                lines.pop()
            lines += ["", *section]
        else:
            lines[later:later] = section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = section
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def _later_section(lines: list[str], heading: str) -> int | None:
    """The line of the first ``## `` section that :data:`SECTION_ORDER` puts after *heading*."""
    if heading not in SECTION_ORDER:
        return None
    after = SECTION_ORDER[SECTION_ORDER.index(heading) + 1 :]
    for index, line in enumerate(lines):
        if line.startswith("## ") and line[3:].split(":")[0].strip() in after:
            return index
    return None


def entry_head(
    command: str, started: datetime.datetime, begun: float, quick: bool, machine: Json
) -> Json:
    """The fields every scenario's results entry starts with: how it was run, when,
    for how long (from *begun*, a ``time.perf_counter()`` reading) and on what."""
    return {
        "command": command,
        "argv": sys.argv[1:],
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - begun, 3),
        "quick": quick,
        "machine": machine,
    }


#: Options that change how often a figure is measured, not which figure: a run with
#: them may still replace RESULTS.md.
NEUTRAL_OPTIONS = frozenset({"repeat", "scenario", "out", "quick", "changed"})


def partial_reasons(args: Any, commit: Json, entries: Sequence[Json] = ()) -> list[str]:
    """Why a run's figures must not replace RESULTS.md (empty: they may)."""
    reasons = []
    if args.quick:
        reasons.append("a --quick run")
    if args.out is not None and Path(args.out).resolve() != RESULTS_DIR:
        reasons.append(f"--out {display_path(args.out)}")
    if commit.get("dirty"):
        reasons.append("uncommitted changes in the tree")
    changed = [name for name in getattr(args, "changed", ()) if name not in NEUTRAL_OPTIONS]
    if changed:
        reasons.append("options set: " + ", ".join(f"--{n.replace('_', '-')}" for n in changed))
    skipped = sorted({name for entry in entries for name in entry.get("skipped", {})})
    if skipped:
        reasons.append("skipped: " + ", ".join(skipped))
    return reasons


def publish(
    args: Any,
    scenario: str,
    entry: Json,
    commit: Json,
    markdown: Callable[[Json, Json, Path], str],
) -> int:
    """Write *entry* to the results JSON under ``args.out``, print its report
    (``markdown(entry, commit, path)``) and, unless the run is partial
    (:func:`partial_reasons`), make it the scenario's section of RESULTS.md."""
    path = write_json(
        args.out or (QUICK_DIR if args.quick else RESULTS_DIR), scenario, entry, commit
    )
    report = markdown(entry, commit, path)
    print(report)
    print(f"results: {display_path(path)}", file=sys.stderr)
    reasons = partial_reasons(args, commit, [entry])
    if reasons:
        print(f"bench/RESULTS.md left as it is ({'; '.join(reasons)})", file=sys.stderr)
    else:
        update_results_md(scenario, report)
        print(f"updated bench/RESULTS.md (## {scenario})", file=sys.stderr)
    return 0
