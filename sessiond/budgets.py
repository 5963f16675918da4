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

from .schema import setting


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-transport, per-address, per-identity and global bounds (protocol.md §12:
    every refusal is LIMIT_EXCEEDED with a retry-after)."""

    write_buffer_high: int = setting(
        256 * 1024,
        doc="bytes queued for one transport above which the daemon stops reading it",
        low=1024,
        high=1 << 30,
        unit="bytes",
    )
    write_buffer_low: int = setting(
        64 * 1024,
        doc="bytes a paused transport's output must drain to before it is read again",
        low=0,
        high=1 << 30,
        unit="bytes",
    )
    write_stall_timeout: float = setting(
        30.0,
        doc="a transport paused on its output longer than this is closed (LIMIT_EXCEEDED)",
        low=0,
        above=True,
        high=86_400,
        unit="s",
    )
    read_slice: int = setting(
        64 * 1024,
        doc="bytes of one read processed before other transports get a turn",
        low=1024,
        high=1 << 30,
        unit="bytes",
    )
    partial_frame_timeout: float = setting(
        30.0,
        doc="time one frame may take to arrive once it has started",
        low=0,
        above=True,
        high=86_400,
        unit="s",
    )
    max_hello_size: int = setting(
        64 * 1024,
        doc="bytes held for one frame before the handshake is done",
        low=1024,
        high=1 << 30,
        unit="bytes",
    )
    max_partial_bytes: int = setting(
        256 << 20,
        doc="bytes of partial frames held over all transports",
        low=1 << 20,
        high=1 << 40,
        unit="bytes",
    )
    retry_after: float = setting(
        5.0,
        doc="retry-after told to clients refused by a limit",
        low=0,
        high=86_400,
        unit="s",
    )

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
