"""TLS for the daemon: contexts, client-certificate identity, development certificates.

- :func:`server_context` builds the context to pass to ``Server.listen(host, port, ssl=...)``
  (mutual TLS with *client_ca_file*); :class:`CertificateReloader` loads a renewed
  certificate and key into that same context (``sessiond serve`` does it on SIGHUP).
- :func:`client_context` is the matching client side, for tests and clients.
- :func:`peer_identity` is the identity of a verified client certificate
  (protocol.md §3.5: over TLS, credentials also ride in the client certificate).
- :func:`generate` writes a development CA, a server certificate and client
  certificates (``sessiond gen-cert``).

Configuration problems (a missing, unreadable, malformed or mismatched file) raise
``ValueError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

StrPath = str | os.PathLike[str]

CA_VALID_DAYS = 5 * 365
# Apple's clients refuse TLS server certificates valid for longer than 825 days.
LEAF_VALID_DAYS = 825

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


# ------------------------------------------------------------------ contexts


def server_context(
    cert_file: StrPath, key_file: StrPath, client_ca_file: StrPath | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting *cert_file* (the chain, leaf first) and *key_file*.

    With *client_ca_file*, mutual TLS: a client must present a certificate issued by
    that CA, or its handshake fails before any sessiond frame is read. Then pass the
    context to ``Server.listen(host, port, ssl=context)`` or ``serve(..., ssl=context)``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, cert_file, key_file)
    if client_ca_file is not None:
        _load_ca(context, client_ca_file, "client CA")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: StrPath | None = None,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the server and checks its hostname.

    The server is verified against *ca_file* alone when given, else the system store.
    With *cert_file* (and *key_file*, unless the key is in *cert_file*), the context
    presents a client certificate for mutual TLS. Pass it as ``ssl=`` to
    ``asyncio.open_connection``.
    """
    if ca_file is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:  # this CA only: trusting a development CA must not add the system store
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the hostname
        _load_ca(context, ca_file, "CA")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        _load_pair(context, cert_file, key_file)
    elif key_file is not None:
        raise ValueError(f"TLS key file {key_file} given without a certificate file")
    return context


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The identity of the peer's *verified* certificate, or None.

    The subject's commonName, else the first DNS or URI subjectAltName. Without
    verification (no ``CERT_REQUIRED``/``CERT_OPTIONAL``), ``getpeercert()`` is empty
    and so is the identity. Read *ssl_object* from
    ``transport.get_extra_info("ssl_object")``.
    """
    if ssl_object is None:
        return None
    cert: Any = ssl_object.getpeercert()  # typeshed's value type is a union of shapes
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "URI") and value:
            return str(value)
    return None


# ------------------------------------------------------------------- reload


class CertificateReloader:
    """Loads the certificate and key files again into a live server context.

    New handshakes present the new certificate; established transports and sessions
    are untouched. Both files are read once and checked in a scratch context before
    the live one is touched: a bad or half-written pair raises ``ValueError`` and the
    daemon keeps its current certificate. (A failed ``load_cert_chain`` on the live
    context would leave it with no usable certificate at all.)

    The client CA is not reloaded: OpenSSL can add CAs to a context but not remove
    them, so changing it needs a restart.
    """

    def __init__(self, context: ssl.SSLContext, cert_file: StrPath, key_file: StrPath) -> None:
        self.context = context
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.certificate = read_certificate(self.cert_file)

    def reload(self) -> x509.Certificate:
        """Load the files into the context; return the new leaf certificate."""
        cert_pem = _read(self.cert_file, "certificate")
        key_pem = _read(self.key_file, "private key")
        pair = self.cert_file, cert_pem, self.key_file, key_pem
        _load_pem_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), *pair)
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]  # parsed fine just above
        old, new = _key_kind(self.certificate), _key_kind(leaf)
        if old != new:
            # OpenSSL keeps one certificate per key type in a context: loading an
            # EC certificate next to an RSA one would serve both, the old one included.
            raise ValueError(
                f"TLS certificate file {self.cert_file}: its key type changed "
                f"({old} to {new}); restart the daemon to switch key types"
            )
        _load_pem_pair(self.context, *pair)  # the very bytes just checked
        self.certificate = leaf
        return leaf


def read_certificate(cert_file: StrPath) -> x509.Certificate:
    """The first (leaf) certificate in a PEM file."""
    path = Path(cert_file)
    try:
        return x509.load_pem_x509_certificates(_read(path, "certificate"))[0]
    except ValueError:
        raise ValueError(f"TLS certificate file {path}: no PEM certificate in it") from None


def describe(cert: x509.Certificate) -> str:
    """One log line's worth: subject, names, expiry and SHA-256 fingerprint."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = ",".join(str(name.value) for name in names)
    except x509.ExtensionNotFound:
        sans = "-"
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%MZ")
    return (
        f"subject={cert.subject.rfc4514_string()} san={sans} expires={expires} sha256={fingerprint}"
    )


# ----------------------------------------------------------------- generate


@dataclass(frozen=True, slots=True)
class ClientFiles:
    """A client certificate for mutual TLS; its commonName is *name*."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class GeneratedFiles:
    """What :func:`generate` wrote. The CA's private key only with ``keep_ca_key``."""

    ca: Path
    server_cert: Path
    server_key: Path
    clients: tuple[ClientFiles, ...] = ()
    ca_key: Path | None = None

    def paths(self) -> list[Path]:
        """Every file written, certificates before their keys."""
        paths = [self.ca, self.server_cert, self.server_key]
        if self.ca_key is not None:
            paths.append(self.ca_key)
        for client in self.clients:
            paths += [client.cert, client.key]
        return paths


def generate(
    out_dir: StrPath,
    hosts: Sequence[str],
    client_names: Sequence[str] = (),
    *,
    force: bool = False,
    keep_ca_key: bool = False,
) -> GeneratedFiles:
    """Write a development CA and certificates (ECDSA P-256) into *out_dir*.

    - ``ca.pem``: the CA certificate, valid ~5 years; clients trust it, and with
      ``--tls-client-ca`` the server verifies client certificates against it.
    - ``server.pem`` / ``server.key``: for *hosts* (DNS names, and IP addresses as IP
      subjectAltNames), valid 825 days.
    - ``client-NAME.pem`` / ``client-NAME.key`` per name in *client_names* (commonName NAME).

    The CA's private key is thrown away once everything is signed, so the CA can never
    sign anything else, unless *keep_ca_key*: then it is written to ``ca.key`` (mode
    0600) and :func:`issue_clients` can sign more client certificates later. Key files
    are created with mode 0600. Existing files raise ``FileExistsError`` unless
    *force*; then each file is replaced atomically.
    """
    sans = _host_names(hosts)
    out = Path(out_dir)
    files = GeneratedFiles(
        ca=out / "ca.pem",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        clients=_client_files(out, client_names),
        ca_key=out / "ca.key" if keep_ca_key else None,
    )
    _check_absent(files.paths(), force)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sessiond"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"sessiond development CA {secrets.token_hex(4)}"
            ),
        ]
    )
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, CA_VALID_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.ca, _pem(ca_cert), 0o644, force)
    if files.ca_key is not None:
        _write(files.ca_key, _private_pem(ca_key), 0o600, force)

    first = str(sans[0].value)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, first)] if len(first) <= 64 else []
    )
    cert_pem, key_pem = _issue(ca_key, ca_name, now, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write(files.server_key, key_pem, 0o600, force)
    _write(files.server_cert, cert_pem, 0o644, force)
    _issue_clients(ca_key, ca_name, now, files.clients, force)
    return files


def issue_clients(
    ca_file: StrPath,
    ca_key_file: StrPath,
    out_dir: StrPath,
    client_names: Sequence[str],
    *,
    force: bool = False,
) -> tuple[ClientFiles, ...]:
    """More client certificates from a CA kept by ``generate(..., keep_ca_key=True)``:
    ``client-NAME.pem`` / ``client-NAME.key`` in *out_dir*; a daemon that trusts the CA
    (``--tls-client-ca``) accepts them without a restart."""
    ca_path, key_path = Path(ca_file), Path(ca_key_file)
    ca_cert = read_certificate(ca_path)
    try:
        ca_key = serialization.load_pem_private_key(_read(key_path, "CA private key"), None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"CA key file {key_path}: {_reason(exc)}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"CA key file {key_path}: not an EC private key")
    if ca_key.public_key().public_numbers() != ca_cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError(f"CA key file {key_path} does not match the certificate {ca_path}")
    clients = _client_files(Path(out_dir), client_names)
    if not clients:
        raise ValueError("name at least one client (--client NAME)")
    _check_absent([p for c in clients for p in (c.cert, c.key)], force)
    Path(out_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    _issue_clients(ca_key, ca_cert.subject, now, clients, force)
    return clients


def _client_files(out: Path, client_names: Sequence[str]) -> tuple[ClientFiles, ...]:
    names = list(dict.fromkeys(client_names))
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"client name {name!r}: use 1-64 letters, digits and . _ @ - "
                "(it becomes a file name and the certificate's commonName)"
            )
    return tuple(
        ClientFiles(name, out / f"client-{name}.pem", out / f"client-{name}.key") for name in names
    )


def _check_absent(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise FileExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "use --force (force=True) to replace them"
        )


def _issue_clients(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    now: datetime.datetime,
    clients: Sequence[ClientFiles],
    force: bool,
) -> None:
    for client in clients:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client.name)])
        cert_pem, key_pem = _issue(
            ca_key, ca_name, now, subject, ExtendedKeyUsageOID.CLIENT_AUTH, []
        )
        _write(client.key, key_pem, 0o600, force)
        _write(client.cert, cert_pem, 0o644, force)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ----------------------------------------------------------------- internals


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS {what} file {path}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _load_ca(context: ssl.SSLContext, ca_file: StrPath, what: str) -> None:
    path = Path(ca_file)
    _read(path, what)
    try:
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"TLS {what} file {path}: no usable PEM certificate ({_reason(exc)})"
        ) from None


def _load_pair(context: ssl.SSLContext, cert_file: StrPath, key_file: StrPath | None) -> None:
    """``context.load_cert_chain``, with an error that says which file is wrong and how."""
    cert_path = Path(cert_file)
    key_path = Path(key_file) if key_file is not None else cert_path
    cert_pem = _read(cert_path, "certificate")
    _load_pem_pair(context, cert_path, cert_pem, key_path, _read(key_path, "private key"))


def _load_pem_pair(
    context: ssl.SSLContext, cert_path: Path, cert_pem: bytes, key_path: Path, key_pem: bytes
) -> None:
    """Load *cert_pem* and *key_pem* (read from the two paths, which errors name)."""
    with _private_copies(cert_pem, key_pem) as (cert_copy, key_copy):
        try:
            # A password callback, or OpenSSL would prompt on the terminal for an
            # encrypted key; the empty password fails and _diagnose says why.
            context.load_cert_chain(cert_copy, key_copy, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(_diagnose(cert_path, cert_pem, key_path, key_pem, exc)) from None


@contextlib.contextmanager
def _private_copies(*contents: bytes) -> Iterator[list[str]]:
    """Paths that read as *contents*, for OpenSSL, which loads keys from paths only.

    OpenSSL then reads exactly the bytes that were read and checked, even if the
    files are being replaced meanwhile. On Linux the copies live in memory only;
    elsewhere in a private temporary directory, removed on exit.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for data in contents:
                fds.append(os.memfd_create("sessiond-tls", os.MFD_CLOEXEC))
                written = 0
                while written < len(data):
                    written += os.write(fds[-1], data[written:])
            yield [f"/proc/self/fd/{fd}" for fd in fds]  # opened afresh: read from offset 0
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="sessiond-tls-") as tmp:  # mode 0700
        paths = [Path(tmp) / str(i) for i in range(len(contents))]
        for path, data in zip(paths, contents, strict=True):
            _write(path, data, 0o600, replace=False)
        yield [str(path) for path in paths]


def _diagnose(cert_path: Path, cert_pem: bytes, key_path: Path, key_pem: bytes, exc: Any) -> str:
    """Why OpenSSL refused a certificate and key, in terms of the files."""
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        return f"TLS certificate file {cert_path}: no PEM certificate in it"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return f"TLS private key file {key_path}: encrypted; sessiond needs an unencrypted key"
    except (ValueError, UnsupportedAlgorithm):
        return f"TLS private key file {key_path}: no usable PEM private key in it"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return f"TLS private key file {key_path} does not match the certificate in {cert_path}"
    return f"TLS certificate {cert_path} / key {key_path}: {_reason(exc)}"


def _key_kind(cert: x509.Certificate) -> str:
    key = cert.public_key()
    kinds: Iterable[tuple[type[Any], str]] = (
        (rsa.RSAPublicKey, "RSA"),
        (ec.EllipticCurvePublicKey, "EC"),
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
        (dsa.DSAPublicKey, "DSA"),
    )
    for cls, kind in kinds:
        if isinstance(key, cls):
            return kind
    return type(key).__name__


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise ValueError("at least one host name or IP address is needed")
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        bare = host.removeprefix("[").removesuffix("]")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(bare)))
            continue
        except ValueError:
            pass
        labels = host.rstrip(".").split(".")
        if labels and labels[0] == "*" and len(labels) > 2:
            labels = labels[1:]  # a wildcard, leftmost label only
        if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValueError(
                f"host {host!r}: not an IP address or an ASCII DNS name "
                "(write internationalized names in their xn-- form)"
            )
        names.append(x509.DNSName(host.rstrip(".").lower()))
    return names


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    now: datetime.datetime,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName],
) -> tuple[bytes, bytes]:
    """A new key and its certificate signed by the CA, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca_name, key.public_key(), now, LEAF_VALID_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _pem(cert), key_pem


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Create *path* with *mode* from the start (a key is never readable by others,
    not even for a moment); with *replace*, swap it in atomically over an old one."""
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        if replace:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)  # ours: created just now with O_EXCL
        raise
