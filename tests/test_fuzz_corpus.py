"""The fuzz target of ``tests/fuzz.py`` (decoder and session core) in the suite: every
corpus input replayed, hypothesis mutating corpus inputs, and a short coverage-guided
run from a fixed seed (``TEST_FUZZ_SEED`` picks another; ``python -m tests.fuzz
--seconds 600`` runs the real thing).

Inputs named ``known-*`` reproduce a bug found by the fuzzer and not fixed yet: they
are expected to fail until it is, and then the strict xfail turns red so the input is
renamed (``cov-*``) and kept as a regression test.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import KNOWN, check, failure_of, fuzz, load_corpus, mutate

CORPUS = load_corpus()
#: Why each known-* input fails (protocol.md §1.5: the outcome must not depend on reads).
KNOWN_BUGS: dict[str, str] = {}  # none open: cov-window-check-after-a-bad-frame was one


def test_the_corpus_holds_seeds_and_findings() -> None:
    names = set(CORPUS)
    assert sum(name.startswith("seed-") for name in names) >= 100, (
        "python -m tests.fuzz --write-seeds"
    )
    assert any(name.startswith("cov-") for name in names), "no input found by the fuzzer"
    assert set(KNOWN_BUGS) == {name for name in names if name.startswith(KNOWN)}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(
                reason=KNOWN_BUGS.get(name, ""), strict=True, raises=AssertionError
            )
            if name.startswith(KNOWN)
            else (),
        )
        for name in CORPUS
    ],
)
def test_corpus_input_breaks_no_rule(name: str) -> None:
    check(CORPUS[name])


REPLAYABLE = sorted(data for name, data in CORPUS.items() if not name.startswith(KNOWN))
KNOWN_FAILURES = {failure_of(data) for name, data in CORPUS.items() if name.startswith(KNOWN)} - {
    None
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(REPLAYABLE), seed=st.integers(0, 2**32))
def test_mutated_corpus_inputs_break_no_rule(base: bytes, seed: int) -> None:
    data = mutate(random.Random(seed), base, REPLAYABLE)
    failure = failure_of(data)
    assert failure is None or failure in KNOWN_FAILURES, failure


def test_a_short_coverage_guided_run_finds_nothing_new() -> None:
    seed = int(os.environ.get("TEST_FUZZ_SEED", "20261122"))
    report = fuzz(30.0, seed, CORPUS, max_cases=300)
    print(f"\nfuzz, seed {seed}: {report}")
    assert report.cases > 0
    assert not report.failures, f"seed {seed}: " + "\n".join(
        trace for _, trace in report.failures.values()
    )
