"""``python -m bench core --quick`` runs and writes honest figures (never checks a timing)."""

from __future__ import annotations

from pathlib import Path

from tests.benchrun import run_quick


def test_quick_core_bench_writes_its_results(tmp_path: Path) -> None:
    document = run_quick("core", tmp_path, timeout=300)
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
