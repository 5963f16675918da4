"""``python -m bench tls --quick``: handshakes and echo over TLS beside plain TCP.

Never checks a timing: only that every figure exists, that every connection
was closed and that no echoed message was lost.
"""

from __future__ import annotations

from tests.benchrun import whole_quick_run

TRANSPORTS = ("tcp", "tls")


def test_quick_tls_bench_measures_handshakes_and_echo() -> None:
    document = whole_quick_run().document
    tls = document["scenarios"]["tls"]
    assert tls["quick"] is True
    config = tls["config"]
    assert config["tls"]["version"].startswith("TLS")
    assert config["tls"]["key"].startswith("ECDSA")

    handshakes = tls["handshakes"]
    for name in TRANSPORTS:
        repetitions = handshakes[name]["repetitions"]
        assert len(repetitions) == config["handshakes"]["repeat"], name
        for rep in repetitions:
            assert 0 < rep["connections"] <= config["handshakes"]["connections"], name
            assert rep["rate"] > 0, name
            assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0, name
            assert rep["transports_not_closed"] == 0, name
        assert len(handshakes[name]["bound"]) == len(repetitions)
    assert handshakes["ratio"]["of_medians"] > 0

    assert set(tls["echo"]) == {"64", "1024"}
    for size, entry in tls["echo"].items():
        for name in TRANSPORTS:
            stats = entry[name]
            repetitions = stats["repetitions"]
            assert len(repetitions) == config["echo"]["repeat"], (size, name)
            for rep in repetitions:
                assert 0 < rep["messages"] <= config["echo"]["messages"], (size, name)
                assert rep["received"] == rep["messages"], (size, name)
                assert rep["lost"] == 0, (size, name)
            assert stats["lost"] == 0, (size, name)
        assert entry["ratio"]["of_medians"] > 0, size
    assert tls["servers"]["daemon"]["exit_code"] == 0, tls["servers"]["daemon"]["log"]
