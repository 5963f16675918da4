"""``[channels]``: limits, per-channel features and access control of the channels app.

Every key has one name, ``channels.KEY``, in the config file, the environment
(``SESSIOND_CHANNELS_KEY``, lists comma-separated) and :class:`ChannelsConfig`
for embedding. Per-channel features are lists of patterns (protocol.md §15.3):
a channel has the feature when any pattern matches its name.

Access control rules are strings ``"IDENTITY ACTION PATTERN"``: ``IDENTITY`` is
an identity from the authenticator (token file or client certificate) or ``*``
for every session, anonymous ones included; ``ACTION`` is ``publish``,
``subscribe`` or ``all``; ``PATTERN`` may hold ``{identity}``, replaced by the
session's identity (a rule whose identity cannot be one level of a name does not
apply). With no rule at all every operation is allowed; with any rule, only
what some rule allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sessiond_client.envelopes import MAX_STR
from sessiond_client.topics import InvalidChannel, check_pattern

ACTIONS = ("publish", "subscribe", "all")
IDENTITY_PLACEHOLDER = "{identity}"
ANYONE = "*"
RULE_PATTERN_LIMIT = 4096  # rules are checked with their own generous limit


@dataclass(frozen=True, slots=True)
class AclRule:
    """One parsed access control rule."""

    identity: str  # or ANYONE
    action: str  # publish, subscribe or all
    pattern: str  # may hold IDENTITY_PLACEHOLDER

    @classmethod
    def parse(cls, text: str) -> AclRule:
        parts = text.rsplit(None, 2)
        if len(parts) != 3 or parts[1] not in ACTIONS:
            raise ValueError(f"acl rule {text!r}: expected IDENTITY publish|subscribe|all PATTERN")
        identity, action, pattern = parts
        try:
            check_pattern(pattern.replace(IDENTITY_PLACEHOLDER, "x"), RULE_PATTERN_LIMIT)
        except InvalidChannel as exc:
            raise ValueError(f"acl rule {text!r}: {exc}") from None
        return cls(identity, action, pattern)


@dataclass(frozen=True, slots=True)
class ChannelsConfig:
    """Settings of the channels app; defaults are what ``sessiond serve`` runs with."""

    max_name_length: int = 256  # bytes of UTF-8, names and patterns alike (at most 4096)
    max_subscriptions: int = 256  # per session
    max_message_size: int = 65536  # bytes of one published payload
    queue_messages: int = 1024  # per subscriber, beyond its session's window
    queue_bytes: int = 1 << 20  # per subscriber, beyond its session's window
    presence: tuple[str, ...] = ()  # patterns of channels with presence (join/leave)
    retained: tuple[str, ...] = ()  # patterns of channels that keep their last message
    drop_oldest: tuple[str, ...] = ()  # patterns of channels whose slow subscribers lose
    # their oldest queued messages (with a gap notice) instead of their session
    max_retained: int = 10_000  # retained messages held in all
    retained_bytes: int = 16 << 20  # payload bytes of retained messages held in all
    acl: tuple[str, ...] = ()  # "IDENTITY publish|subscribe|all PATTERN"; none: all allowed

    def __post_init__(self) -> None:
        positive = {
            "max_name_length": self.max_name_length,
            "max_subscriptions": self.max_subscriptions,
            "max_message_size": self.max_message_size,
            "queue_messages": self.queue_messages,
            "queue_bytes": self.queue_bytes,
        }
        bad = [name for name, value in positive.items() if value < 1]
        if self.max_name_length > MAX_STR:  # a longer str is not a valid envelope field
            bad.append("max_name_length")
        bad += [
            name
            for name, value in (
                ("max_retained", self.max_retained),
                ("retained_bytes", self.retained_bytes),
            )
            if value < 0
        ]
        if bad:
            raise ValueError(f"invalid channels setting(s): {', '.join(bad)}")
        for key in ("presence", "retained", "drop_oldest"):
            for pattern in getattr(self, key):
                try:
                    check_pattern(pattern, RULE_PATTERN_LIMIT)
                except InvalidChannel as exc:
                    raise ValueError(f"channels.{key}: {exc}") from None
        self.rules()

    def rules(self) -> list[AclRule]:
        """The access control rules, parsed (ValueError names a bad one)."""
        return [AclRule.parse(text) for text in self.acl]
