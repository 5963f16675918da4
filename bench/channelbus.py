"""``python -m bench.channelbus``: Redis pub/sub against a Redis stream for the channels
bus (issue 17), before the bus was written.

One publisher process sends ``--messages`` 64-byte messages (pipelined, ``--batch`` per
round trip, as the daemon sends one batch per loop iteration) to ``--processes``
subscriber processes, each with one Redis connection: one Redis message per publish per
process, whatever the number of sessions behind it. Two transports:

* ``pubsub``: ``PUBLISH`` on one channel, each process ``SUBSCRIBE``\\ d;
* ``stream``: ``XADD ... MAXLEN ~`` on one stream, each process in an ``XREAD BLOCK`` loop.

Prints deliveries/s (all processes together) and the publish-to-receipt latency
p50/p99 for each. A local redis-server is started on a free port (tests/redisserver.py)
and stopped by PID; everything is bounded (messages and a timeout per pass).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

CHANNEL = "bench:bus"
STREAM = "bench:bus:s"
TIMEOUT = 60.0
HEADER = struct.Struct("<dI")  # send time, index


async def _subscriber(url: str, mode: str, count: int, ready: Any, out: Any) -> None:
    client: Any = aioredis.Redis.from_url(url)
    latencies: list[float] = []
    deadline = time.monotonic() + TIMEOUT
    pubsub, last = client.pubsub(), "$"
    if mode == "pubsub":
        await pubsub.subscribe(CHANNEL)
        await pubsub.get_message(timeout=5.0)  # the subscribe confirmation
    ready.set()
    while len(latencies) < count and time.monotonic() < deadline:
        if mode == "pubsub":
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            payloads = [] if message is None else [message["data"]]
        else:
            found: Any = await client.xread({STREAM: last}, count=1000, block=1000)
            entries = [entry for _, batch in found for entry in batch]
            last = entries[-1][0] if entries else last
            payloads = [fields[b"m"] for _, fields in entries]
        latencies += [time.time() - HEADER.unpack_from(payload)[0] for payload in payloads]
    await pubsub.aclose()
    await client.aclose()
    out.put(latencies)


def _run_subscriber(url: str, mode: str, count: int, ready: Any, out: Any) -> None:
    asyncio.run(_subscriber(url, mode, count, ready, out))


async def _publish(url: str, mode: str, count: int, batch: int) -> None:
    client: Any = aioredis.Redis.from_url(url)
    padding = b"x" * (64 - HEADER.size)
    for first in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        for index in range(first, min(first + batch, count)):
            payload = HEADER.pack(time.time(), index) + padding
            if mode == "pubsub":
                pipe.publish(CHANNEL, payload)
            else:
                pipe.xadd(STREAM, {"m": payload}, maxlen=10_000, approximate=True)
        await pipe.execute()
    await client.aclose()


def one_pass(url: str, mode: str, processes: int, count: int, batch: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(processes)]
    procs = [ctx.Process(target=_run_subscriber, args=(url, mode, count, r, out)) for r in readies]
    for proc in procs:
        proc.start()
    for ready in readies:
        ready.wait(30.0)
    time.sleep(0.2)  # an XREAD with "$" must be blocking before the first XADD
    started = time.monotonic()
    asyncio.run(_publish(url, mode, count, batch))
    latencies = sorted(value for _ in procs for value in out.get(timeout=TIMEOUT + 10))
    elapsed = time.monotonic() - started
    for proc in procs:
        proc.join(10.0)
    received = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(received - 1, int(q * received))] * 1000 if received else 0.0

    return {
        "received": received,
        "expected": count * processes,
        "deliveries_per_s": received / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.channelbus", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.redisserver import RedisServer  # noqa: PLC0415 - the test fixture's server

    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        try:
            for number in range(args.passes):
                for mode in ("pubsub", "stream"):
                    r = one_pass(server.url, mode, args.processes, args.messages, args.batch)
                    print(
                        f"pass {number + 1} {mode:6}: {r['received']}/{r['expected']} received, "
                        f"{r['deliveries_per_s']:,.0f} deliveries/s, p50 {r['p50_ms']:.2f} ms, "
                        f"p99 {r['p99_ms']:.2f} ms",
                        flush=True,
                    )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
