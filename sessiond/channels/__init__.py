"""Channels: the built-in publish/subscribe app (protocol.md §15).

``sessiond serve`` runs it by default (``--app channels``). Sessions subscribe
to channel names and wildcard patterns, publish, and see presence and retained
messages, each delivery riding the subscriber's session (exactly once, in order,
across reconnects). Modules:

* :mod:`.config`: ``[channels]`` settings (:class:`ChannelsConfig`);
* :mod:`.acl`: who may publish or subscribe where;
* :mod:`.subscriptions`: the index from channel names to subscribers;
* :mod:`.outbox`: each subscriber's bounded queue and slow-consumer policy;
* :mod:`.broker`: subscriptions, presence and retained messages of one app;
* :mod:`.app`: the handler (:class:`ChannelsApp`).

The envelope codec and the name rules are shared with the client:
:mod:`sessiond_client.envelopes`, :mod:`sessiond_client.topics`.
"""

from __future__ import annotations

from .app import ChannelsApp
from .config import ChannelsConfig

__all__ = ["ChannelsApp", "ChannelsConfig"]
