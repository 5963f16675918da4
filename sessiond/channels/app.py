"""The channels handler: one coroutine per session, as every sessiond app.

:class:`ChannelsApp` reads the session's requests in order and lets the
:class:`~.broker.Broker` act on them; a sender task, started only while the
session's outbox holds something (:class:`~.broker.Member`), moves it into the
session. When the session ends (closed, expired,
revoked, or ended as a slow consumer) iteration stops, and the session's
subscriptions end with it: presence channels see it leave then, and only then.
A transport failure is invisible here, so it never looks like a leave.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sessiond_client import envelopes
from sessiond_client.envelopes import ChannelError
from sessiond_client.topics import matches

from ..session import Session
from .broker import Broker, Member
from .bus import Bus
from .config import ChannelsConfig
from .rediskeys import id_tuple

log = logging.getLogger("sessiond.channels")

#: The key of session.data that holds a session's subscriptions.
SUBSCRIPTIONS = "channels.subscriptions"
#: The key of session.data that holds the member tag others know the session by.
TAG = "channels.tag"
#: Requests handled in a row before the handler lets other sessions run (their
#: sender tasks drain their outboxes meanwhile, so a burst of publishes from one
#: session does not fill its subscribers' outboxes in a single loop tick).
YIELD_EVERY = 16


class ChannelsApp:
    """The built-in publish/subscribe app (protocol.md §15): ``sessiond serve --app channels``.

    Embedding: ``sessiond.serve(ChannelsApp(ChannelsConfig(...)), host, port)``.
    Each instance holds its own channels; every session it serves shares them. With
    *bus* a started :class:`~.bus.RedisBus`, they are shared with every process on
    that Redis server instead (bus.py).
    """

    def __init__(self, config: ChannelsConfig | None = None, bus: Bus | None = None) -> None:
        self.config = config or ChannelsConfig()
        self.broker = Broker(self.config, bus)
        self._shared: Any = None  # the RedisBus share() started

    async def share(
        self, url: str, key_prefix: str, node: str | None = None, lease_ttl: float = 3.0
    ) -> None:
        """Make the channels one space with every process on the Redis server at *url*
        (the daemon calls this when its ``[store]`` is Redis): from now on publishes,
        retained messages and presence go through a :class:`~.redisbus.RedisBus`;
        *node* is the session store's node, whose lease says this process is alive."""
        from .redisbus import RedisBus  # noqa: PLC0415 - redis is an optional dependency

        bus = RedisBus(url, key_prefix, node=node, lease_ttl=lease_ttl)
        self.broker.bus = bus
        bus.attach(self.broker)
        await bus.start()
        self._shared = bus

    async def close(self) -> None:
        """Stop sharing (send what is queued to Redis, disconnect)."""
        if self._shared is not None:
            await self._shared.close()
            self._shared = None

    def reconfigure(self, config: ChannelsConfig) -> None:
        """New settings (SIGHUP): see :meth:`Broker.reconfigure` for what applies when."""
        self.config = config
        self.broker.reconfigure(config)

    async def __call__(self, session: Session) -> None:
        # A session recovered from a shared store (it moved from another process, or
        # this one restarted) keeps the subscriptions its data carried there.
        recovered = session.recovered
        held = session.data.get(SUBSCRIPTIONS) if recovered else None
        tag = session.data.get(TAG) if recovered else None
        member = self.broker.join(session, tag if isinstance(tag, str) else None)
        # The member's ordered set of patterns is itself in session.data, so the store
        # saves it with the session (when the session is created, resumed, detached
        # or released, and after every change of it: sessiond/durable.py); msgpack
        # keeps it as a map to nil.
        session.data[SUBSCRIPTIONS] = member.patterns
        session.data[TAG] = member.tag
        if self.broker.bus.position is not None:  # a Redis bus: the store keeps the mark
            session.marker = member.position
        handled = 0
        try:
            if isinstance(held, dict) and held:
                await self._restore(member, held)
            async for payload in session:
                if self._handle(member, payload):
                    # Used, so stored with the session's next append, at the latest
                    # with the reply's: a subscription the client was told of survives
                    # a kill -9 (sessiond/durable.py).
                    session.data[SUBSCRIPTIONS] = member.patterns
                handled += 1
                room = member.outbox.room_for_control()
                if room is not None:  # the client is not reading its replies: stop reading
                    # (entries are queued, so a sender runs; it closes the outbox if it ends
                    # with the session, which completes *room*)
                    await room
                elif handled % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        finally:
            if session.moved and member.outbox.count:
                # Queued here, not yet in the session: the process it moved to sends
                # them again from the bus (_restore), after the session's stored mark.
                self.broker.stats.moved_queued += member.outbox.count
            self.broker.leave(member, moved=session.moved)
            sender = member.sender
            if sender is not None:
                sender.cancel()
                await asyncio.wait([sender])

    def _handle(self, member: Member, payload: bytes) -> bool:
        """Act on one request; True if it changed the member's subscriptions."""
        try:
            request = envelopes.parse_request(payload)
            count = len(member.patterns)
            self.broker.handle(member, request)
        except ChannelError as exc:
            member.outbox.put_control(envelopes.error(exc))
            return False
        return request.op != envelopes.PUB and len(member.patterns) != count

    async def _restore(self, member: Member, held: dict[str, str | None]) -> None:
        """A session that moved here: subscribe it again, then queue, ahead of what this
        process delivers from then on, what the bus carried after the last delivery
        the session's stored stream holds (``recovered_mark``): so a move loses and
        repeats nothing (README, "Channels across processes"). If the bus cannot say
        (trimmed that far, or Redis unreachable), the session gets a ``gap`` notice
        (``dropped`` 0: unknown) per subscription instead."""
        broker = self.broker
        bus = broker.bus
        after = member.session.recovered_mark
        if bus.position is None:  # one process: nothing was delivered elsewhere
            broker.restore(member, held)
            return
        if after is not None:  # what came before its oldest subscription does not matter
            starts = (start if isinstance(start, str) else "0-0" for start in held.values())
            after = max(after, min(starts, key=id_tuple), key=id_tuple)
            member.mark = after  # stored with the session until more is delivered
        known = after is not None and await bus.reach(after)
        upto = bus.position
        broker.restore(member, held)  # from here on, deliveries after *upto* are queued
        outbox = member.outbox
        found = None
        if known and after is not None:
            if after == upto:
                return
            member.paused = True  # what the bus delivers meanwhile waits behind the replay
            try:
                found = await bus.replay(after, upto)
            finally:
                member.paused = False
        if found is None:
            log.warning(
                "session %s moved: what followed %s is unknown", member.session.id[:8], after
            )
            for pattern in member.patterns:
                outbox.gaps.setdefault(pattern, 0)  # sent first, as gaps are
        else:
            missed = []
            since = {
                pattern: id_tuple(start or "0-0") for pattern, start in member.patterns.items()
            }
            for mark, channel, envelope in found:
                entry = id_tuple(mark)
                if any(entry > start and matches(p, channel) for p, start in since.items()):
                    missed.append((envelope, channel, broker.info(channel).drop_oldest, mark))
            broker.stats.caught_up += len(missed)
            outbox.put_first(missed)
        if outbox.gaps or len(outbox):
            member.ready()
