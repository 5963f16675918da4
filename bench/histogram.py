"""A small HDR-style histogram of latencies: log-linear buckets, bounded relative error.

Like HdrHistogram, values (integers, here nanoseconds) are counted in buckets
whose width doubles with each power of two, each power of two being cut into
``2 ** (SUB_BITS - 1)`` equal sub-buckets: every value up to ``2 ** SUB_BITS``
has a bucket of its own and above that a bucket spans less than
``1 / 2 ** (SUB_BITS - 1)`` of its values (0.8 % with ``SUB_BITS = 8``). Memory
is one counter per occupied bucket, whatever the range: a 60 s outlier costs as
much as a 60 µs one. A percentile is reported, as HdrHistogram does, as the
highest value its bucket holds, so it never understates a latency; ``min`` and
``max`` are kept exactly. Call :meth:`Histogram.record` per sample, then ``percentile``
or ``summary``; ``merge`` adds repetitions, ``to_json`` keeps the distribution.
"""

from __future__ import annotations

from typing import Any

#: Bits of the sub-bucket index: 128 sub-buckets per power of two above 256.
SUB_BITS = 8
_SUB_COUNT = 1 << SUB_BITS
_HALF = _SUB_COUNT >> 1
#: The percentiles every latency figure reports.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def bucket_index(value: int) -> int:
    """The bucket counting *value* (a non-negative integer)."""
    if value < _SUB_COUNT:
        return value
    shift = value.bit_length() - SUB_BITS
    return _SUB_COUNT + (shift - 1) * _HALF + ((value >> shift) - _HALF)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value counted in bucket *index*."""
    if index < _SUB_COUNT:
        return index, index
    shift = 1 + (index - _SUB_COUNT) // _HALF
    mantissa = _HALF + (index - _SUB_COUNT) % _HALF
    low = mantissa << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of non-negative integer samples in log-linear buckets."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def record(self, value: int) -> None:
        """Count one sample; a negative one (a clock read out of order) counts as 0."""
        value = max(value, 0)
        index = value if value < _SUB_COUNT else bucket_index(value)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        self.count += 1
        self.total += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        """Add every sample of *other* to this histogram."""
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.count += other.count
        self.total += other.total
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max

    def percentile(self, percent: float) -> int:
        """The value that *percent* % of the samples are at or below (bucket's highest value)."""
        if not self.count or self.max is None:
            raise ValueError("no samples")
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"percentile {percent} is not within 0..100")
        # The rank of the sample wanted, 1-based, as HdrHistogram counts it.
        rank = max(1, int(percent / 100.0 * self.count + 0.5))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.max)
        return self.max

    def summary(self, percentiles: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
        """Count, min, mean, max and each percentile, in the unit recorded."""
        if not self.count or self.min is None or self.max is None:
            return {"count": 0}
        out: dict[str, float] = {
            "count": self.count,
            "min": self.min,
            "mean": self.total / self.count,
            "max": self.max,
        }
        for percent in percentiles:
            out[percentile_key(percent)] = self.percentile(percent)
        return out

    def distribution(self, ticks_per_half: int = 2) -> list[tuple[float, int]]:
        """``(percentile, value)`` pairs as HdrHistogram prints its percentile distribution."""
        if not self.count or self.max is None:
            return []
        points: list[tuple[float, int]] = []
        remaining = 100.0
        percent = 0.0
        while remaining * self.count / 100.0 >= 1.0:
            step = remaining / 2 / ticks_per_half
            for _ in range(ticks_per_half):
                points.append((round(percent, 6), self.percentile(percent)))
                percent += step
            remaining /= 2
        points.append((100.0, self.max))
        return points

    def to_json(self) -> dict[str, Any]:
        """The counts, extremes and :meth:`distribution` (a few dozen points)."""
        return {
            "sub_bucket_bits": SUB_BITS,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "percentile_distribution": [list(point) for point in self.distribution()],
        }


def percentile_key(percent: float) -> str:
    """``p50``, ``p99``, ``p99.9``: the key a percentile is stored under."""
    return f"p{percent:g}"
