"""bench/results.py: RESULTS.md sections are replaced in place or added in scenario order."""

from __future__ import annotations

from pathlib import Path

from bench.results import update_results_md


def _headings(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


def test_sections_are_added_in_scenario_order_and_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(
        "# Benchmark results\n\nIntro.\n\n## latency\n\nold\n\n## core\n\ncore\n\n"
        "## core: notes (hand-written)\n\nnotes\n\n## something else\n\nkept\n",
        encoding="utf-8",
    )
    update_results_md("idle", "idle figures", path)
    update_results_md("summary", "the summary", path)
    update_results_md("throughput", "echo figures", path)
    update_results_md("latency", "new", path)
    update_results_md("unordered", "at the end", path)
    assert _headings(path) == [
        "# Benchmark results",
        "## summary",
        "## throughput",
        "## latency",
        "## idle",
        "## core",
        "## core: notes (hand-written)",
        "## something else",
        "## unordered",
    ]
    text = path.read_text(encoding="utf-8")
    assert "old" not in text and "## latency\n\nnew\n" in text
    assert "Intro." in text and "kept" in text and "notes" in text
