"""Channel names and patterns (protocol.md §15.3), the subscription index, access control
and the subscriber outbox's policies, without sockets."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sessiond_client import envelopes
from sessiond_client.topics import InvalidChannel, check_name, check_pattern, covers, matches

from sessiond.channels.acl import Acl
from sessiond.channels.config import AclRule, ChannelsConfig
from sessiond.channels.outbox import CONTROL_LIMIT, Outbox
from sessiond.channels.subscriptions import Subscriptions

LIMIT = 256


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("devices/+/telemetry", "devices/s1/telemetry", True),
        ("devices/+/telemetry", "devices/telemetry", False),
        ("devices/+/telemetry", "devices/s1/x/telemetry", False),
        ("devices/+/telemetry", "devices/s1/telemetry/x", False),
        ("rooms/#", "rooms", True),  # "#" matches zero levels too
        ("rooms/#", "rooms/lobby", True),
        ("rooms/#", "rooms/lobby/chat", True),
        ("rooms/#", "roomsx", False),
        ("rooms/#", "other/rooms", False),
        ("#", "anything/at/all", True),
        ("+", "one", True),
        ("+", "one/two", False),
        ("+/+", "one/two", True),
        ("+/#", "one", True),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/+/c/#", "a/x/c", True),
        ("a/+/c/#", "a/x/d/e", False),
    ],
)
def test_wildcard_matching(pattern: str, name: str, expected: bool) -> None:
    assert matches(check_pattern(pattern, LIMIT), check_name(name, LIMIT)) is expected


@pytest.mark.parametrize(
    "bad",
    ["", "a//b", "/a", "a/", "$sys/x", "a\x00b", "a\nb", "a+", "a/b#", "x" * (LIMIT + 1)],
)
def test_invalid_names(bad: str) -> None:
    with pytest.raises(InvalidChannel):
        check_name(bad, LIMIT)


@pytest.mark.parametrize("bad", ["a/#/b", "a/b#", "+a", "a/+b", "#/a", "", "a//+", "$x/#"])
def test_invalid_patterns(bad: str) -> None:
    with pytest.raises(InvalidChannel):
        check_pattern(bad, LIMIT)


def test_wildcards_are_not_names_and_length_counts_utf8_bytes() -> None:
    for wildcard in ("a/+", "a/#", "#"):
        check_pattern(wildcard, LIMIT)
        with pytest.raises(InvalidChannel):
            check_name(wildcard, LIMIT)
    check_name("é" * 128, LIMIT)  # 256 bytes: at the limit
    with pytest.raises(InvalidChannel):
        check_name("é" * 129, LIMIT)
    with pytest.raises(InvalidChannel):
        check_name(b"bytes", LIMIT)


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("rooms/#", "rooms/+/chat", True),
        ("rooms/#", "rooms/#", True),
        ("rooms/#", "rooms", True),
        ("rooms/+", "rooms/#", False),  # rooms/# also matches rooms and rooms/a/b
        ("rooms/+", "rooms/a", True),
        ("rooms/+", "rooms/+", True),
        ("rooms/a", "rooms/+", False),
        ("+/#", "#", False),  # the documented conservative corner (both match every name)
        ("#", "#", True),
        ("a/+/#", "a/#", False),  # a/# matches "a", a/+/# does not
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
    ],
)
def test_covers(outer: str, inner: str, expected: bool) -> None:
    assert covers(outer, inner) is expected


LEVELS = st.sampled_from(["a", "b", "c"])
NAMES = st.lists(LEVELS, min_size=1, max_size=4).map("/".join)
PATTERN_LEVELS = st.sampled_from(["a", "b", "c", "+"])
PATTERNS = st.builds(
    lambda levels, tail: "/".join([*levels, "#"] if tail else levels) or "#",
    st.lists(PATTERN_LEVELS, min_size=0, max_size=4),
    st.booleans(),
)


@given(st.lists(PATTERNS, max_size=12), st.lists(NAMES, min_size=1, max_size=8))
def test_index_matches_like_the_pattern_rules(patterns: list[str], names: list[str]) -> None:
    """The subscription tree agrees with matches() for every name, also after removals."""
    index: Subscriptions[int] = Subscriptions()
    for number, pattern in enumerate(patterns):
        index.add(pattern, number)
    for name in names:
        assert index.match(name) == {n for n, p in enumerate(patterns) if matches(p, name)}
    for number, pattern in list(enumerate(patterns))[::2]:
        index.remove(pattern, number)
    for name in names:
        expected = {n for n, p in enumerate(patterns) if n % 2 and matches(p, name)}
        assert index.match(name) == expected
    for number, pattern in list(enumerate(patterns))[1::2]:
        index.remove(pattern, number)
    assert len(index) == 0 and not index.match(names[0])


@given(PATTERNS, PATTERNS, st.lists(NAMES, min_size=1, max_size=20))
def test_covers_never_lets_a_subscription_reach_an_uncovered_name(
    outer: str, inner: str, names: list[str]
) -> None:
    if covers(outer, inner):
        for name in names:
            assert not matches(inner, name) or matches(outer, name), (outer, inner, name)


def test_acl_rules_per_identity_and_placeholder() -> None:
    rules = [
        AclRule.parse("sensor-1 publish devices/sensor-1/#"),
        AclRule.parse("* publish devices/{identity}/telemetry"),
        AclRule.parse("* subscribe devices/+/telemetry"),
        AclRule.parse("John Smith all rooms/#"),  # identities may hold spaces
    ]
    acl = Acl(rules)
    sensor = acl.grants("sensor-1")
    assert sensor.may_publish("devices/sensor-1/state")
    assert sensor.may_publish("devices/sensor-1/telemetry")
    assert not sensor.may_publish("devices/sensor-2/telemetry")
    assert sensor.may_subscribe("devices/+/telemetry")
    assert sensor.may_subscribe("devices/s9/telemetry")
    assert not sensor.may_subscribe("devices/#")
    other = acl.grants("sensor-2")
    assert other.may_publish("devices/sensor-2/telemetry")  # through {identity}
    assert not other.may_publish("devices/sensor-2/state")
    anonymous = acl.grants(None)  # no identity: only "*" rules without {identity}
    assert not anonymous.may_publish("devices/None/telemetry")
    assert anonymous.may_subscribe("devices/x/telemetry")
    tricky = acl.grants("a/#")  # cannot stand for one level: the {identity} rule is skipped
    assert not tricky.may_publish("devices/a/#/telemetry")
    john = acl.grants("John Smith")
    assert john.may_publish("rooms/lobby") and john.may_subscribe("rooms/#")
    everyone = Acl([]).grants(None)
    assert everyone.may_publish("x") and everyone.may_subscribe("#")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"acl": ("alice pub a/#",)}, "acl rule"),
        ({"acl": ("alice publish",)}, "acl rule"),
        ({"acl": ("alice publish a/#/b",)}, "acl rule"),
        ({"presence": ("rooms/#/x",)}, "channels.presence"),
        ({"queue_messages": 0}, "queue_messages"),
        ({"max_retained": -1}, "max_retained"),
    ],
)
def test_bad_channels_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChannelsConfig(**settings)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- outbox


def drain(outbox: Outbox) -> list[envelopes.Event | envelopes.Reply | None]:
    """Everything the sender would send, decoded."""
    taken = []
    while (item := outbox.take()) is not None:
        taken.append(envelopes.parse_server(item[0]))
    return taken


def delivered(taken: list[envelopes.Event | envelopes.Reply | None]) -> list[tuple[str, bytes]]:
    found = []
    for item in taken:
        assert isinstance(item, envelopes.Message), item
        found.append((item.channel, item.payload))
    return found


def msg(n: int, channel: str = "c") -> bytes:
    return envelopes.message(channel, b"%d" % n, None, "m")


async def test_outbox_disconnect_policy_overflows_once_and_frees_everything() -> None:
    reasons: list[str] = []
    outbox = Outbox(asyncio.get_running_loop(), 4, 1 << 20, reasons.append)
    outbox.put_control(envelopes.ok(1))
    for n in range(4):
        outbox.put(msg(n), "c", droppable=False)
    assert not reasons and outbox.count == 4 and outbox.control == 1
    outbox.put(msg(4), "c", droppable=False)
    assert len(reasons) == 1 and outbox.closed
    assert len(outbox) == 0 and outbox.count == outbox.size == outbox.control == 0
    outbox.put(msg(5), "c", droppable=False)  # closed: ignored, no second overflow
    assert len(reasons) == 1


async def test_outbox_drop_oldest_counts_gaps_per_channel_before_the_next_entry() -> None:
    outbox = Outbox(asyncio.get_running_loop(), 3, 1 << 20, lambda why: None)
    for n in range(3):
        outbox.put(msg(n, "a"), "a", droppable=True)
    outbox.put(msg(3, "b"), "b", droppable=True)  # drops a:0
    outbox.put(msg(4, "b"), "b", droppable=True)  # drops a:1
    assert outbox.gaps == {"a": 2}
    taken = drain(outbox)
    assert taken[0] == envelopes.Gap("a", 2)
    assert delivered(taken[1:]) == [
        ("a", b"2"),
        ("b", b"3"),
        ("b", b"4"),
    ]


async def test_outbox_drop_oldest_never_drops_control_or_disconnect_entries() -> None:
    reasons: list[str] = []
    outbox = Outbox(asyncio.get_running_loop(), 2, 1 << 20, reasons.append)
    outbox.put_control(envelopes.ok(1))
    outbox.put(msg(0, "strict"), "strict", droppable=False)
    outbox.put(msg(1, "strict"), "strict", droppable=False)
    outbox.put(msg(2, "loose"), "loose", droppable=True)  # nothing droppable queued: this one
    assert outbox.gaps == {"loose": 1} and not reasons
    taken = drain(outbox)
    assert taken[0] == envelopes.Gap("loose", 1)
    assert isinstance(taken[1], envelopes.Reply)
    assert delivered(taken[2:]) == [("strict", b"0"), ("strict", b"1")]


async def test_outbox_byte_limit_and_control_room() -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox(loop, 100, 100, lambda why: None)
    big = envelopes.message("c", bytes(60), None, "m")
    outbox.put(big, "c", droppable=True)
    outbox.put(big, "c", droppable=True)  # 2 x ~90 bytes > 100: the first goes
    assert outbox.count == 1 and outbox.gaps == {"c": 1}
    assert outbox.room_for_control() is None
    for n in range(CONTROL_LIMIT):
        outbox.put_control(envelopes.ok(n))
    room = outbox.room_for_control()
    assert room is not None and not room.done()
    outbox.take()  # the gap notice
    outbox.take()  # the message
    outbox.take()  # one reply: below the limit again
    assert room.done()
