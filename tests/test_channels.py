"""The channels app (protocol.md §15) over real sockets: fan-out through transport cuts,
presence, retained messages, wildcards, access control, both slow-consumer policies,
limits, malformed envelopes, and the blocking helper.

Every wait is bounded; nothing asserts a timing. Where a test must show that something
did *not* happen, it uses a barrier instead of a sleep: a later message that, by the
ordering rules of §15.2.2, can only arrive after anything that was queued before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import sessiond_client
from sessiond_client import CloseCode, ReconnectPolicy, SessionLost, SessionLostEvent, State
from sessiond_client.channels import (
    ChannelError,
    Channels,
    ErrorCode,
    Event,
    Gap,
    Joined,
    Left,
    Message,
    Refused,
    SyncChannels,
)
from sessiond_client.protocol import Params

import sessiond
from sessiond import config
from sessiond.apps import load_app
from sessiond.auth import Authenticator, TokenFileAuthenticator
from sessiond.channels import ChannelsApp, ChannelsConfig
from sessiond.server import Server, ServerConfig
from tests.faultproxy import FaultProxy
from tests.threaded import daemon_thread

E = TypeVar("E")

SERVER_PARAMS = Params(
    heartbeat_interval=1.0, heartbeat_min=0.05, detached_lifetime=10.0, handshake_timeout=5.0
)
CLIENT_PARAMS = Params(heartbeat_interval=1.0, heartbeat_min=0.05, handshake_timeout=5.0)
FAST = ReconnectPolicy(base=0.01, cap=0.1)
WAIT = 20.0  # the bound on any single wait: generous for a loaded machine


@contextlib.asynccontextmanager
async def channels_daemon(
    channels: ChannelsConfig | None = None, authenticator: Authenticator | None = None
) -> AsyncIterator[tuple[Server, ChannelsApp]]:
    app = ChannelsApp(channels)
    server_config = ServerConfig(params=SERVER_PARAMS)
    if authenticator is not None:
        server_config = dataclasses.replace(server_config, authenticator=authenticator)
    async with sessiond.serve(app, "127.0.0.1", 0, config=server_config) as server:
        yield server, app


def url_of(address: tuple[str, int]) -> str:
    return f"tcp://{address[0]}:{address[1]}"


async def open_channels(url: str, max_events: int = 1024, **options: Any) -> Channels:
    options.setdefault("params", CLIENT_PARAMS)
    session = await sessiond_client.connect(url, policy=FAST, **options)
    return Channels(session, max_events=max_events, timeout=WAIT)


async def shut(*helpers: Channels) -> None:
    for helper in helpers:
        await helper.close()
        if helper.session.state is State.CLOSED:  # lost: close() says again what it left
            with contextlib.suppress(SessionLost):
                await helper.session.close(timeout=1.0)
        else:
            await helper.session.close(timeout=1.0)


async def next_event(helper: Channels, kind: type[E], timeout: float = WAIT) -> E:
    async with asyncio.timeout(timeout):
        event = await helper.recv()
    assert isinstance(event, kind), event
    return event


async def messages(helper: Channels, count: int, timeout: float = WAIT) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await next_event(helper, Message))
    return got


async def refused(request: Any) -> ErrorCode | int:
    with pytest.raises(ChannelError) as error:
        await request
    return error.value.code


# ------------------------------------------------------------------------ fan-out


async def test_hundred_subscribers_get_every_publish_once_in_order_through_cuts() -> None:
    """100 subscribers behind the fault proxy, their transports cut five times while a
    publisher (connected directly) publishes: each subscriber receives all 300 messages
    exactly once and in order, on the session it started with."""
    count, subscribers = 300, 100
    async with (
        channels_daemon() as (server, app),
        FaultProxy(*server.addresses[0]) as proxy,
    ):
        subs = list(
            await asyncio.gather(
                *(open_channels(url_of(proxy.address)) for _ in range(subscribers))
            )
        )
        await asyncio.gather(*(sub.subscribe("fleet/commands") for sub in subs))
        ids = [sub.session.id for sub in subs]
        publisher = await open_channels(url_of(server.addresses[0]))
        received: list[list[bytes]] = [[] for _ in subs]

        async def collect(index: int) -> None:
            while len(received[index]) < count:
                received[index].append((await next_event(subs[index], Message)).payload)

        collectors = [asyncio.create_task(collect(i)) for i in range(subscribers)]
        for n in range(count):
            await publisher.publish("fleet/commands", b"%d" % n)
            if n % 60 == 30:
                proxy.cut()  # every subscriber transport, deliveries in flight
        await asyncio.wait_for(asyncio.gather(*collectors), 60)
        expected = [b"%d" % n for n in range(count)]
        assert all(got == expected for got in received)
        assert [sub.session.id for sub in subs] == ids  # resumed every time, never replaced
        assert len(proxy.connections) >= 6 * subscribers  # five cuts, five reconnects each
        assert len(app.broker.subscriptions.exact("fleet/commands")) == subscribers
        await shut(publisher, *subs)


# ----------------------------------------------------------------------- presence


async def test_a_fresh_session_ends_the_helper_and_a_new_one_subscribes_again() -> None:
    """With fresh_session=True, a daemon that lost the session (restarted, in-memory)
    gives the connection a new one without subscriptions: the helper ends with the
    reason instead of waiting for messages that will never come; a new helper on the
    same connection subscribes again and receives."""
    async with (
        channels_daemon() as (server, _app),
        FaultProxy(*server.addresses[0]) as proxy,
    ):
        sub = await open_channels(url_of(proxy.address), fresh_session=True)
        await sub.subscribe("fleet/commands")
        first = sub.session.id
        server.sessions.clear()  # as after a restart with in-memory sessions
        proxy.cut()
        with pytest.raises(SessionLost) as lost:
            async with asyncio.timeout(WAIT):
                await sub.recv()
        assert lost.value.reason is CloseCode.UNKNOWN_SESSION
        assert sub.session.id != first and sub.session.state is State.ACTIVE
        (told,) = [n for n in sub.session.notices if isinstance(n, SessionLostEvent)]
        assert lost.value.undelivered == told.unacked  # the old session's requests in doubt
        with pytest.raises(SessionLost):
            await sub.subscribe("fleet/commands")  # this helper is over

        again = Channels(sub.session, timeout=WAIT)
        await again.subscribe("fleet/commands")
        publisher = await open_channels(url_of(server.addresses[0]))
        await publisher.publish("fleet/commands", b"after the restart")
        assert [m.payload for m in await messages(again, 1)] == [b"after the restart"]
        await shut(again, publisher)


def test_a_fresh_session_ends_the_blocking_helper_too() -> None:
    """The same through connect_sync and SyncChannels."""
    with (
        daemon_thread(ChannelsApp()) as running,
        SyncChannels(
            sessiond_client.connect_sync(running.url, policy=FAST, fresh_session=True),
            timeout=WAIT,
        ) as sub,
    ):
        sub.subscribe("fleet/commands")
        first = sub.session.id
        server = running.server

        def restart() -> None:  # in-memory sessions gone, the transport cut
            server.sessions.clear()
            for protocol in list(server.protocols):
                if protocol.transport is not None:
                    protocol.transport.abort()

        running.call_soon(restart)
        with pytest.raises(SessionLost) as lost:
            for _ in range(200):
                sub.poll()
                threading.Event().wait(0.02)
        assert lost.value.reason is CloseCode.UNKNOWN_SESSION
        assert sub.session.id != first


async def test_presence_ignores_transport_cuts_and_expiry_is_exactly_one_leave() -> None:
    lifetime = 0.5
    async with channels_daemon(ChannelsConfig(presence=("rooms/#",))) as (server, _app):
        observer = await open_channels(url_of(server.addresses[0]))
        alone = await observer.subscribe("rooms/lobby")
        assert alone.members is not None and alone.count == 1
        (me,) = alone.members
        async with FaultProxy(*server.addresses[0]) as proxy:
            params = dataclasses.replace(CLIENT_PARAMS, detached_lifetime=lifetime)
            guest = await open_channels(url_of(proxy.address), params=params)
            both = await guest.subscribe("rooms/lobby")
            assert both.members is not None and both.members[0] == me and both.count == 2
            tag = both.members[1].member
            assert await next_event(observer, Joined) == Joined("rooms/lobby", None, tag)
            first_id = guest.session.id
            for cut in range(3):
                proxy.cut()
                await guest.publish("rooms/lobby", b"after cut %d" % cut)  # after the resume
            # By §15.2.2 a leave or join caused by a cut would come before these messages.
            got = await messages(observer, 3)
            assert [m.payload for m in got] == [b"after cut %d" % cut for cut in range(3)]
            assert all(m.member == tag for m in got)
            assert guest.session.id == first_id and len(proxy.connections) >= 4
            assert {m.member for m in observer.members("rooms/lobby")} == {me.member, tag}
        # The proxy has stopped listening: the guest cannot come back and its session expires.
        assert await next_event(observer, Left) == Left("rooms/lobby", None, tag)
        await observer.publish("rooms/lobby", b"barrier")
        assert (await next_event(observer, Message)).payload == b"barrier"  # no second leave
        assert observer.members("rooms/lobby") == (me,)
        with pytest.raises(SessionLost):
            await guest.publish("rooms/lobby", b"too late", timeout=WAIT)
        await shut(observer, guest)


async def test_unsubscribe_and_closing_leave_a_presence_channel() -> None:
    async with channels_daemon(ChannelsConfig(presence=("rooms/#",))) as (server, _app):
        url = url_of(server.addresses[0])
        a, b, c = [await open_channels(url) for _ in range(3)]
        await a.subscribe("rooms/r")
        joined_b = await b.subscribe("rooms/r")
        assert joined_b.members is not None
        tag_b = joined_b.members[-1].member
        await c.subscribe("rooms/+")  # a wildcard: no membership, no presence events
        assert (await a.subscribe("rooms/r")).count == 2  # again: no second join
        await next_event(a, Joined)
        await b.unsubscribe("rooms/r")
        assert (await next_event(a, Left)).member == tag_b
        joined_c = await c.subscribe("rooms/r")
        assert joined_c.members is not None
        tag_c = joined_c.members[-1].member
        assert (await next_event(a, Joined)).member == tag_c
        await c.session.close()  # ends the session: a leave, at once
        assert (await next_event(a, Left)).member == tag_c
        await shut(a, b, c)


# ----------------------------------------------------------------------- retained


async def test_retained_messages_come_first_to_new_subscribers() -> None:
    channels = ChannelsConfig(retained=("state/#",), max_retained=2)
    async with channels_daemon(channels) as (server, _app):
        url = url_of(server.addresses[0])
        device = await open_channels(url)
        await device.publish("state/dev1", b"v1")
        await device.publish("state/dev1", b"v2")  # replaces v1
        await device.publish("state/dev2", b"x")
        await device.publish("other/y", b"not retained")
        assert await refused(device.publish("state/dev3", b"no room")) == (ErrorCode.LIMIT_EXCEEDED)
        watcher = await open_channels(url)
        await watcher.subscribe("state/+")
        first = await messages(watcher, 2)
        assert {(m.channel, m.payload, m.retained) for m in first} == {
            ("state/dev1", b"v2", True),
            ("state/dev2", b"x", True),
        }
        await device.publish("state/dev1", b"v3")
        live = await next_event(watcher, Message)
        assert (live.channel, live.payload, live.retained) == ("state/dev1", b"v3", False)
        await device.publish("state/dev2", b"")  # clears dev2's retained message
        assert (await next_event(watcher, Message)).payload == b""
        await device.publish("state/dev3", b"fits now")
        assert (await next_event(watcher, Message)).payload == b"fits now"
        late = await open_channels(url)
        await late.subscribe("state/dev1")  # an exact name: that channel's only
        await late.subscribe("state/dev3")
        got = await messages(late, 2)
        assert [(m.channel, m.payload, m.retained) for m in got] == [
            ("state/dev1", b"v3", True),
            ("state/dev3", b"fits now", True),
        ]
        await late.publish("state/dev1", b"barrier")
        assert (await next_event(late, Message)).payload == b"barrier"  # dev2: nothing
        await shut(device, watcher, late)


# ---------------------------------------------------------------------- wildcards


async def test_wildcard_subscriptions_deliver_each_message_once() -> None:
    async with channels_daemon() as (server, _app):
        url = url_of(server.addresses[0])
        a, b, pub = [await open_channels(url) for _ in range(3)]
        await a.subscribe("devices/+/telemetry")
        await a.subscribe("devices/#")  # overlaps: still one delivery per message
        await b.subscribe("devices/+/telemetry")
        for channel in (
            "devices/s1/telemetry",
            "devices/s1/state",
            "devices/s2/telemetry",
            "rooms/x",
            "devices",
            "devices/end/telemetry",
        ):
            await pub.publish(channel, channel.encode())
        got_a = [m.channel for m in await messages(a, 5)]
        assert got_a == [
            "devices/s1/telemetry",
            "devices/s1/state",
            "devices/s2/telemetry",
            "devices",
            "devices/end/telemetry",
        ]
        got_b = [m.channel for m in await messages(b, 3)]
        assert got_b == ["devices/s1/telemetry", "devices/s2/telemetry", "devices/end/telemetry"]
        await a.unsubscribe("devices/#")
        assert await refused(a.unsubscribe("devices/#")) == ErrorCode.NOT_SUBSCRIBED
        await pub.publish("devices/s1/state", b"after unsub")
        await pub.publish("devices/s1/telemetry", b"barrier")
        assert (await next_event(a, Message)).payload == b"barrier"
        assert await refused(a.subscribe("devices/#/x")) == ErrorCode.INVALID_CHANNEL
        assert await refused(pub.publish("devices/+/telemetry", b"")) == ErrorCode.INVALID_CHANNEL
        await shut(a, b, pub)


# ------------------------------------------------------------------ access control


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    lines = [
        f"{name} {hashlib.sha256(f'{name}-token'.encode()).hexdigest()}"
        for name in ("alice", "bob", "sensor-1")
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_access_control_allows_and_denies_by_identity(token_file: Path) -> None:
    channels = ChannelsConfig(
        acl=(
            "sensor-1 publish devices/sensor-1/#",
            "* publish devices/{identity}/telemetry",
            "* subscribe devices/+/telemetry",
            "alice all rooms/#",
        )
    )
    async with channels_daemon(channels, TokenFileAuthenticator(token_file)) as (server, _app):
        url = url_of(server.addresses[0])
        sensor = await open_channels(url, credentials="sensor-1-token")
        bob = await open_channels(url, credentials="bob-token")
        alice = await open_channels(url, credentials="alice-token")
        await bob.subscribe("devices/+/telemetry")
        assert await refused(bob.subscribe("devices/#")) == ErrorCode.DENIED  # not covered
        assert await refused(bob.subscribe("rooms/lobby")) == ErrorCode.DENIED
        await alice.subscribe("rooms/#")
        await sensor.publish("devices/sensor-1/telemetry", b"21.5")
        got = await next_event(bob, Message)
        assert (got.channel, got.payload, got.publisher) == (
            "devices/sensor-1/telemetry",
            b"21.5",
            "sensor-1",
        )
        await sensor.publish("devices/sensor-1/state", b"ok")  # allowed, nobody subscribed
        assert await refused(sensor.publish("devices/sensor-2/telemetry", b"x")) == (
            ErrorCode.DENIED
        )
        assert await refused(bob.publish("rooms/lobby", b"x")) == ErrorCode.DENIED
        await bob.publish("rooms/lobby", b"x", wait=False)  # no id: refused as an event
        denied = await next_event(bob, Refused)
        assert denied.error.code is ErrorCode.DENIED and denied.error.channel == "rooms/lobby"
        await bob.publish("devices/bob/telemetry", b"mine")  # through {identity}
        assert (await next_event(bob, Message)).publisher == "bob"
        await alice.publish("rooms/lobby", b"hello")
        hello = await next_event(alice, Message)
        assert (hello.payload, hello.publisher) == (b"hello", "alice")
        await shut(sensor, bob, alice)


# ---------------------------------------------------------------- slow subscribers


def slow_params() -> Params:
    return dataclasses.replace(CLIENT_PARAMS, window_messages=8)


async def test_slow_subscriber_is_disconnected_and_the_publisher_never_waits() -> None:
    """A subscriber that stops reading: its window fills, then its queue (16), then its
    session ends with SLOW_CONSUMER. The publisher's 300 publishes are all accepted and a
    fast subscriber on the same channel gets every one; the slow one got a clean prefix."""
    count = 300
    async with channels_daemon(ChannelsConfig(queue_messages=16)) as (server, app):
        url = url_of(server.addresses[0])
        slow = await open_channels(url, max_events=4, params=slow_params())
        fast = await open_channels(url)
        publisher = await open_channels(url)
        await slow.subscribe("feed/x")
        await fast.subscribe("feed/x")
        fast_got = asyncio.create_task(messages(fast, count, timeout=60))
        for n in range(count):
            await publisher.publish("feed/x", b"%d" % n)
        assert [m.payload for m in await fast_got] == [b"%d" % n for n in range(count)]
        got: list[bytes] = []
        with pytest.raises(SessionLost) as lost:
            async with asyncio.timeout(WAIT):
                for _ in range(count + 1):
                    got.append((await next_event(slow, Message)).payload)
        assert lost.value.reason is CloseCode.SLOW_CONSUMER
        assert 0 < len(got) < count and got == [b"%d" % n for n in range(len(got))]
        assert slow.session.state is State.CLOSED
        async with asyncio.timeout(WAIT):  # the ended session's subscription is gone
            while len(app.broker.subscriptions.exact("feed/x")) != 1:
                await asyncio.sleep(0.01)
        await shut(slow, fast, publisher)


async def test_detached_slow_subscriber_learns_slow_consumer_on_its_resume() -> None:
    """A subscriber whose path is dead (every byte delayed 30 s) while messages pile up is
    ended as a slow consumer; when the path heals, its resume is refused with that reason."""
    async with (
        channels_daemon(ChannelsConfig(queue_messages=16)) as (server, app),
        FaultProxy(*server.addresses[0]) as proxy,
    ):
        params = dataclasses.replace(slow_params(), handshake_timeout=0.5)
        slow = await open_channels(url_of(proxy.address), params=params)
        publisher = await open_channels(url_of(server.addresses[0]))
        await slow.subscribe("feed/x")
        proxy.delay(30.0)  # nothing gets through, this connection or the next ones
        proxy.cut()
        for n in range(100):  # window (8) + queue (16) is far less
            await publisher.publish("feed/x", b"%d" % n)
        async with asyncio.timeout(WAIT):
            while app.broker.subscriptions.exact("feed/x"):
                await asyncio.sleep(0.01)
        proxy.delay(0.0)
        with pytest.raises(SessionLost) as lost:
            async with asyncio.timeout(WAIT):
                for _ in range(101):
                    await slow.recv()
        assert lost.value.reason is CloseCode.SLOW_CONSUMER
        await shut(slow, publisher)


async def test_drop_oldest_subscriber_gets_gap_notices_that_account_for_every_message() -> None:
    count, queue = 300, 16
    channels = ChannelsConfig(queue_messages=queue, drop_oldest=("feed/#",))
    async with channels_daemon(channels) as (server, app):
        url = url_of(server.addresses[0])
        slow = await open_channels(url, max_events=4, params=slow_params())
        publisher = await open_channels(url)
        await slow.subscribe("feed/x")
        (member,) = app.broker.subscriptions.exact("feed/x")
        for n in range(count):
            await publisher.publish("feed/x", b"%d" % n)
            assert member.outbox.count <= queue  # memory stays bounded
        expected = gaps = 0
        async with asyncio.timeout(WAIT):
            while expected < count:
                event = await slow.recv()
                if isinstance(event, Gap):
                    assert event.channel == "feed/x" and event.dropped > 0
                    expected += event.dropped
                    gaps += 1
                else:
                    assert isinstance(event, Message) and event.payload == b"%d" % expected
                    expected += 1
        assert expected == count and gaps >= 1  # every message delivered or counted, once
        assert slow.session.state is State.ACTIVE  # the session lives on
        await slow.publish("feed/x", b"still subscribed")
        assert (await next_event(slow, Message)).payload == b"still subscribed"
        await shut(slow, publisher)


# ------------------------------------------------------------------------- limits


async def test_limits_on_names_subscriptions_and_payloads() -> None:
    channels = ChannelsConfig(max_name_length=32, max_subscriptions=3, max_message_size=1024)
    async with channels_daemon(channels) as (server, _app):
        client = await open_channels(url_of(server.addresses[0]))
        await client.subscribe("a" * 32)
        assert await refused(client.subscribe("a" * 33)) == ErrorCode.INVALID_CHANNEL
        assert await refused(client.publish("b" * 33, b"")) == ErrorCode.INVALID_CHANNEL
        await client.subscribe("x/1")
        await client.subscribe("x/+")
        assert await refused(client.subscribe("x/3")) == ErrorCode.TOO_MANY_SUBSCRIPTIONS
        await client.subscribe("x/1")  # held already: not counted again
        await client.unsubscribe("x/1")
        await client.subscribe("x/3")
        await client.publish("x/3", bytes(1024))
        assert len((await next_event(client, Message)).payload) == 1024
        assert await refused(client.publish("x/3", bytes(1025))) == ErrorCode.TOO_LARGE
        await shut(client)


async def test_a_message_too_large_for_a_subscriber_is_a_gap_not_a_hole() -> None:
    """A client that accepts 1 KiB frames cannot receive a 2 KiB message, live or retained:
    it is told with a gap notice and the messages after it still arrive (§15.6.3)."""
    async with channels_daemon(ChannelsConfig(retained=("big/#",))) as (server, _app):
        url = url_of(server.addresses[0])
        small = dataclasses.replace(CLIENT_PARAMS, max_frame_size=1024)
        tiny = await open_channels(url, params=small)
        publisher = await open_channels(url)
        await tiny.subscribe("big/#")
        await publisher.publish("big/x", bytes(2048))
        await publisher.publish("big/x", b"small")
        assert await next_event(tiny, Gap) == Gap("big/x", 1)
        assert (await next_event(tiny, Message)).payload == b"small"
        await publisher.publish("big/y", bytes(2048))  # retained, too large for tiny
        assert await next_event(tiny, Gap) == Gap("big/y", 1)
        late = await open_channels(url, params=small)
        await late.subscribe("big/y")
        await publisher.publish("big/y", b"fits")
        assert await next_event(late, Gap) == Gap("big/y", 1)  # the retained one
        assert (await next_event(late, Message)).payload == b"fits"
        await shut(tiny, publisher, late)


# --------------------------------------------------------------------- bad input


async def test_malformed_envelopes_get_typed_errors_and_the_session_carries_on() -> None:
    async with channels_daemon() as (server, _app):
        url = url_of(server.addresses[0])
        raw = await sessiond_client.connect(url, params=CLIENT_PARAMS)
        bad = [
            b"\xc1",
            msgpack.packb(7),
            msgpack.packb({"op": "fly", "id": 9}),
            msgpack.packb({"op": "sub", "id": 10, "ch": 5}),
            b"\x91" * 3000,
        ]
        for payload in bad:
            await raw.send(payload)
        replies = []
        async with asyncio.timeout(WAIT):
            for _ in bad:
                replies.append(msgpack.unpackb(await raw.recv()))
        assert [(r["op"], r["id"], r["code"]) for r in replies] == [
            ("error", None, ErrorCode.BAD_REQUEST),
            ("error", None, ErrorCode.BAD_REQUEST),
            ("error", 9, ErrorCode.UNKNOWN_OP),
            ("error", 10, ErrorCode.BAD_REQUEST),
            ("error", None, ErrorCode.BAD_REQUEST),
        ]
        helper = Channels(raw, timeout=WAIT)  # the same session, still fine
        await helper.subscribe("ok/now")
        other = await open_channels(url)
        await other.publish("ok/now", b"daemon fine")
        assert (await next_event(helper, Message)).payload == b"daemon fine"
        await shut(helper, other)


# ------------------------------------------------------------------------ the app


def test_channels_is_the_default_app_and_reads_its_settings() -> None:
    settings = config.load(env={"SESSIOND_CHANNELS_DROP_OLDEST": "feed/#,telemetry/#"})
    assert settings.server.app == "channels"
    app = load_app(settings.server.app, settings)
    assert isinstance(app, ChannelsApp)
    assert app.config.drop_oldest == ("feed/#", "telemetry/#")
    assert load_app("channels") is not load_app("channels")  # each server its own channels
    with pytest.raises(config.ConfigError, match="acl rule"):
        config.load(env={"SESSIOND_CHANNELS_ACL": "alice may a/#"})


# ----------------------------------------------------------------------- blocking


@pytest.fixture
def presence_daemon() -> Iterator[str]:
    """A channels daemon (presence on rooms/#) on its own event-loop thread."""
    with daemon_thread(ChannelsApp(ChannelsConfig(presence=("rooms/#",)))) as running:
        yield running.url


def test_blocking_helper_subscribes_publishes_and_polls(presence_daemon: str) -> None:
    with (
        SyncChannels(sessiond_client.connect_sync(presence_daemon), timeout=WAIT) as a,
        SyncChannels(sessiond_client.connect_sync(presence_daemon), timeout=WAIT) as b,
    ):
        assert a.subscribe("rooms/r").count == 1
        joined = b.subscribe("rooms/r")
        assert joined.members is not None and joined.count == 2
        event = a.recv(timeout=WAIT)
        assert isinstance(event, Joined) and event.member == joined.members[-1].member
        b.publish("rooms/r", b"one")
        b.publish("rooms/r", b"two", wait=False)
        got: list[Event] = []
        for _ in range(1000):  # a game loop: poll once per frame, never blocks
            got += a.poll()
            if len(got) >= 2:
                break
            threading.Event().wait(0.01)
        assert [e.payload for e in got if isinstance(e, Message)] == [b"one", b"two"]
        with pytest.raises(ChannelError) as error:
            a.subscribe("rooms/#/bad")
        assert error.value.code is ErrorCode.INVALID_CHANNEL
        with pytest.raises(TimeoutError):
            a.recv(timeout=0.05)
        assert len(a.members("rooms/r")) == 2
        b.unsubscribe("rooms/r")
        left = a.recv(timeout=WAIT)
        assert isinstance(left, Left) and left.member == joined.members[-1].member
