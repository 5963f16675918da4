"""The channels handler: one coroutine per session, as every sessiond app.

:class:`ChannelsApp` reads the session's requests in order and lets the
:class:`~.broker.Broker` act on them; a sender task per session moves the
session's outbox into the session. When the session ends (closed, expired,
revoked, or ended as a slow consumer) iteration stops, and the session's
subscriptions end with it: presence channels see it leave then, and only then.
A transport failure is invisible here, so it never looks like a leave.
"""

from __future__ import annotations

import asyncio
import logging

from sessiond_client import envelopes
from sessiond_client.envelopes import ChannelError
from sessiond_client.protocol import CloseCode, SessionLost

from ..session import Session
from .broker import Broker, Member
from .config import ChannelsConfig

log = logging.getLogger("sessiond.channels")

#: Requests handled in a row before the handler lets other sessions run (their
#: sender tasks drain their outboxes meanwhile, so a burst of publishes from one
#: session does not fill its subscribers' outboxes in a single loop tick).
YIELD_EVERY = 16
#: Payloads a sender hands to its session at once.
SEND_BATCH = 64


class ChannelsApp:
    """The built-in publish/subscribe app (protocol.md §15): ``sessiond serve --app channels``.

    Embedding: ``sessiond.serve(ChannelsApp(ChannelsConfig(...)), host, port)``.
    Each instance holds its own channels; every session it serves shares them.
    """

    def __init__(self, config: ChannelsConfig | None = None) -> None:
        self.config = config or ChannelsConfig()
        self.broker = Broker(self.config)

    async def __call__(self, session: Session) -> None:
        member = self.broker.join(session)
        sender = asyncio.get_running_loop().create_task(self._send(member))
        sender.add_done_callback(lambda task: _sender_done(task, session))
        handled = 0
        try:
            async for payload in session:
                self._handle(member, payload)
                handled += 1
                room = member.outbox.room_for_control()
                if room is not None:  # the client is not reading its replies: stop reading
                    await asyncio.wait([room, sender], return_when=asyncio.FIRST_COMPLETED)
                elif handled % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        finally:
            self.broker.leave(member)
            sender.cancel()
            await asyncio.wait([sender])

    def _handle(self, member: Member, payload: bytes) -> None:
        try:
            self.broker.handle(member, envelopes.parse_request(payload))
        except ChannelError as exc:
            member.outbox.put_control(envelopes.error(exc))

    @staticmethod
    async def _send(member: Member) -> None:
        """Move the outbox into the session, in order, a batch at a time; ends with the
        session. A batch taken is at most SEND_BATCH payloads beyond the outbox's limits."""
        outbox = member.outbox
        session = member.session
        batch: list[bytes] = []
        while True:
            limit = session.core.max_payload
            while len(batch) < SEND_BATCH and (taken := outbox.take()) is not None:
                payload, channel = taken
                if len(payload) > limit:
                    # Too large for this client's frames: a gap notice, not a silent hole.
                    # (Replies and gap notices are small; only deliveries can get here.)
                    if channel is not None:
                        outbox.note_undeliverable(channel)
                    continue
                batch.append(payload)
            if not batch:
                if outbox.closed:
                    return
                await outbox.wait()
                continue
            try:
                await session.send_many(batch)  # waits while the client's window is full
            except SessionLost:
                return
            batch = []


def _sender_done(task: asyncio.Task[None], session: Session) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.error("channels sender failed for session %s", session.id[:8], exc_info=task.exception())
    if not session.ended:
        session.close(CloseCode.SESSION_REVOKED, "channels sender failed")
