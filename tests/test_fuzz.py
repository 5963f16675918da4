"""Fuzz tests: bad input costs one transport, with a close code, never an exception.

* The decoder (protocol.md §1): any bytes, whole, byte by byte or in random
  pieces, give frames or :class:`RemoteProtocolError` carrying a
  :class:`CloseCode`; sizes are enforced before buffering (§1.4).
* Connections: random and mutated input to a fresh server transport and to both
  ends of an open session never raises from ``receive_data``; the transport is
  left usable, or closed with a code it announced in its last CLOSE frame.
* A table of malformed and misplaced frames, each with the exact code the
  reference implementation closes with (§1.5, §2, §5, §6, §13).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sessiond_client.protocol import (
    CloseCode,
    Connection,
    ConnectionState,
    Params,
    RemoteProtocolError,
    Role,
    Session,
    SessionEnded,
    SessionState,
    codec,
    is_terminal,
    parse_frame,
)
from sessiond_client.protocol.codec import U64_MAX, FrameDecoder
from sessiond_client.protocol.frames import (
    Ack,
    Close,
    Data,
    Frame,
    Goaway,
    Hello,
    Ping,
    Pong,
    Resume,
    Welcome,
)

from tests.pair import Pair

#: The smallest limit a peer may announce: makes every size rule reachable with short inputs.
SMALL = 1024
NOW = 1000.0

# ---------------------------------------------------------------- strategies

u64 = st.integers(0, U64_MAX)
u32 = st.integers(0, 0xFFFFFFFF)
positive_u32 = st.integers(1, 0xFFFFFFFF)
texts = st.text(max_size=30)
ids = st.binary(min_size=16, max_size=16)
credentials = st.binary(min_size=32, max_size=32)

hellos = st.builds(
    Hello,
    versions=st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple),
    heartbeat_ms=positive_u32,
    window_messages=positive_u32,
    window_bytes=positive_u32,
    max_frame=st.integers(1024, 0xFFFFFFFF),
    lifetime_ms=u32,
    credentials=st.none() | texts | st.binary(max_size=20) | st.integers(-(1 << 63), U64_MAX),
    resume=st.none() | st.builds(Resume, ids, credentials, u64),
)
welcomes = st.builds(
    Welcome,
    version=st.integers(0, 3),
    session_id=ids,
    credential=credentials,
    resumed=st.booleans(),
    received=u64,
    heartbeat_ms=positive_u32,
    idle_timeout_ms=positive_u32,
    window_messages=positive_u32,
    window_bytes=positive_u32,
    max_frame=st.integers(1024, 0xFFFFFFFF),
    lifetime_ms=u32,
    reason=st.none() | u32,
)
closes = st.builds(Close, u32, texts, u32)
control_frames: st.SearchStrategy[Frame] = st.one_of(
    hellos,
    welcomes,
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Goaway, u32, u32, st.none() | texts, texts),
    closes,
)
#: Frames an open session meets: sequence numbers near the positions of :func:`open_pair`.
session_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Data, st.integers(0, 8), st.binary(max_size=64)),
    st.builds(Ack, st.integers(0, 5)),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Goaway, st.integers(0, 30), u32, st.none() | texts, texts),
)
#: Frames near and over the SMALL limit, cheap to draw.
large_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Data, u64, st.integers(900, 1100).map(lambda n: b"x" * n)),
    st.builds(Close, u32, st.integers(400, 1100).map(lambda n: "r" * n), u32),
)
any_frames = st.one_of(
    session_frames,
    control_frames,
    large_frames,
    st.builds(Data, u64, st.binary(max_size=64)),
    st.builds(Ack, u64),
)

#: Bytes that start or end interesting msgpack values (headers with lengths, never-used 0xc1).
INTERESTING = [
    0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCF, 0xD3, 0xD4, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC,
    0xDD, 0xDE, 0xDF, 0xE0, 0xFF,
]  # fmt: skip


def encoded(frames: st.SearchStrategy[Frame]) -> st.SearchStrategy[bytes]:
    return st.lists(frames.map(lambda frame: frame.encode()), min_size=1, max_size=5).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> bytes:
    """A valid stream with a few random edits: overwrite, insert, delete, truncate, repeat."""
    data = bytearray(draw(streams))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, len(data)))
        if op == "set" and at < len(data):
            data[at] = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


def fuzz_input(frames: st.SearchStrategy[Frame]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        encoded(frames),
        mutated(encoded(frames)),
    )


@st.composite
def pieces_of(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* cut into random pieces (what TCP reads may look like)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ---------------------------------------------------------------- decoder


@dataclass
class Decoded:
    frames: list[Any]
    code: CloseCode | None


def decode(pieces: Iterable[bytes], max_frame: int) -> Decoded:
    """Feed *pieces* until the decoder raises; check it raises nothing but the remote error."""
    decoder = FrameDecoder(max_frame)
    frames: list[Any] = []
    for piece in pieces:
        try:
            frames += decoder.feed(piece)
        except RemoteProtocolError as exc:
            assert isinstance(exc.code, CloseCode)
            return Decoded(frames, exc.code)
        # §1.4: never more than the limit of one incomplete frame is held.
        assert 0 <= decoder.buffered <= max_frame
    return Decoded(frames, None)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stream=fuzz_input(any_frames), max_frame=st.sampled_from([SMALL, 1 << 20]))
def test_decoder_yields_frames_or_a_close_code(
    data: st.DataObject, stream: bytes, max_frame: int
) -> None:
    decode([stream], max_frame)
    decode(bytewise(stream), max_frame)
    decode(data.draw(pieces_of(stream)), max_frame)


@given(stream=encoded(any_frames), max_frame=st.sampled_from([SMALL, 1 << 20]))
def test_decoder_returns_valid_frames_as_encoded(stream: bytes, max_frame: int) -> None:
    whole = decode([stream], max_frame)
    if whole.code is None:
        for frame in whole.frames:
            assert parse_frame(frame).encode() in stream


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stream=fuzz_input(any_frames))
def test_decoder_acceptance_does_not_depend_on_chunking(data: st.DataObject, stream: bytes) -> None:
    """The same bytes are accepted, or rejected, however TCP splits them (§1.3, §1.4).

    Which code a frame with two faults gets may depend on where a read ends; whether
    it is rejected may not. Single-fault codes are pinned by the tests below.
    """
    rejected = decode([stream], SMALL).code is not None
    assert (decode(bytewise(stream), SMALL).code is not None) == rejected
    assert (decode(data.draw(pieces_of(stream)), SMALL).code is not None) == rejected


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _u16(n: int) -> bytes:
    return struct.pack(">H", n)


HUGE = 0xFFFFFFFF

#: Frame beginnings whose last header announces a frame over SMALL bytes (§1.4).
ANNOUNCED_OVER_LIMIT = {
    "data-bin32": b"\x93\x03\xcf" + (1).to_bytes(8, "big") + b"\xc6" + _u32(HUGE),
    "data-bin16": b"\x93\x03\x01\xc5" + _u16(2000),
    "data-bin32-just-over": b"\x93\x03\x01\xc6" + _u32(SMALL - 3),
    "close-str32": b"\x94\x08\x00\xdb" + _u32(HUGE),
    "close-str16": b"\x94\x08\x00\xda" + _u16(2000),
    "hello-credentials-bin32": b"\x92\x01\x81\xabcredentials\xc6" + _u32(HUGE),
    "hello-ext16": b"\x92\x01\x81\xabcredentials\xc8" + _u16(2000),
    "array32": b"\xdd" + _u32(HUGE),
    "hello-map32": b"\x92\x01\xdf" + _u32(HUGE),
}


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(ANNOUNCED_OVER_LIMIT))
def test_announced_size_over_the_limit_is_rejected_at_the_header(name: str, mode: str) -> None:
    head = ANNOUNCED_OVER_LIMIT[name]
    decoder = FrameDecoder(SMALL)
    if mode == "bytewise":
        for byte in bytewise(head[:-1]):
            assert decoder.feed(byte) == []
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(head if mode == "whole" else head[-1:])
    assert info.value.code is CloseCode.FRAME_TOO_LARGE
    assert decoder.buffered <= len(head)


@pytest.mark.parametrize(
    "head",
    [b"\x92\x01\xdc" + _u16(17), b"\x92\x01\xde" + _u16(33)],
    ids=["array16-of-17", "map16-of-33"],
)
def test_container_count_over_its_limit_is_rejected_at_the_header(head: bytes) -> None:
    """§1.2: at most 16 array elements and 32 map entries, checked at the header.

    The frame would fit the size limit, so this is a malformed frame, not a large one.
    """
    decoder = FrameDecoder(SMALL)
    for byte in bytewise(head[:-1]):
        assert decoder.feed(byte) == []
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(head[-1:])
    assert info.value.code is CloseCode.PROTOCOL_ERROR
    assert decoder.buffered <= len(head)


def _nested_pairs() -> bytes:
    # [0, [0, [0, ...: incomplete, no header announcing any length, and shallower
    # than the nesting limit when it passes the size limit.
    return b"\x92\x00" * 600


def _map_of_strings() -> bytes:
    # The start of a HELLO whose body is 15 entries of 200-byte strings: each within
    # every limit, and the first 64 bytes announce only a few hundred bytes.
    body = b"".join(bytes([0xA1, 0x61 + i, 0xD9, 200]) + b"x" * 200 for i in range(15))
    return (b"\x92\x01\x8f" + body)[:2000]


@pytest.mark.parametrize("stream", [_nested_pairs(), _map_of_strings()], ids=["nested", "map"])
@pytest.mark.parametrize("piece", [1, 7, 100, 4096])
def test_frame_growing_past_the_limit_is_rejected_once_over_it(stream: bytes, piece: int) -> None:
    decoder = FrameDecoder(SMALL)
    fed = 0
    with pytest.raises(RemoteProtocolError) as info:
        for start in range(0, len(stream), piece):
            chunk = stream[start : start + piece]
            decoder.feed(chunk)
            fed += len(chunk)
            assert decoder.buffered == fed <= SMALL
    assert info.value.code is CloseCode.FRAME_TOO_LARGE
    # Rejected by the piece that took it over the limit, not later.
    assert fed <= SMALL < fed + piece


#: Complete frames over SMALL bytes: ``(frame, largest single header it announces)``.
COMPLETE_OVER_LIMIT = {
    "goaway-two-strings": Goaway(1, 0, "r" * 900, "x" * 900).encode(),
    "data-payload": Data(1, b"z" * 2000).encode(),
    "close-reason": Close(0, "q" * 1500).encode(),
}


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(COMPLETE_OVER_LIMIT))
def test_complete_frame_over_the_limit_is_rejected_however_it_arrives(name: str, mode: str) -> None:
    """§1.3, §1.4: a frame larger than max_frame is FRAME_TOO_LARGE, even within one read."""
    frame = COMPLETE_OVER_LIMIT[name]
    assert len(frame) > SMALL
    pieces = [frame] if mode == "whole" else bytewise(frame)
    assert decode(pieces, SMALL) == Decoded([], CloseCode.FRAME_TOO_LARGE)


# ---------------------------------------------------------------- connections


def output_frames(data: bytes) -> list[Frame]:
    """Parse what a connection wrote: it must always be valid frames."""
    decoder = FrameDecoder(1 << 30)
    frames = [parse_frame(frame) for frame in decoder.feed(data)]
    assert decoder.buffered == 0, "a connection wrote an incomplete frame"
    return frames


def check_after_input(conn: Connection, written: bytes, session: Session | None) -> None:
    """After any input: usable, or closed with a code announced by its last frame."""
    frames = output_frames(written + conn.data_to_send())
    if conn.closed:
        code = conn.close_code
        assert isinstance(code, CloseCode)
        if conn.peer_closed:
            # The peer closed first: nothing more is said (§11.2).
            assert not any(isinstance(frame, Close) for frame in frames)
        else:
            assert frames, "closed without a CLOSE frame"
            last = frames[-1]
            assert isinstance(last, Close)
            assert last.code == code
        assert conn.next_deadline() is None
        conn.receive_data(b"\xc1 ignored after close", NOW)
        assert conn.data_to_send() == b""
        if session is not None and session.connection is None and conn.session is session:
            # A terminal code ends the session; a retry code leaves it resumable.
            assert (session.state is SessionState.ENDED) == is_terminal(code)
        return
    assert not any(isinstance(frame, Close) for frame in frames)
    deadline = conn.next_deadline()
    assert deadline is not None
    conn.handle_timer(NOW)
    output_frames(conn.data_to_send())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stream=fuzz_input(any_frames))
def test_fresh_server_connection_survives_any_input(data: st.DataObject, stream: bytes) -> None:
    conn = Connection.server(Params(max_frame_size=SMALL), NOW)
    for piece in data.draw(pieces_of(stream)):
        conn.receive_data(piece, NOW)  # never raises
    check_after_input(conn, b"", None)
    if conn.state is ConnectionState.HELLO_RECEIVED:
        # Usable: the daemon can answer the HELLO it got.
        session = conn.accept(NOW, "alice")
        assert session is not None
        frames = output_frames(conn.data_to_send())
        assert [type(frame) for frame in frames] == [Welcome, Ack]


def open_pair() -> Pair:
    """An open session, each side at: 3 sent, 1 acknowledged, 3 received, 1 consumed."""
    params = Params(window_messages=8, window_bytes=2048, max_frame_size=SMALL)
    pair = Pair(params, params)
    pair.connect()
    pair.pump()
    for i in range(3):
        pair.client.send(b"to server %d" % i, pair.clock.now)
        pair.server.send(b"to client %d" % i, pair.clock.now)
    pair.pump()
    pair.client.take_messages(pair.clock.now, 1)
    pair.server.take_messages(pair.clock.now, 1)
    pair.tick(params.ack_delay)  # the coalesced ACKs go out
    pair.pump()
    for session in (pair.client, pair.server):
        assert session.sequence_numbers == (3, 1, 3, 1)
    return pair


def side_of(pair: Pair, side: str) -> tuple[Connection, Session]:
    conn = pair.server_conn if side == "server" else pair.client_conn
    assert conn is not None
    session = pair.server if side == "server" else pair.client
    conn.data_to_send()
    return conn, session


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    side=st.sampled_from(["server", "client"]),
    stream=fuzz_input(session_frames),
)
def test_open_connection_survives_any_input(data: st.DataObject, side: str, stream: bytes) -> None:
    pair = open_pair()
    conn, session = side_of(pair, side)
    for piece in data.draw(pieces_of(stream)):
        conn.receive_data(piece, pair.clock.now)  # never raises
    check_after_input(conn, b"", session)
    # Still usable: the application sends and the bytes go out as a DATA frame.
    if not conn.closed and session.can_send(5):
        seq = session.send(b"still", pair.clock.now)
        assert Data(seq, b"still") in output_frames(conn.data_to_send())


def outcome(conn: Connection, session: Session | None) -> tuple[Any, ...]:
    """What input did to a connection: its state, its code, its output and its session.

    A CLOSE's reason is diagnostic text, free to differ; its code is not.
    """
    written = [
        Close(frame.code, "", frame.retry_after_ms) if isinstance(frame, Close) else frame
        for frame in output_frames(conn.data_to_send())
    ]
    result: tuple[Any, ...] = (conn.state, conn.close_code, conn.peer_closed, written)
    if session is not None:
        result += (session.state, session.sequence_numbers, session.messages_waiting)
    return result


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    side=st.sampled_from(["fresh-server", "server", "client"]),
    stream=fuzz_input(session_frames) | fuzz_input(any_frames),
)
def test_connection_outcome_does_not_depend_on_chunking(
    data: st.DataObject, side: str, stream: bytes
) -> None:
    """TCP may split or join reads anywhere; the outcome of the same bytes must not change.

    In particular, frames before a bad one count whether or not they share its read:
    a CLOSE followed by garbage is still a CLOSE (§11.2).
    """
    results = []
    for pieces in ([stream], bytewise(stream), data.draw(pieces_of(stream))):
        if side == "fresh-server":
            conn: Connection = Connection.server(Params(max_frame_size=SMALL), NOW)
            session: Session | None = None
        else:
            conn, session = side_of(open_pair(), side)
        for piece in pieces:
            conn.receive_data(piece, NOW)
        results.append(outcome(conn, session))
    assert results[1] == results[0], "byte by byte differs from one read"
    assert results[2] == results[0], "random pieces differ from one read"


# ---------------------------------------------------------------- malformed frames, one by one


def pack(value: Any) -> bytes:
    return codec.encode_value(value)


def hello_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "versions": [1],
        "heartbeat_ms": 15000,
        "window": [8, 2048],
        "max_frame": 1 << 20,
        "lifetime_ms": 120000,
    }
    for key, value in changes.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    return body


def welcome_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": 1,
        "session_id": b"\x01" * 16,
        "credential": b"\x02" * 32,
        "resumed": False,
        "received": 0,
        "heartbeat_ms": 15000,
        "idle_timeout_ms": 45000,
        "window": [8, 2048],
        "max_frame": 1 << 20,
        "lifetime_ms": 120000,
    }
    for key, value in changes.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    return body


_DROP = object()
RESUME = {"session_id": b"\x01" * 16, "credential": b"\x02" * 32, "received": 0}
HELLO = pack([codec.HELLO, hello_body()])


def hello(**changes: Any) -> bytes:
    return pack([codec.HELLO, hello_body(**changes)])


def welcome(**changes: Any) -> bytes:
    return pack([codec.WELCOME, welcome_body(**changes)])


def data(seq: int, payload: bytes = b"") -> bytes:
    return codec.encode_data(seq, payload)


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x00"


@dataclass(frozen=True)
class Case:
    stream: bytes
    code: CloseCode
    peer_closed: bool = False


#: Where a case is fed: a fresh server transport, a client awaiting WELCOME, or an open
#: session (positions of :func:`open_pair`: 3 sent, 1 acked, 3 received, 1 consumed).
AWAIT_HELLO: dict[str, Case] = {
    "reserved-byte": Case(b"\xc1", CloseCode.PROTOCOL_ERROR),
    "not-an-array": Case(pack(42), CloseCode.PROTOCOL_ERROR),
    "map-frame": Case(pack({"type": 1}), CloseCode.PROTOCOL_ERROR),
    "empty-array": Case(pack([]), CloseCode.PROTOCOL_ERROR),
    "str-type": Case(pack(["HELLO", hello_body()]), CloseCode.PROTOCOL_ERROR),
    "float-type": Case(pack([1.0, hello_body()]), CloseCode.PROTOCOL_ERROR),
    "bool-type": Case(pack([True, hello_body()]), CloseCode.PROTOCOL_ERROR),
    "nil-type": Case(pack([None, hello_body()]), CloseCode.PROTOCOL_ERROR),
    "unknown-type-0": Case(pack([0, 1]), CloseCode.PROTOCOL_ERROR),
    "unknown-type-9": Case(pack([9, 1]), CloseCode.PROTOCOL_ERROR),
    "negative-type": Case(pack([-1, 1]), CloseCode.PROTOCOL_ERROR),
    "welcome-to-server": Case(welcome(), CloseCode.UNEXPECTED_FRAME),
    "data-before-hello": Case(data(1), CloseCode.UNEXPECTED_FRAME),
    "ack-before-hello": Case(codec.encode_ack(0), CloseCode.UNEXPECTED_FRAME),
    "ping-before-hello": Case(codec.encode_ping(1), CloseCode.UNEXPECTED_FRAME),
    "goaway-to-server": Case(Goaway(1, 0).encode(), CloseCode.UNEXPECTED_FRAME),
    "hello-twice": Case(HELLO + HELLO, CloseCode.UNEXPECTED_FRAME),
    "hello-then-data": Case(HELLO + data(1), CloseCode.UNEXPECTED_FRAME),
    "hello-body-not-map": Case(pack([1, [1]]), CloseCode.PROTOCOL_ERROR),
    "hello-extra-field": Case(pack([1, hello_body(), 0]), CloseCode.PROTOCOL_ERROR),
    "hello-missing-window": Case(hello(window=_DROP), CloseCode.PROTOCOL_ERROR),
    "hello-no-versions": Case(hello(versions=[]), CloseCode.PROTOCOL_ERROR),
    "hello-versions-not-array": Case(hello(versions=1), CloseCode.PROTOCOL_ERROR),
    "hello-bool-version": Case(hello(versions=[True]), CloseCode.PROTOCOL_ERROR),
    "hello-unsupported-version": Case(hello(versions=[2, 3]), CloseCode.UNSUPPORTED_VERSION),
    "hello-heartbeat-zero": Case(hello(heartbeat_ms=0), CloseCode.PROTOCOL_ERROR),
    "hello-heartbeat-bool": Case(hello(heartbeat_ms=True), CloseCode.PROTOCOL_ERROR),
    "hello-heartbeat-float": Case(hello(heartbeat_ms=1.5), CloseCode.PROTOCOL_ERROR),
    "hello-heartbeat-over-u32": Case(hello(heartbeat_ms=1 << 32), CloseCode.PROTOCOL_ERROR),
    "hello-window-zero": Case(hello(window=[0, 1]), CloseCode.PROTOCOL_ERROR),
    "hello-window-short": Case(hello(window=[8]), CloseCode.PROTOCOL_ERROR),
    "hello-window-str": Case(hello(window=["8", "8"]), CloseCode.PROTOCOL_ERROR),
    "hello-max-frame-small": Case(hello(max_frame=1023), CloseCode.PROTOCOL_ERROR),
    "hello-lifetime-negative": Case(hello(lifetime_ms=-1), CloseCode.PROTOCOL_ERROR),
    "hello-resume-not-map": Case(hello(resume=[1]), CloseCode.PROTOCOL_ERROR),
    "hello-resume-short-id": Case(
        hello(resume={**RESUME, "session_id": b"\x01" * 15}), CloseCode.PROTOCOL_ERROR
    ),
    "hello-resume-str-credential": Case(
        hello(resume={**RESUME, "credential": "x" * 32}), CloseCode.PROTOCOL_ERROR
    ),
    "hello-resume-negative-received": Case(
        hello(resume={**RESUME, "received": -1}), CloseCode.PROTOCOL_ERROR
    ),
    "hello-resume-bool-received": Case(
        hello(resume={**RESUME, "received": False}), CloseCode.PROTOCOL_ERROR
    ),
    "hello-resume-missing-received": Case(
        hello(resume={k: v for k, v in RESUME.items() if k != "received"}),
        CloseCode.PROTOCOL_ERROR,
    ),
    "hello-int-key": Case(
        b"\x92\x01" + b"\x86\x07\x00" + pack(hello_body())[1:], CloseCode.PROTOCOL_ERROR
    ),
    "hello-bad-utf8-key": Case(b"\x92\x01\x81\xa2\xff\xfe\x00", CloseCode.PROTOCOL_ERROR),
    "hello-fixext": Case(b"\x92\x01\x81\xa1c\xd4\x01\x00", CloseCode.PROTOCOL_ERROR),
    "hello-timestamp": Case(
        b"\x92\x01\x81\xa1c\xd6\xff" + _u32(1_700_000_000), CloseCode.PROTOCOL_ERROR
    ),
    "hello-string-over-4096": Case(hello(credentials="s" * 5000), CloseCode.PROTOCOL_ERROR),
    "hello-array-of-17": Case(hello(credentials=list(range(17))), CloseCode.PROTOCOL_ERROR),
    "hello-map-of-33": Case(
        hello(credentials={f"k{i}": i for i in range(33)}), CloseCode.PROTOCOL_ERROR
    ),
    "hello-nested-too-deep": Case(b"\x92\x01\x81\xa1c" + nested(2000), CloseCode.PROTOCOL_ERROR),
    "hello-bin-over-max-frame": Case(
        b"\x92\x01\x81\xa1c\xc6" + _u32(HUGE), CloseCode.FRAME_TOO_LARGE
    ),
    "close-missing-field": Case(pack([8, 0, ""]), CloseCode.PROTOCOL_ERROR),
    "close-str-code": Case(pack([8, "0", "", 0]), CloseCode.PROTOCOL_ERROR),
    "close-negative-retry": Case(pack([8, 0, "", -1]), CloseCode.PROTOCOL_ERROR),
    "close-bin-reason": Case(pack([8, 0, b"why", 0]), CloseCode.PROTOCOL_ERROR),
    "close-by-peer": Case(Close(10, "no").encode(), CloseCode.AUTH_FAILED, peer_closed=True),
    "close-unknown-code": Case(Close(999).encode(), CloseCode.PROTOCOL_ERROR, peer_closed=True),
    "close-then-garbage": Case(
        Close(1, "bye").encode() + b"\xc1", CloseCode.GOING_AWAY, peer_closed=True
    ),
}

AWAIT_WELCOME: dict[str, Case] = {
    "data-before-welcome": Case(data(1), CloseCode.UNEXPECTED_FRAME),
    "ack-before-welcome": Case(codec.encode_ack(0), CloseCode.UNEXPECTED_FRAME),
    "ping-before-welcome": Case(codec.encode_ping(1), CloseCode.UNEXPECTED_FRAME),
    "goaway-before-welcome": Case(Goaway(1, 0).encode(), CloseCode.UNEXPECTED_FRAME),
    "hello-to-client": Case(HELLO, CloseCode.UNEXPECTED_FRAME),
    "welcome-resumed-int": Case(welcome(resumed=1), CloseCode.PROTOCOL_ERROR),
    "welcome-version-2": Case(welcome(version=2), CloseCode.UNSUPPORTED_VERSION),
    "welcome-resumes-unasked": Case(welcome(resumed=True), CloseCode.PROTOCOL_ERROR),
    "welcome-short-id": Case(welcome(session_id=b"\x01" * 15), CloseCode.PROTOCOL_ERROR),
    "welcome-no-credential": Case(welcome(credential=_DROP), CloseCode.PROTOCOL_ERROR),
    "welcome-idle-zero": Case(welcome(idle_timeout_ms=0), CloseCode.PROTOCOL_ERROR),
    "welcome-max-frame-small": Case(welcome(max_frame=1000), CloseCode.PROTOCOL_ERROR),
    "welcome-str-reason": Case(welcome(reason="gone"), CloseCode.PROTOCOL_ERROR),
    "welcome-window-bool": Case(welcome(window=[True, 2048]), CloseCode.PROTOCOL_ERROR),
    "welcome-twice": Case(welcome() + welcome(), CloseCode.UNEXPECTED_FRAME),
    # §11.2: what follows a CLOSE is ignored; a retry code must not turn terminal.
    "close-then-garbage": Case(
        Close(14, "busy", 500).encode() + b"\xc1", CloseCode.LIMIT_EXCEEDED, peer_closed=True
    ),
}

OPEN_EITHER: dict[str, Case] = {
    "data-gap": Case(data(5), CloseCode.SEQUENCE_ERROR),
    "data-duplicate": Case(data(3), CloseCode.SEQUENCE_ERROR),
    "data-duplicate-in-one-read": Case(data(4) + data(4), CloseCode.SEQUENCE_ERROR),
    "data-seq-zero": Case(data(0), CloseCode.SEQUENCE_ERROR),
    "data-seq-u64-max": Case(data(U64_MAX), CloseCode.SEQUENCE_ERROR),
    "data-negative-seq": Case(pack([3, -1, b""]), CloseCode.PROTOCOL_ERROR),
    "data-bool-seq": Case(pack([3, True, b""]), CloseCode.PROTOCOL_ERROR),
    "data-float-seq": Case(pack([3, 4.0, b""]), CloseCode.PROTOCOL_ERROR),
    "data-nil-seq": Case(pack([3, None, b""]), CloseCode.PROTOCOL_ERROR),
    "data-str-payload": Case(pack([3, 4, "text"]), CloseCode.PROTOCOL_ERROR),
    "data-nil-payload": Case(pack([3, 4, None]), CloseCode.PROTOCOL_ERROR),
    "data-missing-payload": Case(pack([3, 4]), CloseCode.PROTOCOL_ERROR),
    "data-extra-field": Case(pack([3, 4, b"", 0]), CloseCode.PROTOCOL_ERROR),
    "data-float-type": Case(pack([3.0, 4, b""]), CloseCode.PROTOCOL_ERROR),
    "data-beyond-window": Case(
        b"".join(data(seq) for seq in range(4, 11)), CloseCode.FLOW_CONTROL_ERROR
    ),
    "data-bytes-beyond-window": Case(
        data(4, b"b" * 1000) + data(5, b"b" * 1000) + data(6, b"b" * 1000),
        CloseCode.FLOW_CONTROL_ERROR,
    ),
    "data-over-max-frame": Case(
        b"\x93\x03\xcf" + (4).to_bytes(8, "big") + b"\xc6" + _u32(HUGE),
        CloseCode.FRAME_TOO_LARGE,
    ),
    "ack-beyond-sent": Case(codec.encode_ack(4), CloseCode.SEQUENCE_ERROR),
    "ack-backwards": Case(codec.encode_ack(0), CloseCode.SEQUENCE_ERROR),
    "ack-forward-then-back": Case(
        codec.encode_ack(3) + codec.encode_ack(2), CloseCode.SEQUENCE_ERROR
    ),
    "ack-u64-max": Case(codec.encode_ack(U64_MAX), CloseCode.SEQUENCE_ERROR),
    "ack-negative": Case(pack([4, -1]), CloseCode.PROTOCOL_ERROR),
    "ack-bool": Case(pack([4, True]), CloseCode.PROTOCOL_ERROR),
    "ack-float": Case(pack([4, 2.0]), CloseCode.PROTOCOL_ERROR),
    "ack-str": Case(pack([4, "2"]), CloseCode.PROTOCOL_ERROR),
    "ack-missing-seq": Case(pack([4]), CloseCode.PROTOCOL_ERROR),
    "ack-extra-field": Case(pack([4, 2, 0]), CloseCode.PROTOCOL_ERROR),
    "ack-float-type": Case(pack([4.0, 2]), CloseCode.PROTOCOL_ERROR),
    "hello-when-open": Case(HELLO, CloseCode.UNEXPECTED_FRAME),
    "welcome-when-open": Case(welcome(), CloseCode.UNEXPECTED_FRAME),
    "ping-negative": Case(pack([5, -1]), CloseCode.PROTOCOL_ERROR),
    "ping-bool": Case(pack([5, False]), CloseCode.PROTOCOL_ERROR),
    "ping-over-u64": Case(b"\x92\x05\xcb" + struct.pack(">d", 2.0**64), CloseCode.PROTOCOL_ERROR),
    "pong-str": Case(pack([6, "1"]), CloseCode.PROTOCOL_ERROR),
    "unknown-type": Case(pack([9, 1]), CloseCode.PROTOCOL_ERROR),
    "ext-value": Case(b"\x93\x03\xd4\x01\x01", CloseCode.PROTOCOL_ERROR),
    "reserved-byte": Case(b"\xc1", CloseCode.PROTOCOL_ERROR),
    "close-then-garbage": Case(
        Close(1, "bye", 500).encode() + b"\xc1", CloseCode.GOING_AWAY, peer_closed=True
    ),
    "close-then-frames": Case(
        Close(1, "bye", 500).encode() + data(5) + HELLO, CloseCode.GOING_AWAY, peer_closed=True
    ),
}

OPEN_SERVER: dict[str, Case] = {
    "goaway-to-server": Case(Goaway(1, 0).encode(), CloseCode.UNEXPECTED_FRAME),
}

OPEN_CLIENT: dict[str, Case] = {
    "goaway-int-redirect": Case(pack([7, 1, 0, 80, ""]), CloseCode.PROTOCOL_ERROR),
    "goaway-missing-reason": Case(pack([7, 1, 0, None]), CloseCode.PROTOCOL_ERROR),
}


def fresh_server() -> tuple[Connection, Session | None]:
    return Connection.server(Params(), NOW), None


def awaiting_welcome() -> tuple[Connection, Session | None]:
    session = Session(Role.CLIENT, Params())
    conn = session.connect(NOW)
    conn.data_to_send()
    return conn, session


def open_server() -> tuple[Connection, Session | None]:
    return side_of(open_pair(), "server")


def open_client() -> tuple[Connection, Session | None]:
    return side_of(open_pair(), "client")


Setup = Callable[[], tuple[Connection, Session | None]]


def cases() -> Iterator[Any]:
    tables: list[tuple[str, Setup, dict[str, Case]]] = [
        ("await-hello", fresh_server, AWAIT_HELLO),
        ("await-welcome", awaiting_welcome, AWAIT_WELCOME),
        ("open-server", open_server, OPEN_EITHER | OPEN_SERVER),
        ("open-client", open_client, OPEN_EITHER | OPEN_CLIENT),
    ]
    for state, setup, table in tables:
        for name, case in table.items():
            yield pytest.param(setup, case, id=f"{state}:{name}")


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize(("setup", "case"), list(cases()))
def test_malformed_or_misplaced_frame_closes_with_its_code(
    setup: Setup, case: Case, mode: str
) -> None:
    conn, session = setup()
    pieces = [case.stream] if mode == "whole" else bytewise(case.stream)
    for piece in pieces:
        conn.receive_data(piece, NOW)
    assert conn.closed, "the connection accepted it"
    assert (conn.close_code, conn.peer_closed) == (case.code, case.peer_closed)
    check_after_input(conn, b"", session)
    if session is not None and is_terminal(case.code):
        ended = [e for e in session.events() if isinstance(e, SessionEnded)]
        assert [e.code for e in ended] == [case.code]
