"""Tunable protocol parameters with their defaults (protocol.md §3, §6, §7, §8)."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import MIN_MAX_FRAME


@dataclass(frozen=True, slots=True)
class Params:
    """One side's protocol parameters. Times are seconds, sizes bytes.

    A client proposes ``heartbeat_interval`` and ``detached_lifetime`` in HELLO;
    the server clamps them to its own bounds and announces the result in WELCOME.
    Each side advertises its own receive ``window_*`` and ``max_frame_size``.
    """

    heartbeat_interval: float = 15.0
    heartbeat_min: float = 1.0
    heartbeat_max: float = 300.0
    idle_timeout_factor: float = 3.0
    handshake_timeout: float = 10.0
    detached_lifetime: float = 120.0
    detached_lifetime_max: float = 3600.0
    window_messages: int = 1024
    window_bytes: int = 1 << 20
    replay_messages: int = 4096
    replay_bytes: int = 4 << 20
    max_frame_size: int = 1 << 20
    ack_delay: float = 0.02

    def __post_init__(self) -> None:
        checks = {
            "heartbeat_interval": self.heartbeat_interval > 0,
            "heartbeat_min": 0 < self.heartbeat_min <= self.heartbeat_max,
            "idle_timeout_factor": self.idle_timeout_factor >= 1.5,
            "handshake_timeout": self.handshake_timeout > 0,
            "detached_lifetime": 0 <= self.detached_lifetime <= self.detached_lifetime_max,
            "window_messages": 1 <= self.window_messages <= 0xFFFFFFFF,
            "window_bytes": 1 <= self.window_bytes <= 0xFFFFFFFF,
            "replay_messages": self.replay_messages >= 1,
            "replay_bytes": self.replay_bytes >= 1,
            "max_frame_size": MIN_MAX_FRAME <= self.max_frame_size <= 0xFFFFFFFF,
            "ack_delay": self.ack_delay >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid protocol parameter(s): {', '.join(bad)}")
