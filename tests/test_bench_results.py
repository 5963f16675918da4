"""bench/results.py and the figures' honesty: RESULTS.md sections replaced in place or added
in order, only by a clean default run; verdicts only outside the noise; loss counted."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from bench import BenchError, latency
from bench.__main__ import REGISTRY
from bench.core import Checker, make_pool
from bench.processes import CPU_TICK, cpu_seconds
from bench.results import RESULTS_DIR, partial_reasons, update_results_md
from bench.runner import select
from bench.summary import (
    MET,
    NOISE,
    NOT_MEASURED,
    NOT_MET,
    TOO_SHORT,
    TOY,
    both,
    cpu_cell,
    judge,
    judged,
)
from bench.throughput import meaningless


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


def test_a_verdict_needs_every_repetition_on_the_same_side_of_the_goal() -> None:
    assert judge([0.72, 0.66, 0.61], 0.60) == MET
    assert judge([0.72, 0.58, 0.67], 0.60) == NOISE  # the median clears it, one pass does not
    assert judge([0.50, 0.58], 0.60) == NOT_MET
    assert judge([1.2, 1.1], 1.3, higher=False) == MET
    assert judge([], 0.6) == NOT_MEASURED
    assert judged({"quick": True}, [0.9], 0.6) == TOY
    assert both(MET, NOISE) == NOISE and both(MET, NOT_MET) == NOT_MET
    assert both(MET, NOT_MEASURED) == NOT_MEASURED and both(MET, MET) == MET


def test_the_checker_counts_missing_and_repeated_messages() -> None:
    pool = make_pool(16, 64)
    checker = Checker("test", pool)
    checker.check(pool[:5])
    assert (checker.taken, checker.received, checker.missing, checker.duplicates) == (5, 5, 0, 0)
    checker.check([pool[5], pool[8], pool[6], pool[9]])  # 6 and 7 skipped, then 6 again
    assert (checker.taken, checker.missing, checker.duplicates) == (10, 2, 1)
    assert checker.received == 8
    with pytest.raises(BenchError):
        checker.check([b"\x00" * 8 + b"not sent"])


def test_only_a_clean_default_run_may_replace_results_md(tmp_path: Path) -> None:
    clean = {"dirty": False}
    args = argparse.Namespace(quick=False, out=RESULTS_DIR, changed=["repeat"])
    assert partial_reasons(args, clean) == []
    assert partial_reasons(args, {"dirty": True}) == ["uncommitted changes in the tree"]
    assert partial_reasons(argparse.Namespace(quick=True, out=RESULTS_DIR, changed=[]), clean)
    elsewhere = argparse.Namespace(quick=False, out=tmp_path, changed=[])
    assert partial_reasons(elsewhere, clean) == [f"--out {tmp_path}"]
    subset = argparse.Namespace(quick=False, out=RESULTS_DIR, changed=["systems", "repeat"])
    assert partial_reasons(subset, clean) == ["options set: --systems"]
    assert partial_reasons(args, clean, [{"skipped": {"nats": "no binary"}}]) == ["skipped: nats"]


def test_selected_options_that_differ_from_their_defaults_are_recorded() -> None:
    selection = select(["throughput", "--systems=daemon,ceiling", "--repeat=5"], REGISTRY)
    assert set(selection.namespaces["throughput"].changed) >= {"systems", "repeat"}
    assert "sessions" not in selection.namespaces["throughput"].changed


def test_server_cpu_is_read_in_nanoseconds_not_clock_ticks() -> None:
    sum(range(100_000))  # some CPU, so that the reading is not 0
    nanoseconds = round(cpu_seconds(os.getpid()) * 1e9)
    assert nanoseconds > 0
    assert nanoseconds % round(1e9 / CPU_TICK) != 0  # /proc/PID/stat would count whole ticks


def test_a_toy_run_says_what_it_cannot_measure() -> None:
    assert cpu_cell("42%", {"median": 0.05}) == TOO_SHORT
    assert cpu_cell("42%", {"median": 2.0}) == "42%"
    beaten = {"quick": True, "ratios": {"1": {"64": {"daemon/ceiling": 1.15}}}}
    assert "meaningless" in meaningless(beaten)[0]
    assert meaningless({**beaten, "quick": False}) == []
    assert meaningless({"quick": True, "ratios": {"1": {"64": {"daemon/ceiling": 0.6}}}}) == []


def test_the_latency_target_is_not_met_when_one_rate_misses_in_every_pass() -> None:
    """From the full run at 48f5a91: 1,000/s straddles 1.3x, every 10,000/s pass is above
    it. Pooling both rates' passes called that "within noise"; each rate is judged."""
    run = json.loads((RESULTS_DIR / "2026-12-03-48f5a91.json").read_text())
    entry = {**run["scenarios"]["latency"], "quick": False}
    (target,) = latency.targets(entry, {})
    assert target.verdict == NOT_MET
