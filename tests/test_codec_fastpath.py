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

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgpack import UnpackException
from sessiond_client.protocol import (
    CloseCode,
    Connection,
    Params,
    RemoteProtocolError,
    Session,
    SessionEnded,
    SessionResumed,
    SessionStarted,
    codec,
)
from sessiond_client.protocol.codec import FEED_PIECE, U64_MAX, FrameDecoder, pieces
from sessiond_client.protocol.frames import Ack, Close, Data, parse_frame

from tests.pair import Pair
from tests.test_fuzz import bytewise, pieces_of

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


# ---------------------------------------------------------------- receiving in batches
#
# ``Connection._receive_piece`` measures a frame (its end, and its size against the
# limit) only until it knows a frame boundary inside a piece no longer than the limit;
# after that no frame of the piece can be over the limit, and the end of the last
# complete frame is found once, afterwards (``FrameDecoder.place``, or ``rescan`` when
# the piece ends inside a frame or decoding fails). ACKs among DATA are taken in the
# loop too. The reference below is the slow path those shortcuts must equal: every frame
# measured as soon as it is decoded (protocol.md §1.3, §1.4) and handed to the generic
# dispatch (``parse_frame``), one frame at a time.

#: The frame limit of these tests: pieces from 1 KiB (``session._PLACE_MIN``) up to it
#: are placed, longer ones measured.
LIMIT = 4096
BATCH_PARAMS = Params(window_messages=128, window_bytes=1 << 16, max_frame_size=LIMIT)


def slow_receive(conn: Connection, data: bytes, now: float) -> None:
    """The receive path without shortcuts: measure each frame, dispatch each frame."""
    if conn.closed:
        return
    decoder = conn._decoder
    try:
        for piece in pieces(data):
            unpacker = decoder.push(piece)
            boundary = decoder.boundary
            error: RemoteProtocolError | None = None
            try:
                for frame in unpacker:
                    end = unpacker.tell()
                    if end - boundary > decoder.max_frame_size:
                        error = decoder.too_large(end - boundary)
                        break
                    boundary = end
                    conn._dispatch([frame], now)
                    if conn.closed:
                        return
            except (ValueError, UnpackException) as exc:
                error = decoder.undecodable(piece, boundary, exc)
            if error is None:
                decoder.settle(piece, boundary)
            if error is not None:
                raise error
    except RemoteProtocolError as exc:
        conn._fail(exc.code, str(exc), now)
        return
    decoder.release()


def open_server(params: Params = BATCH_PARAMS) -> tuple[Pair, Connection, Session]:
    """An open server transport that has taken DATA 1 and sent 3 messages (ACKs 0-3 valid)."""
    pair = Pair(params, params)
    pair.connect()
    pair.pump()
    pair.client.send(b"confirms the transport", pair.clock.now)
    for i in range(3):
        pair.server.send(b"to client %d" % i, pair.clock.now)
    pair.pump()
    assert pair.take_server() == [b"confirms the transport"]
    conn = pair.server_conn
    assert conn is not None
    conn.data_to_send()
    return pair, conn, pair.server


def wire_item(kind: str, seq: int, payload: bytes, ack: int) -> tuple[bytes, int]:
    """One frame (or fault) of a stream amid DATA; returns its bytes and the next seq."""
    if kind == "data":
        return codec.encode_data(seq, payload), seq + 1
    if kind == "data-generic":
        return msgpack.packb((codec.DATA, seq, payload), use_bin_type=True), seq + 1
    if kind == "ack":
        return codec.encode_ack(ack), seq
    if kind == "ack-generic":
        return msgpack.packb((codec.ACK, ack)), seq
    if kind == "ping":
        return codec.encode_ping(ack), seq
    if kind == "pong":
        return codec.encode_pong(ack), seq
    if kind == "gap":
        return codec.encode_data(seq + 1, payload), seq
    if kind == "float-kind":
        return msgpack.packb((3.0, seq, payload), use_bin_type=True), seq
    if kind == "str-payload":
        return msgpack.packb((codec.DATA, seq, "text"), use_bin_type=True), seq
    if kind == "four-fields":
        return msgpack.packb((codec.DATA, seq, payload, 1), use_bin_type=True), seq
    if kind == "unknown-kind":
        return msgpack.packb((99, seq)), seq
    if kind == "not-an-array":
        return msgpack.packb(seq), seq
    if kind == "malformed":
        return b"\xc1", seq
    if kind == "oversize":  # complete, one byte over the limit
        return codec.encode_data(seq, b"o" * (LIMIT - codec.DATA_OVERHEAD + 1)), seq
    if kind == "at-limit":
        return codec.encode_data(seq, b"l" * (LIMIT - codec.DATA_OVERHEAD)), seq + 1
    if kind == "announced":  # a header announcing a frame over the limit, then its start
        return b"\x93\x03\x01\xc6" + (1 << 20).to_bytes(4, "big") + b"a" * 40, seq
    if kind == "close":
        return Close(0, "bye", 0).encode(), seq
    raise AssertionError(kind)


COMMON = ["data", "data", "data", "data-generic", "ack", "ack-generic", "ping"]
RARE = [
    "pong",
    "gap",
    "float-kind",
    "str-payload",
    "four-fields",
    "unknown-kind",
    "not-an-array",
    "malformed",
    "oversize",
    "at-limit",
    "announced",
    "close",
]


@st.composite
def batch_items(draw: st.DrawFn) -> list[bytes]:
    kinds = draw(st.lists(st.sampled_from(COMMON) | st.sampled_from(RARE), min_size=1, max_size=60))
    seq = 2
    out = []
    for kind in kinds:
        payload = draw(st.binary(max_size=120))
        ack = draw(st.integers(0, 5))  # 4 and 5 are beyond what the server sent
        item, seq = wire_item(kind, seq, payload, ack)
        out.append(item)
    return out


def batch_streams() -> st.SearchStrategy[bytes]:
    return batch_items().map(b"".join)


@st.composite
def cuts_near_boundaries(draw: st.DrawFn, items: list[bytes]) -> list[bytes]:
    """The stream of *items* cut where the receive loop decides something: exactly at
    frame boundaries (a read whose last frame ends with the bytes fed, where the loop
    stops without asking the unpacker for more), one byte before or after one, and
    inside a frame's header (its first 16 bytes)."""
    stream = b"".join(items)
    ends = list(itertools.accumulate(map(len, items)))
    near = sorted(
        {
            min(len(stream), max(0, end + draw(st.sampled_from([0, 0, -1, 1, 3, 9, 15]))))
            for end in draw(st.lists(st.sampled_from(ends), max_size=12))
        }
    )
    bounds = [0, *near, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


WITH_ID = (SessionStarted, SessionResumed, SessionEnded)


def server_outcome(conn: Connection, session: Session) -> tuple[Any, ...]:
    return (
        conn.state,
        conn.close_code,
        conn.close_reason,
        conn.peer_closed,
        conn.data_to_send(),
        conn.buffered_input,
        session.state,
        session.sequence_numbers,
        session.take_messages(1000.0),
        # (session IDs are random: each side of the comparison has its own)
        [replace(e, session_id=b"") if isinstance(e, WITH_ID) else e for e in session.events()],
    )


@settings(deadline=None, max_examples=300)
@given(
    stream=batch_streams(),
    data=st.data(),
    fresh=st.booleans(),
    pending=st.booleans(),
    spare=st.booleans(),
)
def test_receiving_a_batch_equals_the_slow_path_byte_for_byte(
    stream: bytes, data: st.DataObject, fresh: bool, pending: bool, spare: bool
) -> None:
    """Valid DATA, ACKs, pings and every kind of bad frame, anywhere in a batch and cut
    anywhere: the same deliveries, the same output bytes, the same close code and reason.

    *fresh* and *pending* start the decoder measuring or not for each kind of piece
    (they adapt to the stream afterwards; every combination must give the same result).
    With *spare*, another transport's decoder leaves its unpacker as the process's
    spare before each read (as between the reads of many transports).
    """
    cuts = data.draw(pieces_of(stream))
    for chunks in ([stream], cuts, bytewise(stream) if len(stream) < 300 else cuts):
        run_both(chunks, fresh, pending, spare)


@settings(deadline=None, max_examples=300)
@given(
    items=batch_items(),
    data=st.data(),
    fresh=st.booleans(),
    pending=st.booleans(),
    spare=st.booleans(),
)
def test_reads_cut_at_or_next_to_frame_boundaries_equal_the_slow_path(
    items: list[bytes], data: st.DataObject, fresh: bool, pending: bool, spare: bool
) -> None:
    """As above, with reads ending exactly at a frame boundary (the loop then stops after
    the frame that ends with the bytes fed), one byte before or after one, or inside a
    header: ACKs amid DATA taken in the loop, every kind of bad frame, the spare unpacker
    changing hands between reads."""
    run_both(data.draw(cuts_near_boundaries(items)), fresh, pending, spare)


def open_unconfirmed_server() -> tuple[Pair, Connection, Session]:
    """A resumed server transport that has sent WELCOME and received nothing since: its
    first frame confirms it (protocol.md §4.4), so the receive loop starts without its
    fast path."""
    pair = Pair(BATCH_PARAMS, BATCH_PARAMS)
    pair.connect()
    pair.pump()
    pair.cut()
    pair.connect()
    pair.flush()
    pair.deliver(to_client=0)  # the server takes HELLO and answers; the client hears nothing
    conn = pair.server_conn
    assert conn is not None and not conn._confirmed
    conn.data_to_send()  # WELCOME: random IDs, different on each side of a comparison
    return pair, conn, pair.server


def run_both(
    chunks: list[bytes],
    fresh: bool = True,
    pending: bool = True,
    spare: bool = False,
    opened: Callable[[], tuple[Pair, Connection, Session]] = open_server,
    full: bool | None = None,
) -> None:
    """Feed *chunks* to a server on the fast path and to one on the slow path; with
    *spare*, another transport's decoder leaves its unpacker as the process's spare
    before each read (as between the reads of many transports)."""
    _, fast_conn, fast_session = opened()
    fast_conn._decoder._place_fresh = fresh
    fast_conn._decoder._place_pending = pending
    fast_conn._decoder._place_full = pending if full is None else full
    _, slow_conn, slow_session = opened()
    limit = fast_conn._decoder.max_frame_size
    for chunk in chunks:
        if spare:
            other = FrameDecoder(limit)
            other.feed(codec.encode_data(1, b"x"))
            assert other.release()
        fast_conn.receive_data(chunk, 1000.0)
        slow_receive(slow_conn, chunk, 1000.0)
        if not slow_conn.closed:  # the same incomplete frame held after each read
            assert fast_conn.buffered_input == slow_conn.buffered_input
    assert server_outcome(fast_conn, fast_session) == server_outcome(slow_conn, slow_session)


def data_run(first: int, count: int) -> bytes:
    return b"".join(codec.encode_data(first + i, b"p%03d" % i * 8) for i in range(count))


def test_a_long_piece_cut_anywhere_inside_its_last_frame_is_placed_exactly() -> None:
    """Every cut inside the frame that ends a piece of more than 1 KiB: the probe must
    tell "inside a frame" (even where the unpacker consumed every byte: right after a
    header or a whole element) from "on a boundary", from either kind of piece start."""
    head = data_run(2, 30)  # 30 x 48 bytes: longer than 1 KiB
    last = codec.encode_data(32, b"last" * 10)
    tail = data_run(33, 30)
    wire = head + last + tail
    for cut in range(len(head), len(head) + len(last) + 1):
        run_both([wire[:cut], wire[cut:]])
        # the same from a piece that begins inside a frame
        run_both([wire[:5], wire[5:cut], wire[cut:]])


def open_wide_server() -> tuple[Pair, Connection, Session]:
    """open_server with a limit over FEED_PIECE: whole pieces of a long read are placeable."""
    return open_server(Params(max_frame_size=1 << 17))


def full_piece_wire() -> bytes:
    """DATA 2 on: 303 frames of 216 bytes and one of 88 fill the first 64 KiB exactly,
    then 400 more frames of 216 bytes."""
    frames = [codec.encode_data(2 + i, b"f" * 200) for i in range(303)]
    frames.append(codec.encode_data(305, b"g" * 72))
    frames += [codec.encode_data(306 + i, b"h" * 200) for i in range(400)]
    wire = b"".join(frames)
    assert len(b"".join(frames[:304])) == FEED_PIECE
    return wire


@pytest.mark.parametrize("guess", list(itertools.product((True, False), repeat=3)))
def test_long_reads_split_into_whole_pieces_equal_the_slow_path(
    guess: tuple[bool, bool, bool],
) -> None:
    """Reads over FEED_PIECE are cut into pieces of FEED_PIECE bytes (at any offset,
    mostly inside a frame, once on a boundary), each placed or measured as guessed for
    its kind (fresh, pending, whole): every frame, the boundary and the incomplete
    frame's bytes must come out as on the slow path."""
    fresh, pending, full = guess
    wire = full_piece_wire()
    cuts = [1, 100, 216, 1000, 65531, FEED_PIECE, FEED_PIECE + 5, 81931, 2 * FEED_PIECE]
    cuts.append(len(wire) - 7)
    for chunks in ([wire], *([wire[:cut], wire[cut:]] for cut in cuts)):
        run_both(list(chunks), fresh, pending, opened=open_wide_server, full=full)
    # three reads: the middle one is (or begins with) a whole piece beginning inside a frame
    middle = wire[1000 : 1000 + FEED_PIECE]
    run_both(
        [wire[:1000], middle, wire[1000 + FEED_PIECE :]],
        fresh,
        pending,
        opened=open_wide_server,
        full=full,
    )
    run_both(
        [wire[:100], wire[100 : FEED_PIECE + 300], wire[FEED_PIECE + 300 :]],
        fresh,
        pending,
        opened=open_wide_server,
        full=full,
    )


@pytest.mark.parametrize("full", [True, False])
def test_a_whole_piece_ending_in_a_frame_over_the_limit_is_refused_as_on_the_slow_path(
    full: bool,
) -> None:
    """A placed whole piece whose last, incomplete frame announces more than the limit
    (or holds more bytes than it): FRAME_TOO_LARGE, after the frames before it."""
    wire = full_piece_wire()[: FEED_PIECE + 9 * 216]  # 9 whole frames after the first piece
    over = codec.DATA_HEAD.pack(codec.DATA_LEAD, 706, codec.BIN32, (1 << 17) + 10)
    for tail in (over + b"x" * 500, over + b"x" * ((1 << 17) + 20)):
        stream = wire + tail
        for cut in (FEED_PIECE - 100, FEED_PIECE - len(over) - 3, len(wire) - 40):
            run_both([stream[:cut], stream[cut:]], opened=open_wide_server, full=full)
        run_both([stream], opened=open_wide_server, full=full)
        _, conn, _ = open_wide_server()
        conn.receive_data(stream, 1000.0)
        assert conn.close_code is CloseCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("kind", [*RARE, "ack", "ping"])
def test_a_fault_amid_a_long_run_of_data_equals_the_slow_path(kind: str) -> None:
    """Each kind of bad (or other) frame after and before DATA in a piece of more than 1 KiB
    (placed), whole and cut at every offset around it."""
    head = data_run(2, 30)
    item, after = wire_item(kind, 32, b"x" * 20, 2)
    wire = head + item + data_run(after, 30)
    run_both([wire])
    for cut in range(len(head) - 3, min(len(wire), len(head) + len(item) + 4)):
        run_both([wire[:cut], wire[cut:]])


def test_a_rescan_that_takes_the_spare_unpacker_keeps_the_stream_offsets() -> None:
    """Regression (found by ``python -m bench throughput --systems daemon --sessions
    100`` at 1024 B: "frame announces 3906248509 bytes"): another transport's decoder
    released its unpacker while this one's read ended inside a frame, so rescan() took
    that spare, whose offset reset _fed and _boundary before they were shifted."""
    limit = 1 << 20
    frames = [msgpack.packb((3, i + 1, bytes([i]) * 1024), use_bin_type=True) for i in range(8)]
    stream = b"".join(frames)
    cut = len(frames[0]) * 2 + 500  # a piece of over 1 KiB that ends inside a frame
    decoder, got = FrameDecoder(limit), []
    for piece in (stream[:cut], stream[cut:]):
        unpacker = decoder.push(piece)
        start = decoder.boundary
        other = FrameDecoder(limit)  # another transport's read, done meanwhile
        other.feed(frames[0])
        assert other.release()
        got += list(unpacker)
        end = decoder.place(piece, start)
        decoder.settle(piece, end)
    assert decoder.buffered == 0
    assert [g[1] for g in got] == list(range(1, 9))


SHORT_KINDS = ["data", "ack", "data", "ping", "data-generic", "ack-generic", "data", "ack"]


@pytest.mark.parametrize("spare", [False, True])
def test_short_reads_cut_at_every_offset_equal_the_slow_path(spare: bool) -> None:
    """Reads under 1 KiB (ping-pong's shape) are measured frame by frame, and the loop
    stops after the frame that ends with the bytes fed. A stream of DATA with ACKs and a
    PING amid it, cut once and twice at every offset (at, before and after each
    boundary, inside every header), with and without the spare unpacker changing hands."""
    seq, items = 2, []
    for i, kind in enumerate(SHORT_KINDS):
        item, seq = wire_item(kind, seq, b"s%d" % i * 5, 1 + i % 3)
        items.append(item)
    wire = b"".join(items)
    assert len(wire) < 1024
    for cut in range(len(wire) + 1):
        run_both([wire[:cut], wire[cut:]], spare=spare)
        second = min(len(wire), cut + 11)  # an ACK's length further: often a boundary
        run_both([wire[:cut], wire[cut:second], wire[second:]], spare=spare)


@pytest.mark.parametrize("first", ["ack", "ack-generic", "data", "ping", "close"])
def test_short_reads_on_an_unconfirmed_transport_equal_the_slow_path(first: str) -> None:
    """ACKs are taken without an exception only while the fast path runs: on a transport
    not yet confirmed, the first frame goes through _dispatch (which confirms it), and an
    ACK there must reach it as the peer sent it. Cut once at every offset."""
    seq, items = 1, []
    for i, kind in enumerate([first, "ack", "data", "ack", "data", "ack-generic"]):
        item, seq = wire_item(kind, seq, b"u%d" % i, 0)
        items.append(item)
    wire = b"".join(items)
    for cut in range(len(wire) + 1):
        run_both([wire[:cut], wire[cut:]], opened=open_unconfirmed_server)


@pytest.mark.parametrize("last", ["announced", "oversize", "malformed", "data"])
def test_a_peer_over_its_window_is_told_so_before_what_follows_its_data(last: str) -> None:
    """DATA past the window (128 messages) followed by a bad frame, or by the start of a
    frame announcing more than the limit: the window's error comes first, as on the slow
    path (the fast path once let the incomplete frame's check at the end of the read
    speak first: FRAME_TOO_LARGE instead of FLOW_CONTROL_ERROR). Whole and cut.

    Only the close is compared: the fast path counts a run of DATA before it checks the
    window, so it keeps the few messages past the window that its read held, which the
    slow path leaves to the peer's replay (both exactly once; the transport is closed)."""
    seq, items = 2, []
    for _ in range(130):
        item, seq = wire_item("data", seq, b"w", 0)
        items.append(item)
    items.append(wire_item(last, seq, b"x" * 20, 0)[0])
    wire = b"".join(items)
    for chunks in ([wire], *([wire[:cut], wire[cut:]] for cut in (600, 1000, len(wire) - 30))):
        for fresh in (True, False):
            _, fast, _ = open_server()
            fast._decoder._place_fresh = fast._decoder._place_pending = fresh
            fast._decoder._place_full = fresh
            _, slow, _ = open_server()
            for chunk in chunks:
                fast.receive_data(chunk, 1000.0)
                slow_receive(slow, chunk, 1000.0)
            assert slow.close_code is CloseCode.FLOW_CONTROL_ERROR
            assert (fast.state, fast.close_code, fast.close_reason) == (
                slow.state,
                slow.close_code,
                slow.close_reason,
            )


def test_a_read_ending_on_a_boundary_leaves_nothing_buffered_and_delivers_every_frame() -> None:
    """The loop's early stop must not leave a complete frame in the unpacker: every DATA of
    each read is delivered by that read, the decoder holds nothing, and its unpacker
    becomes the process's spare (release), whole for the next transport."""
    _, conn, session = open_server()
    seq = 2
    for _ in range(3):
        conn.receive_data(
            data_run(seq, 3) + codec.encode_ack(2) + codec.encode_data(seq + 3, b"z"), 1000.0
        )
        assert conn.buffered_input == 0
        assert conn._decoder._unpacker is None  # released as the spare, holding nothing
        assert session.take_messages(1000.0) == [*(b"p%03d" % i * 8 for i in range(3)), b"z"]
        conn.receive_data(codec.encode_data(seq + 4, b"a"), 1000.0)
        assert session.take_messages(1000.0) == [b"a"]
        seq += 5
    assert not conn.closed
