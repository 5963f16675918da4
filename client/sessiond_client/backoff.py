"""When to reconnect: exponential backoff with full jitter, and the server's say (§12)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .protocol.errors import CODE_TABLE, Backoff, CloseCode


@dataclass(frozen=True)
class ReconnectPolicy:
    """Delay before reconnect attempt *n* (0-based): ``uniform(0, min(cap, base * 2**n))``.

    Full jitter spreads a fleet that lost its server at the same moment over the
    whole interval, which is what avoids reconnect storms. ``max_attempts`` and
    ``max_elapsed`` (seconds since the transport was lost) bound the effort; None
    means no bound. ``random`` is injectable for tests.
    """

    base: float = 0.1
    cap: float = 30.0
    max_attempts: int | None = None
    max_elapsed: float | None = None
    random: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("ReconnectPolicy needs 0 < base <= cap")

    def delay(self, attempt: int, code: CloseCode, retry_after: float = 0.0) -> float:
        """Seconds to wait before attempt *attempt* after a transport ended with *code*.

        *retry_after* is what the server asked for (a CLOSE's, or a GOAWAY's however the
        transport then ended, protocol.md §11.1): the first attempt never comes sooner.
        """
        kind = CODE_TABLE.get(code)
        if kind is not None and kind.backoff is Backoff.IMMEDIATE and attempt == 0:
            return retry_after
        # The exponent is capped: 2.0**1024 overflows, and a client told to wait for its
        # server (wait_for_server=True) may make that many attempts.
        jittered = self.random() * min(self.cap, self.base * 2.0 ** min(attempt, 64))
        if kind is not None and kind.backoff is Backoff.RETRY_AFTER:
            return max(retry_after, jittered) if attempt == 0 else retry_after + jittered
        return max(retry_after, jittered) if attempt == 0 else jittered

    def gives_up(self, attempt: int, elapsed: float) -> bool:
        """True when attempt *attempt* must not be made."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return self.max_elapsed is not None and elapsed >= self.max_elapsed
