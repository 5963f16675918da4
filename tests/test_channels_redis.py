"""The channels app across processes (issue 17): two in-process servers, each with its
own :class:`~sessiond.channels.bus.RedisBus`, on one real redis-server
(tests/redisserver.py). A publish on either reaches every matching subscriber on both,
exactly once and in order; retained messages outlive a server.

Every wait is bounded; nothing asserts a timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from sessiond_client.channels import Channels, Message

import sessiond
from sessiond.channels import ChannelsApp, ChannelsConfig
from sessiond.channels.redisbus import RedisBus
from sessiond.server import Server, ServerConfig
from sessiond.store.redisstore import RedisStore

from .daemonproc import DaemonProcess
from .faultproxy import FaultProxy
from .redisserver import RedisServer
from .test_channels import SERVER_PARAMS, messages, next_event, open_channels, shut, url_of

Start = Callable[..., Awaitable[tuple[Server, ChannelsApp]]]


@pytest.fixture
async def start(redis_server: RedisServer) -> AsyncIterator[Start]:
    """Start a channels server on a RedisBus (closed at the end of the test)."""
    async with AsyncExitStack() as stack:

        async def make(
            channels: ChannelsConfig | None = None,
        ) -> tuple[Server, ChannelsApp]:
            bus = RedisBus(redis_server.url, "t:")
            app = ChannelsApp(channels, bus=bus)
            await bus.start()
            stack.push_async_callback(bus.close)
            server = await stack.enter_async_context(
                sessiond.serve(app, "127.0.0.1", 0, config=ServerConfig(params=SERVER_PARAMS))
            )
            return server, app

        yield make


def url(server: Server) -> str:
    return url_of(server.addresses[0])


async def test_a_publish_on_one_server_reaches_subscribers_on_both(start: Start) -> None:
    (a, _), (b, app_b) = await start(), await start()
    on_a, on_b = await open_channels(url(a)), await open_channels(url(b))
    await on_a.subscribe("rooms/lobby")
    await on_b.subscribe("rooms/lobby")
    publisher = await open_channels(url(a))
    count = 200
    for n in range(count):
        await publisher.publish("rooms/lobby", b"%d" % n)
    expected = [b"%d" % n for n in range(count)]
    assert [m.payload for m in await messages(on_a, count)] == expected
    assert [m.payload for m in await messages(on_b, count)] == expected
    # Exactly once: a barrier published last is the next thing each receives.
    await publisher.publish("rooms/lobby", b"barrier")
    for helper in (on_a, on_b):
        assert (await next_event(helper, Message)).payload == b"barrier"
    assert app_b.broker.stats.deliveries == count + 1
    await shut(on_a, on_b, publisher)


async def test_publishers_on_both_servers_are_seen_in_one_order_everywhere(start: Start) -> None:
    """Every subscriber, on either server, sees the publishes of two publishers on two
    servers in the same order, each publisher's in the order it published."""
    (a, _), (b, _) = await start(), await start()
    subs = [await open_channels(url(s)) for s in (a, a, b, b)]
    for sub in subs:
        await sub.subscribe("rooms/lobby")
    pub_a, pub_b = await open_channels(url(a)), await open_channels(url(b))
    count = 100

    async def publish(helper: Channels, tag: bytes) -> None:
        for n in range(count):
            await helper.publish("rooms/lobby", tag + b"%d" % n)

    await asyncio.gather(publish(pub_a, b"a"), publish(pub_b, b"b"))
    seen = [[m.payload for m in await messages(sub, 2 * count)] for sub in subs]
    assert all(order == seen[0] for order in seen)
    for tag in (b"a", b"b"):
        assert [p for p in seen[0] if p[:1] == tag] == [tag + b"%d" % n for n in range(count)]
    await shut(*subs, pub_a, pub_b)


async def test_wildcards_across_servers(start: Start) -> None:
    (a, _), (b, _) = await start(), await start()
    plus, hash_, exact = [await open_channels(url(b)) for _ in range(3)]
    await plus.subscribe("devices/+/telemetry")
    await hash_.subscribe("devices/#")
    await exact.subscribe("devices/s2/telemetry")
    publisher = await open_channels(url(a))
    for name in ("devices/s1/telemetry", "devices/s2/telemetry", "devices/s1/x/telemetry"):
        await publisher.publish(name, name.encode())
    assert [m.channel for m in await messages(plus, 2)] == [
        "devices/s1/telemetry",
        "devices/s2/telemetry",
    ]
    assert [m.channel for m in await messages(hash_, 3)] == [
        "devices/s1/telemetry",
        "devices/s2/telemetry",
        "devices/s1/x/telemetry",
    ]
    assert [m.channel for m in await messages(exact, 1)] == ["devices/s2/telemetry"]
    await publisher.publish("devices/end", b"barrier")  # only devices/# matches it
    assert (await next_event(hash_, Message)).channel == "devices/end"
    await shut(plus, hash_, exact, publisher)


async def test_retained_messages_are_shared_and_outlive_a_server(
    redis_server: RedisServer, start: Start
) -> None:
    """A message retained through A is the retained message of a subscriber on B, and of
    one on a server started after A and B (it loads it from Redis); an empty publish on
    B clears it for everyone."""
    config = ChannelsConfig(retained=("status/#",))
    (a, _), (b, app_b) = await start(config), await start(config)
    publisher = await open_channels(url(a))
    await publisher.publish("status/door", b"open")
    await publisher.publish("status/door", b"closed")
    watcher = await open_channels(url(b))
    await watcher.subscribe("status/#")  # a barrier: the ok comes after what B read before
    async with asyncio.timeout(20):
        while "status/door" not in app_b.broker.retained:
            await asyncio.sleep(0.01)
    late = await open_channels(url(b))
    await late.subscribe("status/door")
    got = await next_event(late, Message)
    assert (got.payload, got.retained) == (b"closed", True)

    c, app_c = await start(config)  # a new process: the retained message is in Redis
    assert app_c.broker.retained["status/door"].size == len(b"closed")
    newcomer = await open_channels(url(c))
    await newcomer.subscribe("status/+")
    got = await next_event(newcomer, Message)
    assert (got.payload, got.retained) == (b"closed", True)

    clearer = await open_channels(url(b))
    await clearer.publish("status/door", b"")
    assert (await next_event(newcomer, Message)).payload == b""  # delivered as usual
    async with asyncio.timeout(20):
        while "status/door" in app_c.broker.retained:
            await asyncio.sleep(0.01)
    await shut(publisher, watcher, late, newcomer, clearer)


async def test_two_daemons_on_one_store_are_one_channels_space(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``sessiond serve --store redis://...`` twice (the default app, channels): a
    publish on one reaches a subscriber on the other."""
    daemons = [
        DaemonProcess(
            "--listen", "127.0.0.1:0", "--store", redis_server.url, log_file=tmp_path / f"{n}.log"
        )
        for n in range(2)
    ]
    try:
        urls = [await asyncio.to_thread(d.url) for d in daemons]
        subscriber = await open_channels(urls[1])
        await subscriber.subscribe("rooms/lobby")
        publisher = await open_channels(urls[0])
        await publisher.publish("rooms/lobby", b"hello across processes")
        assert [m.payload for m in await messages(subscriber, 1)] == [b"hello across processes"]
        await shut(subscriber, publisher)
        for daemon in daemons:
            assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        for daemon in daemons:
            daemon.close()


async def test_a_subscriber_moving_to_another_server_keeps_its_subscriptions(
    redis_server: RedisServer,
) -> None:
    """Two servers sharing a session store and a bus: a subscriber's transport is cut
    and it resumes on the other server, which recovers the session with its
    subscriptions. Everything published before the move and after the resume arrives,
    exactly once and in order, without the client subscribing again."""
    async with AsyncExitStack() as stack:
        servers: list[Server] = []
        for _ in range(2):
            store = RedisStore(redis_server.url, "t:")
            await store.start()
            bus = RedisBus(redis_server.url, "t:")
            app = ChannelsApp(bus=bus)
            await bus.start()
            stack.push_async_callback(bus.close)
            servers.append(
                await stack.enter_async_context(
                    sessiond.serve(
                        app,
                        "127.0.0.1",
                        0,
                        config=ServerConfig(params=SERVER_PARAMS),
                        store=store,
                    )
                )
            )
        a, b = servers
        proxy = await stack.enter_async_context(FaultProxy(*a.addresses[0]))
        sub = await open_channels(url_of(proxy.address))
        await sub.subscribe("rooms/lobby")
        publisher = await open_channels(url(a))
        for n in range(20):
            await publisher.publish("rooms/lobby", b"%d" % n)
        assert [m.payload for m in await messages(sub, 20)] == [b"%d" % n for n in range(20)]
        sid = bytes.fromhex(sub.session.id or "")
        proxy.target_port = b.addresses[0][1]
        proxy.cut()
        async with asyncio.timeout(20):
            while b.sessions.find(sid) is None:
                await asyncio.sleep(0.01)
        async with asyncio.timeout(20):  # the recovered handler subscribed it again
            while not any(
                m.session.id == sid.hex()
                for m in b.handler.broker.subscriptions.exact("rooms/lobby")  # type: ignore[attr-defined]
            ):
                await asyncio.sleep(0.01)
        for n in range(20, 40):
            await publisher.publish("rooms/lobby", b"%d" % n)
        assert [m.payload for m in await messages(sub, 20)] == [b"%d" % n for n in range(20, 40)]
        await shut(sub, publisher)
