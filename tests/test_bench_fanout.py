"""``python -m bench fanout --quick``: one publisher to many subscribers, daemon and mosquitto.

mosquitto is optional: where its binary or paho-mqtt is missing the scenario
must skip it with a message saying how to install it and still measure the
daemon. Never checks a timing: only that figures exist and that every
subscriber got every message (none lost, none repeated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.systems import MOSQUITTO, PEERS, find_binary
from tests.benchrun import run_quick, whole_quick_run


def _check(fanout: dict[str, Any], names: list[str]) -> None:
    plan = fanout["config"]["fanout"]
    assert set(fanout["fanout"]) == {str(size) for size in plan["sizes"]}
    for size, by_load in fanout["fanout"].items():
        assert len(by_load) == 1 + len(plan["rates"]), size
        for load, by_system in by_load.items():
            assert set(by_system) == set(names), (size, load)
            for name, stats in by_system.items():
                where = (size, load, name)
                repetitions = stats["repetitions"]
                assert len(repetitions) == plan["repeat"], where
                for rep in repetitions:
                    assert rep["published"] > 0, where
                    assert rep["deliveries"] == rep["published"] * plan["subscribers"], where
                    assert rep["lost"] == 0, where
                    assert rep["latency_samples"] == rep["deliveries"], where
                    assert rep["deliveries_per_s"] > 0, where
                    assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0, where
                assert stats["lost"] == stats["duplicates"] == stats["out_of_order"] == 0, where
                assert len(stats["bound"]) == len(repetitions), where


def test_quick_fanout_bench_delivers_every_message_to_every_subscriber() -> None:
    document = whole_quick_run().document
    fanout = document["scenarios"]["fanout"]
    assert fanout["quick"] is True
    ran = fanout["config"]["systems"]
    peer = PEERS[MOSQUITTO]
    if peer.skip_reason(find_binary(peer.binary)) is None:
        assert ran == ["daemon", MOSQUITTO]
        assert fanout["peers"][MOSQUITTO]["binary"]
        assert fanout["ratios"]["64/window"]["deliveries_per_s"] > 0
    else:
        assert ran == ["daemon"]
        assert "install" in fanout["skipped"][MOSQUITTO]
    _check(fanout, ran)
    for server in fanout["servers"].values():
        assert server["exit_code"] == 0, server["log"]


def test_quick_fanout_bench_skips_a_missing_broker(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-broker")
    document = run_quick(
        "fanout",
        tmp_path / "out",
        timeout=120,
        args=[f"--mosquitto={missing}", "--repeat=1", "--subscribers=5"],
    )
    fanout = document["scenarios"]["fanout"]
    assert fanout["config"]["systems"] == ["daemon"]
    assert set(fanout["skipped"]) == {MOSQUITTO}
    assert "apt-get install mosquitto" in fanout["skipped"][MOSQUITTO]
    assert fanout["ratios"] == {}
    _check(fanout, ["daemon"])
