"""``python -m bench --quick`` runs every scenario, loses nothing, writes the JSON and the plot.

Runs the whole benchmark once, as a user would (a subprocess, from the
repository root), at toy size, then checks what it wrote: an entry for every
default scenario, every figure with its repetitions, no message lost anywhere,
the summary and the machine in the JSON, the PNG, RESULTS.md untouched. Then the
structure of the scenarios this package owns (throughput, latency, idle), a
peer skipped when missing, and a failing scenario that does not hide the others
(beside ``core``, which runs only when named). Never checks a timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import REGISTRY
from bench.plot import panels
from bench.summary import lost_fields
from bench.systems import PEERS, find_binary
from tests.benchrun import BenchRun, run_bench, whole_quick_run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def whole() -> BenchRun:
    return whole_quick_run()


def _available(name: str) -> bool:
    peer = PEERS[name]
    return peer.skip_reason(find_binary(peer.binary)) is None


def test_every_default_scenario_produced_figures_and_lost_nothing(whole: BenchRun) -> None:
    document = whole.document
    default = REGISTRY.default()
    assert {"throughput", "latency", "idle"} <= set(default)
    assert "core" not in default
    assert list(document["scenarios"]) == default
    run = document["run"]
    assert run["quick"] is True and run["full"] is True
    assert run["scenarios"] == default
    for name in default:
        entry = document["scenarios"][name]
        assert entry["quick"] is True, name
        assert run["outcomes"][name]["status"] == "ok", run["outcomes"][name]
        assert lost_fields(entry) == [], name
        assert any(name in line for line in whole.stderr.splitlines() if "ok in" in line)
    for key in ("cores", "cpu_model", "python", "uvloop", "msgpack"):
        assert document["machine"][key], key
    assert document["commit"] and document["commit_short"]
    assert not run["notes"], run["notes"]


def test_the_summary_is_printed_and_kept_with_the_plot(whole: BenchRun) -> None:
    run = whole.document["run"]
    assert "## summary" in whole.stdout
    assert "| scenario | case | figure |" in whole.stdout
    assert "| scenario | target | measured | verdict |" in whole.stdout
    summarised = {headline["scenario"] for headline in run["headlines"]}
    assert summarised == set(REGISTRY.default())
    assert {target["scenario"] for target in run["targets"]} >= {"throughput", "latency", "idle"}
    plot = whole.json_path.with_suffix(".png")
    assert plot.read_bytes().startswith(PNG)
    assert run["plot"].endswith(plot.name)
    # a panel per payload size, per offered rate, resume, storm, idle, tls, per kind of fanout pass
    entries = whole.document["scenarios"]
    sizes = {size for by_size in entries["throughput"]["echo"].values() for size in by_size}
    fanouts = sum(len(by_load) for by_load in entries["fanout"]["fanout"].values())
    assert len(panels(entries)) == len(sizes) + len(entries["latency"]["rates"]) + 4 + fanouts


def _echo_passes(stats: dict[str, Any], repeat: int, messages: int, sessions: int) -> None:
    repetitions = stats["repetitions"]
    assert len(repetitions) == repeat >= 2
    for rep in repetitions:
        assert rep["sessions"] == sessions
        assert rep["rate"] > 0
        assert 0 < rep["messages"] <= max(messages, sessions)
        assert rep["received"] == rep["messages"]
        assert rep["lost"] == 0
        assert rep["server_cpu_s"] >= 0 and rep["client_cpu_s"] >= 0
    assert stats["lost"] == 0
    assert stats["rate"]["min"] <= stats["rate"]["median"] <= stats["rate"]["max"]
    assert len(stats["bound"]) == len(repetitions)


def test_throughput_measures_every_system_at_1_and_100_sessions(whole: BenchRun) -> None:
    entry = whole.document["scenarios"]["throughput"]
    config = entry["config"]
    assert config["sessions"] == [1, 10]  # one session and many (100 in a full run)
    ran = config["systems"]
    assert ran[:3] == ["daemon", "client", "ceiling"]
    for name in PEERS:
        assert (name in ran) == _available(name), (name, entry["skipped"])
    assert set(entry["echo"]) == {"1", "10"}
    for count, by_size in entry["echo"].items():
        assert set(by_size) == {"64", "1024"}, count
        for size, by_system in by_size.items():
            assert set(by_system) == set(ran), (count, size)
            for name, stats in by_system.items():
                assert stats["sessions"] == int(count), (count, size, name)
                _echo_passes(stats, config["repeat"], config["messages"], int(count))
            assert entry["ratios"][count][size]["daemon/ceiling"] > 0
    assert {t["target"].split(" ")[0] for t in entry["targets"]} >= {"`daemon`", "`client`"}
    for server in entry["servers"].values():
        assert server["exit_code"] == 0, server["log"]


def test_latency_pings_every_system_and_keeps_the_histograms(whole: BenchRun) -> None:
    entry = whole.document["scenarios"]["latency"]
    config = entry["config"]
    ran = config["systems"]
    assert ran == whole.document["scenarios"]["throughput"]["config"]["systems"]
    assert set(entry["rates"]) == {str(rate) for rate in config["rates"]}
    for rate, by_system in entry["rates"].items():
        assert set(by_system) == set(ran), rate
        for name, stats in by_system.items():
            assert stats["connections"] == config["connections"][rate]
            repetitions = stats["repetitions"]
            assert len(repetitions) == config["repeat"] >= 2, (rate, name)
            for rep in repetitions:
                assert rep["sent"] == rep["received"] > 0, (rate, name)
                trips = rep["round_trip_us"]
                assert trips["count"] == rep["received"], (rate, name)
                assert trips["min"] <= trips["p50"] <= trips["p99"] <= trips["p99.9"]
                assert trips["p99.9"] <= trips["max"], (rate, name)
            assert stats["lost"] == 0
            histogram = stats["histogram_ns"]
            assert histogram["count"] == stats["samples"]
            values = [value for _, value in histogram["percentile_distribution"]]
            assert values == sorted(values)
    assert set(entry["p50_ratio_to_ceiling"]["daemon"]) == set(entry["rates"])
    for server in entry["servers"].values():
        assert server["exit_code"] == 0, server["log"]


def test_idle_opens_every_session_each_time_against_a_fresh_daemon(whole: BenchRun) -> None:
    entry = whole.document["scenarios"]["idle"]
    config = entry["config"]
    assert len(config["counts"]) == 2 and config["tls_counts"]
    assert set(entry["sessions"]) == {str(count) for count in config["counts"]}
    assert set(entry["tls_sessions"]) == {str(count) for count in config["tls_counts"]}
    for transport, key in (("tcp", "sessions"), ("tls", "tls_sessions")):
        for count, stats in entry[key].items():
            repetitions = stats["repetitions"]
            assert len(repetitions) == config["repeat"] >= 2, count
            for rep in repetitions:
                assert rep["transport"] == transport
                assert rep["sessions"] == rep["still_open_after_idle"] == int(count)
                assert rep["rss_kib"]["before"] > 0 and rep["rss_kib"]["idle"] > 0
                assert isinstance(rep["rss_per_session_kib"], float)
                assert rep["idle_server_cpu_percent"] >= 0
            assert stats["lost"] == 0
    assert set(entry["tls_ceiling"]) == set(entry["tls_sessions"])  # the bare TLS baseline
    for count, stats in entry["tls_ceiling"].items():
        assert len(stats["repetitions"]) == config["repeat"], count
        assert all(rep["sessions"] == int(count) for rep in stats["repetitions"])
    measured = len(config["counts"]) + 2 * len(config["tls_counts"])  # daemon, ceiling
    assert len(entry["servers"]) == measured * config["repeat"]
    for server in entry["servers"].values():
        assert server["exit_code"] == 0, server["log"]
    # The ceiling's TLS connections run the TLS transport the TLS daemon runs (its default).
    assert config["tls_idle_memory"] == "compact"
    ceilings = [s["argv"] for s in entry["servers"].values() if "bench.ceiling" in s["argv"]]
    assert len(ceilings) == len(config["tls_counts"]) * config["repeat"]
    for argv in ceilings:
        assert argv[argv.index("--tls-idle-memory") + 1] == "compact"


def test_a_missing_peer_is_skipped_with_a_line_saying_how_to_install_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-broker")
    done = run_bench(
        [
            "throughput",
            "latency",
            "--systems=ceiling,mosquitto,nats",
            f"--mosquitto={missing}",
            f"--nats-server={missing}",
            "--sessions=1",
            "--repeat=1",
            "--rates=1000",
        ],
        tmp_path / "out",
        timeout=120,
    )
    for name in ("throughput", "latency"):
        entry = done.document["scenarios"][name]
        assert entry["config"]["systems"] == ["ceiling"]
        assert set(entry["skipped"]) == {"mosquitto", "nats"}
        assert "apt-get install mosquitto" in entry["skipped"]["mosquitto"]
        assert "apt-get install nats-server" in entry["skipped"]["nats"]
    assert set(done.document["scenarios"]["latency"]["rates"]["1000"]) == {"ceiling"}
    skips = [line for line in done.stderr.splitlines() if ": skipped: " in line]
    assert len(skips) == 4 and all("install it with" in line for line in skips)


def test_a_failing_scenario_fails_the_run_but_hides_no_other(tmp_path: Path) -> None:
    done = run_bench(
        [
            "core",
            "latency",
            "idle",
            "--messages=2000",
            "--rates=0",
            "--idle-sessions=5",
            "--tls-sessions=0",
        ],
        tmp_path,
        timeout=120,
        returncode=1,
    )
    outcomes = done.document["run"]["outcomes"]
    assert outcomes["core"]["status"] == outcomes["idle"]["status"] == "ok"
    assert outcomes["latency"]["status"] == "failed"
    assert "--rates" in outcomes["latency"]["error"]
    assert set(done.document["scenarios"]) == {"core", "idle"}
    assert done.document["run"]["full"] is False
    assert "**failed**" in done.stdout
    _core_figures(done.document["scenarios"]["core"], 2000)


def _core_figures(core: dict[str, Any], messages: int) -> None:
    """``core`` (run only when named) measured the core and both bare decoders honestly."""
    assert core["quick"] is True and core["config"]["messages"] == messages
    assert set(core["sizes"]) == {"64", "1024"}
    for size, systems in core["sizes"].items():
        assert systems["bare"] in ("bare-unpacker", "bare-struct")
        assert systems["ratio"] > 0
        for name in ("core", "bare-unpacker", "bare-struct"):
            repetitions = systems[name]["repetitions"]
            assert len(repetitions) == core["config"]["repeat"] >= 3, (size, name)
            for rep in repetitions:
                assert rep["rate"] > 0, (size, name)
                assert rep["messages"] == rep["received"] == messages, (size, name)
                assert rep["lost"] == 0, (size, name)
            assert systems[name]["rate"]["median"] > 0
