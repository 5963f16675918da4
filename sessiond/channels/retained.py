"""A retained message (protocol.md §15.5), as the broker and the bus hold it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Retained:
    """A channel's last message, encoded once as a retained delivery."""

    envelope: bytes
    size: int  # payload bytes, counted against retained_bytes
