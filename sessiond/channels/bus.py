"""Where a publish goes before it reaches subscribers: the channels bus (issue 17).

The :class:`~.broker.Broker` checks a ``pub`` (name, size, access, retained
limits), encodes its ``msg`` envelope once and hands it to its bus; the bus
hands it back to the broker of every process, in one order, as
:meth:`Broker.received <.broker.Broker.received>`, which updates the retained
message and fills the matching subscribers' outboxes.

* :class:`LocalBus` (the memory store): one process; ``received`` is called
  synchronously inside ``publish``, exactly as the single-process broker always
  behaved.
* :class:`~.redisbus.RedisBus` (a Redis store): one Redis stream,
  ``P{channels}:bus``, for the whole channels space. Every process appends each
  of its publishes there (one ``XADD`` per publish, all of one loop iteration in one pipelined round
  trip) and reads every entry once, on one connection (``XREAD BLOCK``): one
  Redis message per publish per process, never per subscriber, and every
  subscriber of every process sees the publishes in the stream's order (so in
  order per publisher and channel). Retained messages are kept beside it in a
  hash, written in the same ``MULTI`` as their entry, so a process that starts
  loads the hash and reads the stream from the entry the hash reflects.
  Chosen by measurement over pub/sub: ``python -m bench.channelbus``.

  Presence rides the same stream: a member's join, leave or move (a session that
  moved between processes, seen by nobody) is one entry, and the members are kept
  in a hash, so a process that starts knows the room; a process whose session
  store lease is gone has its members left by the others (rediskeys.py).
  Every delivery carries its entry: a session that moves to another process is
  sent again what followed the last delivery its stored stream holds
  (``Session.marker``; app.py ``_restore``).

A publish the bus could not append (Redis unreachable or refusing) is counted
in ``ChannelStats.bus_lost`` (``sessiond_channels_bus_lost``) and logged. A
reader that loses its connection reads on from its last entry once Redis is
back (nothing lost while the stream still holds it: :data:`~.redisbus.STREAM_LENGTH`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .retained import Retained

if TYPE_CHECKING:
    from .broker import Broker


class Bus(Protocol):
    """What the broker needs from a bus."""

    @property
    def position(self) -> str | None:
        """The entry of the last publish received (a Redis bus), so that a session that
        moves can catch up from it; None for a bus without entries."""

    def attach(self, broker: Broker) -> None:
        """Deliver every publish to *broker* from now on."""

    def publish(
        self,
        channel: str,
        envelope: bytes,
        retain: Retained | None,
        clear: bool,
        done: Callable[[], None] | None = None,
    ) -> None:
        """Carry *envelope* (a ``msg`` of *channel*) to every process, in order.

        With *retain* it becomes the channel's retained message; with *clear* the
        retained message is removed (an empty ``pub`` on a retained channel). *done* is
        called once it is appended (or could not be: counted as lost)."""

    async def reach(self, entry: str) -> bool:
        """Wait until this process has received the bus up to *entry* (bounded); False
        if it did not in time."""

    async def replay(self, after: str, upto: str) -> list[tuple[str, str, bytes]] | None:
        """The publishes after entry *after* up to entry *upto* (entry, channel,
        envelope); None if the bus no longer holds them all."""

    def presence(self, op: str, channel: str, tag: str, identity: str | None) -> None:
        """A member of this process joined (or, restored after a move, took over) or
        left presence channel *channel*: tell the other processes
        (:meth:`Broker.remote_presence <.broker.Broker.remote_presence>`)."""


class LocalBus:
    """One process: a publish is received at once (today's behaviour)."""

    def __init__(self) -> None:
        self.broker: Broker | None = None
        self.position: str | None = None

    def attach(self, broker: Broker) -> None:
        self.broker = broker

    def publish(
        self,
        channel: str,
        envelope: bytes,
        retain: Retained | None,
        clear: bool,
        done: Callable[[], None] | None = None,
    ) -> None:
        assert self.broker is not None
        self.broker.received(channel, envelope, retain, clear)
        if done is not None:
            done()

    def presence(self, op: str, channel: str, tag: str, identity: str | None) -> None:
        """No other process to tell."""

    async def reach(self, entry: str) -> bool:
        return True

    async def replay(self, after: str, upto: str) -> list[tuple[str, str, bytes]] | None:
        return None
