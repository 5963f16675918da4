"""``[limits]``: what one client may cost the daemon, and the budgets that enforce it.

Guarantee 9 of the architecture ("one client cannot exhaust the daemon"). The
settings are :class:`Limits`; the logic here is pure (the clock is an argument),
so tests step it without sleeping. The adapter (``server.py``) asks and obeys:

* output: a transport's write buffer has a high and a low water mark; above the
  high one the daemon stops reading from it, and one paused longer than
  ``write_stall_timeout`` is closed with LIMIT_EXCEEDED (its session detaches);
* input: one read is processed ``read_slice`` bytes at a time (by default a whole
  read), so a burst from one transport cannot hold the event loop; a partial frame may
  be held at most ``partial_frame_timeout`` seconds, at most ``max_hello_size`` bytes
  before the handshake, and at most ``max_partial_bytes`` over all transports;
* sessions (:class:`Budgets`): live and detached sessions per address and per
  identity; new sessions, failed resumes and failed authentications per second per
  address (token buckets); the bytes detached sessions hold (replay buffer and
  inbox) per address and over all, with an eviction order under pressure (see
  :meth:`Budgets.detach`). Every refusal is LIMIT_EXCEEDED with a retry-after.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from .schema import setting


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost: per-transport, per-address, per-identity and global bounds.

    Every refusal is LIMIT_EXCEEDED with a retry-after (protocol.md §12).

    All are live on SIGHUP (:meth:`Budgets.reconfigure`, ``Server.reconfigure``): each is
    read where it is used, except the write-buffer marks, which a transport is given
    when it is accepted (asyncio has no way to change them for every transport at once
    and a transport above a lowered mark would only pause at its next write anyway)."""

    write_buffer_high: int = setting(
        256 * 1024,
        doc="bytes queued for one transport above which the daemon stops reading it "
        "(a reload applies to transports accepted after it)",
        low=1024,
        high=1 << 30,
        unit="bytes",
        reload=True,
    )
    write_buffer_low: int = setting(
        64 * 1024,
        doc="bytes a paused transport's output must drain to before it is read again "
        "(a reload applies to transports accepted after it)",
        low=0,
        high=1 << 30,
        unit="bytes",
        reload=True,
    )
    write_stall_timeout: float = setting(
        30.0,
        doc="a transport paused on its output longer than this is closed (LIMIT_EXCEEDED)",
        low=0,
        above=True,
        high=86_400,
        unit="s",
        reload=True,
    )
    # The default takes a whole read: uvloop reads at most 256,000 bytes per TCP read and
    # the TLS reader 256 KiB (server.TLS_READ_BUFFER), so one read holds the loop at most
    # about 2.5 ms of 64-byte messages. A lower value interleaves transports more finely
    # but costs every read it cuts: at 64 KiB, ~90 KB reads of 100 sessions x 1 KiB were
    # cut in two and cost about a third more CPU per message (bench/PROFILE.md).
    read_slice: int = setting(
        256 * 1024,
        doc="bytes of one read processed before other transports get a turn",
        low=1024,
        high=1 << 30,
        unit="bytes",
        reload=True,
    )
    partial_frame_timeout: float = setting(
        30.0,
        doc="time one frame may take to arrive once it has started",
        low=0,
        above=True,
        high=86_400,
        unit="s",
        reload=True,
    )
    max_hello_size: int = setting(
        64 * 1024,
        doc="bytes held for one frame before the handshake is done",
        low=1024,
        high=1 << 30,
        unit="bytes",
        reload=True,
    )
    max_partial_bytes: int = setting(
        256 << 20,
        doc="bytes of partial frames held over all transports",
        low=1 << 20,
        high=1 << 40,
        unit="bytes",
        reload=True,
    )
    max_sessions_per_address: int = setting(
        50_000,
        doc="live and detached sessions opened from one IP address",
        low=1,
        high=10_000_000,
        reload=True,
    )
    max_sessions_per_identity: int = setting(
        10_000,
        doc="live and detached sessions of one authenticated identity (anonymous: no limit)",
        low=1,
        high=10_000_000,
        reload=True,
    )
    new_sessions_rate: float = setting(
        1000.0,
        doc="new sessions per second from one IP address (token bucket rate)",
        low=0,
        above=True,
        high=1e9,
        unit="/s",
        reload=True,
    )
    new_sessions_burst: int = setting(
        20_000,
        doc="new sessions one IP address may open at once",
        low=1,
        high=10_000_000,
        reload=True,
    )
    failed_auth_rate: float = setting(
        2.0,
        doc="failed authentications per second from one IP address before refusal",
        low=0,
        above=True,
        high=1e9,
        unit="/s",
        reload=True,
    )
    failed_auth_burst: int = setting(
        20,
        doc="failed authentications one IP address may make at once",
        low=1,
        high=1_000_000,
        reload=True,
    )
    failed_resume_rate: float = setting(
        200.0,
        doc="failed resumes (unknown session, wrong credential) per second from one address",
        low=0,
        above=True,
        high=1e9,
        unit="/s",
        reload=True,
    )
    failed_resume_burst: int = setting(
        2_000,
        doc="failed resumes one IP address may make at once",
        low=1,
        high=10_000_000,
        reload=True,
    )
    max_detached_bytes_per_address: int = setting(
        64 << 20,
        doc="bytes (replay buffers and inboxes) of detached sessions opened from one address",
        low=0,
        high=1 << 40,
        unit="bytes",
        reload=True,
    )
    max_detached_bytes: int = setting(
        1 << 30,
        doc="bytes (replay buffers and inboxes) of all detached sessions",
        low=0,
        high=1 << 44,
        unit="bytes",
        reload=True,
    )
    fd_reserve: int = setting(
        64,
        doc="file descriptors kept free: with fewer left, new transports are refused "
        "(LIMIT_EXCEEDED) instead of failing at accept",
        low=0,
        high=1 << 20,
        reload=True,
    )
    accept_pause: float = setting(
        1.0,
        doc="after accept fails for want of descriptors or memory (EMFILE, ENFILE), "
        "seconds before accepting again (pending connections wait in the backlog)",
        low=0,
        above=True,
        high=60,
        unit="s",
        reload=True,
    )
    retry_after: float = setting(
        5.0,
        doc="retry-after told to clients refused by a limit",
        low=0,
        high=86_400,
        unit="s",
        reload=True,
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
            "accept_pause": self.accept_pause > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid limit(s): {', '.join(bad)}")


class TokenBucket:
    """*rate* tokens a second, at most *burst* held; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, now: float) -> float:
        """0 when a token is there now, else the seconds until one will be."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> float:
        """Take a token: 0 if one was there, else (nothing taken) the seconds to wait."""
        wait = self.wait(now)
        if not wait:
            self.tokens -= 1
        return wait

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class LimitExceeded(Exception):
    """A budget refuses: close with LIMIT_EXCEEDED, *reason* and *retry_after* seconds."""

    def __init__(self, limit: str, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.limit = limit  # the setting's name, for logs and metrics
        self.reason = reason
        self.retry_after = retry_after


#: How many buckets of one kind are kept before full (idle) ones are dropped.
BUCKETS_KEPT = 10_000


class _Buckets:
    """One token bucket per address, made on first use; full ones dropped when many."""

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def get(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= BUCKETS_KEPT:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket

    def wait(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)

    def reconfigure(self, rate: float, burst: int, now: float) -> None:
        """New rate and burst for every bucket, from *now* (tokens held: at most *burst*)."""
        self.rate = rate
        self.burst = burst
        for bucket in self._buckets.values():
            bucket._refill(now)  # what was earned at the old rate
            bucket.rate = rate
            bucket.burst = float(burst)
            bucket.tokens = min(bucket.tokens, bucket.burst)

    def __len__(self) -> int:
        return len(self._buckets)


class Budgets:
    """What sessions from one address or identity, and detached sessions, may cost.

    Pure: every call takes the time. The server calls :meth:`check_auth` before
    authenticating and :meth:`failed_auth` when that fails; :meth:`check_resume` and
    :meth:`failed_resume` around a resume; :meth:`open` before creating a session
    (raises :class:`LimitExceeded`) and :meth:`close` when it ends; :meth:`detach`
    and :meth:`attach` as its transport goes and comes back.

    Eviction order when detached sessions hold more than their budget: first the
    address over its own budget (or, for the global budget, the address holding the
    most detached bytes), and within an address the session detached longest ago.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits  # replaced by reconfigure (SIGHUP)
        self._new = _Buckets(limits.new_sessions_rate, limits.new_sessions_burst)
        self._auth = _Buckets(limits.failed_auth_rate, limits.failed_auth_burst)
        self._resume = _Buckets(limits.failed_resume_rate, limits.failed_resume_burst)
        self.per_address: dict[str, int] = {}  # live and detached sessions
        self.per_identity: dict[Hashable, int] = {}
        # address -> {session ID: bytes held}, oldest detach first
        self._detached: dict[str, OrderedDict[bytes, int]] = {}
        self._detached_bytes: dict[str, int] = {}
        self.detached_bytes = 0

    def reconfigure(self, limits: Limits, now: float) -> list[bytes]:
        """New limits (SIGHUP), in force at once for every address and identity: the
        buckets keep their tokens (at most the new burst) and refill at the new rate;
        sessions already open stay open even above a lowered cap (only new ones are
        refused); detached sessions above lowered byte budgets are returned to evict,
        in the eviction order."""
        self.limits = limits
        self._new.reconfigure(limits.new_sessions_rate, limits.new_sessions_burst, now)
        self._auth.reconfigure(limits.failed_auth_rate, limits.failed_auth_burst, now)
        self._resume.reconfigure(limits.failed_resume_rate, limits.failed_resume_burst, now)
        victims: list[bytes] = []
        for address in list(self._detached_bytes):
            victims += self._over_budget(address)
        return victims + self._over_budget(None)

    # ---------------------------------------------------------- rates

    def check_auth(self, address: str, now: float) -> None:
        """Refuse an address whose failed authentications used up its bucket."""
        wait = self._auth.wait(address, now)
        if wait:
            raise LimitExceeded(
                "failed_auth_rate", "too many failed authentications", self._after(wait)
            )

    def failed_auth(self, address: str, now: float) -> None:
        self._auth.get(address, now).take(now)

    def check_resume(self, address: str, now: float) -> None:
        wait = self._resume.wait(address, now)
        if wait:
            raise LimitExceeded("failed_resume_rate", "too many failed resumes", self._after(wait))

    def failed_resume(self, address: str, now: float) -> None:
        self._resume.get(address, now).take(now)

    def _after(self, wait: float) -> float:
        return max(wait, self.limits.retry_after)

    # ---------------------------------------------------------- sessions

    def open(self, address: str, identity: Hashable, now: float, check: bool = True) -> None:
        """A new session from *address* for *identity* (None: anonymous); raises
        :class:`LimitExceeded` (nothing counted) or counts it. Without *check*, only
        counts (a resume that turned into a new session)."""
        if check:
            self._check_open(address, identity, now)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        if identity is not None:
            self.per_identity[identity] = self.per_identity.get(identity, 0) + 1

    def _check_open(self, address: str, identity: Hashable, now: float) -> None:
        limits = self.limits
        if self.per_address.get(address, 0) >= limits.max_sessions_per_address:
            raise LimitExceeded(
                "max_sessions_per_address", "too many sessions from this address", 60.0
            )
        if (
            identity is not None
            and self.per_identity.get(identity, 0) >= limits.max_sessions_per_identity
        ):
            raise LimitExceeded(
                "max_sessions_per_identity", "too many sessions for this identity", 60.0
            )
        wait = self._new.get(address, now).take(now)
        if wait:
            raise LimitExceeded("new_sessions_rate", "too many new sessions", self._after(wait))

    def close(self, session_id: bytes, address: str, identity: Hashable) -> None:
        """The session ended (closed, expired, evicted)."""
        self.attach(session_id, address)
        _decrement(self.per_address, address)
        if identity is not None:
            _decrement(self.per_identity, identity)

    # ---------------------------------------------------------- detached bytes

    def detach(self, session_id: bytes, address: str, held: int) -> list[bytes]:
        """A session from *address* holding *held* bytes lost its transport. Returns the
        sessions to evict (they expire early: SESSION_EXPIRED), in order; they are no longer
        counted here."""
        self.attach(session_id, address)
        sessions = self._detached.setdefault(address, OrderedDict())
        sessions[session_id] = held
        self._detached_bytes[address] = self._detached_bytes.get(address, 0) + held
        self.detached_bytes += held
        return self._over_budget(address)

    def _over_budget(self, address: str | None) -> list[bytes]:
        """Evict from *address* while it is over its budget, then (with *address* None,
        or after) from the heaviest address while all are over the global one."""
        victims: list[bytes] = []
        limits = self.limits
        if address is not None:
            while self._detached_bytes.get(address, 0) > limits.max_detached_bytes_per_address:
                victims.append(self._evict(address))
        while self.detached_bytes > limits.max_detached_bytes:
            heaviest = max(self._detached_bytes, key=self._detached_bytes.__getitem__)
            victims.append(self._evict(heaviest))
        return victims

    def attach(self, session_id: bytes, address: str) -> None:
        """The session is no longer detached (resumed or ended)."""
        sessions = self._detached.get(address)
        if sessions is None:
            return
        held = sessions.pop(session_id, None)
        if held is None:
            return
        self.detached_bytes -= held
        _decrement(self._detached_bytes, address, held)
        if not sessions:
            del self._detached[address]

    def _evict(self, address: str) -> bytes:
        session_id = next(iter(self._detached[address]))
        self.attach(session_id, address)
        return session_id

    def detached_from(self, address: str) -> int:
        """Bytes held by detached sessions opened from *address*."""
        return self._detached_bytes.get(address, 0)


def _decrement(counts: dict[Any, int], key: Any, by: int = 1) -> None:
    left = counts.get(key, 0) - by
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
