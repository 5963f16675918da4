"""TLS over real sockets on 127.0.0.1, with certificates from ``sessiond.tls.generate``:
echo and resume, mutual TLS, verification failures on the client, old protocol versions
and plaintext refused, certificate reload, and ``gen-cert`` / ``serve`` as subprocesses."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sessiond_client.protocol import ConnectionState, Params, Role, Session, SessionStarted

import sessiond
import sessiond.apps
import sessiond.server as server_module
from bench.processes import free_port
from sessiond.cli import ListenAddress, parse_listen
from sessiond.server import ServerConfig
from sessiond.tls import (
    CertificateReloader,
    GeneratedFiles,
    client_context,
    generate,
    peer_identity,
    read_certificate,
    server_context,
)
from tests.coreclient import CoreClient

HOSTS = ["127.0.0.1", "::1", "localhost"]
TIMEOUT = 5.0


@pytest.fixture
def certs(tmp_path: Path) -> GeneratedFiles:
    return generate(tmp_path / "certs", HOSTS, ["alice"])


@pytest.fixture
def other(tmp_path: Path) -> GeneratedFiles:
    """Another CA, with its own server and client certificates."""
    return generate(tmp_path / "other", HOSTS, ["mallory"])


@pytest.fixture
async def tls_server(certs: GeneratedFiles) -> AsyncIterator[sessiond.Server]:
    context = server_context(certs.server_cert, certs.server_key)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, ssl=context) as server:
        yield server


@pytest.fixture
async def mtls_server(certs: GeneratedFiles) -> AsyncIterator[sessiond.Server]:
    context = server_context(certs.server_cert, certs.server_key, certs.ca)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, ssl=context) as server:
        yield server


def tls_client(
    server: sessiond.Server, context: ssl.SSLContext, server_hostname: str | None = None
) -> CoreClient:
    host, port = server.addresses[0]
    return CoreClient(host, port, ssl=context, server_hostname=server_hostname)


def der(cert_file: Path) -> bytes:
    return read_certificate(cert_file).public_bytes(serialization.Encoding.DER)


def presented(client: CoreClient) -> bytes:
    """The certificate the server presented to *client*, DER."""
    assert client.writer is not None
    ssl_object = client.writer.get_extra_info("ssl_object")
    cert: bytes = ssl_object.getpeercert(binary_form=True)
    return cert


async def echoes(client: CoreClient, payload: bytes) -> None:
    client.send(payload)
    await client.pump_until(lambda: client.received[-1:] == [payload], TIMEOUT)


async def assert_refused(client: CoreClient) -> None:
    """The transport fails (TLS error, reset or EOF) without a session being opened."""
    try:
        await client.open(TIMEOUT)
    except TimeoutError:
        pytest.fail("the connection hung instead of failing")
    except OSError:  # ssl.SSLError, ConnectionResetError, ...
        pass
    else:  # TLS 1.3: the server refuses the client's certificate after the client's Finished
        assert client.conn is not None and client.conn.state is not ConnectionState.OPEN
    assert not any(isinstance(event, SessionStarted) for event in client.events)
    assert client.received == []
    if client.writer is not None:
        client.writer.transport.abort()


# ---------------------------------------------------------------- embedded


async def test_echo_over_tls_and_resume_after_killed_transport(
    tls_server: sessiond.Server, certs: GeneratedFiles
) -> None:
    client = tls_client(tls_server, client_context(certs.ca))
    await client.open(TIMEOUT)
    assert presented(client) == der(certs.server_cert)
    sent = [f"m{i}".encode() for i in range(300)]
    for payload in sent[:100]:
        client.send(payload)
    await client.kill()
    for payload in sent[100:200]:
        client.send(payload)  # queued while detached
    await client.open(TIMEOUT)
    for payload in sent[200:]:
        client.send(payload)
    await client.pump_until(lambda: len(client.received) >= len(sent), TIMEOUT)
    assert client.received == sent
    await client.close()


@pytest.mark.parametrize("shared_buffer", [True, False])
async def test_tls_transports_read_into_one_shared_buffer(
    certs: GeneratedFiles, shared_buffer: bool
) -> None:
    """``tls_shared_buffer`` (the daemon's ``tls.idle_memory = "compact"``): every TLS
    transport reads its ciphertext into one buffer; messages of several TLS records,
    interleaved between two sessions, arrive whole and in order either way."""
    context = server_context(certs.server_cert, certs.server_key)
    config = ServerConfig(tls_shared_buffer=shared_buffer)
    async with sessiond.serve(
        sessiond.apps.echo, "127.0.0.1", 0, ssl=context, config=config
    ) as server:
        clients = [tls_client(server, client_context(certs.ca)) for _ in range(2)]
        for client in clients:
            await client.open(TIMEOUT)
        sent = [bytes([i]) * (40_000 + i) for i in range(6)]  # 3 records each
        for payload in sent:
            for client in clients:
                client.send(payload)
        for client in clients:

            def done(client: CoreClient = client) -> bool:
                return len(client.received) >= len(sent)

            await client.pump_until(done, TIMEOUT)
            assert client.received == sent
        tls = [p.transport._ssl_protocol for p in server.protocols]  # type: ignore[union-attr]
        assert len(tls) == 2
        assert (tls[0]._ssl_buffer is tls[1]._ssl_buffer) is shared_buffer
        for client in clients:
            await client.close()


def test_shared_tls_buffers_are_one_per_thread() -> None:
    """Loops in two threads never fill the same buffer (the socket read and SSL_read run
    without the GIL); within a thread every transport gets the same one."""
    here = (server_module._shared_ciphertext_buffer()[0], server_module._tls_read_buffer())
    again = (server_module._shared_ciphertext_buffer()[0], server_module._tls_read_buffer())
    there: list[object] = []

    def other() -> None:
        there.extend(
            (server_module._shared_ciphertext_buffer()[0], server_module._tls_read_buffer())
        )

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert here[0] is again[0] and here[1] is again[1]
    assert here[0] is not there[0] and here[1] is not there[1]


async def test_ipv6_listener(certs: GeneratedFiles) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    context = server_context(certs.server_cert, certs.server_key)
    async with sessiond.serve(sessiond.apps.echo, "::1", 0, ssl=context) as server:
        client = tls_client(server, client_context(certs.ca))  # verified against IP SAN ::1
        await client.open(TIMEOUT)
        await echoes(client, b"over v6")
        await client.close()


async def test_mutual_tls_accepts_a_certificate_from_the_ca(
    mtls_server: sessiond.Server, certs: GeneratedFiles
) -> None:
    (alice,) = certs.clients
    client = tls_client(mtls_server, client_context(certs.ca, alice.cert, alice.key))
    await client.open(TIMEOUT)
    await echoes(client, b"hello")
    (entry,) = mtls_server.sessions.values()
    assert entry.session.identity == "alice"
    (protocol,) = mtls_server.protocols
    assert protocol.transport is not None
    assert peer_identity(protocol.transport.get_extra_info("ssl_object")) == "alice"
    await client.close()


async def test_mutual_tls_refuses_no_certificate_or_another_cas(
    mtls_server: sessiond.Server, certs: GeneratedFiles, other: GeneratedFiles
) -> None:
    (alice,) = certs.clients
    canary = tls_client(mtls_server, client_context(certs.ca, alice.cert, alice.key))
    await canary.open(TIMEOUT)
    (mallory,) = other.clients
    for context in (
        client_context(certs.ca),  # no client certificate
        client_context(certs.ca, mallory.cert, mallory.key),  # signed by another CA
    ):
        await assert_refused(tls_client(mtls_server, context))
        await echoes(canary, b"still here")
    assert len(mtls_server.sessions) == 1
    await canary.close()


async def test_client_refuses_an_untrusted_ca_and_a_wrong_hostname(
    tls_server: sessiond.Server, certs: GeneratedFiles, other: GeneratedFiles
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as untrusted:
        await tls_client(tls_server, client_context(other.ca)).open(TIMEOUT)
    assert "unable to get local issuer certificate" in str(untrusted.value.verify_message)
    wrong = tls_client(tls_server, client_context(certs.ca), server_hostname="wrong.example")
    with pytest.raises(ssl.SSLCertVerificationError) as mismatch:
        await wrong.open(TIMEOUT)
    assert "Hostname mismatch" in str(mismatch.value.verify_message)
    right = tls_client(tls_server, client_context(certs.ca), server_hostname="localhost")
    await right.open(TIMEOUT)
    await echoes(right, b"right name")
    await right.close()


async def test_tls_1_1_is_refused(tls_server: sessiond.Server, certs: GeneratedFiles) -> None:
    context = client_context(certs.ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # Let OpenSSL 3 really offer TLS 1.1 (its default security level forbids it); if it
    # still cannot, the handshake fails on our side, which is fine too: never succeeds.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(OSError) as failure:
        await tls_client(tls_server, context).open_transport(TIMEOUT)
    assert not isinstance(failure.value, TimeoutError)
    assert tls_server.protocols == set()  # the daemon never saw a transport
    client = tls_client(tls_server, client_context(certs.ca))
    await client.open(TIMEOUT)
    await echoes(client, b"1.2+")
    await client.close()


async def test_plaintext_on_the_tls_port_gets_no_frames(
    tls_server: sessiond.Server, certs: GeneratedFiles
) -> None:
    host, port = tls_server.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(Session(Role.CLIENT, Params()).connect(0.0).data_to_send())  # a HELLO
    reply = await asyncio.wait_for(reader.read(), TIMEOUT)  # to EOF: the daemon closed it
    assert reply[:1] in (b"", b"\x15")  # nothing, or a TLS alert record; no sessiond frame
    writer.close()
    assert tls_server.protocols == set()
    client = tls_client(tls_server, client_context(certs.ca))
    await client.open(TIMEOUT)
    await echoes(client, b"still serving")
    await client.close()


# ------------------------------------------------------------------ reload


async def test_reload_serves_the_new_certificate_to_new_connections(tmp_path: Path) -> None:
    live = generate(tmp_path / "live", HOSTS)
    new = generate(tmp_path / "new", HOSTS)
    first_ca = tmp_path / "first-ca.pem"
    shutil.copyfile(live.ca, first_ca)
    context = server_context(live.server_cert, live.server_key)
    reloader = CertificateReloader(context, live.server_cert, live.server_key)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, ssl=context) as server:
        before = tls_client(server, client_context(first_ca))
        await before.open(TIMEOUT)

        shutil.copyfile(new.server_cert, live.server_cert)  # the key is not there yet
        with pytest.raises(ValueError, match="does not match"):
            reloader.reload()
        probe = tls_client(server, client_context(first_ca))  # still the old certificate
        await probe.open(TIMEOUT)
        await probe.close()

        shutil.copyfile(new.server_key, live.server_key)
        assert reloader.reload().public_bytes(serialization.Encoding.DER) == der(new.server_cert)
        after = tls_client(server, client_context(new.ca))
        await after.open(TIMEOUT)
        assert presented(after) == der(new.server_cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_client(server, client_context(first_ca)).open(TIMEOUT)
        await echoes(before, b"opened before the reload")
        await echoes(after, b"opened after")
        await before.close()
        await after.close()


def test_reload_refuses_a_change_of_key_type(certs: GeneratedFiles, tmp_path: Path) -> None:
    context = server_context(certs.server_cert, certs.server_key)
    reloader = CertificateReloader(context, certs.server_cert, certs.server_key)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    certs.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match=r"key type changed \(EC to RSA\)"):
        reloader.reload()


# ------------------------------------------------------- contexts and files


def test_server_context_errors_name_the_file(certs: GeneratedFiles, tmp_path: Path) -> None:
    (alice,) = certs.clients
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    missing = tmp_path / "missing.pem"
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases: list[tuple[tuple[Any, ...], str]] = [
        ((missing, certs.server_key), f"certificate file {missing}: No such file"),
        ((certs.server_cert, missing), f"private key file {missing}: No such file"),
        ((garbage, certs.server_key), f"certificate file {garbage}: no PEM certificate"),
        ((certs.server_cert, garbage), f"private key file {garbage}: no usable PEM private key"),
        ((certs.server_cert, alice.key), f"{alice.key} does not match the certificate in"),
        ((certs.server_cert, encrypted), f"{encrypted}: encrypted"),  # and no prompt
        ((certs.server_cert, certs.server_key, garbage), f"client CA file {garbage}"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match="TLS") as error:
            server_context(*args)
        assert message in str(error.value)


def test_without_memfd_keys_load_through_a_private_directory(
    certs: GeneratedFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    context = server_context(certs.server_cert, certs.server_key)
    CertificateReloader(context, certs.server_cert, certs.server_key).reload()
    (alice,) = certs.clients
    with pytest.raises(ValueError, match="does not match"):
        server_context(certs.server_cert, alice.key)


def test_contexts_are_tls_1_2_and_up(certs: GeneratedFiles) -> None:
    server = server_context(certs.server_cert, certs.server_key)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2
    assert server.verify_mode is ssl.CERT_NONE
    assert server_context(certs.server_cert, certs.server_key, certs.ca).verify_mode is (
        ssl.CERT_REQUIRED
    )
    for client in (client_context(), client_context(certs.ca)):
        assert client.minimum_version is ssl.TLSVersion.TLSv1_2
        assert client.verify_mode is ssl.CERT_REQUIRED and client.check_hostname


class FakeSSLObject:
    def __init__(self, cert: dict[str, Any]) -> None:
        self.cert = cert

    def getpeercert(self) -> dict[str, Any]:
        return self.cert


@pytest.mark.parametrize(
    ("cert", "identity"),
    [
        ({"subject": ((("organizationName", "x"),), (("commonName", "bob"),))}, "bob"),
        ({"subject": (), "subjectAltName": (("IP Address", "1.2.3.4"), ("DNS", "b.ex"))}, "b.ex"),
        ({"subjectAltName": (("URI", "spiffe://ex/carol"),)}, "spiffe://ex/carol"),
        ({"subjectAltName": (("email", "d@ex"),)}, None),
        ({}, None),  # what getpeercert() returns when the certificate was not verified
    ],
)
def test_peer_identity(cert: dict[str, Any], identity: str | None) -> None:
    assert peer_identity(cast(ssl.SSLObject, FakeSSLObject(cert))) == identity
    assert peer_identity(None) is None


def test_generate_names_modes_and_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = generate(out, ["127.0.0.1", "[::1]", "Example.COM"], ["alice", "bob"])
    assert [p.name for p in files.paths()] == [
        "ca.pem",
        "server.pem",
        "server.key",
        "client-alice.pem",
        "client-alice.key",
        "client-bob.pem",
        "client-bob.key",
    ]
    for key in (files.server_key, *(c.key for c in files.clients)):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = read_certificate(files.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["example.com"]
    ca = read_certificate(files.ca)
    assert server.issuer == ca.subject
    client = read_certificate(files.clients[1].cert)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bob"

    with pytest.raises(FileExistsError, match="force"):
        generate(out, ["localhost"])
    assert read_certificate(files.ca) == ca  # untouched
    files.server_key.chmod(0o644)
    generate(out, ["localhost"], force=True)
    assert read_certificate(files.ca) != ca
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600  # replaced, not rewritten
    assert not list(out.glob(".*.tmp"))

    for hosts, names in (([], []), (["bad host"], []), (["ok"], ["../escape"])):
        with pytest.raises(ValueError):
            generate(tmp_path / "bad", hosts, names)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:7420", ListenAddress("tcp", "127.0.0.1", 7420)),
        ("tcp://0.0.0.0:1", ListenAddress("tcp", "0.0.0.0", 1)),
        ("tls://127.0.0.1:7443", ListenAddress("tls", "127.0.0.1", 7443)),
        ("tls://[::1]:7443", ListenAddress("tls", "::1", 7443)),
        ("[::]:7420", ListenAddress("tcp", "::", 7420)),
        ("tls://localhost:0", ListenAddress("tls", "localhost", 0)),
    ],
)
def test_parse_listen(value: str, expected: ListenAddress) -> None:
    assert parse_listen(value) == expected
    assert parse_listen(str(expected)) == expected


@pytest.mark.parametrize(
    "value", ["udp://127.0.0.1:1", "tls://::1:7443", "tls://[nope]:1", "tls://:1", "h:70000", "h"]
)
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(Exception, match=r"HOST:PORT|IPv6"):
        parse_listen(value)


# ------------------------------------------------------------- subprocesses


def sessiond_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_gen_cert_cli(tmp_path: Path) -> None:
    out = tmp_path / "dev certs"
    args = ["gen-cert", "--host", "127.0.0.1", "--host", "localhost", "--out", str(out)]
    result = sessiond_cli(*args, "--client", "alice")
    assert result.returncode == 0, result.stderr
    names = ["ca.pem", "server.pem", "server.key", "client-alice.pem", "client-alice.key"]
    for name in names:
        assert str(out / name) in result.stdout
    for name in ("server.key", "client-alice.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert "sessiond serve --listen tls://127.0.0.1:7443 --tls-cert" in result.stdout
    assert "--tls-client-ca" in result.stdout
    server_context(out / "server.pem", out / "server.key", out / "ca.pem")

    before = {name: (out / name).read_bytes() for name in names}
    refused = sessiond_cli(*args)
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert {name: (out / name).read_bytes() for name in names} == before
    replaced = sessiond_cli(*args, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "server.key").read_bytes() != before["server.key"]


def test_serve_tls_needs_cert_and_key(certs: GeneratedFiles) -> None:
    result = sessiond_cli("serve", "--listen", "tls://127.0.0.1:0")
    assert result.returncode == 2
    assert "--tls-cert" in result.stderr and "--tls-key" in result.stderr
    result = sessiond_cli(
        "serve", "--listen", "tls://127.0.0.1:0", "--tls-cert", str(certs.server_cert)
    )
    assert result.returncode == 2 and "needs --tls-key" in result.stderr
    result = sessiond_cli(
        "serve",
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.clients[0].key),
    )
    assert result.returncode == 2 and "does not match" in result.stderr


async def open_when_up(client: CoreClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            await client.open(TIMEOUT)
            return
        except ConnectionRefusedError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            await asyncio.sleep(0.05)


async def test_serve_tls_subprocess_reloads_on_sighup(tmp_path: Path) -> None:
    live = generate(tmp_path / "live", HOSTS)
    new = generate(tmp_path / "new", HOSTS)
    first_ca = tmp_path / "first-ca.pem"
    shutil.copyfile(live.ca, first_ca)
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "sessiond", "serve", "--app", "echo"),
            *("--listen", f"tls://127.0.0.1:{port}"),
            *("--tls-cert", str(live.server_cert), "--tls-key", str(live.server_key)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        before = CoreClient("127.0.0.1", port, ssl=client_context(first_ca))
        await open_when_up(before, proc)
        await echoes(before, b"ping")

        shutil.copyfile(new.server_key, live.server_key)
        shutil.copyfile(new.server_cert, live.server_cert)
        proc.send_signal(signal.SIGHUP)
        after = CoreClient("127.0.0.1", port, ssl=client_context(new.ca))
        deadline = time.monotonic() + 10
        while True:  # the signal is handled asynchronously
            try:
                await after.open(TIMEOUT)
                break
            except ssl.SSLCertVerificationError:
                assert time.monotonic() < deadline, "still the old certificate"
                await asyncio.sleep(0.05)
        assert presented(after) == der(new.server_cert)
        await echoes(after, b"new certificate")
        await echoes(before, b"opened before the reload")
        await before.close()
        await after.close()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    log = proc.stdout.read().decode()
    assert f"listening on tls://127.0.0.1:{port}" in log
    assert "SIGHUP: reloaded TLS certificate" in log
