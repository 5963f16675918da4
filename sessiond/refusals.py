"""Log lines for refusals (failed authentication, limits, accept failures) that cannot flood.

Each kind of refusal logs its first ``burst`` lines per ``period`` seconds; the rest are
counted, and when the period ends one line says ``... and N more in the last 10 s``.
10,000 wrong tokens in 3 s thus write about a dozen lines, and the operator still
learns how many there were. The clock is an argument (tests step it); the summary is
written by the next refusal after the period, or by a timer on the running loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any


class _Kind:
    __slots__ = ("logged", "started", "suppressed", "timer")

    def __init__(self, now: float) -> None:
        self.started = now
        self.logged = 0
        self.suppressed = 0
        self.timer: asyncio.TimerHandle | None = None


class Refusals:
    """Rate-limited refusal log lines with counts, per kind of refusal."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = 10.0,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period = period
        self.burst = burst
        self.clock = clock
        self.counts: dict[str, int] = {}  # every refusal ever noted, per kind
        self._kinds: dict[str, _Kind] = {}

    def note(
        self, kind: str, peer: str, why: str, level: int = logging.INFO, **fields: Any
    ) -> bool:
        """A refusal of *kind* for *peer*; True when it was logged (not only counted)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self.clock()
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = _Kind(now)
        elif now - state.started >= self.period:
            self._summarize(kind, state)
            state.started = now
        if state.logged < self.burst:
            state.logged += 1
            self.logger.log(
                level,
                "refused peer=%s: %s",
                peer,
                why,
                extra={"fields": {"event": kind, "peer": peer, "why": why, **fields}},
            )
            return True
        state.suppressed += 1
        if state.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            delay = max(0.0, state.started + self.period - now)
            state.timer = loop.call_later(delay, self._on_timer, kind)
        return False

    def _on_timer(self, kind: str) -> None:
        state = self._kinds.get(kind)
        if state is not None:
            state.timer = None
            self._summarize(kind, state)
            state.started = self.clock()

    def _summarize(self, kind: str, state: _Kind) -> None:
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.suppressed:
            self.logger.warning(
                "refused (%s): ... and %d more in the last %.0f s",
                kind,
                state.suppressed,
                self.period,
                extra={"fields": {"event": kind, "suppressed": state.suppressed}},
            )
        state.logged = 0
        state.suppressed = 0

    def close(self) -> None:
        """Write the pending summaries and cancel their timers (shutdown)."""
        for kind, state in self._kinds.items():
            self._summarize(kind, state)
