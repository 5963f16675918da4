"""Shared test configuration."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

from .redisserver import RedisServer

if TYPE_CHECKING:
    from sessiond.store.redisstore import RedisStore

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=100, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server without persistence, on a free port and a unix socket."""
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server with an append-only file (``everysec``)."""
    server = RedisServer(tmp_path, aof=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[RedisStore]]]:
    """Make started stores on the test's redis-server; all closed at the end."""
    made: list[RedisStore] = []

    async def make(url: str | None = None, **options: Any) -> RedisStore:
        from sessiond.store.redisstore import RedisStore  # noqa: PLC0415  (the [redis] extra)

        store = RedisStore(url or redis_server.url, "t:", **options)
        await store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def pytest_report_header() -> str:
    """Which receive path the run's transports use (tests/test_codec_compiled.py)."""
    from sessiond_client.protocol import codec  # noqa: PLC0415 (after the session's set-up)

    if codec.take_data_run is not None:
        return "sessiond receive path: compiled DATA loop (SESSIOND_PURE=1 for pure Python)"
    reason = "SESSIOND_PURE is set" if os.environ.get("SESSIOND_PURE") else "not built"
    return f"sessiond receive path: pure Python ({reason})"
