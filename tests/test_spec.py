"""protocol.md and the code agree: the code table, and the test vectors of §14."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from sessiond_client.protocol import CODE_TABLE, CloseCode, Params, codec, frames
from sessiond_client.protocol.codec import FrameDecoder

from tests.pair import Pair
from tests.vectors_io import frame_from_json, frame_to_json, load

SPEC = Path(__file__).parent.parent / "protocol.md"
VECTORS = load()


def spec_code_rows() -> list[list[str]]:
    text = SPEC.read_text()
    match = re.search(r"<!-- codes-table.*?-->(.*?)<!-- /codes-table -->", text, re.S)
    assert match, "protocol.md lacks the marked code table"
    rows = []
    for line in match.group(1).strip().splitlines()[2:]:
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_code_table_matches_the_code() -> None:
    rows = spec_code_rows()
    assert len(rows) == len(CloseCode) == len(CODE_TABLE)
    for number, name, kind, backoff, meaning in rows:
        code = CloseCode(int(number))
        assert code.name == name
        info = CODE_TABLE[code]
        assert ("terminal" if info.terminal else "retry") == kind, name
        assert info.backoff.value == backoff, name
        assert info.meaning == meaning, name


def test_frame_type_table_matches_the_code() -> None:
    text = SPEC.read_text()
    section = text.split("## 2. Frame types")[1].split("## 3.")[0]
    listed = dict(re.findall(r"^\| (\d+) \| ([A-Z]+) \|", section, re.M))
    assert {int(k): v for k, v in listed.items()} == {
        getattr(codec, name): name
        for name in ("HELLO", "WELCOME", "DATA", "ACK", "PING", "PONG", "GOAWAY", "CLOSE")
    }


def decode_one(data: bytes) -> Any:
    decoded = FrameDecoder(Params().max_frame_size).feed(data)
    assert len(decoded) == 1
    return decoded[0]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector_round_trips(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["hex"])
    frame = frames.parse_frame(decode_one(wire))
    assert frame_to_json(frame) == vector["frame"]
    assert frame_from_json(vector["frame"]).encode() == wire


@pytest.mark.parametrize("vector", VECTORS["equivalent"], ids=lambda v: v["name"])
def test_equivalent_encodings_decode_the_same(vector: dict[str, Any]) -> None:
    canonical = {v["name"]: v for v in VECTORS["valid"]}[vector["same_as"]]
    frame = frames.parse_frame(decode_one(bytes.fromhex(vector["hex"])))
    assert frame_to_json(frame) == canonical["frame"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_closes_with_its_code(vector: dict[str, Any]) -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    conn = pair.server_conn
    assert conn is not None and not conn.closed
    conn.receive_data(bytes.fromhex(vector["hex"]), pair.clock.now)
    assert conn.closed
    assert conn.close_code == CloseCode(vector["code"])
    last = FrameDecoder(Params().max_frame_size).feed(conn.data_to_send())[-1]
    close = frames.parse_frame(last)
    assert isinstance(close, frames.Close) and close.code == vector["code"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_early_marks_exactly_the_incomplete_invalid_vectors(vector: dict[str, Any]) -> None:
    """§14, §1.4: an entry is marked ``early`` if and only if it is an incomplete frame,
    which only a receiver scanning headers early rejects before the rest arrives."""
    limit = 2**32 - 1  # lengths are judged by the receiver's rules, not the library's
    unpacker = msgpack.Unpacker(
        raw=False, max_buffer_size=limit, max_bin_len=limit, max_ext_len=limit
    )
    unpacker.feed(bytes.fromhex(vector["hex"]))
    try:
        unpacker.unpack()
        incomplete = False
    except msgpack.OutOfData:
        incomplete = True
    except (ValueError, msgpack.UnpackException):
        incomplete = False
    assert vector.get("early", False) is incomplete


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS["valid"] if v["frame"]["type"] in ("HELLO", "WELCOME")],
    ids=lambda v: v["name"],
)
def test_decoded_form_maps_to_the_wire_as_section_14_says(vector: dict[str, Any]) -> None:
    """§14: ``window_messages``/``window_bytes`` are the wire's ``window`` array, and a
    decoded ``null`` is a key absent from the wire map."""
    _, body = msgpack.unpackb(bytes.fromhex(vector["hex"]), raw=False)
    decoded = {k: v for k, v in vector["frame"].items() if k != "type"}
    assert body["window"] == [decoded.pop("window_messages"), decoded.pop("window_bytes")]
    assert set(body) - {"window"} == {k for k, v in decoded.items() if v is not None}
    assert None not in body.values()
