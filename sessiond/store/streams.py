"""What one process knows of a session's stream: its epoch, its entry counter, and
which entries an acknowledgement has made trimmable (see keys.py for the layout)."""

from __future__ import annotations

from collections import deque


class StreamLog:
    """The entries of one session's stream, oldest first, as ``(epoch, counter, last_seq)``.

    ``last_seq`` is the sequence number of an entry's last payload (for an entry
    without payloads, the one before its first; 0 for a claim marker): once the
    client acknowledged it, the entry may go, except the newest, which holds the
    latest positions.
    """

    __slots__ = ("counter", "entries", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.counter = 0
        self.entries: deque[tuple[int, int, int]] = deque()

    def add(self, epoch: int, last_seq: int) -> int:
        """Record a new entry of *epoch*; return its counter (the ID is ``epoch-counter``)."""
        if epoch != self.epoch:
            self.claimed(epoch)
        self.counter += 1
        self.entries.append((epoch, self.counter, last_seq))
        return self.counter

    def claimed(self, epoch: int) -> None:
        """A claim appended the marker ``epoch-0``; the counter starts again."""
        self.epoch = epoch
        self.counter = 0
        self.entries.append((epoch, 0, 0))

    def loaded(self, epoch: int, counter: int, last_seq: int) -> None:
        """An entry found in Redis (a load reads the stream oldest first)."""
        self.entries.append((epoch, counter, last_seq))
        if epoch == self.epoch:
            self.counter = max(self.counter, counter)

    def trim(self, acked: int, batch: int) -> str | None:
        """If at least *batch* old entries are acknowledged, forget them and return the
        ID of the oldest entry to keep (an ``XTRIM MINID`` argument); else None."""
        entries = self.entries
        count = 0
        last = len(entries) - 1
        while count < last and entries[count][2] <= acked:
            count += 1
        if count < batch:
            return None
        for _ in range(count):
            entries.popleft()
        epoch, counter, _ = entries[0]
        return f"{epoch}-{counter}"
