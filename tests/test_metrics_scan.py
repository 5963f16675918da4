"""A scrape scans the sessions a slice per loop iteration (sessiond/metrics.py); sessions
that end while it runs must not be counted twice, or ``sessiond_messages_total`` goes
down at the next scrape (Prometheus reads that as a counter reset)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import sessiond_client
from prometheus_client.parser import text_string_to_metric_families
from sessiond_client.protocol import CloseCode

import sessiond
from sessiond import metrics
from sessiond.server import Server

TIMEOUT = 30.0


class Running:
    """The metrics' view of a daemon that serves *server* (what Daemon provides)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.app: Any = None
        self.draining = False

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"


async def echo(session: sessiond.Session) -> None:
    async for payload in session:
        await session.send(payload)


def messages_out(scraper: metrics.MetricsServer) -> float:
    _, _, body = scraper.respond("GET", "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "sessiond_messages":
            return sum(s.value for s in family.samples if s.labels == {"direction": "out"})
    raise AssertionError("no sessiond_messages")


async def test_a_session_ending_during_a_sliced_scan_is_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "SCAN_SLICE", 1)
    async with sessiond.serve(echo, "127.0.0.1", 0) as server:
        host, port = server.addresses[0][:2]
        clients = [await sessiond_client.connect(f"tcp://{host}:{port}") for _ in range(3)]
        for client in clients:
            await client.send(b"ping")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"ping"
        scraper = metrics.MetricsServer(Running(server))
        assert messages_out(scraper) == 3
        first = next(iter(server.sessions.values()))
        refresh = asyncio.ensure_future(scraper.collector.refresh())
        await asyncio.sleep(0)  # the first slice (the first session) is scanned
        assert not refresh.done()
        first.session.close(CloseCode.SESSION_REVOKED, "ended during the scan")
        async with asyncio.timeout(TIMEOUT):
            while server.stats.ended_messages_out == 0:
                await asyncio.sleep(0)
        await refresh
        during = messages_out(scraper)
        scraper.collector.scan = None
        after = messages_out(scraper)
        assert during <= after == 3  # never more than the messages there were
        for client in clients:
            with contextlib.suppress(sessiond_client.SessionLost):  # the one ended
                await client.close(timeout=1)
