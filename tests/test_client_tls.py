"""The library client over real TLS: it verifies the server by default, trusts a CA file
such as ``gen-cert`` writes, checks the hostname, presents a client certificate for
mutual TLS, and resumes over TLS after its transport is cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sessiond_client
from sessiond_client import CloseCode, ConnectFailed, ReconnectPolicy, SessionLost

import sessiond
import sessiond.apps
from sessiond.auth import MutualTLSAuthenticator
from sessiond.tls import GeneratedFiles, generate, server_context
from tests.faultproxy import FaultProxy
from tests.test_faults import CLIENT_PARAMS

FAST = ReconnectPolicy(base=0.01, cap=0.1)
GIVE_UP = ReconnectPolicy(base=0.01, cap=0.02, max_attempts=3)


@pytest.fixture
def certs(tmp_path: Path) -> GeneratedFiles:
    return generate(tmp_path / "certs", ["127.0.0.1", "localhost"], ["alice"])


@pytest.fixture
async def proxy(certs: GeneratedFiles) -> AsyncIterator[FaultProxy]:
    """A mutual-TLS-capable echo daemon (client certificates optional) behind the proxy."""
    context = server_context(certs.server_cert, certs.server_key)
    async with (
        sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, ssl=context) as server,
        FaultProxy(*server.addresses[0]) as fault_proxy,
    ):
        yield fault_proxy


def tls_url(proxy: FaultProxy) -> str:
    host, port = proxy.address
    return f"tls://{host}:{port}"


async def test_a_ca_file_is_trusted_and_the_session_resumes_over_tls(
    proxy: FaultProxy, certs: GeneratedFiles
) -> None:
    session = await sessiond_client.connect(
        tls_url(proxy), ca_file=certs.ca, params=CLIENT_PARAMS, policy=FAST
    )
    first_id = session.id
    for i in range(50):
        await session.send(f"m{i}".encode())
        if i in (10, 30):
            proxy.cut()
            await proxy.wait_connections(2 if i == 10 else 3)  # it reconnected over TLS
    async with asyncio.timeout(10):
        got = [await session.recv() for _ in range(50)]
    assert got == [f"m{i}".encode() for i in range(50)]
    assert session.id == first_id and len(proxy.connections) >= 3
    await session.close()


async def test_the_server_is_verified_by_default(proxy: FaultProxy) -> None:
    # The development CA is not in the system store: refused at once, not retried forever.
    with pytest.raises(SessionLost) as lost:
        await sessiond_client.connect(tls_url(proxy), params=CLIENT_PARAMS)
    assert lost.value.reason is CloseCode.TRANSPORT_LOST
    assert "certificate" in str(lost.value)
    assert len(proxy.connections) == 1


async def test_the_hostname_is_checked(proxy: FaultProxy, certs: GeneratedFiles) -> None:
    with pytest.raises(SessionLost) as lost:
        await sessiond_client.connect(
            tls_url(proxy), ca_file=certs.ca, server_hostname="elsewhere.example"
        )
    assert "mismatch" in str(lost.value).lower()


async def test_mutual_tls_presents_the_client_certificate(certs: GeneratedFiles) -> None:
    context = server_context(certs.server_cert, certs.server_key, certs.ca)
    identities: list[object] = []

    async def app(session: sessiond.Session) -> None:
        identities.append(session.identity)
        await sessiond.apps.echo(session)

    config = sessiond.ServerConfig(authenticator=MutualTLSAuthenticator())
    async with sessiond.serve(app, "127.0.0.1", 0, ssl=context, config=config) as server:
        host, port = server.addresses[0]
        alice = certs.clients[0]
        url = f"tls://{host}:{port}"
        async with await sessiond_client.connect(
            url, ca_file=certs.ca, cert_file=alice.cert, key_file=alice.key
        ) as session:
            await session.send(b"signed")
            assert await session.recv() == b"signed"
        assert identities == ["alice"]
        with pytest.raises(ConnectFailed, match="client certificate"):
            await sessiond_client.connect(url, ca_file=certs.ca)
        with pytest.raises(ConnectFailed, match=r"gave up after 3 attempts.*client certificate"):
            await sessiond_client.connect(
                url, ca_file=certs.ca, policy=GIVE_UP, wait_for_server=True
            )


def test_tls_context_needs_a_certificate_for_a_key(certs: GeneratedFiles) -> None:
    with pytest.raises(ValueError, match="key_file"):
        sessiond_client.tls_context(certs.ca, key_file=certs.clients[0].key)
