"""Envelopes of the channels profile (protocol.md §15): one MessagePack map per message.

Each session message of a channels session is one envelope, a map whose ``op``
says what it is. Requests, client to server: ``sub``, ``unsub``, ``pub``.
Server to client: the replies ``ok`` and ``error`` (carrying the request's
``id``), deliveries ``msg``, presence events ``join`` and ``leave``, and
``gap`` notices. This module encodes and decodes both directions, so the client
helper (:mod:`sessiond_client.channels`) and the daemon's app
(:mod:`sessiond.channels`) share one codec.

Decoding never trusts its input: anything that is not a well-formed envelope
raises :class:`ChannelError` with :attr:`ErrorCode.BAD_REQUEST` (or
``UNKNOWN_OP``), which the daemon sends back as a typed error reply.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgpack

from .protocol import SessiondError

# Operations (protocol.md §15.2), client to server ...
SUB = "sub"
UNSUB = "unsub"
PUB = "pub"
# ... and server to client.
OK = "ok"
ERROR = "error"
MSG = "msg"
JOIN = "join"
LEAVE = "leave"
GAP = "gap"

REQUESTS = (SUB, UNSUB, PUB)

MAX_ID = 2**64 - 1
MAX_STR = 4096  # protocol.md §1.2: str values in a frame hold at most 4096 bytes


class ErrorCode(enum.IntEnum):
    """Typed errors of the channels profile (protocol.md §15.7)."""

    BAD_REQUEST = 1
    UNKNOWN_OP = 2
    INVALID_CHANNEL = 3
    DENIED = 4
    TOO_MANY_SUBSCRIPTIONS = 5
    NOT_SUBSCRIBED = 6
    TOO_LARGE = 7
    LIMIT_EXCEEDED = 8


#: The meaning of each code, as protocol.md §15.7 lists it
#: (checked by tests/test_channels_envelopes.py).
ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "not an envelope, or a required key is missing or mistyped",
    ErrorCode.UNKNOWN_OP: "the op is not one this server knows",
    ErrorCode.INVALID_CHANNEL: "the channel name or pattern breaks the rules of §15.3",
    ErrorCode.DENIED: "access control does not allow this operation on this channel",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "the session holds the most subscriptions allowed",
    ErrorCode.NOT_SUBSCRIBED: "unsub of a pattern the session is not subscribed to",
    ErrorCode.TOO_LARGE: "the published payload is above the server's message limit",
    ErrorCode.LIMIT_EXCEEDED: "another server limit was reached (retained messages)",
}


class ChannelError(SessiondError):
    """A channels request was refused; :attr:`code` says why (protocol.md §15.7)."""

    def __init__(
        self,
        code: ErrorCode | int,
        reason: str = "",
        *,
        request_id: int | None = None,
        channel: str | None = None,
    ) -> None:
        with contextlib.suppress(ValueError):  # a newer server's code stays a number
            code = ErrorCode(code)
        name = code.name if isinstance(code, ErrorCode) else f"error {code}"
        super().__init__(name + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason
        self.request_id = request_id
        self.channel = channel


# ------------------------------------------------------------------ decoded shapes


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the daemon decoded it."""

    op: str
    id: int | None
    channel: str
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Member:
    """One session present on a channel: its identity and its member tag."""

    identity: str | None
    member: str


@dataclass(frozen=True, slots=True)
class Message:
    """A message published on *channel*; *publisher* is the publishing session's identity.

    *member* tells apart sessions of one identity; *retained* marks the channel's
    last message, delivered first to a new subscriber (protocol.md §15.5).
    """

    channel: str
    payload: bytes
    publisher: str | None
    member: str
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Joined:
    """Presence: a session subscribed to *channel* (protocol.md §15.4)."""

    channel: str
    identity: str | None
    member: str


@dataclass(frozen=True, slots=True)
class Left:
    """Presence: a session unsubscribed from *channel*, or ended or expired."""

    channel: str
    identity: str | None
    member: str


@dataclass(frozen=True, slots=True)
class Gap:
    """*dropped* messages of *channel* were dropped for this subscriber (drop-oldest policy)."""

    channel: str
    dropped: int


@dataclass(frozen=True, slots=True)
class Refused:
    """An error reply to a request sent without an ``id`` (a fire-and-forget publish)."""

    error: ChannelError


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply (``ok`` or ``error``) to the request with ``id``."""

    id: int
    body: dict[str, Any]
    error: ChannelError | None = None


Event = Message | Joined | Left | Gap | Refused


# ------------------------------------------------------------------------ decoding


def unpack(payload: bytes, max_array: int = 16) -> dict[str, Any]:
    """Decode one envelope; ChannelError BAD_REQUEST if it is not a map with a str ``op``."""
    try:
        value = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_STR,
            max_bin_len=len(payload),
            max_array_len=max_array,
            max_map_len=32,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ChannelError(
            ErrorCode.BAD_REQUEST, f"not MessagePack: {type(exc).__name__}"
        ) from None
    if not isinstance(value, dict):
        raise ChannelError(ErrorCode.BAD_REQUEST, "an envelope is a map")
    if not isinstance(value.get("op"), str):
        raise ChannelError(ErrorCode.BAD_REQUEST, "the envelope lacks a str 'op'")
    return value


def _uint(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def parse_request(payload: bytes) -> Request:
    """The daemon's side: decode a request, or raise ChannelError (with the request's
    ``id`` when it could be read, so the error reply can carry it)."""
    body = unpack(payload)
    raw_id = body.get("id")
    request_id = raw_id if _uint(raw_id) else None
    op = body["op"]
    if raw_id is not None and request_id is None:
        raise ChannelError(ErrorCode.BAD_REQUEST, "'id' must be a uint64")
    if op not in REQUESTS:
        raise ChannelError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", request_id=request_id)
    if op != PUB and request_id is None:
        raise ChannelError(ErrorCode.BAD_REQUEST, f"'{op}' needs an 'id'")
    channel = body.get("ch")
    if not isinstance(channel, str):
        raise ChannelError(ErrorCode.BAD_REQUEST, "'ch' must be a str", request_id=request_id)
    data = body.get("data") if op == PUB else b""
    if not isinstance(data, bytes):
        raise ChannelError(
            ErrorCode.BAD_REQUEST, "'data' must be bin", request_id=request_id, channel=channel
        )
    return Request(op, request_id, channel, data)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ChannelError(ErrorCode.BAD_REQUEST, "expected a str")
    return value


def _identity(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ChannelError(ErrorCode.BAD_REQUEST, "'identity' must be a str or nil")
    return value


def parse_member(value: Any) -> Member:
    if not isinstance(value, dict):
        raise ChannelError(ErrorCode.BAD_REQUEST, "a member is a map")
    return Member(_identity(value.get("identity")), _text(value.get("member")))


def parse_server(payload: bytes) -> Event | Reply | None:
    """The client's side: decode what the daemon sent. None for an op this client does
    not know (a newer server's extension: ignored, as protocol.md §15.2 asks)."""
    body = unpack(payload, max_array=1 << 20)
    op = body["op"]
    if op == MSG:
        data = body.get("data")
        if not isinstance(data, bytes):
            raise ChannelError(ErrorCode.BAD_REQUEST, "'data' must be bin")
        return Message(
            _text(body.get("ch")),
            data,
            _identity(body.get("identity")),
            _text(body.get("member")),
            body.get("retained") is True,
        )
    if op in (OK, ERROR):
        raw_id = body.get("id")
        error = None
        if op == ERROR:
            code = body.get("code")
            if not _uint(code):
                raise ChannelError(ErrorCode.BAD_REQUEST, "'code' must be a uint")
            reason = body.get("reason")
            channel = body.get("ch")
            error = ChannelError(
                code,
                reason if isinstance(reason, str) else "",
                request_id=raw_id if _uint(raw_id) else None,
                channel=channel if isinstance(channel, str) else None,
            )
            if raw_id is None:
                return Refused(error)
        if not _uint(raw_id):
            raise ChannelError(ErrorCode.BAD_REQUEST, "a reply needs a uint64 'id'")
        return Reply(raw_id, body, error)
    if op in (JOIN, LEAVE):
        kind = Joined if op == JOIN else Left
        return kind(
            _text(body.get("ch")), _identity(body.get("identity")), _text(body.get("member"))
        )
    if op == GAP:
        dropped = body.get("dropped")
        if not _uint(dropped):
            raise ChannelError(ErrorCode.BAD_REQUEST, "'dropped' must be a uint")
        return Gap(_text(body.get("ch")), dropped)
    return None


# ------------------------------------------------------------------------ encoding


def _packb(body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def request(op: str, channel: str, request_id: int | None, data: bytes | None = None) -> bytes:
    """A client request: ``sub``/``unsub`` (with an id) or ``pub`` (id optional)."""
    body: dict[str, Any] = {"op": op, "ch": channel}
    if request_id is not None:
        body["id"] = request_id
    if data is not None:
        body["data"] = data
    return _packb(body)


def ok(request_id: int, **fields: Any) -> bytes:
    return _packb({"op": OK, "id": request_id, **fields})


def error(error: ChannelError) -> bytes:
    body: dict[str, Any] = {
        "op": ERROR,
        "id": error.request_id,
        "code": int(error.code),
        "reason": error.reason[:MAX_STR],
    }
    if error.channel is not None:
        body["ch"] = error.channel
    return _packb(body)


def message(
    channel: str, data: bytes, identity: str | None, member: str, retained: bool = False
) -> bytes:
    body: dict[str, Any] = {
        "op": MSG,
        "ch": channel,
        "data": data,
        "identity": identity,
        "member": member,
    }
    if retained:
        body["retained"] = True
    return _packb(body)


def presence(op: str, channel: str, identity: str | None, member: str) -> bytes:
    return _packb({"op": op, "ch": channel, "identity": identity, "member": member})


def gap(channel: str, dropped: int) -> bytes:
    return _packb({"op": GAP, "ch": channel, "dropped": dropped})


def member_map(identity: str | None, member: str) -> dict[str, Any]:
    return {"identity": identity, "member": member}
