"""``python -m bench daemon --quick`` measures the real daemon and writes honest figures.

Runs the scenario as a user would (a subprocess, from the repository root): a
daemon process and the ceiling server on loopback, an echo that loses nothing,
idle sessions with an RSS figure. Never checks a timing.
"""

from __future__ import annotations

from pathlib import Path

from tests.benchrun import run_quick


def test_quick_daemon_bench_writes_its_results(tmp_path: Path) -> None:
    document = run_quick("daemon", tmp_path, timeout=120)
    daemon = document["scenarios"]["daemon"]
    assert daemon["quick"] is True
    config = daemon["config"]["echo"]
    assert set(daemon["echo"]) == {"64", "1024"}
    for size, systems in daemon["echo"].items():
        assert systems["ratio"] > 0, size
        for name in ("daemon", "ceiling"):
            repetitions = systems[name]["repetitions"]
            assert len(repetitions) == config["repeat"] >= 3, (size, name)
            for rep in repetitions:
                assert rep["rate"] > 0, (size, name)
                assert 0 < rep["messages"] <= config["messages"], (size, name)
                assert rep["received"] == rep["messages"], (size, name)
                assert rep["lost"] == 0, (size, name)
                assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0, (size, name)
            assert systems[name]["lost"] == 0
            assert len(systems[name]["client_bound"]) == len(repetitions)

    idle = daemon["idle"]
    assert idle["sessions"] > 0
    assert idle["still_open_after_idle"] == idle["sessions"]
    assert idle["rss_kib"]["before"] > 0 and idle["rss_kib"]["idle"] > 0
    assert isinstance(idle["rss_per_session_kib"], float)
    assert idle["idle_server_cpu_percent"] >= 0
    for server in daemon["servers"].values():
        assert server["exit_code"] == 0, server["log"]
    if daemon["pinning"]["pinned"]:
        assert daemon["servers"]["daemon_echo"]["affinity"] == [daemon["pinning"]["server_cpu"]]
        assert daemon["pinning"]["loadgen_affinity"] == [daemon["pinning"]["loadgen_cpu"]]
