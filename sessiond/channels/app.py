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

from ..session import Session
from .broker import Broker, Member
from .bus import Bus
from .config import ChannelsConfig

log = logging.getLogger("sessiond.channels")

#: The key of session.data that holds a session's subscriptions.
SUBSCRIPTIONS = "channels.subscriptions"
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

    async def share(self, url: str, key_prefix: str) -> None:
        """Make the channels one space with every process on the Redis server at *url*
        (the daemon calls this when its ``[store]`` is Redis): from now on publishes and
        retained messages go through a :class:`~.redisbus.RedisBus`."""
        from .redisbus import RedisBus  # noqa: PLC0415 - redis is an optional dependency

        bus = RedisBus(url, key_prefix)
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
        held = session.data.get(SUBSCRIPTIONS) if session.recovered else None
        member = self.broker.join(session)
        # The member's ordered set of patterns is itself in session.data, so the store
        # saves it with the session (when the session is created, resumed, detached
        # or released: sessiond/durable.py); msgpack keeps it as a map to nil.
        session.data[SUBSCRIPTIONS] = member.patterns
        if held:
            self.broker.restore(member, list(held))
        handled = 0
        try:
            async for payload in session:
                self._handle(member, payload)
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
                # Queued here, not yet in the session: the process it moved to cannot
                # have them (the guarantee across a move, README "Channels across
                # processes"): never silently.
                self.broker.stats.moved_lost += member.outbox.count
                log.warning(
                    "session %s moved with %d channel messages not yet in it",
                    session.id[:8],
                    member.outbox.count,
                )
            self.broker.leave(member)
            sender = member.sender
            if sender is not None:
                sender.cancel()
                await asyncio.wait([sender])

    def _handle(self, member: Member, payload: bytes) -> None:
        try:
            self.broker.handle(member, envelopes.parse_request(payload))
        except ChannelError as exc:
            member.outbox.put_control(envelopes.error(exc))
