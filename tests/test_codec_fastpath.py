"""The DATA fast paths are pinned to the generic rules, both ways (protocol.md §2, §5).

Sending: ``Session.send``, ``send_many`` (its bulk path from eight payloads on and its
checked loop below) and the replay after a resume write each DATA frame with a
precompiled ``struct`` header. Their bytes must be exactly protocol.md's fixed-width
layout (written out here byte by byte, independently of ``codec.DATA_HEAD``), which any
msgpack decoder reads back as ``[3, seq, payload]``.

Receiving: ``Connection._receive_piece`` takes a run of next DATA frames without
calling ``parse_frame``. Whatever width a peer encodes the fields with, it must deliver
what the generic path (``parse_frame``) reads, and refuse what it refuses.
"""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from sessiond_client.protocol import CloseCode, codec
from sessiond_client.protocol.codec import U64_MAX
from sessiond_client.protocol.frames import Ack, Data, parse_frame

from tests.pair import Pair

payloads = st.lists(st.binary(max_size=300), max_size=24)


def reference_data(seq: int, payload: bytes) -> bytes:
    """protocol.md §2: fixarray(3), positive fixint 3, uint64 seq, bin32 payload."""
    return (
        b"\x93\x03\xcf"
        + seq.to_bytes(8, "big")
        + b"\xc6"
        + len(payload).to_bytes(4, "big")
        + payload
    )


def frames_from(seq: int, items: list[bytes]) -> bytes:
    return b"".join(reference_data(seq + i, p) for i, p in enumerate(items))


@given(seq=st.integers(0, U64_MAX), payload=st.binary(max_size=2000), ack=st.integers(0, U64_MAX))
def test_the_encoders_write_the_reference_bytes_and_any_decoder_reads_them(
    seq: int, payload: bytes, ack: int
) -> None:
    encoded = codec.encode_data(seq, payload)
    assert encoded == reference_data(seq, payload) == Data(seq, payload).encode()
    assert len(encoded) == len(payload) + codec.DATA_OVERHEAD
    decoded = msgpack.unpackb(encoded, use_list=False, raw=False)
    assert decoded == (codec.DATA, seq, payload)
    assert parse_frame(decoded) == Data(seq, payload)
    # the generic (minimal-width) encoding of the same frame reads back the same
    generic = msgpack.packb((codec.DATA, seq, payload), use_bin_type=True)
    assert msgpack.unpackb(generic, use_list=False, raw=False) == decoded
    encoded_ack = codec.encode_ack(ack)
    assert encoded_ack == b"\x92\x04\xcf" + ack.to_bytes(8, "big") == Ack(ack).encode()
    assert parse_frame(msgpack.unpackb(encoded_ack, use_list=False)) == Ack(ack)


@settings(deadline=None)
@given(first=payloads, second=payloads, one_by_one=st.booleans())
def test_send_and_send_many_write_the_reference_bytes(
    first: list[bytes], second: list[bytes], one_by_one: bool
) -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    client_conn = pair.client_conn
    assert client_conn is not None
    now = pair.clock.now
    expected = 1
    for batch in (first, second):
        if one_by_one:
            for payload in batch:
                pair.client.send(payload, now)
            sent = len(batch)
        else:
            sent = pair.client.send_many(batch, now)
        assert sent == len(batch)  # the default window takes 48 payloads of 300 bytes
        assert client_conn.data_to_send() == frames_from(expected, batch)
        expected += sent
    # and the server takes them back in order
    pair.to_server += frames_from(1, first + second)
    pair.deliver()
    assert pair.take_server() == first + second


@settings(deadline=None, max_examples=30)  # a resume costs ~0.1 s (credential rotation)
@given(items=st.lists(st.binary(max_size=200), min_size=1, max_size=20))
def test_a_replay_writes_the_reference_bytes(items: list[bytes]) -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.client.send_many(items, pair.clock.now)
    pair.cut()  # nothing delivered: all of it is replayed after the resume
    pair.connect()
    pair.flush()
    pair.deliver()  # HELLO in; WELCOME and the server's output queued
    pair.flush()
    pair.deliver()  # WELCOME reaches the client, which replays
    client_conn = pair.client_conn
    assert client_conn is not None
    out = client_conn.data_to_send()
    expected = frames_from(1, items)
    assert out.endswith(expected)
    before = msgpack.Unpacker(use_list=False)
    before.feed(out[: len(out) - len(expected)])
    assert all(isinstance(parse_frame(frame), Ack) for frame in before)  # ACKs ride first


def generic_frames(seq: int, items: list[bytes], widths: list[int]) -> bytes:
    """DATA frames as other encoders may write them: minimal or non-canonical widths."""
    out = []
    for i, payload in enumerate(items):
        kind = b"\x03" if widths[i] == 0 else b"\xcc\x03"  # fixint or uint8 3
        number = seq + i
        if widths[i] == 0:
            head = msgpack.packb(number)
        else:
            head = b"\xcf" + number.to_bytes(8, "big")
        body = msgpack.packb(payload, use_bin_type=True)
        out.append(b"\x93" + kind + head + body)
    return b"".join(out)


@settings(deadline=None)
@given(
    items=st.lists(st.binary(max_size=200), min_size=1, max_size=30),
    data=st.data(),
)
def test_the_receive_fast_path_delivers_what_the_generic_parser_reads(
    items: list[bytes], data: st.DataObject
) -> None:
    widths = data.draw(st.lists(st.integers(0, 1), min_size=len(items), max_size=len(items)))
    wire = generic_frames(1, items, widths)
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    unpacker.feed(wire)
    generic = [parse_frame(f) for f in unpacker]
    assert generic == [Data(1 + i, p) for i, p in enumerate(items)]
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.client.send(b"confirms the transport", pair.clock.now)
    pair.pump()
    pair.take_server()
    # the server has received seq 1 from the client: continue from 2
    wire = generic_frames(2, items, widths)
    cut = data.draw(st.integers(0, len(wire)))
    server_conn = pair.server_conn
    assert server_conn is not None
    server_conn.receive_data(wire[:cut], pair.clock.now)
    server_conn.receive_data(wire[cut:], pair.clock.now)
    assert not server_conn.closed
    assert pair.take_server() == items


@given(kind=st.sampled_from([3.0, True, "3", -3, 259]))
def test_a_data_frame_whose_type_only_compares_equal_is_refused(kind: object) -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.client.send(b"first", pair.clock.now)
    pair.pump()
    server_conn = pair.server_conn
    assert server_conn is not None
    frame = msgpack.packb((kind, 2, b"second"), use_bin_type=True)
    server_conn.receive_data(frame, pair.clock.now)
    assert server_conn.closed
    assert server_conn.close_code is CloseCode.PROTOCOL_ERROR
    assert pair.take_server() == [b"first"]
