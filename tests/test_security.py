"""Security (issue 6): where IDs and credentials come from, how they are compared, resumes
refused with the documented codes, TLS versions and verification, and no secret in logs.

* Session IDs (16 bytes) and resume credentials (32 bytes) are drawn from ``secrets``,
  every one distinct, rotated on every resume (protocol.md §10.1, §10.2).
* Resume credentials are compared as SHA-256 digests with ``hmac.compare_digest``, and
  bearer tokens with ``compare_digest`` against every entry (no early exit).
* Resume with a wrong credential: CREDENTIAL_INVALID; with a rotated one once the
  newer one was confirmed: CREDENTIAL_REUSED, the session ends and it is logged
  (but the previous one is accepted while unconfirmed, §10.3); with another identity's
  credential: CREDENTIAL_INVALID; with the right credential but another token or client
  certificate: IDENTITY_MISMATCH. The owner keeps its session in every case but theft.
* TLS: ClientHellos of TLS 1.0 and 1.1 are refused (written byte by byte, so the local
  OpenSSL's own policy cannot hide the answer; a TLS 1.2 one is answered), a Python
  client forced to 1.0/1.1 fails, ``openssl s_client`` shows TLS 1.3 and 1.2 negotiated
  with a verified certificate against ``sessiond serve`` and 1.0/1.1 refused, a plaintext
  client on the TLS port gets no frame and the daemon carries on; the library client
  sends no credential to a server it cannot verify (unknown CA, wrong hostname).
* ``sessiond serve --log-level DEBUG`` in text and JSON: the tokens, their hashes, the
  payloads and the resume credentials used never appear in the log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import types
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sessiond_client
import sessiond_client.protocol
from sessiond_client import ReconnectPolicy, SessionLost
from sessiond_client.protocol import (
    CloseCode,
    Connection,
    FrameDecoder,
    Params,
    Role,
    Session,
    SessionEnded,
    SessionLostEvent,
    SessionResumed,
    SessionStarted,
    parse_frame,
)
from sessiond_client.protocol.codec import encode_data
from sessiond_client.protocol.frames import Close, Frame, Hello, Resume, Welcome

import sessiond
import sessiond.apps
from bench.processes import free_port
from sessiond.auth import (
    AuthenticationFailed,
    MutualTLSAuthenticator,
    Peer,
    TokenFileAuthenticator,
)
from sessiond.server import ServerConfig
from sessiond.tls import GeneratedFiles, client_context, generate, server_context
from tests.coreclient import CoreClient
from tests.test_auth import TokenClient, client_for, token_file
from tests.test_fuzz import output_frames
from tests.test_tls import HOSTS, echoes, open_when_up, tls_client

TIMEOUT = 5.0
NOW = 1000.0
ALICE_TOKEN = "alice-tok-5f0c9e1b7d3a"
BOB_TOKEN = "bob-tok-8e2a41c6f9d7"


# ---------------------------------------------------------------- where IDs come from


def test_session_ids_and_credentials_are_drawn_from_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[bytes] = []
    real = secrets.token_bytes

    def recording(nbytes: int | None = None) -> bytes:
        value = real(nbytes)
        drawn.append(value)
        return value

    monkeypatch.setattr(secrets, "token_bytes", recording)
    client = Session(Role.CLIENT, Params())
    c_conn = client.connect(NOW)
    s_conn = Connection.server(Params(), NOW)
    s_conn.receive_data(c_conn.data_to_send(), NOW)
    server = s_conn.accept(NOW, "alice")
    assert server is not None
    welcomes = [f for f in output_frames(s_conn.data_to_send()) if isinstance(f, Welcome)]
    assert len(welcomes) == 1
    first = welcomes[0]
    assert (len(first.session_id), len(first.credential)) == (16, 32)
    assert drawn == [first.session_id, first.credential]  # nothing else, from secrets

    c_conn.receive_data(first.encode(), NOW)  # the client takes it, then loses the transport
    c_conn.connection_lost(NOW)
    s_conn.connection_lost(NOW)
    c_conn = client.connect(NOW)
    s_conn = Connection.server(Params(), NOW)
    s_conn.receive_data(c_conn.data_to_send(), NOW)
    assert s_conn.accept(NOW, "alice", server) is server
    (second,) = [f for f in output_frames(s_conn.data_to_send()) if isinstance(f, Welcome)]
    assert second.resumed and second.session_id == first.session_id
    # A resume's credential is derived from the one presented and a salt drawn from
    # secrets (protocol.md §10.1): HMAC-SHA256(salt, presented).
    (salt,) = drawn[2:]
    assert second.credential == hmac.new(salt, first.credential, hashlib.sha256).digest()
    assert second.credential != first.credential


def test_the_protocol_core_has_no_other_source_of_randomness() -> None:
    """``random`` is predictable: no module of the protocol core may even import it."""
    package = Path(sessiond_client.protocol.__file__).parent
    for path in package.glob("*.py"):
        module = sys.modules.get(f"sessiond_client.protocol.{path.stem}")
        if isinstance(module, types.ModuleType):
            assert "random" not in vars(module), path
        source = path.read_text()
        assert "import random" not in source and "from random" not in source, path
        if path.name != "credentials.py":  # the one place IDs and credentials are made
            assert "urandom" not in source and "token_bytes" not in source, path


async def test_ids_and_credentials_on_the_wire_are_distinct_and_rotate() -> None:
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0) as server:
        seen: list[bytes] = []
        ids: set[bytes] = set()
        for _ in range(20):
            client = CoreClient(*server.addresses[0])
            await client.open()
            snapshot = client.session.snapshot()
            assert snapshot is not None
            assert (len(snapshot.session_id), len(snapshot.credential)) == (16, 32)
            ids.add(snapshot.session_id)
            seen.append(snapshot.credential)
            for _rotation in range(5):  # every resume brings a new credential
                await client.kill()
                await client.open()
                assert isinstance(client.events[-1], SessionResumed)
                rotated = client.session.snapshot()
                assert rotated is not None and rotated.session_id == snapshot.session_id
                seen.append(rotated.credential)
            await client.close()
        assert len(ids) == 20
        assert len(set(seen)) == len(seen) == 120


# ---------------------------------------------------------------- constant time


@contextlib.contextmanager
def recording_compare_digest(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, Any]]]:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    yield calls


def test_resume_credentials_are_compared_as_digests_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = Session(Role.CLIENT, Params())
    c_conn = client.connect(NOW)
    s_conn = Connection.server(Params(), NOW)
    s_conn.receive_data(c_conn.data_to_send(), NOW)
    server = s_conn.accept(NOW, "alice")
    c_conn.receive_data(s_conn.data_to_send(), NOW)
    c_conn.connection_lost(NOW)
    s_conn.connection_lost(NOW)
    snapshot = client.snapshot()
    assert server is not None and snapshot is not None
    for presented, resumed in ((secrets.token_bytes(32), False), (snapshot.credential, True)):
        forged = Session.restore(dataclasses.replace(snapshot, credential=presented))
        conn = forged.connect(NOW)
        s_conn = Connection.server(Params(), NOW)
        s_conn.receive_data(conn.data_to_send(), NOW)
        with recording_compare_digest(monkeypatch) as calls:
            result = s_conn.accept(NOW, "alice", server)
        monkeypatch.undo()
        assert (result is server) is resumed
        assert calls, "no constant-time comparison"
        expected = hashlib.sha256(presented).digest()  # stored and compared: digests only
        for a, b in calls:
            assert a == expected and isinstance(b, bytes) and len(b) == 32
            assert presented not in (a, b)
        s_conn.connection_lost(NOW)


def test_token_file_compares_every_entry_whatever_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = {f"user{i}": f"token-{i}" for i in range(8)}
    auth = TokenFileAuthenticator(token_file(tmp_path, tokens))
    peer = Peer("127.0.0.1:1", "127.0.0.1")
    for token, identity in (("token-0", "user0"), ("token-7", "user7"), ("nope", None)):
        with recording_compare_digest(monkeypatch) as calls:
            try:
                got = auth(token, peer)
            except AuthenticationFailed:
                got = None
        monkeypatch.undo()
        assert got == identity
        assert len(calls) == len(tokens), "an early exit would time the match's position"


# ---------------------------------------------------------------- refused resumes


@pytest.fixture
async def token_server(tmp_path: Path) -> AsyncIterator[sessiond.Server]:
    path = token_file(tmp_path, {"alice": ALICE_TOKEN, "bob": BOB_TOKEN})
    config = ServerConfig(authenticator=TokenFileAuthenticator(path))
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, config=config) as server:
        yield server


def forged_client(
    base: CoreClient,
    credentials: Any,
    credential: bytes | None = None,
    tls: ssl.SSLContext | None = None,
) -> CoreClient:
    """A client presenting *base*'s session (ID and position) with *credential* (by
    default *base*'s current one), *credentials* in its HELLO (a token, or None) and,
    over TLS, the client certificate of *tls* (by default *base*'s context)."""
    snapshot = base.session.snapshot()
    assert snapshot is not None
    if credential is not None:
        snapshot = dataclasses.replace(snapshot, credential=credential)
    context = tls or base.ssl
    forged: CoreClient
    if credentials is None:
        forged = CoreClient(base.host, base.port, ssl=context, server_hostname=base.server_hostname)
    else:
        assert context is None, "TokenClient speaks TCP only"
        forged = token_client = TokenClient(base.host, base.port)
        token_client.credentials = credentials
    forged.session = Session.restore(snapshot, base.session.params)
    return forged


def refusal(client: CoreClient) -> CloseCode:
    """The reason the client was given a new session instead of the one it presented."""
    lost = [e for e in client.events if isinstance(e, SessionLostEvent)]
    started = [e for e in client.events if isinstance(e, SessionStarted)]
    assert len(lost) == 1 and len(started) == 1, client.events
    assert started[0].replaces is lost[0].reason
    assert started[0].session_id != lost[0].session_id
    return lost[0].reason


async def owner_still_resumes(owner: CoreClient, payload: bytes) -> None:
    await owner.kill()
    await owner.open(TIMEOUT)
    assert isinstance(owner.events[-1], SessionResumed), owner.events[-3:]
    await echoes(owner, payload)


async def test_wrong_credential_gets_credential_invalid(token_server: sessiond.Server) -> None:
    owner = client_for(token_server, ALICE_TOKEN)
    await owner.open()
    await echoes(owner, b"mine")
    for credential in (secrets.token_bytes(32), bytes(32), b"\xff" * 32):
        thief = forged_client(owner, ALICE_TOKEN, credential)  # even with the owner's token
        await thief.open()
        assert refusal(thief) is CloseCode.CREDENTIAL_INVALID
        await echoes(thief, b"a session of its own")
        await thief.close()
    await echoes(owner, b"still attached")
    await owner_still_resumes(owner, b"and resumable")
    await owner.close()


async def test_a_rotated_credential_is_theft_ending_the_session_and_logged(
    token_server: sessiond.Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sessiond")
    owner = client_for(token_server, ALICE_TOKEN)
    await owner.open()
    sid = owner.session.id
    assert sid is not None
    await echoes(owner, b"one")
    first = owner.session.snapshot()
    assert first is not None

    # §10.3: the previous credential while unconfirmed is the owner who lost the WELCOME.
    host, port = owner.host, owner.port
    await owner.kill()
    hello = resume_hello(first.session_id, first.credential, first.consumed, ALICE_TOKEN)
    frames = await exchange_raw(host, port, hello, hang_up=True)  # WELCOME, then nothing
    assert isinstance(frames[0], Welcome) and frames[0].resumed
    owner.session = Session.restore(first, owner.session.params)
    await owner.open()  # the same, previous, credential again: still accepted
    assert isinstance(owner.events[-1], SessionResumed)
    await echoes(owner, b"two")  # and now confirmed

    thief = forged_client(owner, ALICE_TOKEN, first.credential)
    await thief.open()
    assert refusal(thief) is CloseCode.CREDENTIAL_REUSED
    await owner.pump_until(lambda: owner.conn is not None and owner.conn.closed, TIMEOUT)
    assert owner.conn is not None and owner.conn.close_code is CloseCode.CREDENTIAL_REUSED
    assert [e.code for e in owner.events if isinstance(e, SessionEnded)] == [
        CloseCode.CREDENTIAL_REUSED
    ]
    assert sid not in token_server.sessions
    assert token_server.sessions.missing_reason(sid) is CloseCode.CREDENTIAL_REUSED
    await thief.close()
    ended = [
        record
        for record in caplog.records
        if getattr(record, "fields", {}).get("session") == sid.hex()[:8]
        and getattr(record, "fields", {}).get("code") == "CREDENTIAL_REUSED"
    ]
    assert ended, [r.getMessage() for r in caplog.records]
    assert "CREDENTIAL_REUSED" in ended[0].getMessage()
    warned = [
        record
        for record in caplog.records
        if getattr(record, "fields", {}).get("event") == "credential-reused"
    ]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert warned[0].__dict__["fields"]["session"] == sid.hex()[:8]


async def test_another_identitys_credential_is_refused(token_server: sessiond.Server) -> None:
    alice = client_for(token_server, ALICE_TOKEN)
    bob = client_for(token_server, BOB_TOKEN)
    await alice.open()
    await bob.open()
    await echoes(alice, b"alice")
    bob_snapshot = bob.session.snapshot()
    assert bob_snapshot is not None

    # Bob presents his own, valid, credential for Alice's session.
    cross = forged_client(alice, BOB_TOKEN, bob_snapshot.credential)
    await cross.open()
    assert refusal(cross) is CloseCode.CREDENTIAL_INVALID
    await cross.close()
    # Bob presents Alice's credential (stolen), authenticated as himself.
    stolen = forged_client(alice, BOB_TOKEN)
    await stolen.open()
    assert refusal(stolen) is CloseCode.IDENTITY_MISMATCH
    await stolen.close()

    await echoes(bob, b"bob unaffected")
    await owner_still_resumes(alice, b"alice unaffected")
    await alice.close()
    await bob.close()


@pytest.fixture
def certs(tmp_path: Path) -> GeneratedFiles:
    return generate(tmp_path / "certs", HOSTS, ["alice", "mallory"])


async def test_valid_credential_with_another_client_certificate_is_identity_mismatch(
    certs: GeneratedFiles,
) -> None:
    context = server_context(certs.server_cert, certs.server_key, certs.ca)
    config = ServerConfig(authenticator=MutualTLSAuthenticator())
    alice_cert, mallory_cert = certs.clients
    async with sessiond.serve(
        sessiond.apps.echo, "127.0.0.1", 0, ssl=context, config=config
    ) as server:
        alice = tls_client(
            server, client_context(certs.ca, alice_cert.cert, alice_cert.key), "localhost"
        )
        await alice.open(TIMEOUT)
        await echoes(alice, b"signed by alice")
        mallory_context = client_context(certs.ca, mallory_cert.cert, mallory_cert.key)
        mallory = forged_client(alice, None, tls=mallory_context)  # Alice's credential
        await mallory.open(TIMEOUT)
        assert refusal(mallory) is CloseCode.IDENTITY_MISMATCH
        identities = sorted(entry.session.identity for entry in server.sessions.values())
        assert identities == ["alice", "mallory"]
        await mallory.close()
        await owner_still_resumes(alice, b"alice unaffected")
        await alice.close()


def resume_hello(session_id: bytes, credential: bytes, received: int, token: Any) -> bytes:
    return Hello(
        (1,), 15000, 1024, 1 << 20, 1 << 20, 0, token, Resume(session_id, credential, received)
    ).encode()


async def exchange_raw(
    host: str, port: int, opening: bytes, *, hang_up: bool = False
) -> list[Frame]:
    """Send *opening* on a fresh connection and return the frames of the answer (up to
    WELCOME or CLOSE). With *hang_up*, reset the connection at once after WELCOME, so the
    daemon gets nothing more: as if the WELCOME had been lost on the way."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(opening)
    decoder = FrameDecoder(1 << 20)
    frames: list[Frame] = []
    async with asyncio.timeout(TIMEOUT):
        while not any(isinstance(f, Welcome | Close) for f in frames):
            data = await reader.read(65536)
            assert data, frames
            frames += [parse_frame(frame) for frame in decoder.feed(data)]
    if hang_up:
        writer.transport.abort()
    else:
        writer.write(Close(CloseCode.NORMAL, "").encode())
        writer.close()
    return frames


# ---------------------------------------------------------------- TLS


def client_hello(version: int) -> bytes:
    """A TLS ClientHello record offering only *version* (no supported_versions extension)."""
    suites = [0xC02B, 0xC02F, 0xC009, 0xC013, 0x002F, 0x0035]
    body = struct.pack(">H", version) + secrets.token_bytes(32) + b"\x00"
    body += struct.pack(">H", 2 * len(suites)) + b"".join(struct.pack(">H", s) for s in suites)
    body += b"\x01\x00"  # no compression
    groups = struct.pack(">HHHHH", 0x000A, 6, 4, 23, 24)  # secp256r1, secp384r1
    points = struct.pack(">HHBB", 0x000B, 2, 1, 0)
    signatures = struct.pack(">HHHHHH", 0x000D, 8, 6, 0x0403, 0x0804, 0x0401)
    extensions = groups + points + signatures
    body += struct.pack(">H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


@pytest.fixture
async def tls_server(certs: GeneratedFiles) -> AsyncIterator[sessiond.Server]:
    context = server_context(certs.server_cert, certs.server_key)
    async with sessiond.serve(sessiond.apps.echo, "127.0.0.1", 0, ssl=context) as server:
        yield server


async def first_bytes(host: str, port: int, data: bytes) -> bytes:
    """What the server answers to *data* first (b"" if it closes without a word)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    try:
        async with asyncio.timeout(TIMEOUT):
            return await reader.read(5)
    except ConnectionResetError:
        return b""
    finally:
        writer.transport.abort()


async def test_tls_1_0_and_1_1_client_hellos_are_refused(
    tls_server: sessiond.Server, certs: GeneratedFiles
) -> None:
    host, port = tls_server.addresses[0]
    canary = tls_client(tls_server, client_context(certs.ca))
    await canary.open(TIMEOUT)
    for version in (0x0301, 0x0302):  # TLS 1.0, TLS 1.1
        answer = await first_bytes(host, port, client_hello(version))
        # Closed without a ServerHello: nothing, or a fatal alert record.
        assert answer in (b"",) or answer[:1] == b"\x15", answer
        await echoes(canary, b"still serving")
    answer = await first_bytes(host, port, client_hello(0x0303))  # the control: TLS 1.2
    assert answer[:3] == b"\x16\x03\x03", "the same ClientHello, as TLS 1.2, is answered"
    assert len(tls_server.protocols) == 1  # only the canary ever reached the daemon
    await canary.close()


async def test_a_python_client_forced_to_tls_1_0_or_1_1_fails(
    tls_server: sessiond.Server, certs: GeneratedFiles
) -> None:
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        context = client_context(certs.ca)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
            context.maximum_version = version
        # OpenSSL 3's default security level forbids these versions: lower it, so that the
        # client really offers them. Should this OpenSSL still refuse to, the connection
        # fails on our side, which the raw ClientHello test above does not depend on.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises(OSError) as failure:
            await tls_client(tls_server, context).open_transport(TIMEOUT)
        assert not isinstance(failure.value, TimeoutError)
    assert tls_server.protocols == set()


async def test_credentials_are_never_sent_to_a_server_the_client_cannot_verify(
    tmp_path: Path,
) -> None:
    """A TLS server that records whatever the client sends once the handshake is done:
    with an unknown CA, or a certificate for another name, the library client sends
    nothing (its token stays home); with the right CA and name it sends its HELLO."""
    trusted = generate(tmp_path / "trusted", ["127.0.0.1"])
    elsewhere = generate(tmp_path / "elsewhere", ["sessiond.example"])
    untrusted = generate(tmp_path / "untrusted", ["127.0.0.1"])
    token = "tok-never-leaves-" + secrets.token_hex(8)
    cases = [
        (untrusted, trusted.ca, False),  # the client's CA did not sign it
        (elsewhere, elsewhere.ca, False),  # signed by the right CA, for another host
        (trusted, trusted.ca, True),  # the control: verified, so the HELLO goes out
    ]
    for served, ca, verified in cases:
        received = bytearray()

        class Recorder(asyncio.Protocol):
            def __init__(self, into: bytearray = received) -> None:
                self.into = into

            def data_received(self, data: bytes) -> None:
                self.into.extend(data)

        context = server_context(served.server_cert, served.server_key)
        loop = asyncio.get_running_loop()
        rogue = await loop.create_server(Recorder, "127.0.0.1", 0, ssl=context)
        port = rogue.sockets[0].getsockname()[1]
        async with rogue:
            attempt = sessiond_client.connect(
                f"tls://127.0.0.1:{port}",
                ca_file=ca,
                credentials={"token": token},
                policy=ReconnectPolicy(base=0.01, cap=0.02, max_attempts=1),
                params=Params(handshake_timeout=0.5),
            )
            with pytest.raises(SessionLost):
                await attempt
            if verified:
                assert token.encode() in bytes(received)  # the probe sees a HELLO
            else:
                assert bytes(received) == b"", "application data sent to an unverified server"


# ---------------------------------------------------------------- openssl s_client


@contextlib.contextmanager
def tls_daemon(certs: GeneratedFiles, log: Path, *args: str) -> Iterator[tuple[Any, int]]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "sessiond", "serve", "--listen", f"tls://127.0.0.1:{port}"),
                *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
                *("--app", "echo", *args),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield proc, port
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


async def s_client(port: int, ca: Path, *options: str) -> tuple[int, str]:
    """``openssl s_client`` to 127.0.0.1:*port*, nothing on stdin; (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca)),
        *("-servername", "localhost", "-verify_return_error", "-brief", *options),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed (apt openssl)")
async def test_openssl_s_client_against_sessiond_serve(
    certs: GeneratedFiles, tmp_path: Path
) -> None:
    """Debian's ``openssl s_client`` against the real daemon: TLS 1.3 by default and 1.2 on
    request, each with the certificate verified; 1.0 and 1.1 offered and refused; a
    certificate check for the wrong name fails; then a plaintext client on the TLS port
    gets no sessiond frame, and the daemon carries on."""
    with tls_daemon(certs, tmp_path / "daemon.log") as (proc, port):
        canary = CoreClient("127.0.0.1", port, ssl=client_context(certs.ca))
        await open_when_up(canary, proc)
        await echoes(canary, b"before")
        shown: dict[str, str] = {}
        for flag, version in (("", "TLSv1.3"), ("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
            options = ["-verify_hostname", "localhost", *([flag] if flag else [])]
            code, out = await s_client(port, certs.ca, *options)
            assert code == 0, out
            assert f"Protocol version: {version}" in out, out
            assert "Verification: OK" in out, out
            shown[flag or "(default)"] = version
        for flag, name in (("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1")):
            code, out = await s_client(
                port, certs.ca, flag, "-cipher", "DEFAULT@SECLEVEL=0", "-msg"
            )
            assert code != 0 and "CONNECTION ESTABLISHED" not in out, out
            assert "Protocol version" not in out, out
            if f">>> {name}, Handshake" not in out or "ClientHello" not in out:
                pytest.fail(f"this openssl could not even offer {name}: {out[-500:]}")
            shown[flag] = "refused"
        code, out = await s_client(port, certs.ca, "-verify_hostname", "elsewhere.example")
        assert code != 0 and "hostname mismatch" in out.lower(), out

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(Session(Role.CLIENT, Params()).connect(0.0).data_to_send())  # a HELLO
        try:
            async with asyncio.timeout(TIMEOUT):
                reply = await reader.read()
        except ConnectionResetError:
            reply = b""
        writer.close()
        assert reply[:1] in (b"", b"\x15"), reply  # nothing, or a TLS alert: never a frame
        await echoes(canary, b"after")
        await canary.close()
    print(f"\nopenssl s_client against sessiond serve: {shown}")


# ---------------------------------------------------------------- no secret in logs


@dataclasses.dataclass
class Secrets:
    """Everything that must never reach a log line, in the forms it could take there."""

    values: list[bytes] = dataclasses.field(default_factory=list)

    def add(self, value: bytes | str) -> None:
        raw = value.encode() if isinstance(value, str) else value
        self.values.append(raw)

    def forms(self) -> Iterator[str]:
        for raw in self.values:
            yield raw.hex()
            yield base64.b64encode(raw).decode()
            yield repr(raw)[2:-1]
            with contextlib.suppress(UnicodeDecodeError):
                yield raw.decode()

    def found_in(self, text: str) -> list[str]:
        return [form for form in self.forms() if len(form) >= 8 and form in text]


async def run_sessions_with_secrets(port: int, proc: Any, secret: Secrets) -> None:
    """Sessions that succeed, resume, fail authentication, forge and steal credentials,
    and break the protocol, each carrying tokens and payloads recorded in *secret*."""
    for token in (ALICE_TOKEN, BOB_TOKEN):
        secret.add(token)
        secret.add(TokenFileAuthenticator.hash_token(token))
    alice = TokenClient("127.0.0.1", port)
    alice.credentials = {"token": ALICE_TOKEN}
    await open_when_up(alice, proc)
    for i in range(5):
        payload = f"payload-{i}-{secrets.token_hex(8)}".encode()
        secret.add(payload)
        await echoes(alice, payload)
    first = alice.session.snapshot()
    assert first is not None
    secret.add(first.credential)
    await alice.kill()
    await alice.open()  # resumed: a new credential
    current = alice.session.snapshot()
    assert current is not None
    secret.add(current.credential)
    await echoes(alice, b"after resume " + secrets.token_hex(8).encode())
    secret.add(alice.received[-1])

    wrong = TokenClient("127.0.0.1", port)
    wrong.credentials = "wrong-token-" + secrets.token_hex(8)
    secret.add(wrong.credentials)
    await wrong.open()
    assert wrong.conn is not None and wrong.conn.close_code is CloseCode.AUTH_FAILED

    forged_credential = secrets.token_bytes(32)
    secret.add(forged_credential)
    forged = forged_client(alice, {"token": ALICE_TOKEN}, forged_credential)
    await forged.open()
    assert refusal(forged) is CloseCode.CREDENTIAL_INVALID
    given = forged.session.snapshot()  # the new session's credential: a secret too
    assert given is not None
    secret.add(given.credential)
    await forged.close()

    thief = forged_client(alice, {"token": ALICE_TOKEN}, first.credential)
    await thief.open()
    assert refusal(thief) is CloseCode.CREDENTIAL_REUSED
    await thief.close()

    bob = TokenClient("127.0.0.1", port)
    bob.credentials = BOB_TOKEN
    await bob.open()
    bad_payload = b"bad-seq-payload-" + secrets.token_hex(8).encode()
    secret.add(bad_payload)
    assert bob.writer is not None
    bob.writer.write(encode_data(99, bad_payload))  # out of sequence: SEQUENCE_ERROR
    await bob.pump_until(lambda: bob.conn is not None and bob.conn.closed, TIMEOUT)
    assert bob.conn is not None and bob.conn.close_code is CloseCode.SEQUENCE_ERROR

    malformed_token = "malformed-" + secrets.token_hex(8)
    secret.add(malformed_token[:-1])
    bad_hello = Hello((1,), 15000, 1024, 1 << 20, 1 << 20, 0, {"token": malformed_token}).encode()
    bad_hello = bad_hello[:-1] + b"\xc1"  # the token's last byte: now invalid UTF-8
    answer = await exchange_raw("127.0.0.1", port, bad_hello)
    assert isinstance(answer[-1], Close) and answer[-1].code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_credential_or_payload_ever_reaches_the_logs(
    tmp_path: Path, log_format: str
) -> None:
    tokens = token_file(tmp_path, {"alice": ALICE_TOKEN, "bob": BOB_TOKEN})
    port = free_port()
    log = tmp_path / "daemon.log"
    secret = Secrets()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "sessiond", "serve", "--listen", f"127.0.0.1:{port}"),
                *("--app", "echo", "--log-level", "DEBUG", "--log-format", log_format),
                *("--auth", "token-file", "--token-file", str(tokens)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONASYNCIODEBUG": "1"},
        )
        try:
            await run_sessions_with_secrets(port, proc, secret)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    lines_written = len(text.splitlines())
    if log_format == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        text += "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)
        events = {str(line.get("event")) for line in lines}
    else:
        events = {word for line in text.splitlines() for word in line.split()}
        events |= {"taken over"} if " taken over " in text else set()
    # A resume may reach the daemon before it noticed the end of the old transport.
    for expected in ("created", "resumed|taken over", "refused", "closed"):
        assert set(expected.split("|")) & events, (expected, text[-2000:])
    assert "CREDENTIAL_REUSED" in text and "SEQUENCE_ERROR" in text
    assert secret.found_in(f"x {ALICE_TOKEN} y"), "the scan finds what it looks for"
    leaked = secret.found_in(text)
    assert not leaked, f"found in the {log_format} log: {leaked}"
    print(f"\n{log_format} log: {lines_written} lines, none of {len(secret.values)} secrets")
