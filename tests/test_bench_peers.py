"""``python -m bench peers --quick`` runs mosquitto and NATS beside sessiond, or skips them.

The peers are optional: where a broker's binary or its Python client is missing,
the scenario must skip it with a message saying how to install it, and still
measure everything else. Where both are present it must measure the peer. Never
checks a timing: only that figures exist and no message was lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.peers import PEERS, find_binary
from tests.benchrun import run_quick


def _available(name: str) -> bool:
    peer = PEERS[name]
    return peer.skip_reason(find_binary(peer.binary)) is None


def _check_echo(peers: dict[str, Any], names: list[str]) -> None:
    config = peers["config"]["echo"]
    assert set(peers["echo"]) == {"64", "1024"}
    for size, systems in peers["echo"].items():
        assert set(systems) == set(names), size
        for name, stats in systems.items():
            repetitions = stats["repetitions"]
            assert len(repetitions) == config["repeat"], (size, name)
            for rep in repetitions:
                assert rep["rate"] > 0, (size, name)
                assert 0 < rep["messages"] <= config["messages"], (size, name)
                assert rep["received"] == rep["messages"], (size, name)
                assert rep["lost"] == 0, (size, name)
                assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0, (size, name)
            assert stats["lost"] == 0
            assert len(stats["bound"]) == len(repetitions)


def _check_latency(peers: dict[str, Any], names: list[str]) -> None:
    for rate, systems in peers["latency"].items():
        assert set(systems) == set(names), rate
        for name, stats in systems.items():
            for rep in stats["repetitions"]:
                assert rep["sent"] == rep["received"] > 0, (rate, name)
                assert rep["round_trip_us"]["count"] == rep["received"], (rate, name)
            assert stats["lost"] == 0, (rate, name)


def test_quick_peers_bench_measures_every_peer_it_can(tmp_path: Path) -> None:
    document = run_quick("peers", tmp_path, timeout=300)
    peers = document["scenarios"]["peers"]
    assert peers["quick"] is True
    ran = peers["config"]["systems"]
    for name in PEERS:
        if _available(name):
            assert name in ran and name not in peers["skipped"], name
            assert peers["peers"][name]["binary"], name
        else:
            assert name not in ran, name
            assert "install" in peers["skipped"][name], name
    assert {"daemon", "client", "ceiling"} <= set(ran)
    _check_echo(peers, ran)
    _check_latency(peers, ran)
    assert "daemon/ceiling" in peers["ratios"]
    for server in peers["servers"].values():
        assert server["exit_code"] == 0, server["log"]


def test_quick_peers_bench_skips_a_missing_broker(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-broker")
    document = run_quick(
        "peers",
        tmp_path / "out",
        timeout=120,
        args=[
            "--systems=ceiling,mosquitto,nats",
            f"--mosquitto={missing}",
            f"--nats-server={missing}",
            "--repeat=1",
            "--rates=1000",
        ],
    )
    peers = document["scenarios"]["peers"]
    assert peers["config"]["systems"] == ["ceiling"]
    assert set(peers["skipped"]) == {"mosquitto", "nats"}
    assert "apt-get install mosquitto" in peers["skipped"]["mosquitto"]
    assert "apt-get install nats-server" in peers["skipped"]["nats"]
    _check_echo(peers, ["ceiling"])
    _check_latency(peers, ["ceiling"])
