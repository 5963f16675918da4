"""Running ``python -m bench ... --quick`` as a user would, for the bench tests."""

from __future__ import annotations

import atexit
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
#: The separator line under a markdown table's header.
TABLE = re.compile(r"^\|(:?-{3,}:?\|)+$", re.MULTILINE)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@dataclass(frozen=True, slots=True)
class BenchRun:
    """A finished ``python -m bench`` process and the results document it wrote."""

    returncode: int
    stdout: str
    stderr: str
    document: dict[str, Any]
    json_path: Path


def run_bench(argv: Sequence[str], out: Path, timeout: float, returncode: int = 0) -> BenchRun:
    """``python -m bench ARGV --quick --out OUT`` from the repository root.

    Checks what every run owes: the exit status expected, a markdown table
    printed, RESULTS.md left alone (a quick run), exactly one results JSON.
    """
    results_md = _read(RESULTS_MD)
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == returncode, done.stdout + done.stderr
    assert TABLE.search(done.stdout), done.stdout  # a markdown table is printed
    assert _read(RESULTS_MD) == results_md  # a quick run leaves RESULTS.md alone
    written = list(out.glob("*.json"))
    assert len(written) == 1, written
    document: dict[str, Any] = json.loads(written[0].read_text(encoding="utf-8"))
    assert document["commit"]
    return BenchRun(done.returncode, done.stdout, done.stderr, document, written[0])


@functools.cache
def whole_quick_run() -> BenchRun:
    """``python -m bench --quick``, every default scenario, run once per test session.

    A scenario's test can check its entry in ``document["scenarios"]`` here
    instead of running the scenario again.
    """
    out = Path(tempfile.mkdtemp(prefix="bench-quick-"))
    atexit.register(shutil.rmtree, out, True)
    return run_bench([], out, timeout=600)  # generous: the suite may run on a loaded machine


def run_quick(scenario: str, out: Path, timeout: float, args: Sequence[str] = ()) -> dict[str, Any]:
    """Run one scenario in quick mode (with *args*); return its results document.

    Checks what every scenario owes: exit 0, a markdown table, RESULTS.md left alone,
    exactly one results JSON.
    """
    return run_bench([scenario, *args], out, timeout).document
