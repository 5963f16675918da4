"""Access control: which channels a session may publish to or subscribe to.

:class:`Acl` turns the ``channels.acl`` rules into one :class:`Grants` per
identity (computed when a session starts; its identity never changes, even
across resumes). Publishing to a name needs a publish pattern that
:func:`~sessiond_client.topics.matches` it; subscribing to a pattern needs a
subscribe pattern that :func:`~sessiond_client.topics.covers` it, so a
wildcard subscription never reaches a channel the session could not
subscribe to by name.
"""

from __future__ import annotations

from collections.abc import Iterable

from sessiond_client.topics import (
    ANY_LEVELS,
    ONE_LEVEL,
    SEPARATOR,
    InvalidChannel,
    check_name,
    covers,
    matches,
)

from .config import ANYONE, IDENTITY_PLACEHOLDER, AclRule

_CACHE_LIMIT = 256  # publish decisions remembered per session


class Grants:
    """What one identity may do; ``None`` patterns mean everything (no rules configured)."""

    __slots__ = ("_published", "acl", "publish", "subscribe")

    def __init__(
        self,
        publish: tuple[str, ...] | None,
        subscribe: tuple[str, ...] | None,
        acl: Acl | None = None,
    ) -> None:
        self.acl = acl  # the rules these came from (a reload makes new ones)
        self.publish = publish
        self.subscribe = subscribe
        self._published: dict[str, bool] = {}

    def may_publish(self, channel: str) -> bool:
        if self.publish is None:
            return True
        cached = self._published.get(channel)
        if cached is None:
            cached = any(matches(pattern, channel) for pattern in self.publish)
            if len(self._published) >= _CACHE_LIMIT:
                self._published.clear()
            self._published[channel] = cached
        return cached

    def may_subscribe(self, pattern: str) -> bool:
        if self.subscribe is None:
            return True
        return any(covers(allowed, pattern) for allowed in self.subscribe)


class Acl:
    """The configured rules; :meth:`grants` gives one identity's permissions."""

    def __init__(self, rules: Iterable[AclRule]) -> None:
        self.rules = list(rules)

    def grants(self, identity: str | None) -> Grants:
        if not self.rules:
            return Grants(None, None, self)
        publish: list[str] = []
        subscribe: list[str] = []
        for rule in self.rules:
            if rule.identity not in (ANYONE, identity):
                continue
            pattern = rule.pattern
            if IDENTITY_PLACEHOLDER in pattern:
                if not _usable_as_level(identity):
                    continue
                assert identity is not None
                pattern = pattern.replace(IDENTITY_PLACEHOLDER, identity)
            if rule.action in ("publish", "all"):
                publish.append(pattern)
            if rule.action in ("subscribe", "all"):
                subscribe.append(pattern)
        return Grants(tuple(publish), tuple(subscribe), self)


def _usable_as_level(identity: str | None) -> bool:
    """An identity replaces ``{identity}`` only if it is one plain level of a name."""
    if not identity or SEPARATOR in identity or ONE_LEVEL in identity or ANY_LEVELS in identity:
        return False
    try:
        check_name(identity, 1 << 16)
    except InvalidChannel:
        return False
    return True
