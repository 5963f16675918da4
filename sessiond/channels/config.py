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

from ..schema import check_fields, setting

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
        if IDENTITY_PLACEHOLDER in identity:
            # It would compare the session's identity with the text "{identity}": never.
            raise ValueError(
                f"acl rule {text!r}: {IDENTITY_PLACEHOLDER} in the identity position never "
                f"matches; write {ANYONE} there to apply the rule to every session"
            )
        try:
            check_pattern(pattern.replace(IDENTITY_PLACEHOLDER, "x"), RULE_PATTERN_LIMIT)
        except InvalidChannel as exc:
            raise ValueError(f"acl rule {text!r}: {exc}") from None
        return cls(identity, action, pattern)


def _check_pattern(pattern: str) -> None:
    try:
        check_pattern(pattern, RULE_PATTERN_LIMIT)
    except InvalidChannel as exc:
        raise ValueError(str(exc)) from None


def _check_rule(text: str) -> None:
    AclRule.parse(text)


_PATTERNS = "channel patterns (+ one level, # the rest)"


@dataclass(frozen=True, slots=True)
class ChannelsConfig:
    """Settings of the channels app; defaults are what ``sessiond serve`` runs with."""

    max_name_length: int = setting(
        256,
        doc="longest channel name or pattern",
        low=1,
        high=MAX_STR,
        unit="bytes",
        reload=True,
    )
    max_pattern_levels: int = setting(
        16,
        doc="levels of one wildcard pattern (each level of each pattern costs an index node)",
        low=1,
        high=4096,
        reload=True,
    )
    max_subscriptions: int = setting(
        256, doc="subscriptions one session may hold", low=1, high=1_000_000, reload=True
    )
    max_message_size: int = setting(
        65536, doc="largest published payload", low=1, high=1 << 30, unit="bytes", reload=True
    )
    queue_messages: int = setting(
        1024,
        doc="messages queued per subscriber beyond its session's window (then the "
        "channel's slow-subscriber policy); a reload applies to sessions started after it",
        low=1,
        high=1 << 24,
        reload=True,
    )
    queue_bytes: int = setting(
        1 << 20,
        doc="bytes queued per subscriber beyond its session's window; a reload applies to "
        "sessions started after it",
        low=1,
        high=1 << 32,
        unit="bytes",
        reload=True,
    )
    control_bytes: int = setting(
        1 << 20,
        doc="bytes of replies and retained messages queued for one session (beyond its "
        "window) above which its requests are no longer read until they drain; one "
        "subscribe's retained messages always fit; a reload applies to sessions started "
        "after it",
        low=1024,
        high=1 << 32,
        unit="bytes",
        reload=True,
    )
    presence: tuple[str, ...] = setting(
        (),
        doc=f"{_PATTERNS} with presence: member lists, join and leave events",
        reload=True,
        check=_check_pattern,
        check_doc="channel patterns",
    )
    retained: tuple[str, ...] = setting(
        (),
        doc=f"{_PATTERNS} that keep their last message for new subscribers",
        reload=True,
        check=_check_pattern,
        check_doc="channel patterns",
    )
    drop_oldest: tuple[str, ...] = setting(
        (),
        doc=f"{_PATTERNS} whose slow subscribers lose their oldest queued messages "
        "(with a gap notice) instead of their session",
        reload=True,
        check=_check_pattern,
        check_doc="channel patterns",
    )
    max_retained: int = setting(
        10_000, doc="retained messages held in all", low=0, high=1 << 32, reload=True
    )
    retained_bytes: int = setting(
        16 << 20,
        doc="payload bytes of retained messages held in all",
        low=0,
        high=1 << 40,
        unit="bytes",
        reload=True,
    )
    acl: tuple[str, ...] = setting(
        (),
        doc='access rules "IDENTITY publish|subscribe|all PATTERN" ({identity} allowed '
        "in PATTERN, * for anyone); none: everything allowed",
        reload=True,
        check=_check_rule,
        check_doc="rules",
    )

    def __post_init__(self) -> None:
        check_fields(self, "channels")

    def rules(self) -> list[AclRule]:
        """The access control rules, parsed (ValueError names a bad one)."""
        return [AclRule.parse(text) for text in self.acl]
