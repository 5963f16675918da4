"""``python -m bench store --quick``: the echo with the Redis store beside the memory store.

Runs the scenario as a user would (a real redis-server started and stopped by the
bench), then checks what it wrote: both stores at both session counts, every pass
with its messages back and none lost, the Redis store's passes reaching Redis
(commands and CPU measured), the ratio and a target per
session count, the kill -9 of one of two workers (all resumed, nothing lost or repeated),
``--workers 2`` beside one daemon, every server but the killed one exited cleanly.
Never checks a timing.
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
    assert [t["verdict"] for t in entry["targets"]] == ["not judged at toy size"] * 3
    # kill -9 of one of two workers: its sessions moved, every session resumed, every
    # payload back once.
    kill = entry["kill"]
    assert kill["resumed"] == kill["sessions"] == 20
    assert sum(kill["per_worker"].values()) == 20 and len(kill["per_worker"]) == 2
    assert kill["moved"] >= kill["on_killed_worker"] > 0
    assert kill["sent"] > 0 and kill["received"] == kill["sent"]
    assert kill["lost"] == kill["duplicates"] == 0
    assert kill["kill_to_last_resumed_s"] > 0 and kill["lease_ttl_s"] > 0
    # --workers 2 vs 1: both measured, two listeners behind the port of the two workers.
    workers = entry["workers"]
    assert workers["listeners_2"] == 2
    for name in ("1", "2"):
        assert workers[name]["rate"]["median"] > 0, name
        assert workers[name]["server_cpu_us_per_message"]["median"] > 0, name
        assert workers[name]["lost"] == workers[name]["duplicates"] == 0, name
    assert {"redis", "daemon-memory", "daemon-redis"} <= set(entry["servers"])
    # The supervisor outlives its killed worker, restarts it and exits cleanly: no note.
    assert str(kill["killed_pid"]) in entry["servers"]["daemon-kill"]["killed_worker"]
    assert not entry["notes"]
    for name, server in entry["servers"].items():
        assert server["exit_code"] == 0, (name, server["log"])


def test_store_runs_only_when_named() -> None:
    assert "store" in REGISTRY.scenarios
    assert "store" not in REGISTRY.default()
