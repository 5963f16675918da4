"""The channels envelopes (protocol.md §15): the codec both ways, malformed input mapped to
typed errors, and the error table of §15.7 against the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sessiond_client import envelopes
from sessiond_client.envelopes import ChannelError, ErrorCode

SPEC = Path(__file__).parent.parent / "protocol.md"


def test_error_table_matches_the_code() -> None:
    text = SPEC.read_text()
    match = re.search(r"<!-- channels-errors.*?-->(.*?)<!-- /channels-errors -->", text, re.S)
    assert match, "protocol.md lacks the marked channels error table"
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in match.group(1).strip().splitlines()[2:]
    ]
    assert len(rows) == len(ErrorCode) == len(envelopes.ERROR_MEANINGS)
    for number, name, meaning in rows:
        code = ErrorCode(int(number))
        assert code.name == name
        assert envelopes.ERROR_MEANINGS[code] == meaning, name


def test_requests_round_trip() -> None:
    sub = envelopes.parse_request(envelopes.request(envelopes.SUB, "rooms/#", 7))
    assert sub == envelopes.Request("sub", 7, "rooms/#")
    pub = envelopes.parse_request(envelopes.request(envelopes.PUB, "a/b", None, b"\x00x"))
    assert pub == envelopes.Request("pub", None, "a/b", b"\x00x")
    big = envelopes.parse_request(envelopes.request(envelopes.UNSUB, "a", 2**64 - 1))
    assert big.id == 2**64 - 1


def test_server_envelopes_round_trip() -> None:
    parse = envelopes.parse_server
    assert parse(envelopes.message("a", b"p", "alice", "m1")) == envelopes.Message(
        "a", b"p", "alice", "m1", False
    )
    assert parse(envelopes.message("a", b"p", None, "m1", retained=True)) == envelopes.Message(
        "a", b"p", None, "m1", True
    )
    assert parse(envelopes.presence(envelopes.JOIN, "r", "bob", "m2")) == envelopes.Joined(
        "r", "bob", "m2"
    )
    assert parse(envelopes.presence(envelopes.LEAVE, "r", None, "m2")) == envelopes.Left(
        "r", None, "m2"
    )
    assert parse(envelopes.gap("c", 12)) == envelopes.Gap("c", 12)
    reply = parse(envelopes.ok(3, ch="r", members=[envelopes.member_map("bob", "m2")], count=1))
    assert isinstance(reply, envelopes.Reply) and reply.id == 3 and reply.error is None
    denied = ChannelError(ErrorCode.DENIED, "no", request_id=4, channel="x")
    reply = parse(envelopes.error(denied))
    assert isinstance(reply, envelopes.Reply) and reply.error is not None
    assert (reply.error.code, reply.error.reason, reply.error.channel) == (
        ErrorCode.DENIED,
        "no",
        "x",
    )
    refused = parse(envelopes.error(ChannelError(ErrorCode.TOO_LARGE, "big")))
    assert isinstance(refused, envelopes.Refused) and refused.error.code is ErrorCode.TOO_LARGE
    newer = parse(msgpack.packb({"op": "error", "id": 1, "code": 99, "reason": ""}))
    assert isinstance(newer, envelopes.Reply) and newer.error is not None
    assert newer.error.code == 99  # a newer server's code stays a number
    assert parse(msgpack.packb({"op": "future-op", "x": 1})) is None  # ignored


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("payload", "code", "request_id"),
    [
        (b"\xc1", ErrorCode.BAD_REQUEST, None),  # never valid MessagePack
        (b"", ErrorCode.BAD_REQUEST, None),
        (b"\x92\x01", ErrorCode.BAD_REQUEST, None),  # truncated
        (packed(1), ErrorCode.BAD_REQUEST, None),  # not a map
        (packed({"id": 1, "ch": "a"}), ErrorCode.BAD_REQUEST, None),  # no op
        (packed({"op": 5, "id": 1}), ErrorCode.BAD_REQUEST, None),
        (packed({1: "sub"}), ErrorCode.BAD_REQUEST, None),  # int keys
        (packed({"op": "sub", "ch": "a"}), ErrorCode.BAD_REQUEST, None),  # sub needs an id
        (packed({"op": "sub", "id": True, "ch": "a"}), ErrorCode.BAD_REQUEST, None),
        (packed({"op": "sub", "id": -1, "ch": "a"}), ErrorCode.BAD_REQUEST, None),
        (packed({"op": "sub", "id": 5, "ch": b"a"}), ErrorCode.BAD_REQUEST, 5),
        (packed({"op": "pub", "id": 6, "ch": "a", "data": "text"}), ErrorCode.BAD_REQUEST, 6),
        (packed({"op": "pub", "id": 6, "ch": "a"}), ErrorCode.BAD_REQUEST, 6),
        (packed({"op": "fly", "id": 8}), ErrorCode.UNKNOWN_OP, 8),
        (
            packed({"op": "sub", "id": 1, "ch": "a", "x": list(range(20))}),
            ErrorCode.BAD_REQUEST,
            None,
        ),
        (b"\x91" * 5000 + b"\x01", ErrorCode.BAD_REQUEST, None),  # nested beyond any stack
        (b"\xa2\xff\xfe", ErrorCode.BAD_REQUEST, None),  # str that is not UTF-8
        (
            packed({"op": "sub", "id": 1, "ch": msgpack.ExtType(1, b"x")}),
            ErrorCode.BAD_REQUEST,
            None,
        ),
    ],
)
def test_malformed_requests_are_typed_errors(
    payload: bytes, code: ErrorCode, request_id: int | None
) -> None:
    with pytest.raises(ChannelError) as refused:
        envelopes.parse_request(payload)
    assert refused.value.code is code
    assert refused.value.request_id == request_id
    assert envelopes.parse_server(envelopes.error(refused.value)) is not None  # still sendable


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_a_typed_error(payload: bytes) -> None:
    try:
        envelopes.parse_request(payload)
    except ChannelError as exc:
        assert isinstance(exc.code, ErrorCode)
    try:
        envelopes.parse_server(payload)
    except ChannelError as exc:
        assert isinstance(exc.code, ErrorCode)
