"""``python -m bench resume --quick`` cuts one session's transport while messages flow, and
loses nothing.

Checks the scenario's entry in the suite's one ``python -m bench --quick`` run
(tests/benchrun.py, a subprocess from the repository root, as a user would): the
daemon in its own process, one session with a window of messages in flight,
its transport aborted a few times and resumed at once. Checks that every cut
produced its figures and that every message came back exactly once, in order;
never a timing.
"""

from __future__ import annotations

from tests.benchrun import whole_quick_run

STEPS = ("connected", "resumed", "first_message")


def test_quick_resume_bench_writes_its_results() -> None:
    document = whole_quick_run().document
    resume = document["scenarios"]["resume"]
    assert resume["quick"] is True
    config = resume["config"]
    summary = resume["resume"]
    assert summary["passes"] == config["repeat"] >= 1
    assert summary["cuts"] == config["cuts"] * config["repeat"] > 0
    for step in STEPS:
        stats = summary["from_cut_us"][step]
        assert stats["count"] == summary["cuts"], step
        assert 0 < stats["min"] <= stats["p50"] <= stats["p99"] <= stats["max"], step
    assert summary["sent"] == summary["received"] > 0
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    for rep in summary["repetitions"]:
        assert rep["cuts"] == rep["planned_cuts"] == config["cuts"]
        assert rep["received"] == rep["messages"] >= config["messages"]
        seq = rep["core_sequence_numbers"]
        assert seq["sent"] == seq["received"] == seq["consumed"] == rep["messages"]
        assert rep["in_flight_at_cut"]["min"] > 0  # the cuts came while messages flowed
        assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0
    assert isinstance(resume["target"]["met"], bool)
    assert resume["servers"]["daemon"]["exit_code"] == 0, resume["servers"]["daemon"]["log"]
    if resume["pinning"]["pinned"]:
        assert resume["servers"]["daemon"]["affinity"] == [resume["pinning"]["server_cpu"]]
        assert resume["pinning"]["loadgen_affinity"] == [resume["pinning"]["loadgen_cpu"]]
