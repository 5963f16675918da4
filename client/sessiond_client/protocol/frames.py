"""Typed frames: validation of decoded frames and their canonical encoding (protocol.md §2).

:func:`parse_frame` turns a decoded msgpack array into one of the frame classes
or raises :class:`RemoteProtocolError`; ``frame.encode()`` gives its canonical
bytes. The session hot path handles DATA and ACK inline with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import codec
from .codec import U64_MAX
from .errors import CloseCode, RemoteProtocolError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)

SESSION_ID_LEN = 16
CREDENTIAL_LEN = 32


def _fail(message: str, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> RemoteProtocolError:
    return RemoteProtocolError(message, code)


def _u64(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= U64_MAX:
        raise _fail(f"{name} must be a uint64")
    return value


def _u32(value: Any, name: str, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= 0xFFFFFFFF:
        raise _fail(f"{name} must be a uint32 >= {minimum}")
    return value


def _text(value: Any, name: str) -> str:
    if type(value) is not str:
        raise _fail(f"{name} must be a string")
    return value


def _blob(value: Any, name: str, length: int) -> bytes:
    if type(value) is not bytes or len(value) != length:
        raise _fail(f"{name} must be {length} bytes of bin")
    return value


def _code(value: Any) -> int:
    return _u32(value, "code")


def _fields(frame: tuple[Any, ...], count: int, name: str) -> tuple[Any, ...]:
    if len(frame) != count:
        raise _fail(f"{name} frame has {len(frame)} elements, expected {count}")
    return frame


def _map(value: Any, name: str, required: frozenset[str]) -> dict[str, Any]:
    if type(value) is not dict:
        raise _fail(f"{name} body must be a map")
    missing = required - value.keys()
    if missing:
        raise _fail(f"{name} lacks {', '.join(sorted(missing))}")
    return value


@dataclass(frozen=True, slots=True)
class Resume:
    """What a client presents to resume a session (protocol.md §4)."""

    session_id: bytes
    credential: bytes
    received: int


@dataclass(frozen=True, slots=True)
class Hello:
    """Client's opening frame (protocol.md §3)."""

    versions: tuple[int, ...]
    heartbeat_ms: int
    window_messages: int
    window_bytes: int
    max_frame: int
    lifetime_ms: int
    credentials: Any = None
    resume: Resume | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "versions": list(self.versions),
            "heartbeat_ms": self.heartbeat_ms,
            "window": [self.window_messages, self.window_bytes],
            "max_frame": self.max_frame,
            "lifetime_ms": self.lifetime_ms,
        }
        if self.credentials is not None:
            body["credentials"] = self.credentials
        if self.resume is not None:
            body["resume"] = {
                "session_id": self.resume.session_id,
                "credential": self.resume.credential,
                "received": self.resume.received,
            }
        return codec.encode_value([codec.HELLO, body])

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Hello:
        body = _map(_fields(frame, 2, "HELLO")[1], "HELLO", _HELLO_KEYS)
        versions = body["versions"]
        if type(versions) is not tuple or not versions:
            raise _fail("HELLO versions must be a non-empty array")
        window = _window(body["window"], "HELLO")
        resume = None
        raw = body.get("resume")
        if raw is not None:
            r = _map(raw, "HELLO resume", _RESUME_KEYS)
            resume = Resume(
                _blob(r["session_id"], "session_id", SESSION_ID_LEN),
                _blob(r["credential"], "credential", CREDENTIAL_LEN),
                _u64(r["received"], "received"),
            )
        return cls(
            versions=tuple(_u32(v, "version") for v in versions),
            heartbeat_ms=_u32(body["heartbeat_ms"], "heartbeat_ms", 1),
            window_messages=window[0],
            window_bytes=window[1],
            max_frame=_u32(body["max_frame"], "max_frame", MIN_MAX_FRAME),
            lifetime_ms=_u32(body["lifetime_ms"], "lifetime_ms"),
            credentials=body.get("credentials"),
            resume=resume,
        )


@dataclass(frozen=True, slots=True)
class Welcome:
    """Server's answer to HELLO that opens or resumes a session (protocol.md §3, §4)."""

    version: int
    session_id: bytes
    credential: bytes
    resumed: bool
    received: int
    heartbeat_ms: int
    idle_timeout_ms: int
    window_messages: int
    window_bytes: int
    max_frame: int
    lifetime_ms: int
    reason: int | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "version": self.version,
            "session_id": self.session_id,
            "credential": self.credential,
            "resumed": self.resumed,
            "received": self.received,
            "heartbeat_ms": self.heartbeat_ms,
            "idle_timeout_ms": self.idle_timeout_ms,
            "window": [self.window_messages, self.window_bytes],
            "max_frame": self.max_frame,
            "lifetime_ms": self.lifetime_ms,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        return codec.encode_value([codec.WELCOME, body])

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Welcome:
        body = _map(_fields(frame, 2, "WELCOME")[1], "WELCOME", _WELCOME_KEYS)
        resumed = body["resumed"]
        if type(resumed) is not bool:
            raise _fail("WELCOME resumed must be a boolean")
        reason = body.get("reason")
        window = _window(body["window"], "WELCOME")
        return cls(
            version=_u32(body["version"], "version"),
            session_id=_blob(body["session_id"], "session_id", SESSION_ID_LEN),
            credential=_blob(body["credential"], "credential", CREDENTIAL_LEN),
            resumed=resumed,
            received=_u64(body["received"], "received"),
            heartbeat_ms=_u32(body["heartbeat_ms"], "heartbeat_ms", 1),
            idle_timeout_ms=_u32(body["idle_timeout_ms"], "idle_timeout_ms", 1),
            window_messages=window[0],
            window_bytes=window[1],
            max_frame=_u32(body["max_frame"], "max_frame", MIN_MAX_FRAME),
            lifetime_ms=_u32(body["lifetime_ms"], "lifetime_ms"),
            reason=None if reason is None else _code(reason),
        )


@dataclass(frozen=True, slots=True)
class Data:
    """One application message (protocol.md §5)."""

    seq: int
    payload: bytes

    def encode(self) -> bytes:
        return codec.encode_data(self.seq, self.payload)

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Data:
        _, seq, payload = _fields(frame, 3, "DATA")
        if type(payload) is not bytes:
            raise _fail("DATA payload must be bin")
        return cls(_u64(seq, "seq"), payload)


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative acknowledgement: every message up to ``seq`` was consumed (§5, §6)."""

    seq: int

    def encode(self) -> bytes:
        return codec.encode_ack(self.seq)

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Ack:
        return cls(_u64(_fields(frame, 2, "ACK")[1], "seq"))


@dataclass(frozen=True, slots=True)
class Ping:
    """Heartbeat carrying an opaque timestamp the peer echoes (protocol.md §7)."""

    stamp: int

    def encode(self) -> bytes:
        return codec.encode_ping(self.stamp)

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Ping:
        return cls(_u64(_fields(frame, 2, "PING")[1], "stamp"))


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to PING, echoing its stamp (protocol.md §7)."""

    stamp: int

    def encode(self) -> bytes:
        return codec.encode_pong(self.stamp)

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Pong:
        return cls(_u64(_fields(frame, 2, "PONG")[1], "stamp"))


@dataclass(frozen=True, slots=True)
class Goaway:
    """Server drains this transport; resume after ``retry_after_ms``, maybe elsewhere (§11)."""

    code: int
    retry_after_ms: int
    redirect: str | None = None
    reason: str = ""

    def encode(self) -> bytes:
        return codec.encode_value(
            [codec.GOAWAY, self.code, self.retry_after_ms, self.redirect, self.reason]
        )

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Goaway:
        _, code, retry_after, redirect, reason = _fields(frame, 5, "GOAWAY")
        if redirect is not None:
            redirect = _text(redirect, "redirect")
        return cls(
            _code(code), _u32(retry_after, "retry_after_ms"), redirect, _text(reason, "reason")
        )


@dataclass(frozen=True, slots=True)
class Close:
    """Last frame on a transport; a terminal code also ends the session (§11, §12)."""

    code: int
    reason: str = ""
    retry_after_ms: int = 0

    def encode(self) -> bytes:
        return codec.encode_value([codec.CLOSE, self.code, self.reason, self.retry_after_ms])

    @classmethod
    def parse(cls, frame: tuple[Any, ...]) -> Close:
        _, code, reason, retry_after = _fields(frame, 4, "CLOSE")
        return cls(_code(code), _text(reason, "reason"), _u32(retry_after, "retry_after_ms"))


Frame = Hello | Welcome | Data | Ack | Ping | Pong | Goaway | Close

#: The smallest max_frame a peer may advertise: room for a handshake frame.
MIN_MAX_FRAME = 1024

_HELLO_KEYS = frozenset({"versions", "heartbeat_ms", "window", "max_frame", "lifetime_ms"})
_RESUME_KEYS = frozenset({"session_id", "credential", "received"})
_WELCOME_KEYS = frozenset(
    {
        "version",
        "session_id",
        "credential",
        "resumed",
        "received",
        "heartbeat_ms",
        "idle_timeout_ms",
        "window",
        "max_frame",
        "lifetime_ms",
    }
)
_PARSERS: dict[int, Any] = {
    codec.HELLO: Hello.parse,
    codec.WELCOME: Welcome.parse,
    codec.DATA: Data.parse,
    codec.ACK: Ack.parse,
    codec.PING: Ping.parse,
    codec.PONG: Pong.parse,
    codec.GOAWAY: Goaway.parse,
    codec.CLOSE: Close.parse,
}


def _window(value: Any, name: str) -> tuple[int, int]:
    if type(value) is not tuple or len(value) != 2:
        raise _fail(f"{name} window must be [messages, bytes]")
    return _u32(value[0], "window messages", 1), _u32(value[1], "window bytes", 1)


def frame_type(frame: Any) -> int:
    """Return the type of a decoded frame, or raise if it is not a frame at all."""
    if type(frame) is not tuple or not frame or type(frame[0]) is not int:
        raise _fail("a frame must be an array starting with its type")
    kind: int = frame[0]
    return kind


def parse_frame(frame: Any) -> Frame:
    """Validate a decoded frame and return it typed; raise RemoteProtocolError if invalid."""
    kind = frame_type(frame)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise _fail(f"unknown frame type {kind}")
    return parser(frame)  # type: ignore[no-any-return]
