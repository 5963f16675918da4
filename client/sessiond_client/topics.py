"""Channel names and subscription patterns of the channels profile (protocol.md §15.3).

A channel *name* is a sequence of non-empty *levels* separated by ``/``:
``devices/sensor-1/telemetry``. A *pattern* may also use two wildcards, each
standing for a whole level: ``+`` matches exactly one level
(``devices/+/telemetry``) and ``#``, allowed only as the last level, matches
any number of trailing levels, none included (``rooms/#`` matches ``rooms``
and ``rooms/lobby/chat``; ``#`` alone matches every name).

Pure functions, shared by the client helper and the daemon: :func:`check_name`,
:func:`check_pattern`, :func:`matches` (does a pattern match a name) and
:func:`covers` (does every name one pattern matches also match another; the
daemon's access control uses it for subscriptions).
"""

from __future__ import annotations

import re

SEPARATOR = "/"
ONE_LEVEL = "+"
ANY_LEVELS = "#"
RESERVED_PREFIX = "$"  # names starting with it are kept for the server's own use

_CONTROL = re.compile("[\x00-\x1f\x7f]")


class InvalidChannel(ValueError):
    """A channel name or pattern breaks the rules of protocol.md §15.3."""


def _check_common(text: object, max_length: int, what: str) -> list[str]:
    if not isinstance(text, str):
        raise InvalidChannel(f"a {what} must be a string")
    if not text:
        raise InvalidChannel(f"empty {what}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidChannel(f"{what} is not valid Unicode") from None
    if size > max_length:
        raise InvalidChannel(f"{what} of {size} bytes > {max_length}")
    if _CONTROL.search(text):
        raise InvalidChannel(f"{what} holds a control character")
    if text.startswith(RESERVED_PREFIX):
        raise InvalidChannel(f"{what} starting with {RESERVED_PREFIX!r} is reserved")
    levels = text.split(SEPARATOR)
    if "" in levels:
        raise InvalidChannel(f"{what} {text!r} has an empty level")
    return levels


def check_name(name: object, max_length: int) -> str:
    """Return *name* if it is a valid channel name (no wildcard); else raise InvalidChannel."""
    _check_common(name, max_length, "channel name")
    assert isinstance(name, str)
    if ONE_LEVEL in name or ANY_LEVELS in name:
        raise InvalidChannel(
            f"channel name {name!r} holds a wildcard ({ONE_LEVEL} or {ANY_LEVELS})"
        )
    return name


def check_pattern(pattern: object, max_length: int) -> str:
    """Return *pattern* if it is a valid name or wildcard pattern; else raise InvalidChannel."""
    levels = _check_common(pattern, max_length, "pattern")
    assert isinstance(pattern, str)
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if level in (ONE_LEVEL, ANY_LEVELS):
            if level == ANY_LEVELS and index != last:
                raise InvalidChannel(f"{ANY_LEVELS} must be the last level of {pattern!r}")
        elif ONE_LEVEL in level or ANY_LEVELS in level:
            raise InvalidChannel(f"a wildcard must be a whole level in {pattern!r}")
    return pattern


def is_pattern(text: str) -> bool:
    """True when *text* (a valid pattern) uses a wildcard, so it may match several names."""
    return ONE_LEVEL in text or ANY_LEVELS in text


def matches(pattern: str, name: str) -> bool:
    """True when the (valid) *pattern* matches the (valid) channel *name*."""
    if not is_pattern(pattern):
        return pattern == name
    wanted = pattern.split(SEPARATOR)
    levels = name.split(SEPARATOR)
    for index, level in enumerate(wanted):
        if level == ANY_LEVELS:
            return True  # zero or more trailing levels
        if index >= len(levels):
            return False
        if level != ONE_LEVEL and level != levels[index]:
            return False
    return len(wanted) == len(levels)


def covers(outer: str, inner: str) -> bool:
    """True when every name the pattern *inner* matches is also matched by *outer*.

    Compared level by level, so it is sound but not complete: a True is always
    right (access control relies on that), and the one corner where it says False
    wrongly is ``+/#`` against ``#`` (both match every name, since a name has a level).
    """
    outer_levels = outer.split(SEPARATOR)
    inner_levels = inner.split(SEPARATOR)
    for index, level in enumerate(outer_levels):
        if level == ANY_LEVELS:
            return True
        if index >= len(inner_levels):
            return False  # inner matches a shorter name that outer does not
        other = inner_levels[index]
        if other == ANY_LEVELS:
            return False  # inner matches any depth from here; outer does not
        if level == ONE_LEVEL:
            continue  # one level: a literal or another "+"
        if other != level:
            return False
    return len(outer_levels) == len(inner_levels)
