"""Authentication over real sockets: token file, identity on resume, async authenticators,
the open authenticator's loopback rule, and the per-peer transport limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sessiond_client.protocol import (
    CloseCode,
    ConnectionState,
    FrameDecoder,
    SessionEnded,
    SessionLostEvent,
    SessionStarted,
    parse_frame,
)
from sessiond_client.protocol.frames import Close

import sessiond
import sessiond.apps
from sessiond.auth import (
    AuthenticationFailed,
    MutualTLSAuthenticator,
    OpenAuthenticator,
    Peer,
    TokenFileAuthenticator,
)
from sessiond.server import ServerConfig
from tests.coreclient import CoreClient


class TokenClient(CoreClient):
    """A CoreClient that presents credentials on every HELLO."""

    credentials: Any = None

    async def open(self, timeout: float = 5.0) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.conn = self.session.connect(self.now(), self.credentials)
        self.flush()
        await self.pump_until(
            lambda: self.conn is not None and self.conn.state is ConnectionState.OPEN, timeout
        )


def token_file(tmp_path: Path, tokens: dict[str, str]) -> Path:
    path = tmp_path / "tokens"
    lines = ["# identity sha256(token)"]
    lines += [f"{who} {TokenFileAuthenticator.hash_token(tok)}" for who, tok in tokens.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
async def token_server(tmp_path: Path) -> AsyncIterator[sessiond.Server]:
    auth = TokenFileAuthenticator(token_file(tmp_path, {"alice": "a-secret", "bob": "b-secret"}))
    config = ServerConfig(authenticator=auth)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        yield server


def client_for(server: sessiond.Server, credentials: Any) -> TokenClient:
    client = TokenClient(*server.addresses[0])
    client.credentials = credentials
    return client


async def test_token_grants_its_identity(token_server: sessiond.Server) -> None:
    client = client_for(token_server, {"token": "a-secret"})
    await client.open()
    (entry,) = token_server.sessions.values()
    assert entry.session.identity == "alice"
    client.send(b"hi")
    await client.pump_until(lambda: client.received == [b"hi"])
    await client.close()


async def test_unknown_token_is_refused_with_auth_failed(token_server: sessiond.Server) -> None:
    for credentials in ("wrong", None, {"token": 7}):
        client = client_for(token_server, credentials)
        await client.open()
        assert client.conn is not None and client.conn.close_code is CloseCode.AUTH_FAILED
        assert any(isinstance(e, SessionEnded) for e in client.events)
    assert not token_server.sessions


async def test_resume_as_another_identity_gets_a_new_session(
    token_server: sessiond.Server,
) -> None:
    client = client_for(token_server, "a-secret")
    await client.open()
    first = client.session.id
    await client.kill()
    client.credentials = "b-secret"  # same session credential, another identity
    await client.open()
    lost = [e for e in client.events if isinstance(e, SessionLostEvent)]
    assert lost and lost[0].reason is CloseCode.IDENTITY_MISMATCH
    started = [e for e in client.events if isinstance(e, SessionStarted)]
    assert started[-1].replaces is CloseCode.IDENTITY_MISMATCH
    assert client.session.id != first
    await client.close()


async def test_async_authenticator() -> None:
    async def check(credentials: Any, peer: Peer) -> str:
        await asyncio.sleep(0.01)
        if credentials != "let me in":
            raise AuthenticationFailed("no")
        return "async-user"

    config = ServerConfig(authenticator=check)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        good = client_for(server, "let me in")
        await good.open()
        good.send(b"x")
        await good.pump_until(lambda: good.received == [b"x"])
        assert [e.session.identity for e in server.sessions.values()] == ["async-user"]
        bad = client_for(server, "nope")
        await bad.open()
        assert bad.conn is not None and bad.conn.close_code is CloseCode.AUTH_FAILED
        await good.close()


def test_open_authenticator_is_loopback_only() -> None:
    auth = OpenAuthenticator()
    assert auth(None, Peer("127.0.0.1:5000", "127.0.0.1")) is None
    assert auth(None, Peer("[::1]:5000", "::1", "device-7")) == "device-7"
    with pytest.raises(AuthenticationFailed):
        auth(None, Peer("192.0.2.10:5000", "192.0.2.10"))  # a value only; nothing is contacted


def test_mutual_tls_authenticator_needs_a_certificate() -> None:
    auth = MutualTLSAuthenticator()
    assert auth("ignored", Peer("127.0.0.1:1", "127.0.0.1", "sensor-1")) == "sensor-1"
    with pytest.raises(AuthenticationFailed):
        auth("token", Peer("127.0.0.1:1", "127.0.0.1"))


def test_token_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("alice 00ff\n")
    with pytest.raises(ValueError, match="line 1"):
        TokenFileAuthenticator(path)
    with pytest.raises(ValueError, match="token file"):
        TokenFileAuthenticator(tmp_path / "missing")


async def test_transports_per_peer_limit() -> None:
    config = ServerConfig(max_transports_per_peer=2)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        host, port = server.addresses[0]
        held = [await asyncio.open_connection(host, port) for _ in range(2)]
        reader, writer = await asyncio.open_connection(host, port)
        reply = await asyncio.wait_for(reader.read(), 5.0)
        close = parse_frame(FrameDecoder(1 << 20).feed(reply)[-1])
        assert isinstance(close, Close) and close.code == CloseCode.LIMIT_EXCEEDED
        assert close.retry_after_ms > 0
        writer.close()
        for _, w in held:
            w.close()
        async with asyncio.timeout(10):  # the daemon notices they are gone: room again
            while server.per_host:
                await asyncio.sleep(0.01)
        client = CoreClient(host, port)
        await client.open()
        await client.close()


async def test_max_sessions_limit() -> None:
    config = ServerConfig(max_sessions=1)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        first = CoreClient(*server.addresses[0])
        await first.open()
        second = CoreClient(*server.addresses[0])
        await second.open()
        assert second.conn is not None and second.conn.close_code is CloseCode.LIMIT_EXCEEDED
        assert second.conn.retry_after > 0
        first.send(b"unaffected")
        await first.pump_until(lambda: first.received == [b"unaffected"])
        await first.close()
