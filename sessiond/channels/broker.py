"""The channels state of one app instance: subscriptions, presence, retained messages.

:class:`Broker` acts on decoded requests (:class:`~sessiond_client.envelopes.Request`)
for a :class:`Member` (one session) and puts everything that results into
outboxes, synchronously: replies into the requester's, deliveries and presence
events into the subscribers'. Nothing here awaits, so a publish costs the
publisher the same whether its subscribers are fast, slow or detached; the
outboxes' policies (:mod:`.outbox`) deal with the slow ones.

Errors are raised as :class:`~sessiond_client.envelopes.ChannelError` before
any state changes; the app turns them into error replies.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sessiond_client import envelopes
from sessiond_client.envelopes import ChannelError, ErrorCode, Request
from sessiond_client.protocol import CloseCode, SessionLost
from sessiond_client.topics import (
    SEPARATOR,
    InvalidChannel,
    check_name,
    check_pattern,
    is_pattern,
    matches,
)

from ..session import Session
from .acl import Acl, Grants
from .bus import Bus, LocalBus
from .config import ChannelsConfig
from .outbox import ChannelStats, Outbox
from .retained import Retained
from .subscriptions import Subscriptions

log = logging.getLogger("sessiond.channels")

MAX_IDENTITY = 1024  # characters of an identity shown to other sessions
_INFO_CACHE = 65_536  # channel names whose features are remembered
#: Payloads a sender hands to its session at once.
SEND_BATCH = 64


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """The configured features of one channel name."""

    presence: bool
    retained: bool
    drop_oldest: bool


class Member:
    """One channels session: its outbox, subscriptions and permissions, and the sender
    task that moves the outbox into the session while there is something to move.

    An idle member holds no task: :meth:`ready` (the outbox's callback when an entry
    arrives) starts one, and it ends as soon as the outbox is empty again.
    """

    __slots__ = (
        "grants",
        "held",
        "identity",
        "mark",
        "outbox",
        "patterns",
        "paused",
        "sender",
        "sending",
        "session",
        "tag",
    )

    def __init__(
        self,
        session: Session,
        identity: str | None,
        grants: Grants,
        config: ChannelsConfig,
        stats: ChannelStats | None = None,
        tag: str | None = None,
    ):
        self.session = session
        self.identity = identity
        self.grants = grants
        # Shown to others instead of the session ID; kept across a move (app.py).
        self.tag = tag or secrets.token_hex(8)
        #: The bus entry of the last delivery handed to the session (a Redis bus), and
        #: while a batch is being handed over, the entry of each payload of it: the
        #: session store keeps the position with the payloads (:meth:`position`).
        self.mark: str | None = None
        self.sending: list[str | None] | None = None
        self.paused = False  # catching up after a move: the sender waits (app.py)
        #: Publishes answered ``ok`` that the bus has yet to append: the sender waits, so
        #: that an ``ok`` (and what follows it) leaves only once the publish is on the bus.
        self.held = 0
        # Pattern -> the bus entry it was subscribed at (None with the local bus): an
        # ordered set, kept in session.data, that also tells a session that moved where
        # each subscription began (app.py).
        self.patterns: dict[str, str | None] = {}
        self.sender: asyncio.Task[None] | None = None
        self.outbox = Outbox(
            asyncio.get_running_loop(),
            config.queue_messages,
            config.queue_bytes,
            self.overflow,
            self.ready,
            stats,
            config.control_bytes,
        )

    def __repr__(self) -> str:
        return f"<Member {self.tag} identity={self.identity!r} patterns={len(self.patterns)}>"

    def overflow(self, why: str) -> None:
        """A disconnect-policy channel overflowed the outbox: end the session SLOW_CONSUMER."""
        session = self.session
        if not session.ended:
            log.info("slow consumer %s (identity %r): %s", session.id[:8], self.identity, why)
            session.close(CloseCode.SLOW_CONSUMER, "slow consumer: " + why)

    def ready(self) -> None:
        """Something was queued: start the sender unless one is running."""
        if self.sender is None and not self.outbox.closed and not self.paused and not self.held:
            self.sender = asyncio.get_running_loop().create_task(self._send())
            self.sender.add_done_callback(self._sender_done)

    async def _send(self) -> None:
        """Move the outbox into the session, in order, a batch at a time, until it is
        empty. A batch is at most SEND_BATCH payloads beyond the outbox's limits."""
        outbox = self.outbox
        session = self.session
        while True:
            if self.held:  # a publish's ok must wait for the bus: release() restarts us
                self.sender = None
                return
            limit = session.core.max_payload
            batch: list[bytes] = []
            marks: list[str | None] = []
            while len(batch) < SEND_BATCH and (taken := outbox.take()) is not None:
                payload, channel = taken
                if len(payload) > limit:
                    # Too large for this client's frames: a gap notice, not a silent hole.
                    # (Replies and gap notices are small; only deliveries can get here.)
                    if channel is not None:
                        outbox.note_undeliverable(channel)
                    continue
                batch.append(payload)
                marks.append(outbox.mark)
            if not batch:
                self.sender = None  # in the same step as the empty check: no entry missed
                return
            self.sending = marks
            try:
                await session.send_many(batch)  # waits while the client's window is full
            except SessionLost:
                outbox.close()  # frees a handler waiting for room_for_control
                self.sender = None
                return
            finally:
                self.sending = None
            self.mark = marks[-1]

    def release(self) -> None:
        """The bus appended one of this member's publishes (or gave up: counted)."""
        self.held -= 1
        if not self.held:
            self.ready()

    def position(self, unsent: int) -> str | None:
        """The bus entry of the last delivery in the session, while *unsent* payloads
        handed to ``send_many`` wait for window (``Session.marker``)."""
        marks = self.sending
        if marks is None:
            return self.mark
        queued = len(marks) - unsent
        return marks[queued - 1] if queued > 0 else self.mark

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        session = self.session
        log.error(
            "channels sender failed for session %s", session.id[:8], exc_info=task.exception()
        )
        self.outbox.close()
        if not session.ended:
            session.close(CloseCode.SESSION_REVOKED, "channels sender failed")


def identity_text(identity: Any) -> str | None:
    """An authenticator's identity as other sessions see it: a str, or None (anonymous)."""
    if identity is None:
        return None
    text = identity if isinstance(identity, str) else str(identity)
    return text[:MAX_IDENTITY]


class Broker:
    """Subscriptions, presence and retained messages shared by every channels session."""

    def __init__(self, config: ChannelsConfig, bus: Bus | None = None) -> None:
        self.config = config
        #: Where publishes go (bus.py): this process only, or every process on a Redis store.
        self.bus: Bus = bus if bus is not None else LocalBus()
        self.acl = Acl(config.rules())
        self.subscriptions: Subscriptions[Member] = Subscriptions()
        self.members: dict[str, dict[Member, None]] = {}  # presence channel -> members, in order
        self.retained: dict[str, Retained] = {}
        self.retained_size = 0
        #: Presence channel -> members held by other processes (tag -> identity), as the
        #: bus told (always empty with the local bus).
        self.remote: dict[str, dict[str, str | None]] = {}
        self._info: dict[str, ChannelInfo] = {}
        self.stats = ChannelStats()
        self.bus.attach(self)

    def reconfigure(self, config: ChannelsConfig) -> None:
        """New settings: limits, channel features and access rules apply to every request
        from now on (a session's grants are recomputed at its next request); subscriptions
        and retained messages already held are kept, and queue limits apply to sessions
        that start afterwards."""
        self.config = config
        self.acl = Acl(config.rules())
        self._info.clear()

    # ------------------------------------------------------------ sessions

    def join(self, session: Session, tag: str | None = None) -> Member:
        """A new channels session: its member object, with an outbox that ends the
        session with SLOW_CONSUMER when a disconnect-policy channel overflows it
        (*tag*: the one it had before it moved here)."""
        identity = identity_text(session.identity)
        member = Member(session, identity, self.acl.grants(identity), self.config, self.stats, tag)
        member.mark = self.bus.position
        return member

    def grants(self, member: Member) -> Grants:
        """*member*'s permissions under the current rules (recomputed after a reload)."""
        grants = member.grants
        if grants.acl is not self.acl:
            member.grants = grants = self.acl.grants(member.identity)
        return grants

    def restore(self, member: Member, patterns: dict[str, str | None]) -> None:
        """Subscribe a recovered session again to what it held, without replies or
        retained messages (its client saw those already); a pattern the current rules
        no longer allow is dropped (logged). A presence member that was present
        before the move (its tag known from the bus) is taken over silently; others
        see it join."""
        for pattern, since in patterns.items():
            if not isinstance(pattern, str) or pattern in member.patterns:
                continue
            try:
                check_pattern(pattern, self.config.max_name_length)
            except InvalidChannel:
                continue
            if not self.grants(member).may_subscribe(pattern) or (
                len(member.patterns) >= self.config.max_subscriptions
            ):
                log.warning("recovered session %s: %s not restored", member.session.id[:8], pattern)
                continue
            member.patterns[pattern] = since if isinstance(since, str) else None
            self.subscriptions.add(pattern, member)
            self.stats.subscriptions += 1
            if not is_pattern(pattern) and self.info(pattern).presence:
                present = self.members.setdefault(pattern, {})
                remote = self.remote.get(pattern)
                if remote is not None and remote.pop(member.tag, 0) != 0:
                    if not remote:
                        del self.remote[pattern]
                    self.bus.presence(envelopes.JOIN, pattern, member.tag, member.identity)
                else:
                    self._announce(envelopes.JOIN, pattern, member, present)
                present[member] = None

    def leave(self, member: Member, moved: bool = False) -> None:
        """The session ended: drop its subscriptions; presence channels see it leave.
        One that *moved* to another process is no longer here but goes on there: its
        presence is kept (the new owner takes it over: :meth:`restore`)."""
        patterns = list(member.patterns)
        # session.data holds the original set (app.py), which a store may be saving
        # right now for the process the session moved to: it must stay whole.
        member.patterns = dict(member.patterns)
        for pattern in patterns:
            self._remove(member, pattern, announce=not moved)
        member.outbox.close()

    # ------------------------------------------------------------ requests

    def handle(self, member: Member, request: Request) -> None:
        """Act on one request; raises ChannelError (nothing changed) if refused."""
        if request.op == envelopes.PUB:
            self.publish(member, request)
        elif request.op == envelopes.SUB:
            self.subscribe(member, request)
        else:
            self.unsubscribe(member, request)

    def info(self, channel: str) -> ChannelInfo:
        """The features of a valid channel *name* (InvalidChannel if it is not one)."""
        info = self._info.get(channel)
        if info is None:
            check_name(channel, self.config.max_name_length)
            config = self.config
            info = ChannelInfo(
                any(matches(p, channel) for p in config.presence),
                any(matches(p, channel) for p in config.retained),
                any(matches(p, channel) for p in config.drop_oldest),
            )
            if len(self._info) >= _INFO_CACHE:
                self._info.clear()
            self._info[channel] = info
        return info

    def publish(self, member: Member, request: Request) -> None:
        channel = request.channel
        try:
            info = self.info(channel)
        except InvalidChannel as exc:
            raise _error(ErrorCode.INVALID_CHANNEL, str(exc), request) from None
        data = request.data
        if len(data) > self.config.max_message_size:
            raise _error(
                ErrorCode.TOO_LARGE,
                f"{len(data)} bytes > {self.config.max_message_size}",
                request,
            )
        if not self.grants(member).may_publish(channel):
            raise _error(ErrorCode.DENIED, f"may not publish to {channel}", request)
        retain = None
        if info.retained and data:
            retain = self._retain(member, channel, data, request)
        envelope = envelopes.message(channel, data, member.identity, member.tag)
        # An empty payload clears a retained message (protocol.md §15.5).
        done = None
        if request.id is not None:
            if self.bus.position is not None:  # a Redis bus: the ok waits for the append
                member.held += 1
                done = member.release
            member.outbox.put_control(envelopes.ok(request.id))
        self.bus.publish(channel, envelope, retain, info.retained and not data, done)

    def received(
        self,
        channel: str,
        envelope: bytes,
        retain: Retained | None,
        clear: bool,
        deliver: bool = True,
        mark: str | None = None,
    ) -> None:
        """The bus carried a publish of *channel* here (from this process or another;
        *mark*: its bus entry): keep *retain* as its retained message (or *clear* it),
        then queue *envelope* for every matching subscriber of this process."""
        if retain is not None or clear:
            old = self.retained.pop(channel, None)
            if old is not None:
                self.retained_size -= old.size
            if retain is not None:
                self.retained[channel] = retain
                self.retained_size += retain.size
        if not deliver:
            return
        drop = self.info(channel).drop_oldest
        subscribers = self.subscriptions.match(channel)
        self.stats.deliveries += len(subscribers)
        for subscriber in subscribers:
            subscriber.outbox.put(envelope, channel, drop, mark)

    def _retain(self, member: Member, channel: str, data: bytes, request: Request) -> Retained:
        """The retained message a publish of *data* makes, if the limits allow it (with
        a Redis bus, checked against what this process holds: processes publishing at
        once may together exceed them by what they published meanwhile)."""
        old = self.retained.get(channel)
        freed = old.size if old is not None else 0
        config = self.config
        if (old is None and len(self.retained) >= config.max_retained) or (
            self.retained_size - freed + len(data) > config.retained_bytes
        ):
            raise _error(ErrorCode.LIMIT_EXCEEDED, "retained messages are full", request)
        envelope = envelopes.message(channel, data, member.identity, member.tag, retained=True)
        return Retained(envelope, len(data))

    def subscribe(self, member: Member, request: Request) -> None:
        pattern = request.channel
        try:
            check_pattern(pattern, self.config.max_name_length)
        except InvalidChannel as exc:
            raise _error(ErrorCode.INVALID_CHANNEL, str(exc), request) from None
        levels = self.config.max_pattern_levels
        if is_pattern(pattern) and pattern.count(SEPARATOR) >= levels:
            raise _error(
                ErrorCode.LIMIT_EXCEEDED, f"a pattern may have at most {levels} levels", request
            )
        if not self.grants(member).may_subscribe(pattern):
            raise _error(ErrorCode.DENIED, f"may not subscribe to {pattern}", request)
        assert request.id is not None
        fresh = pattern not in member.patterns
        if fresh and len(member.patterns) >= self.config.max_subscriptions:
            raise _error(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"{len(member.patterns)} subscriptions held",
                request,
            )
        presence = not is_pattern(pattern) and self.info(pattern).presence
        if fresh:
            member.patterns[pattern] = self.bus.position
            self.subscriptions.add(pattern, member)
            self.stats.subscriptions += 1
        fields: dict[str, Any] = {}
        if presence:
            present = self.members.setdefault(pattern, {})
            if fresh:
                self._announce(envelopes.JOIN, pattern, member, present)
                present[member] = None
            fields = self._member_list(member, pattern, present)
        member.outbox.put_control(envelopes.ok(request.id, ch=pattern, **fields))
        if fresh:
            self._send_retained(member, pattern)

    def unsubscribe(self, member: Member, request: Request) -> None:
        pattern = request.channel
        if pattern not in member.patterns:
            raise _error(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {pattern!r}", request)
        assert request.id is not None
        self._remove(member, pattern)
        member.outbox.put_control(envelopes.ok(request.id, ch=pattern))

    # ------------------------------------------------------------- helpers

    def _remove(self, member: Member, pattern: str, announce: bool = True) -> None:
        if pattern in member.patterns:
            del member.patterns[pattern]
            self.stats.subscriptions -= 1
        self.subscriptions.remove(pattern, member)
        present = self.members.get(pattern)
        if present is not None and member in present:
            del present[member]
            if not present:
                del self.members[pattern]
            if announce:
                self._announce(envelopes.LEAVE, pattern, member, present)

    def _announce(self, op: str, channel: str, member: Member, present: dict[Member, None]) -> None:
        """Tell the other members of a presence channel that *member* joined or left
        (those of other processes through the bus)."""
        self.bus.presence(op, channel, member.tag, member.identity)
        self._tell(op, channel, member.identity, member.tag, present, member)

    def _tell(
        self,
        op: str,
        channel: str,
        identity: str | None,
        tag: str,
        present: dict[Member, None] | None,
        member: Member | None = None,
    ) -> None:
        if not present:
            return
        envelope = envelopes.presence(op, channel, identity, tag)
        drop = self.info(channel).drop_oldest
        for other in present:
            if other is not member:
                other.outbox.put(envelope, channel, drop)

    def remote_presence(
        self,
        op: str,
        channel: str,
        tag: str,
        identity: str | None,
        announce: bool = True,
        here: bool = False,
    ) -> None:
        """The bus says a member of another process joined, left or moved (a session
        that moved between processes: no event) on presence channel *channel*; *here*:
        it moved to this process, which holds it now."""
        remote = self.remote.setdefault(channel, {})
        if op == envelopes.LEAVE:
            if remote.pop(tag, 0) == 0:  # unknown, or already left: told once
                if not remote:
                    del self.remote[channel]
                return
        elif here:  # moved here: restore() took it over
            remote.pop(tag, None)
        elif tag not in remote:
            remote[tag] = identity
            if op != envelopes.JOIN:  # moved between other processes, or away from here
                return
        else:
            return
        if not remote:
            del self.remote[channel]
        if announce and not here:
            self._tell(op, channel, identity, tag, self.members.get(channel))

    def _member_list(
        self, member: Member, channel: str, present: dict[Member, None]
    ) -> dict[str, Any]:
        """``members`` (as many as fit in one message to *member*: those of this
        process first) and their ``count`` (on every process)."""
        listed = [envelopes.member_map(m.identity, m.tag) for m in present]
        remote = self.remote.get(channel)
        if remote:
            listed += [envelopes.member_map(identity, tag) for tag, identity in remote.items()]
        count = len(listed)
        limit = member.session.core.max_payload - 256  # room for the rest of the reply
        while listed and len(envelopes.ok(0, members=listed)) > limit:
            listed = listed[: len(listed) // 2]
        return {"members": listed, "count": count}

    def _send_retained(self, member: Member, pattern: str) -> None:
        if not self.retained:
            return
        if not is_pattern(pattern):
            found = self.retained.get(pattern)
            if found is not None:
                member.outbox.put_control(found.envelope, pattern)
            return
        channels: list[str] = []
        envelopes_found: list[bytes] = []
        for channel, retained in self.retained.items():
            if matches(pattern, channel):
                channels.append(channel)
                envelopes_found.append(retained.envelope)
        member.outbox.put_retained(channels, envelopes_found)


def _error(code: ErrorCode, reason: str, request: Request) -> ChannelError:
    return ChannelError(code, reason, request_id=request.id, channel=request.channel)
