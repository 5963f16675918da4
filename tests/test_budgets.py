"""The budgets of ``sessiond/budgets.py`` and the refusal log of ``sessiond/refusals.py``,
pure, with a stepped clock (no sockets, no sleeping)."""

from __future__ import annotations

import logging

import pytest

from sessiond.budgets import Budgets, LimitExceeded, Limits, TokenBucket
from sessiond.refusals import Refusals


def test_a_token_bucket_starts_full_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # nothing taken
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at burst


def test_new_sessions_are_limited_per_address_in_rate_and_count() -> None:
    budgets = Budgets(Limits(new_sessions_rate=1.0, new_sessions_burst=2, retry_after=0.0))
    budgets.open("a", None, 0.0)
    budgets.open("a", None, 0.0)
    with pytest.raises(LimitExceeded) as refused:
        budgets.open("a", None, 0.0)
    assert refused.value.limit == "new_sessions_rate"
    assert refused.value.retry_after == pytest.approx(1.0)
    budgets.open("b", None, 0.0)  # another address has its own bucket
    budgets.open("a", None, 1.0)
    assert budgets.per_address == {"a": 3, "b": 1}

    capped = Budgets(Limits(max_sessions_per_address=2, max_sessions_per_identity=3))
    capped.open("a", "alice", 0.0)
    capped.open("a", "alice", 0.0)
    with pytest.raises(LimitExceeded, match="address"):
        capped.open("a", "alice", 0.0)
    capped.open("b", "alice", 0.0)
    with pytest.raises(LimitExceeded, match="identity"):
        capped.open("c", "alice", 0.0)
    capped.open("c", None, 0.0)  # anonymous sessions have no identity budget
    capped.close(b"1", "a", "alice")
    capped.open("c", "alice", 0.0)
    assert capped.per_identity == {"alice": 3}


def test_failed_authentications_and_resumes_are_refused_once_the_bucket_is_empty() -> None:
    budgets = Budgets(Limits(failed_auth_rate=1.0, failed_auth_burst=2, retry_after=5.0))
    budgets.check_auth("a", 0.0)
    budgets.failed_auth("a", 0.0)
    budgets.failed_auth("a", 0.0)
    with pytest.raises(LimitExceeded) as refused:
        budgets.check_auth("a", 0.0)
    assert refused.value.retry_after == 5.0  # never below the configured retry-after
    budgets.check_auth("b", 0.0)
    budgets.check_auth("a", 1.0)
    budgets.check_resume("a", 0.0)


def test_detached_bytes_evict_the_address_over_budget_oldest_first() -> None:
    budgets = Budgets(Limits(max_detached_bytes_per_address=100, max_detached_bytes=250))
    assert budgets.detach(b"a1", "a", 40) == []
    assert budgets.detach(b"a2", "a", 40) == []
    assert budgets.detach(b"a3", "a", 40) == [b"a1"]  # over a's own budget: its oldest
    assert budgets.detached_from("a") == 80
    assert budgets.detach(b"b1", "b", 90) == []
    assert budgets.detach(b"c1", "c", 60) == []  # 230 in all
    # over the global budget: the heaviest address (b, 90) loses its oldest session
    assert budgets.detach(b"c2", "c", 30) == [b"b1"]
    assert budgets.detached_bytes == 170
    budgets.attach(b"a2", "a")  # resumed: no longer counted
    assert budgets.detached_from("a") == 40
    budgets.close(b"a3", "a", None)
    assert budgets.detached_from("a") == 0 and budgets.detached_bytes == 90


def test_refusal_lines_are_rate_limited_with_a_count() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test-refusals")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    now = [0.0]
    refusals = Refusals(logger, period=10.0, burst=3, clock=lambda: now[0])
    logged = [refusals.note("refused", f"127.0.0.1:{i}", "bad token") for i in range(1000)]
    assert logged.count(True) == 3 and len(records) == 3
    now[0] = 10.5
    refusals.note("refused", "127.0.0.1:1", "bad token")
    assert records[3] == "refused (refused): ... and 997 more in the last 10 s"
    assert records[4].startswith("refused peer=127.0.0.1:1")
    refusals.close()
    assert len(records) == 5  # nothing suppressed since
    assert refusals.counts == {"refused": 1001}


def test_reconfigured_limits_apply_at_once_and_keep_what_is_counted() -> None:
    """SIGHUP: buckets keep their tokens (capped at the new burst) and refill at the new
    rate; open sessions stay counted (a lowered cap refuses only new ones); detached
    sessions above a lowered byte budget are evicted, oldest first."""
    budgets = Budgets(Limits(new_sessions_rate=1.0, new_sessions_burst=10, retry_after=0.0))
    for _ in range(4):
        budgets.open("a", None, 0.0)
    budgets.detach(b"s1", "a", 300)
    budgets.detach(b"s2", "a", 300)
    budgets.detach(b"s3", "b", 100)
    lowered = Limits(
        new_sessions_rate=100.0,
        new_sessions_burst=2,
        max_sessions_per_address=4,
        max_detached_bytes_per_address=400,
        max_detached_bytes=350,
        retry_after=0.0,
    )
    victims = budgets.reconfigure(lowered, 0.0)
    assert victims == [b"s1", b"s2"]  # "a" over its 400 (s1), then all over 350: heaviest
    assert budgets.detached_bytes == 100 and budgets.detached_from("b") == 100
    assert budgets.per_address == {"a": 4}  # still open, still counted
    with pytest.raises(LimitExceeded, match="too many sessions from this address"):
        budgets.open("a", None, 0.0)
    budgets.open("c", None, 0.0)
    budgets.open("c", None, 0.0)  # a new bucket: the new burst of 2 ...
    with pytest.raises(LimitExceeded) as refused:
        budgets.open("c", None, 0.0)
    assert refused.value.retry_after == pytest.approx(0.01)  # ... and the new rate
