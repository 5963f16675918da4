"""``python -m bench core --quick`` runs and writes honest figures (never checks a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
RESULTS_MD = ROOT / "bench" / "RESULTS.md"


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def test_quick_core_bench_writes_its_results(tmp_path: Path) -> None:
    results_md = _read(RESULTS_MD)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "core", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| payload |" in done.stdout  # the markdown table is printed
    assert _read(RESULTS_MD) == results_md  # a quick run leaves RESULTS.md alone

    written = list(tmp_path.glob("*.json"))
    assert len(written) == 1
    document = json.loads(written[0].read_text(encoding="utf-8"))
    assert document["commit"]
    core = document["scenarios"]["core"]
    assert core["quick"] is True
    assert core["machine"]["cores"] >= 1
    messages = core["config"]["messages"]
    assert messages > 0
    assert set(core["sizes"]) == {"64", "1024"}
    for size, systems in core["sizes"].items():
        assert systems["bare"] in ("bare-unpacker", "bare-struct")
        assert systems["ratio"] > 0
        for name in ("core", "bare-unpacker", "bare-struct"):
            repetitions = systems[name]["repetitions"]
            assert len(repetitions) == core["config"]["repeat"] >= 3, (size, name)
            for rep in repetitions:
                assert rep["rate"] > 0, (size, name)
                assert rep["messages"] == rep["received"] == messages, (size, name)
                assert rep["lost"] == 0, (size, name)
            assert systems[name]["rate"]["median"] > 0
