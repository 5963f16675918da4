"""``[limits]``: what one client may cost the daemon, and the budgets that enforce it.

Guarantee 9 of the architecture ("one client cannot exhaust the daemon"). The
settings are :class:`Limits`; the logic here is pure (the clock is an argument),
so tests step it without sleeping. The adapter (``server.py``) asks and obeys:

* output: a transport's write buffer has a high and a low water mark; above the
  high one the daemon stops reading from it, and one paused longer than
  ``write_stall_timeout`` is closed with LIMIT_EXCEEDED (its session detaches);
* input: one read is processed ``read_slice`` bytes at a time, so a burst from one
  transport cannot hold the event loop; a partial frame may be held at most
  ``partial_frame_timeout`` seconds, at most ``max_hello_size`` bytes before the
  handshake, and at most ``max_partial_bytes`` over all transports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-transport, per-address, per-identity and global bounds (protocol.md §12:
    every refusal is LIMIT_EXCEEDED with a retry-after)."""

    write_buffer_high: int = 256 * 1024  # bytes queued for one transport: stop reading it
    write_buffer_low: int = 64 * 1024  # ... until its output is down to this
    write_stall_timeout: float = 30.0  # paused longer: closed with LIMIT_EXCEEDED
    read_slice: int = 64 * 1024  # bytes of one read processed before others get a turn
    partial_frame_timeout: float = 30.0  # one frame must arrive within this, once started
    max_hello_size: int = 64 * 1024  # bytes held for a frame before the handshake is done
    max_partial_bytes: int = 256 << 20  # bytes of partial frames held, all transports
    retry_after: float = 5.0  # told to clients refused by a limit

    def __post_init__(self) -> None:
        checks = {
            "write_buffer_high": self.write_buffer_high >= 1024,
            "write_buffer_low": 0 <= self.write_buffer_low <= self.write_buffer_high,
            "write_stall_timeout": self.write_stall_timeout > 0,
            "read_slice": self.read_slice >= 1024,
            "partial_frame_timeout": self.partial_frame_timeout > 0,
            "max_hello_size": self.max_hello_size >= 1024,
            "max_partial_bytes": self.max_partial_bytes >= 1 << 20,
            "retry_after": self.retry_after >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid limit(s): {', '.join(bad)}")
