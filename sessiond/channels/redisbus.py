"""The channels bus on Redis: one stream for every process on a Redis server and key
prefix (see bus.py for what a bus does and why a stream)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .retained import Retained

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("sessiond.channels")

#: Entries kept in the bus stream (approximately): a process whose reader fell
#: further behind than this (a long Redis outage) misses entries.
STREAM_LENGTH = 100_000
#: Entries one XREAD takes at most.
READ_COUNT = 1000
#: Seconds an XREAD blocks before it is issued again.
READ_BLOCK = 1.0
#: Seconds between attempts while Redis cannot be reached.
RETRY_EVERY = 0.5


# One hash tag for both keys: a retained update and its entry are one MULTI, which
# Redis Cluster allows only within one slot.


def stream_key(prefix: str) -> str:
    return f"{prefix}{{channels}}:bus"


def retained_key(prefix: str) -> str:
    return f"{prefix}{{channels}}:retained"


class RedisBus:
    """Every process on one Redis server and key prefix shares one channels space.

    Call :meth:`start` inside the event loop before serving (it loads the retained
    messages and starts reading) and :meth:`close` at the end.
    """

    def __init__(self, url: str, key_prefix: str = "sessiond:", *, timeout: float = 2.0) -> None:
        self.url = url
        self.prefix = key_prefix
        self.timeout = timeout
        self.stream = stream_key(key_prefix)
        self.retained = retained_key(key_prefix)
        self.broker: Broker | None = None
        self._writer: aioredis.Redis = aioredis.Redis.from_url(
            url, single_connection_client=True, socket_timeout=timeout
        )
        # XREAD BLOCK holds its connection: the reader has one of its own.
        self._reader: aioredis.Redis = aioredis.Redis.from_url(
            url, single_connection_client=True, socket_timeout=timeout + READ_BLOCK
        )
        self._pending: list[tuple[Any, ...]] = []
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.position = "0-0"  # the last entry received

    def attach(self, broker: Broker) -> None:
        self.broker = broker

    async def start(self) -> None:
        """Load the retained messages and the stream position they reflect, then read."""
        broker = self.broker
        assert broker is not None, "attach the bus to a broker first"
        pipe = self._writer.pipeline(transaction=True)
        pipe.hgetall(self.retained)
        pipe.xrevrange(self.stream, count=1)
        try:
            retained, last = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ConnectionError(f"channels bus {self.url}: {exc}") from None
        for channel, value in retained.items():
            envelope, size = msgpack.unpackb(value)
            broker.received(channel.decode(), b"", Retained(envelope, size), False, deliver=False)
        if last:
            self.position = last[0][0].decode()
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks = [
            loop.create_task(self._read_forever()),
            loop.create_task(self._write_forever()),
        ]

    async def close(self) -> None:
        """Send what is queued, stop reading and disconnect."""
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(), self.timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for client in (self._writer, self._reader):
            with contextlib.suppress(Exception):
                await client.aclose()

    # ------------------------------------------------------------- publish

    def publish(self, channel: str, envelope: bytes, retain: Retained | None, clear: bool) -> None:
        kept = [retain.envelope, retain.size] if retain is not None else None
        fields = msgpack.packb([channel, envelope, kept, clear], use_bin_type=True)
        self._pending.append((channel, fields, retain, clear))
        if self._wake is not None:
            self._wake.set()

    async def _write_forever(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Append everything published so far: one pipelined round trip (a retained
        update rides in a MULTI with its entry)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        pipe = self._writer.pipeline(transaction=False)
        for channel, fields, retain, clear in pending:
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
            self._lost(len(pending), f"append failed: {exc}")
            return
        failed = sum(1 for result in results if isinstance(result, Exception))
        if failed:
            self._lost(len(pending), f"{failed} commands refused")

    def _lost(self, count: int, why: str) -> None:
        broker = self.broker
        if broker is not None:
            broker.stats.bus_lost += count
        log.warning("channels bus %s: %d publishes not delivered: %s", self.url, count, why)

    # ---------------------------------------------------------------- read

    async def _read_forever(self) -> None:
        broker = self.broker
        assert broker is not None
        while True:
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
                    channel, envelope, kept, clear = msgpack.unpackb(fields[b"e"])
                    retain = Retained(kept[0], kept[1]) if kept is not None else None
                    broker.received(channel, envelope, retain, clear)
