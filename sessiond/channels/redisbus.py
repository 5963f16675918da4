"""The channels bus on Redis: one stream for every process on a Redis server and key
prefix (see bus.py for what a bus does and why a stream; rediskeys.py for the keys)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..tasks import end
from . import rediskeys as keys
from .rediskeys import STREAM_LENGTH
from .retained import Retained

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("sessiond.channels")

#: Entries one XREAD takes at most.
READ_COUNT = 1000
#: Seconds an XREAD blocks before it is issued again.
READ_BLOCK = 1.0
#: Seconds between attempts while Redis cannot be reached.
RETRY_EVERY = 0.5
#: Seconds a session that moved here waits for this process's reader to reach the last
#: delivery its stored stream holds (the reader is normally there already).
REACH_TIMEOUT = 10.0
#: Presence clean-up checks per lease TTL: a dead process's members are left within
#: the lease TTL and one such period after its last renewal.
CHECKS_PER_LEASE = 3

__all__ = ["STREAM_LENGTH", "RedisBus"]


class RedisBus:
    """Every process on one Redis server and key prefix shares one channels space.

    Call :meth:`start` inside the event loop before serving (it loads the retained
    messages and the presence, and starts reading) and :meth:`close` at the end.

    *node* is the session store's node ID: its lease (``Pnode:<node>``, renewed by
    the store) says this process is alive, and its members are left by the others
    once it is gone. Without a node (a bus without a session store) the bus takes
    a lease of its own, renewed every *lease_ttl* / 3.
    """

    def __init__(
        self,
        url: str,
        key_prefix: str = "sessiond:",
        *,
        node: str | None = None,
        lease_ttl: float = 3.0,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = key_prefix
        self.node = node or secrets.token_hex(8)
        self._own_lease = node is None
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.stream = keys.stream_key(key_prefix)
        self.retained = keys.retained_key(key_prefix)
        self.broker: Broker | None = None
        self._writer: aioredis.Redis = aioredis.Redis.from_url(
            url, single_connection_client=True, socket_timeout=timeout
        )
        # XREAD BLOCK holds its connection: the reader has one of its own.
        self._reader: aioredis.Redis = aioredis.Redis.from_url(
            url, single_connection_client=True, socket_timeout=timeout + READ_BLOCK
        )
        # The presence clean-up and catch-up reads never wait behind the publishes.
        self._checker: aioredis.Redis = aioredis.Redis.from_url(
            url, single_connection_client=True, socket_timeout=timeout
        )
        self._pending: list[tuple[Any, ...]] = []
        self._done: list[Callable[[], None]] = []  # of the publishes pending
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.position = "0-0"  # the last entry received
        self._crashed = False
        # Set by close() and crash(): the loops stop at their next turn even when the
        # cancel that should have ended them was lost (sessiond/tasks.py).
        self._stopping = False

    def attach(self, broker: Broker) -> None:
        self.broker = broker

    async def start(self) -> None:
        """Load the retained messages, the presence and the stream position they
        reflect (one MULTI), then read."""
        broker = self.broker
        assert broker is not None, "attach the bus to a broker first"
        pipe = self._writer.pipeline(transaction=True)
        pipe.hgetall(self.retained)
        pipe.hvals(keys.presence_key(self.prefix))
        pipe.xrevrange(self.stream, count=1)
        try:
            if self._own_lease:
                await self._renew()
            retained, present, last = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ConnectionError(f"channels bus {self.url}: {exc}") from None
        for channel, value in retained.items():
            envelope, size = msgpack.unpackb(value)
            broker.received(channel.decode(), b"", Retained(envelope, size), False, deliver=False)
        for value in present:
            _, node, channel, tag, identity = keys.parse_presence(value)
            if node != self.node:
                broker.remote_presence(keys.JOIN, channel, tag, identity, announce=False)
        if last:
            self.position = last[0][0].decode()
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks = [
            loop.create_task(self._read_forever()),
            loop.create_task(self._write_forever()),
            loop.create_task(self._check_forever()),
        ]

    async def close(self) -> None:
        """Send what is queued, stop reading and disconnect."""
        if self._tasks and not self._crashed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await self._flush()
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        # Every task has ended before its client closes: one that went on after its
        # cancel was lost would open a new connection that nothing closes.
        running = await end(tasks, self.timeout)
        if self._own_lease:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await self._checker.delete(keys.lease_key(self.prefix, self.node))
        for client in (self._writer, self._reader, self._checker):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await client.aclose()
            connection = client.connection
            if connection is not None:  # the close timed out (Redis unreachable): drop it
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
                client.connection = None
        if running:  # stuck (Redis unreachable): the closes above end their reads
            await end(running, self.timeout)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a read ended by the close above

    def crash(self) -> None:
        """Tests: stop as a killed process would (no flush, no goodbye, lease left to
        expire)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        self._crashed = True  # close() only disconnects (and collects the tasks)

    # ------------------------------------------------------------- publish

    def publish(
        self,
        channel: str,
        envelope: bytes,
        retain: Retained | None,
        clear: bool,
        done: Callable[[], None] | None = None,
    ) -> None:
        kept = [retain.envelope, retain.size] if retain is not None else None
        fields = msgpack.packb([channel, envelope, kept, clear], use_bin_type=True)
        self._queue((channel, fields, retain, clear))
        if done is not None:
            self._done.append(done)

    def presence(self, op: str, channel: str, tag: str, identity: str | None) -> None:
        """A member of this process joined (or moved here) or left *channel*: record it
        in Redis and tell the other processes, in order with this process's publishes."""
        self._queue((keys.presence_command(self.prefix, op, self.node, channel, tag, identity),))

    def _queue(self, item: tuple[Any, ...]) -> None:
        self._pending.append(item)
        if self._wake is not None:
            self._wake.set()

    async def _write_forever(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._stopping:
            await wake.wait()
            wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Append everything published so far: one pipelined round trip (a retained
        update rides in a MULTI with its entry)."""
        pending, self._pending = self._pending, []
        done, self._done = self._done, []
        if not pending:
            return
        try:
            await self._append(pending)
        finally:
            for callback in done:
                callback()

    async def _append(self, pending: list[tuple[Any, ...]]) -> None:
        pipe = self._writer.pipeline(transaction=False)
        publishes = 0
        for item in pending:
            if len(item) == 1:  # presence: one script
                pipe.execute_command(*item[0])
                continue
            publishes += 1
            channel, fields, retain, clear = item
            if retain is not None or clear:
                pipe.execute_command("MULTI")
            pipe.xadd(self.stream, {"e": fields}, maxlen=STREAM_LENGTH, approximate=True)
            if retain is not None:
                pipe.hset(self.retained, channel, msgpack.packb([retain.envelope, retain.size]))
                pipe.execute_command("EXEC")
            elif clear:
                pipe.hdel(self.retained, channel)
                pipe.execute_command("EXEC")
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._lost(publishes, len(pending) - publishes, f"append failed: {exc}")
            return
        failed = sum(1 for result in results if isinstance(result, Exception))
        if failed:
            self._lost(publishes, len(pending) - publishes, f"{failed} commands refused")

    def _lost(self, publishes: int, presence: int, why: str) -> None:
        broker = self.broker
        if broker is not None:
            broker.stats.bus_lost += publishes
            broker.stats.presence_lost += presence
        log.warning(
            "channels bus %s: %d publishes and %d presence changes not delivered: %s",
            self.url,
            publishes,
            presence,
            why,
        )

    # ---------------------------------------------------------------- read

    async def _read_forever(self) -> None:
        while not self._stopping:
            try:
                found: Any = await self._reader.xread(
                    {self.stream: self.position},
                    count=READ_COUNT,
                    block=int(READ_BLOCK * 1000),
                )
            except (RedisError, OSError) as exc:
                log.warning("channels bus %s: read failed: %s", self.url, exc)
                await asyncio.sleep(RETRY_EVERY)
                continue
            for _, entries in found:
                for entry_id, fields in entries:
                    self.position = entry_id.decode()
                    self._received(self.position, fields)

    def _received(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        broker = self.broker
        assert broker is not None
        publish = fields.get(b"e")
        if publish is None:
            op, node, channel, tag, identity = keys.parse_presence(fields[b"p"])
            if node != self.node or op == keys.MOVE:
                broker.remote_presence(op, channel, tag, identity, here=node == self.node)
            return
        channel, envelope, kept, clear = msgpack.unpackb(publish)
        retain = Retained(kept[0], kept[1]) if kept is not None else None
        broker.received(channel, envelope, retain, clear, mark=entry_id)

    async def reach(self, entry: str) -> bool:
        """Wait (at most :data:`REACH_TIMEOUT`) until the reader is at *entry* or past it."""
        target = keys.id_tuple(entry)
        deadline = asyncio.get_running_loop().time() + REACH_TIMEOUT
        while keys.id_tuple(self.position) < target:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def replay(self, after: str, upto: str) -> list[tuple[str, str, bytes]] | None:
        """The publishes after entry *after* up to entry *upto*, as (entry ID, channel,
        envelope); None when the stream no longer holds them all (trimmed) or Redis
        cannot be read (the caller then tells its subscriber about a gap)."""
        try:
            info: Any = await self._checker.xinfo_stream(self.stream)
            found: Any = await self._checker.xrange(self.stream, "(" + after, upto)
        except (RedisError, OSError) as exc:
            log.warning("channels bus %s: catch-up read failed: %s", self.url, exc)
            return None
        if info.get("entries-added") != info.get("length"):  # trimmed (or Redis < 7)
            first = info.get("first-entry")
            if first is None or keys.id_tuple(_text(first[0])) > keys.id_tuple(after):
                return None  # what followed *after* may have been trimmed away
        replayed: list[tuple[str, str, bytes]] = []
        for entry_id, fields in found:
            publish = fields.get(b"e")
            if publish is not None:
                channel, envelope, _, _ = msgpack.unpackb(publish)
                replayed.append((entry_id.decode(), channel, envelope))
        return replayed

    # ------------------------------------------------------------ liveness

    async def _renew(self) -> None:
        await self._checker.set(
            keys.lease_key(self.prefix, self.node), self.node, px=int(self.lease_ttl * 1000)
        )

    async def _check_forever(self) -> None:
        every = self.lease_ttl / CHECKS_PER_LEASE
        while not self._stopping:
            await asyncio.sleep(every)
            try:
                if self._own_lease:
                    await self._renew()
                await self.clean_up()
            except (RedisError, OSError) as exc:
                log.warning("channels bus %s: presence check failed: %s", self.url, exc)

    async def clean_up(self) -> int:
        """Leave every member of the processes whose lease is gone; how many were left
        (by this process: another one may have been first)."""
        nodes_key = keys.nodes_key(self.prefix)
        found: Any = await self._checker.smembers(nodes_key)
        nodes = [node.decode() for node in found]
        if not nodes:
            return 0
        pipe = self._checker.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(keys.lease_key(self.prefix, node))
        alive = await pipe.execute()
        dead = [node for node, live in zip(nodes, alive, strict=True) if not live]
        if not dead:
            return 0
        removed: int = await self._checker.eval(
            keys.CLEAN_UP,
            3,
            keys.presence_key(self.prefix),
            nodes_key,
            self.stream,
            STREAM_LENGTH,
            *dead,
        )
        if removed:
            log.info("channels: %d members of %d ended processes left", removed, len(dead))
        return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
