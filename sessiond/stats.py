"""What the server counts as it runs: plain integers, read at scrape time by
:mod:`sessiond.metrics`.

Only events are counted here (a session created, resumed or ended, a transport
refused, a read or a write), never a message: message counts come from the
sessions' own sequence numbers when metrics are scraped, so the per-message path
pays nothing for them.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) of the resume-duration histogram's buckets.
RESUME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Upper bounds (seconds) of the session store's commit-latency histogram.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Counts per bucket and a sum, as Prometheus histograms report them."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` for each bound and ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Stats:
    """Counters of one :class:`~sessiond.server.Server`."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "ended",
        "ended_messages_in",
        "ended_messages_out",
        "events",
        "refused",
        "resume_failed",
        "resume_seconds",
        "store_errors",
        "store_seconds",
        "tls_accepted",
        "tls_handshakes",
    )

    def __init__(self) -> None:
        self.bytes_in = 0  # read from transports
        self.bytes_out = 0  # written to transports
        self.events: dict[str, int] = {}  # lifecycle event (created, resumed, ...) -> count
        self.ended: dict[str, int] = {}  # close code of ended sessions -> count
        self.refused: dict[str, int] = {}  # transports that never carried a session, by code
        self.resume_failed: dict[str, int] = {}  # resumes answered with a new session, by why
        self.tls_accepted = 0  # TCP connections accepted on TLS listeners
        self.tls_handshakes = 0  # of those, TLS handshakes completed
        # Messages of sessions no longer here (ended, or moved to another process),
        # less those that adopted sessions had before they came here (counted where
        # they went through): added to the live sessions' sequence numbers at scrape time.
        self.ended_messages_in = 0
        self.ended_messages_out = 0
        self.resume_seconds = Histogram(RESUME_BUCKETS)
        self.store_seconds = Histogram(STORE_BUCKETS)  # one per commit (all sessions' appends)
        self.store_errors: dict[str, int] = {}  # session store failures, by kind

    def store_error(self, kind: str) -> None:
        self.store_errors[kind] = self.store_errors.get(kind, 0) + 1

    def event(self, what: str) -> None:
        self.events[what] = self.events.get(what, 0) + 1

    def session_ended(self, code: str, sent: int, received: int) -> None:
        self.ended[code] = self.ended.get(code, 0) + 1
        self.session_moved(sent, received)

    def session_moved(self, sent: int, received: int) -> None:
        """A session left (ended, or moved to another process): its messages stay
        counted here."""
        self.ended_messages_out += sent
        self.ended_messages_in += received

    def session_adopted(self, sent: int, received: int) -> None:
        """A session came from another process (or from before a restart) with these
        sequence numbers: counted where they went through, not again here."""
        self.ended_messages_out -= sent
        self.ended_messages_in -= received

    def resume_failed_as(self, reason: str) -> None:
        self.resume_failed[reason] = self.resume_failed.get(reason, 0) + 1

    def refusal(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1
