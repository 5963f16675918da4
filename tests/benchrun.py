"""Running ``python -m bench SCENARIO --quick`` as a user would, for the bench tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
RESULTS_MD = ROOT / "bench" / "RESULTS.md"


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def run_quick(scenario: str, out: Path, timeout: float, args: Sequence[str] = ()) -> dict[str, Any]:
    """Run the scenario in quick mode (with *args*); return its results document.

    Checks what every scenario owes: exit 0, a markdown table, RESULTS.md left alone,
    exactly one results JSON.
    """
    results_md = _read(RESULTS_MD)
    done = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--quick", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| payload |" in done.stdout  # the markdown table is printed
    assert _read(RESULTS_MD) == results_md  # a quick run leaves RESULTS.md alone
    written = list(out.glob("*.json"))
    assert len(written) == 1
    document: dict[str, Any] = json.loads(written[0].read_text(encoding="utf-8"))
    assert document["commit"]
    return document
