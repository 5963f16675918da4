"""The channels app across processes (issue 17): two in-process servers, each with its
own :class:`~sessiond.channels.bus.RedisBus`, on one real redis-server
(tests/redisserver.py). A publish on either reaches every matching subscriber on both,
exactly once and in order; retained messages outlive a server; presence is one room,
and a dead process's members leave; a subscriber that moves mid-stream misses nothing
and gets nothing twice; policies and access rules apply where the subscriber is.

Every wait is bounded; nothing asserts a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sessiond_client import CloseCode, SessionLost
from sessiond_client.channels import ChannelError, Channels, Gap, Joined, Left, Message
from sessiond_client.envelopes import ErrorCode

import sessiond
from bench.processes import free_port
from sessiond.channels import ChannelsApp, ChannelsConfig
from sessiond.channels.redisbus import RedisBus
from sessiond.metrics import Collector, registry
from sessiond.server import Server, ServerConfig
from sessiond.store.redisstore import RedisStore

from .daemonproc import DaemonProcess, clean_environment
from .faultproxy import FaultProxy
from .redisserver import RedisServer, proxied
from .test_channels import (
    SERVER_PARAMS,
    messages,
    next_event,
    open_channels,
    shut,
    slow_params,
    url_of,
)
from .test_workers import created_by

Start = Callable[..., Awaitable[tuple[Server, ChannelsApp]]]


@pytest.fixture
async def start(redis_server: RedisServer) -> AsyncIterator[Start]:
    """Start a channels server on a RedisBus (closed at the end of the test)."""
    async with AsyncExitStack() as stack:

        async def make(
            channels: ChannelsConfig | None = None, redis_url: str | None = None
        ) -> tuple[Server, ChannelsApp]:
            # A short lease: a crashed bus's members are left about a second later.
            bus = RedisBus(redis_url or redis_server.url, "t:", lease_ttl=1.0)
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


async def test_two_daemons_on_one_store_and_a_kill_9(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``sessiond serve --store redis://...`` twice (the default app, channels; lease
    1 s). A publish on B reaches a subscriber on A. Then A is killed (SIGKILL) while B
    publishes 200 messages: B's presence member is told that A's member left (once A's
    lease is gone), and A's subscriber, whose client comes back at B, resumes there
    with its subscription and receives every message once, in order, with no gap."""
    config = tmp_path / "sessiond.toml"
    config.write_text(
        f'[store]\nurl = "{redis_server.url}"\nlease_ttl = 1.0\n'
        '[channels]\npresence = ["rooms/+"]\n'
    )
    daemons = [
        DaemonProcess(
            "--listen", "127.0.0.1:0", "--config", str(config), log_file=tmp_path / f"{n}.log"
        )
        for n in range(2)
    ]
    count = 200
    try:
        url_a, url_b = [await asyncio.to_thread(d.url) for d in daemons]
        async with FaultProxy(*daemons[0].address()) as proxy:
            subscriber = await open_channels(url_of(proxy.address), max_events=count + 16)
            await subscriber.subscribe("feed/x")
            alice = await open_channels(url_a)
            (alice_member,) = (await alice.subscribe("rooms/lobby")).members or ()
            bob = await open_channels(url_b)
            async with asyncio.timeout(20):  # B has read alice's join
                while (await bob.subscribe("rooms/lobby")).count != 2:
                    await bob.unsubscribe("rooms/lobby")
                    await asyncio.sleep(0.05)
            publisher = await open_channels(url_b)
            await publisher.publish("feed/x", b"0")
            assert [m.payload for m in await messages(subscriber, 1)] == [b"0"]
            proxy.target_port = daemons[1].address()[1]  # where the client comes back to
            daemons[0].proc.kill()
            for n in range(1, count):
                await publisher.publish("feed/x", b"%d" % n)
            left = await next_event(bob, Left, timeout=30)
            assert left.member == alice_member.member
            got = [m.payload for m in await messages(subscriber, count - 1, timeout=60)]
            assert got == [b"%d" % n for n in range(1, count)]
            await publisher.publish("feed/x", b"barrier")
            assert (await next_event(subscriber, Message)).payload == b"barrier"
            await shut(subscriber, bob, publisher)
            with contextlib.suppress(SessionLost, TimeoutError):  # its daemon is dead
                await asyncio.wait_for(shut(alice), 5)
        assert await asyncio.to_thread(daemons[1].stop) == 0
    finally:
        for daemon in daemons:
            daemon.close()


async def test_a_subscriber_moving_to_another_server_keeps_its_subscriptions(
    redis_server: RedisServer,
) -> None:
    """Two servers sharing a session store and a bus: a subscriber's transport is cut
    and it resumes on the other server, which recovers the session with its
    subscriptions. Everything published before the move and after the resume arrives,
    exactly once and in order, without the client subscribing again. A subscriber that
    had received nothing yet gets, after the move, nothing published before it
    subscribed, and no gap notice."""
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
        quiet = await open_channels(url_of(proxy.address))
        watcher = await open_channels(url(a))
        await watcher.subscribe("rooms/quiet")
        for n in range(5):  # before quiet subscribes (A has read them: watcher got them)
            await publisher.publish("rooms/quiet", b"early %d" % n)
        assert len(await messages(watcher, 5)) == 5
        await quiet.subscribe("rooms/quiet")
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
        await until(lambda: b.sessions.find(bytes.fromhex(quiet.session.id or "")) is not None)
        await publisher.publish("rooms/quiet", b"after the move")
        assert (await next_event(quiet, Message)).payload == b"after the move"
        await shut(sub, publisher, quiet, watcher)


# ---------------------------------------------------------------------- presence

PRESENCE = ChannelsConfig(presence=("rooms/+",))


async def until(condition: Callable[[], object], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_presence_is_one_room_across_servers(start: Start) -> None:
    """Members on A and B are listed to each other and see each other join and leave,
    once each."""
    (a, _), (b, app_b) = await start(PRESENCE), await start(PRESENCE)
    alice = await open_channels(url(a))
    (alice_member,) = (await alice.subscribe("rooms/lobby")).members or ()
    await until(lambda: app_b.broker.remote.get("rooms/lobby"))  # B read alice's join
    bob = await open_channels(url(b))
    joined = await bob.subscribe("rooms/lobby")
    assert joined.count == 2 and alice_member in (joined.members or ())
    seen = await next_event(alice, Joined)  # bob, from the other process
    assert seen.channel == "rooms/lobby"
    await bob.unsubscribe("rooms/lobby")
    assert (await next_event(alice, Left)).member == seen.member
    await bob.publish("rooms/lobby", b"barrier")  # nothing else came before it
    assert (await next_event(alice, Message)).payload == b"barrier"
    await shut(alice, bob)


async def test_a_crashed_process_members_leave_within_its_lease(
    redis_server: RedisServer, start: Start
) -> None:
    """A's process dies (its bus stops without a word: no leave, no lease renewal):
    once its lease (1 s here) is gone, B's member is told that A's member left, once,
    and Redis no longer lists it."""
    (a, app_a), (b, app_b) = await start(PRESENCE), await start(PRESENCE)
    alice = await open_channels(url(a))
    (alice_member,) = (await alice.subscribe("rooms/lobby")).members or ()
    await until(lambda: app_b.broker.remote.get("rooms/lobby"))  # B read alice's join
    bob = await open_channels(url(b))
    assert (await bob.subscribe("rooms/lobby")).count == 2
    await next_event(alice, Joined)
    bus_a = app_a.broker.bus
    assert isinstance(bus_a, RedisBus)
    bus_a.crash()
    assert (await next_event(bob, Left)).member == alice_member.member
    await bob.publish("rooms/lobby", b"barrier")  # no second leave before it
    assert (await next_event(bob, Message)).payload == b"barrier"
    checker = RedisBus(redis_server.url, "t:")
    try:
        present = await checker._checker.hvals("t:{channels}:presence")
        assert len(present) == 1  # bob
    finally:
        await checker.close()
    await shut(alice, bob)


# ---------------------------------------------------------------------- policies


async def test_policies_and_access_rules_apply_where_the_subscriber_is(start: Start) -> None:
    """A publisher on A floods feed/x and feed/drop: on B the fast subscriber gets all,
    the slow one on a disconnect channel ends SLOW_CONSUMER with a clean prefix, the
    slow one on a drop-oldest channel gets gap notices that account for every message.
    Access rules refuse on either process alike."""
    count = 300
    config = ChannelsConfig(queue_messages=16, drop_oldest=("feed/drop",), acl=("* all feed/#",))
    (a, _), (b, _) = await start(config), await start(config)
    fast = await open_channels(url(b))
    slow = await open_channels(url(b), max_events=4, params=slow_params())
    dropping = await open_channels(url(b), max_events=4, params=slow_params())
    await fast.subscribe("feed/x")
    await slow.subscribe("feed/x")
    await dropping.subscribe("feed/drop")
    publisher = await open_channels(url(a))
    with pytest.raises(ChannelError) as denied:
        await publisher.publish("other/x", b"no")
    assert denied.value.code is ErrorCode.DENIED
    with pytest.raises(ChannelError) as denied:
        await fast.subscribe("other/#")
    assert denied.value.code is ErrorCode.DENIED
    fast_got = asyncio.create_task(messages(fast, count, timeout=60))
    for n in range(count):
        await publisher.publish("feed/x", b"%d" % n)
        await publisher.publish("feed/drop", b"%d" % n)
    assert [m.payload for m in await fast_got] == [b"%d" % n for n in range(count)]
    got: list[bytes] = []
    with pytest.raises(SessionLost) as lost:
        async with asyncio.timeout(20):
            for _ in range(count + 1):
                got.append((await next_event(slow, Message)).payload)
    assert lost.value.reason is CloseCode.SLOW_CONSUMER
    assert 0 < len(got) < count and got == [b"%d" % n for n in range(len(got))]
    expected = 0
    async with asyncio.timeout(20):
        while expected < count:
            event = await dropping.recv()
            if isinstance(event, Gap):
                expected += event.dropped
            else:
                assert isinstance(event, Message) and event.payload == b"%d" % expected
                expected += 1
    assert expected == count
    await shut(fast, slow, dropping, publisher)


async def test_a_publish_the_bus_could_not_carry_is_counted_not_silent(
    redis_server: RedisServer, start: Start
) -> None:
    """Redis unreachable from A: A's publisher is answered only once the bus gave up on
    the append and counted it as lost (sessiond_channels_bus_lost); B's subscriber never
    got it."""
    async with proxied(redis_server) as proxy:
        host, port = proxy.address
        (a, app_a), (b, _) = await start(None, f"redis://{host}:{port}/0"), await start()
        subscriber = await open_channels(url(b))
        await subscriber.subscribe("rooms/lobby")
        publisher = await open_channels(url(a))
        await publisher.publish("rooms/lobby", b"before")
        assert (await next_event(subscriber, Message)).payload == b"before"
        proxy.blackhole()
        await publisher.publish("rooms/lobby", b"lost")
        assert app_a.broker.stats.bus_lost == 1  # the ok waited for the bus
        text = metrics_text(a, app_a)
        assert "sessiond_channels_bus_lost_total 1.0" in text
        await shut(subscriber, publisher)


def metrics_text(server: Server, app: ChannelsApp) -> str:
    class Source:
        draining = False

        def __init__(self) -> None:
            self.server = server
            self.app = app

        def readiness(self) -> tuple[bool, str]:
            return True, "ready"

    return generate_latest(registry(Collector(Source()))).decode()


# ------------------------------------------------------------------------- moves


async def test_a_subscriber_moving_mid_stream_misses_nothing_and_gets_nothing_twice(
    redis_server: RedisServer,
) -> None:
    """A publisher on A publishes 300 messages without pause while its subscriber's
    session moves from A to B twice (transport cut, resume at the other server, which
    takes it over from the live owner): the subscriber receives all 300, once each, in
    order, with no gap notice, without subscribing again. What was queued on the old
    server, and what the new one read before the session arrived, is sent from the bus
    after the last delivery the session's stored stream held."""
    count = 300
    async with AsyncExitStack() as stack:
        a, b = await stored_pair(stack, redis_server)
        proxy = await stack.enter_async_context(FaultProxy(*a.addresses[0]))
        sub = await open_channels(url_of(proxy.address), max_events=count + 16)
        await sub.subscribe("feed/x")
        publisher = await open_channels(url(a))

        async def publish() -> None:
            for n in range(count):
                await publisher.publish("feed/x", b"%d" % n)
                if n % 10 == 0:
                    await asyncio.sleep(0.005)

        publishing = asyncio.create_task(publish())
        got: list[bytes] = []

        async def receive(upto: int) -> None:
            while len(got) < upto:
                event = await sub.recv()
                assert isinstance(event, Message), event  # no gap notice
                got.append(event.payload)

        sid = bytes.fromhex(sub.session.id or "")
        async with asyncio.timeout(60):
            for target, after in ((b, 40), (a, 120)):
                await receive(after)
                proxy.target_port = target.addresses[0][1]
                proxy.cut()
                await until(lambda target=target: target.sessions.find(sid) is not None)  # type: ignore[misc]
            await receive(count)
        await publishing
        assert got == [b"%d" % n for n in range(count)]
        await publisher.publish("feed/x", b"barrier")  # nothing twice: the next is it
        assert (await next_event(sub, Message)).payload == b"barrier"
        await shut(sub, publisher)


async def test_two_workers_are_one_channels_space(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``sessiond serve --workers 2`` (the channels app): 16 subscribers spread over both
    workers by SO_REUSEPORT; one publish reaches every one of them."""
    port = free_port()
    proc = DaemonProcess(
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--store",
        redis_server.url,
        log_file=tmp_path / "workers.log",
        env=clean_environment(SESSIOND_SERVER_DRAIN_TIMEOUT="2"),
    )
    try:
        await proc.until(r"supervising 2 workers")
        subscribers = [await open_channels(f"tcp://127.0.0.1:{port}") for _ in range(16)]
        for subscriber in subscribers:
            await subscriber.subscribe("rooms/lobby")
        await proc.until(r"session [0-9a-f]+ created", count=16)
        # 16 all on one worker: about once in 32,000 runs.
        assert set(created_by(proc.log).values()) == {0, 1}
        await subscribers[0].publish("rooms/lobby", b"to both workers")
        for subscriber in subscribers:
            assert (await next_event(subscriber, Message)).payload == b"to both workers"
        await shut(*subscribers)
        assert await asyncio.to_thread(proc.stop) == 0
    finally:
        proc.close()


async def stored_pair(
    stack: AsyncExitStack, redis_server: RedisServer, config: ChannelsConfig | None = None
) -> tuple[Server, Server]:
    """Two channels servers sharing a session store and a bus (the store's node lease)."""
    servers: list[Server] = []
    for _ in range(2):
        store = RedisStore(redis_server.url, "t:")
        await store.start()
        bus = RedisBus(redis_server.url, "t:", node=store.node)
        app = ChannelsApp(config, bus=bus)
        await bus.start()
        stack.push_async_callback(bus.close)
        servers.append(
            await stack.enter_async_context(
                sessiond.serve(
                    app, "127.0.0.1", 0, config=ServerConfig(params=SERVER_PARAMS), store=store
                )
            )
        )
    return servers[0], servers[1]


async def test_a_member_moving_between_processes_neither_leaves_nor_joins(
    redis_server: RedisServer,
) -> None:
    """Alice's session moves from A to B: Bob (on B) sees no leave and no join, and the
    room still counts two; when Alice then unsubscribes on B, Bob sees her leave once."""
    async with AsyncExitStack() as stack:
        a, b = await stored_pair(stack, redis_server, PRESENCE)
        proxy = await stack.enter_async_context(FaultProxy(*a.addresses[0]))
        alice = await open_channels(url_of(proxy.address))
        (alice_member,) = (await alice.subscribe("rooms/lobby")).members or ()
        bob = await open_channels(url(b))
        async with asyncio.timeout(20):  # B has read alice's join
            while (await bob.subscribe("rooms/lobby")).count != 2:
                await bob.unsubscribe("rooms/lobby")
                await asyncio.sleep(0.05)
        await next_event(alice, Joined)
        sid = bytes.fromhex(alice.session.id or "")
        proxy.target_port = b.addresses[0][1]
        proxy.cut()
        await until(lambda: b.sessions.find(sid) is not None)
        app_b: ChannelsApp = b.handler  # type: ignore[assignment]
        await until(lambda: len(app_b.broker.members.get("rooms/lobby", ())) == 2)
        await alice.publish("rooms/lobby", b"moved")  # nothing came before it
        assert (await next_event(bob, Message)).payload == b"moved"
        watcher = await open_channels(url(a))
        assert (await watcher.subscribe("rooms/lobby")).count == 3
        await next_event(bob, Joined)  # the watcher
        await alice.unsubscribe("rooms/lobby")
        assert (await next_event(bob, Left)).member == alice_member.member
        await shut(alice, bob, watcher)


async def test_a_closed_bus_and_store_hold_no_connection(redis_server: RedisServer) -> None:
    """The daemon's store and channels bus on one Redis (as `sessiond serve --store
    redis://...` runs them): after both close, Redis holds none of their connections."""
    store = RedisStore(redis_server.url, "t:")
    await store.start()
    bus = RedisBus(redis_server.url, "t:", node=store.node)
    app = ChannelsApp(None, bus=bus)
    await bus.start()
    async with sessiond.serve(app, "127.0.0.1", 0, config=ServerConfig(params=SERVER_PARAMS)) as s:
        on_a = await open_channels(url(s))
        await on_a.subscribe("rooms/lobby")
        await on_a.publish("rooms/lobby", b"hello")
        assert (await next_event(on_a, Message)).payload == b"hello"
        await shut(on_a)
    assert redis_server.clients() > 0
    await bus.close()
    await store.close()
    async with asyncio.timeout(5.0):
        while redis_server.clients():
            await asyncio.sleep(0.01)


async def test_a_bus_closed_as_it_sends_leaves_no_task_and_no_connection(
    redis_server: RedisServer,
) -> None:
    """close() at each of the first loop iterations of a publish's append ends every task
    of the bus, and Redis then holds none of its connections. On Python 3.11 one of these
    iterations lost the cancel in redis-py's send (sessiond/tasks.py): the task went on
    after close(), and one that issued a command after its client closed opened a
    connection nothing closed (reported by the garbage collector, in a later test, as
    redis-py's "Unclosed client session")."""
    for offset in range(8):
        bus = RedisBus(redis_server.url, "t:")
        ChannelsApp(None, bus=bus)
        await bus.start()
        tasks = list(bus._tasks)
        bus.publish("rooms/lobby", b"%d" % offset, None, False)
        for _ in range(offset):
            await asyncio.sleep(0)
        await bus.close()
        assert [task for task in tasks if not task.done()] == [], offset
        assert [c.connection for c in (bus._writer, bus._reader, bus._checker)] == [None] * 3
    async with asyncio.timeout(5.0):
        while redis_server.clients():
            await asyncio.sleep(0.01)
