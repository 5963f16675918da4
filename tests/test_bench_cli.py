"""``python -m bench``'s command line: which scenarios run, in what order, with which options.

In-process and instant: :func:`bench.runner.select` only parses, nothing runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import ALIASES, ON_DEMAND, ORDER, REGISTRY, SCENARIOS
from bench.results import QUICK_DIR, RESULTS_DIR
from bench.runner import select


def test_without_a_scenario_every_default_one_runs_in_order() -> None:
    selection = select([], REGISTRY)
    ordered = [name for name in ORDER if name in SCENARIOS]
    assert selection.names[: len(ordered)] == ordered
    assert set(selection.names) == set(SCENARIOS) - set(ON_DEMAND)
    assert selection.full
    assert selection.options.out == RESULTS_DIR


def test_a_registered_scenario_outside_the_order_runs_after_it() -> None:
    registry = type(REGISTRY)({**SCENARIOS, "extra": SCENARIOS["idle"]}, ORDER, ON_DEMAND, ALIASES)
    assert registry.default()[-1] == "extra"


def test_named_scenarios_run_in_the_order_given_with_aliases_expanded() -> None:
    assert select(["latency", "throughput"], REGISTRY).names == ["latency", "throughput"]
    assert select(["core"], REGISTRY).names == ["core"]
    assert select(["peers", "latency"], REGISTRY).names == ["throughput", "latency"]
    assert select(["daemon"], REGISTRY).names == ["throughput", "idle"]
    assert not select(["daemon"], REGISTRY).full


def test_common_options_go_to_every_scenario_and_own_options_only_to_theirs(
    tmp_path: Path,
) -> None:
    selection = select(
        ["latency", "idle", "--quick", "--repeat", "2", "--rates=100", "--out", str(tmp_path)],
        REGISTRY,
    )
    latency, idle = selection.namespaces["latency"], selection.namespaces["idle"]
    assert latency.quick and idle.quick
    assert latency.repeat == idle.repeat == 2
    assert latency.out == idle.out == tmp_path
    assert latency.rates == "100"
    assert not hasattr(idle, "rates")
    assert latency.scenario == "latency" and idle.scenario == "idle"


def test_quick_results_go_to_the_quick_folder_unless_told() -> None:
    selection = select(["idle", "--quick"], REGISTRY)
    assert selection.namespaces["idle"].out == QUICK_DIR


def test_an_option_no_selected_scenario_takes_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        select(["idle", "--rates=100"], REGISTRY)
    assert exited.value.code == 2
    assert "--rates" in capsys.readouterr().err


def test_an_unknown_scenario_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        select(["nosuch"], REGISTRY)
    assert exited.value.code == 2
    assert "unknown scenario 'nosuch'" in capsys.readouterr().err


def test_help_lists_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        select(["--help"], REGISTRY)
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for name in [*SCENARIOS, *ALIASES]:
        assert f"  {name} " in shown, name


def test_a_scenario_after_the_options_is_an_error_that_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        select(["--quick", "latency"], REGISTRY)
    assert exited.value.code == 2
    assert "scenarios come before the options" in capsys.readouterr().err
    assert select(["idle", "--out", "idle"], REGISTRY).options.out == Path("idle")
