"""bench/histogram.py: buckets tile the integers, percentiles stay within a bucket's error."""

from __future__ import annotations

import random

import pytest

from bench.histogram import SUB_BITS, Histogram, bucket_bounds, bucket_index


@pytest.mark.parametrize("value", [0, 1, 255, 256, 257, 511, 512, 1000, 10**6, 2**40 + 5])
def test_a_value_lies_in_its_bucket_and_buckets_are_contiguous(value: int) -> None:
    index = bucket_index(value)
    low, high = bucket_bounds(index)
    assert low <= value <= high
    assert bucket_index(low) == bucket_index(high) == index
    assert bucket_bounds(index + 1)[0] == high + 1
    assert high - low + 1 <= max(1, low >> (SUB_BITS - 1))  # under 1/128 of the value


def test_percentiles_are_within_the_bucket_error_and_never_below_the_exact_value() -> None:
    rng = random.Random(5)
    values = [rng.randint(1_000, 50_000_000) for _ in range(20_000)]
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    values.sort()
    for percent in (50.0, 90.0, 99.0, 99.9, 100.0):
        exact = values[max(1, int(percent / 100 * len(values) + 0.5)) - 1]
        got = histogram.percentile(percent)
        assert exact <= got <= exact * (1 + 2 ** -(SUB_BITS - 1)), percent
    summary = histogram.summary()
    assert summary["count"] == len(values)
    assert summary["min"] == values[0] and summary["max"] == values[-1]


def test_merge_adds_the_samples_of_both() -> None:
    first, second, both = Histogram(), Histogram(), Histogram()
    for value in range(0, 5000, 7):
        first.record(value)
        both.record(value)
    for value in range(3, 900_000, 1013):
        second.record(value)
        both.record(value)
    first.merge(second)
    assert first.to_json() == both.to_json()
    assert first.summary() == both.summary()


def test_an_empty_histogram_has_no_percentile() -> None:
    with pytest.raises(ValueError):
        Histogram().percentile(50.0)
    assert Histogram().summary() == {"count": 0}


def test_the_distribution_rises_to_the_maximum() -> None:
    histogram = Histogram()
    for value in range(1, 10_001):
        histogram.record(value * 1000)
    points = histogram.distribution()
    assert points[0][0] == 0.0 and points[-1] == (100.0, 10_000_000)
    assert [p for p, _ in points] == sorted(p for p, _ in points)
    assert [v for _, v in points] == sorted(v for _, v in points)
    assert any(99.9 <= p < 100.0 for p, _ in points)
