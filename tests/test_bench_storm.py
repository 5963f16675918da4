"""``python -m bench storm --quick`` cuts every session at once, resumes them all, loses nothing.

Checks the scenario's entry in the suite's one ``python -m bench --quick`` run
(tests/benchrun.py, a subprocess from the repository root, as a user would): a
fresh daemon per storm, a few dozen sessions each with messages in flight, every
transport aborted in one loop, then every session resumed at once. Checks that
every storm produced its figures, that every session got every echo and that
no message was lost; never a timing.
"""

from __future__ import annotations

from tests.benchrun import whole_quick_run


def test_quick_storm_bench_writes_its_results() -> None:
    document = whole_quick_run().document
    storm = document["scenarios"]["storm"]
    assert storm["quick"] is True
    config = storm["config"]
    assert set(storm["storms"]) == {str(n) for n in config["sessions"]}
    for size, stats in storm["storms"].items():
        repetitions = stats["repetitions"]
        assert len(repetitions) == config["repeat"] >= 1, size
        assert stats["lost"] == 0, size
        for rep in repetitions:
            assert rep["sessions"] == int(size)
            assert rep["messages"] == int(size) * config["in_flight_per_session"] > 0
            assert rep["echoes_received"] == rep["messages"], size
            assert rep["lost"] == rep["duplicates"] == rep["sessions_lost"] == 0, size
            assert 0 < rep["all_resumed_s"] <= rep["all_replayed_s"], size
            assert rep["per_session_done_us"]["count"] == int(size)
            rss = rep["server_rss_kib"]
            assert rss["before"] > 0 and rss["peak"] > 0 and rss["after"] > 0, size
            assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0, size
    assert storm["target"]["measured"] is False  # 10,000 sessions only in a full run
    assert len(storm["servers"]) == len(config["sessions"]) * config["repeat"]
    for server in storm["servers"].values():
        assert server["exit_code"] == 0, server["log"]
