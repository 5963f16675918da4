"""``python -m bench latency --quick`` pings the real daemon and the ceiling and loses nothing.

Runs the scenario as a user would (a subprocess, from the repository root) and
checks that every system produced round-trip percentiles from every ping it
sent. Never checks a timing: only counts and the order percentiles must have.
"""

from __future__ import annotations

from pathlib import Path

from tests.benchrun import run_quick


def test_quick_latency_bench_writes_its_results(tmp_path: Path) -> None:
    document = run_quick("latency", tmp_path, timeout=180)
    latency = document["scenarios"]["latency"]
    assert latency["quick"] is True
    config = latency["config"]
    assert set(latency["rates"]) == {str(rate) for rate in config["rates"]}
    for rate, systems in latency["rates"].items():
        assert set(systems) == {"daemon", "client", "ceiling"}, rate
        for name, stats in systems.items():
            assert stats["connections"] == config["connections"][rate]
            repetitions = stats["repetitions"]
            assert len(repetitions) == config["repeat"] >= 3, (rate, name)
            for rep in repetitions:
                assert rep["sent"] == rep["received"] > 0, (rate, name)
                assert rep["lost"] == 0, (rate, name)
                trips = rep["round_trip_us"]
                assert trips["count"] == rep["received"], (rate, name)
                assert trips["min"] <= trips["p50"] <= trips["p99"] <= trips["p99.9"]
                assert trips["p99.9"] <= trips["max"], (rate, name)
                assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0, (rate, name)
            assert stats["lost"] == 0
            assert stats["histogram_ns"]["count"] == stats["samples"]
            distribution = stats["histogram_ns"]["percentile_distribution"]
            assert distribution[-1] == [100.0, stats["histogram_ns"]["max"]]
            values = [value for _, value in distribution]
            assert values == sorted(values)
    assert set(latency["p50_ratio_to_ceiling"]["daemon"]) == set(latency["rates"])
    for server in latency["servers"].values():
        assert server["exit_code"] == 0, server["log"]
