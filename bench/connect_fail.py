"""``python -m bench.connect_fail``: how long the client's first ``connect()`` takes to fail
(issue 13): against a closed port, and against a TLS server whose CA the client does not
trust (with the system store loaded per call, and with a ready ``ssl=`` context).

Each case connects ``--count`` times (bounded, loopback only) and prints the median and
the maximum, with the error message the application gets.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sessiond_client

import sessiond
import sessiond.apps
from sessiond.tls import generate, server_context

from .processes import free_port


async def timed(url: str, count: int, **options: Any) -> str:
    """Median and maximum time for ``connect(url)`` to raise, and its message."""
    times: list[float] = []
    message = ""
    for _ in range(count):
        start = time.perf_counter()
        try:
            session = await sessiond_client.connect(url, **options)
        except sessiond_client.ConnectFailed as exc:
            message = str(exc)
        else:  # something answered: not the case this measures
            await session.close()
            raise SystemExit(f"{url}: connect() succeeded")
        times.append(time.perf_counter() - start)
    return (
        f"median {statistics.median(times) * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms: {message}"
    )


async def run(count: int) -> None:
    port = free_port()  # a port nothing listens on
    print("closed port:", await timed(f"tcp://127.0.0.1:{port}", count))
    with tempfile.TemporaryDirectory() as directory:
        certs = generate(Path(directory) / "certs", ["127.0.0.1"], [])
        context = server_context(certs.server_cert, certs.server_key)
        async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, ssl=context) as server:
            url = "tls://{}:{}".format(*server.addresses[0])
            print("unverified TLS server:", await timed(url, count))
            ready = sessiond_client.tls_context()  # the system store, loaded once
            print("unverified TLS server, ssl= given:", await timed(url, count, ssl=ready))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.connect_fail", description=__doc__)
    parser.add_argument("--count", type=int, default=20, help="connects per case")
    asyncio.run(run(parser.parse_args().count))
