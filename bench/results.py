"""What every scenario records besides its figures, and where the figures go.

A scenario measures; this module says where it ran (:func:`machine_info`,
:func:`commit_info`), summarises repetitions (:func:`spread`), writes the results
JSON (:func:`write_json`) and replaces the scenario's own section of
``bench/RESULTS.md`` (:func:`update_results_md`), leaving the others alone.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
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

_INTRO = """\
# Benchmark results

Figures measured by `python -m bench SCENARIO`, run from the repository root
(see `bench/__init__.py`). Each `## SCENARIO` section below is rewritten by the
command it quotes and names the results JSON in `bench/results/` that holds every
repetition, the machine and the commit; a run replaces only its own section.
A section whose heading says *notes* is written by hand and dated.
"""


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
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "msgpack": _version("msgpack"),
        "msgpack_impl": msgpack_impl,
        "uvloop": _version("uvloop"),
    }


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


def write_json(out_dir: Path, scenario: str, entry: Json, commit: Json) -> Path:
    """Write *entry* as ``scenarios[scenario]`` of ``<out_dir>/<date>-<commit>.json``.

    Other scenarios already in that file (same day, same commit) are kept.
    """
    today = datetime.date.today().isoformat()
    path = out_dir / f"{today}-{commit['commit_short']}.json"
    document: Json = {"schema": 1, "date": today, **commit, "scenarios": {}}
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict) and previous.get("commit") == commit["commit"]:
            document["scenarios"] = dict(previous.get("scenarios", {}))
    document["scenarios"][scenario] = entry
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def display_path(path: Path | str) -> str:
    """An absolute *path* relative to the repository root when it lies inside it."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; every column but the first is right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def update_results_md(heading: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the ``## {heading}`` section of *path* with *body*, or append it.

    The intro above the first section and every other section stay as they are.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else _INTRO
    lines = text.splitlines()
    title = f"## {heading}"
    section = [title, "", *body.strip("\n").splitlines(), ""]
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == title)
    except StopIteration:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *section]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = section
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
