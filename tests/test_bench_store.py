"""``python -m bench store --quick``: the echo with the Redis store beside the memory store.

Runs the scenario as a user would (a real redis-server started and stopped by the
bench), then checks what it wrote: both stores at both session counts, every pass
with its messages back and none lost, the Redis store's passes reaching Redis
(commands and CPU measured), the ratio and a target per
session count, every server exited cleanly. Never checks a timing.
"""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import REGISTRY
from tests.benchrun import run_quick

STORES = ("memory", "redis")


def test_quick_store_bench_compares_redis_with_memory(tmp_path: Path) -> None:
    document = run_quick("store", tmp_path, timeout=180)
    entry = document["scenarios"]["store"]
    assert entry["quick"] is True
    config = entry["config"]
    assert config["redis"]["version"].startswith("Redis server")
    assert config["stores"]["redis"].startswith("--store redis://127.0.0.1:")
    assert set(entry["echo"]) == {str(n) for n in config["sessions"]} == {"10", "1"}
    for count, by_store in entry["echo"].items():
        for name in STORES:
            stats = by_store[name]
            repetitions = stats["repetitions"]
            assert len(repetitions) == config["repeat"], (count, name)
            for rep in repetitions:
                assert rep["sessions"] == int(count), (count, name)
                assert 0 < rep["messages"] <= config["messages"], (count, name)
                assert rep["received"] == rep["messages"], (count, name)
                assert rep["lost"] == 0 and rep["duplicates"] == 0, (count, name)
                assert rep["server_cpu_s"] >= 0 and rep["redis_cpu_s"] >= 0, (count, name)
                if name == "redis":
                    assert rep["redis_commands"] > 0, count
        assert by_store["ratio"]["of_medians"] > 0, count
    assert [t["verdict"] for t in entry["targets"]] == ["not judged at toy size"] * 2
    assert {"redis", "daemon-memory", "daemon-redis"} <= set(entry["servers"])
    for name, server in entry["servers"].items():
        assert server["exit_code"] == 0, (name, server["log"])


def test_store_runs_only_when_named() -> None:
    assert "store" in REGISTRY.scenarios
    assert "store" not in REGISTRY.default()
