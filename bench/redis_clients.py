"""``python -m bench.redis_clients``: client CPU per XADD of the store's hot path (issue 16),
redis-py's asyncio pipeline against ``hiredis.pack_command`` + ``hiredis.Reader`` on a
plain asyncio connection.

Each iteration appends one 64-byte entry for each of ``--sessions`` sessions in one
pipelined round trip, as the daemon does once per loop iteration. A local redis-server
is started on a free port (tests/redisserver.py) and stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aioredis

from tests.redisserver import RedisServer

PAYLOAD = b"x" * 64


def commands(sessions: int, iteration: int) -> list[tuple[Any, ...]]:
    return [
        ("XADD", f"b:{{{s:032x}}}:o", f"1-{iteration + 1}", "p", PAYLOAD, "c", iteration)
        for s in range(sessions)
    ]


def per_command(cpu: float, wall: float, count: int) -> str:
    return f"cpu {cpu / count * 1e6:.2f} us/XADD, wall {wall / count * 1e6:.2f} us/XADD"


async def with_redis_py(url: str, sessions: int, iterations: int) -> str:
    client = aioredis.Redis.from_url(url, single_connection_client=True)
    await client.flushall()
    cpu, wall = time.process_time(), time.perf_counter()
    for iteration in range(iterations):
        pipe = client.pipeline(transaction=False)
        for command in commands(sessions, iteration):
            pipe.execute_command(*command)
        await pipe.execute(raise_on_error=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await client.aclose()
    return per_command(cpu, wall, sessions * iterations)


async def with_hiredis(port: int, sessions: int, iterations: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hiredis.pack_command(("FLUSHALL",)))
    await reader.read(100)
    parser = hiredis.Reader()
    cpu, wall = time.process_time(), time.perf_counter()
    for iteration in range(iterations):
        writer.write(b"".join(hiredis.pack_command(c) for c in commands(sessions, iteration)))
        replies = 0
        while replies < sessions:
            parser.feed(await reader.read(1 << 16))
            while parser.gets() is not False:
                replies += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    writer.close()
    return per_command(cpu, wall, sessions * iterations)


async def run(sessions: int, iterations: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        try:
            for _ in range(repeat):
                print("redis-py:", await with_redis_py(server.url, sessions, iterations))
                print("hiredis: ", await with_hiredis(server.port, sessions, iterations))
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_clients", description=__doc__)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.sessions, args.iterations, args.repeat))


if __name__ == "__main__":
    main()
