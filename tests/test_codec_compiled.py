"""The optional compiled DATA loop equals the pure-Python receive path (protocol.md §1, §5).

``_datarun.take`` (``client/sessiond_client/protocol/_datarun.c``) takes runs of
fixed-width, next-in-sequence, complete DATA frames and stops at anything else; the
msgpack path judges the rest. These tests hold it to a Python statement of that rule,
to msgpack's reading of the same bytes, and hold a transport that uses it to one that
does not (and to the slow path of ``test_codec_fastpath``), on random streams cut at
random offsets: the same deliveries, output, counters, close code and reason.

The compiled module is imported directly, so these comparisons run under
``SESSIOND_PURE=1`` too (which only changes what transports use by default).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sessiond_client.protocol import CloseCode, Connection, ConnectionState, Session, codec
from sessiond_client.protocol.codec import U64_MAX

from tests.test_codec_fastpath import (
    COMMON,
    LIMIT,
    RARE,
    open_server,
    open_unconfirmed_server,
    server_outcome,
    slow_receive,
    wire_item,
)
from tests.test_fuzz import bytewise, pieces_of

Take = Callable[[bytes, int, int, int, list[bytes]], tuple[int, int, int]]


def compiled() -> Take | None:
    try:
        module = importlib.import_module("sessiond_client.protocol._datarun")
    except ImportError:
        return None
    take: Take = module.take
    return take


TAKE = compiled()
#: What each comparison runs: the pure path always, the compiled loop where it is built
#: (test_the_compiled_loop_is_built_where_it_can_be says where that must be).
PATHS: list[Take | None] = [None] if TAKE is None else [None, TAKE]


def test_the_compiled_loop_is_built_where_it_can_be() -> None:
    """Where a C compiler and the Python headers are present, the editable install builds
    the loop (client/setup.py), and transports use it unless SESSIOND_PURE is set; where
    they are not, the install goes on without it and every transport decodes with msgpack."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) and headers.exists():
        assert TAKE is not None, "not built: `pip install -e ./client` builds it"
    pure = bool(os.environ.get("SESSIOND_PURE"))
    assert (codec.take_data_run is None) == (pure or TAKE is None)
    conn = Connection.server(open_server()[1].params, 0.0)
    assert conn._take_run is codec.take_data_run
    if TAKE is not None:
        check_wrong_arguments(TAKE)


def reference_take(
    data: bytes, pos: int, received: int, limit: int
) -> tuple[int, int, list[bytes]]:
    """The rule of _datarun.c in Python: fixed-width layout, complete, within the limit,
    numbered received + 1, ...; stop at anything else."""
    out = []
    while received < U64_MAX and len(data) - pos >= codec.DATA_OVERHEAD:
        head = data[pos : pos + codec.DATA_OVERHEAD]
        if head[:3] != codec.DATA_LEAD or head[11:12] != codec.BIN32:
            break
        seq = int.from_bytes(head[3:11], "big")
        size = codec.DATA_OVERHEAD + int.from_bytes(head[12:16], "big")
        if seq != received + 1 or size > limit or pos + size > len(data):
            break
        out.append(data[pos + codec.DATA_OVERHEAD : pos + size])
        received = seq
        pos += size
    return pos, received, out


@st.composite
def runs(draw: st.DrawFn) -> tuple[bytes, int]:
    """Fixed-width DATA numbered from a random start (near U64_MAX too), with now and then
    a frame the loop must stop at: a gap, another encoding, a wrong marker, noise."""
    start = draw(st.integers(0, 40) | st.integers(U64_MAX - 40, U64_MAX))
    seq, out = start + 1, []
    for _ in range(draw(st.integers(0, 12))):
        payload = draw(st.binary(max_size=80))
        kind = draw(st.sampled_from(["data"] * 6 + ["gap", "generic", "bin8", "noise", "cut"]))
        frame = codec.DATA_HEAD.pack(codec.DATA_LEAD, seq & U64_MAX, codec.BIN32, len(payload))
        frame += payload
        if kind == "gap":
            frame = codec.DATA_HEAD.pack(codec.DATA_LEAD, (seq + 1) & U64_MAX, codec.BIN32, 0)
        elif kind == "generic":
            frame = msgpack.packb((codec.DATA, seq & U64_MAX, payload), use_bin_type=True)
        elif kind == "bin8":
            frame = frame[:11] + b"\xc4" + frame[12:]
        elif kind == "noise":
            frame = draw(st.binary(min_size=1, max_size=20))
        elif kind == "cut":
            frame = frame[: draw(st.integers(0, len(frame) - 1))]
        out.append(frame)
        seq += kind == "data"
    return b"".join(out), start


@settings(max_examples=500)
@given(run=runs(), limit=st.integers(0, 120), data=st.data())
def test_take_follows_its_rule_and_reads_what_msgpack_reads(
    run: tuple[bytes, int], limit: int, data: st.DataObject
) -> None:
    stream, received = run
    pos = data.draw(st.integers(0, len(stream)))
    end, last, taken = reference_take(stream, pos, received, limit)
    # the rule takes what msgpack reads from the same bytes, as the frames it reads
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    unpacker.feed(stream[pos:end])
    assert list(unpacker) == [
        (codec.DATA, received + 1 + i, payload) for i, payload in enumerate(taken)
    ]
    assert last == received + len(taken)
    if TAKE is not None:
        for buffer in (stream, memoryview(stream)):
            inbox = [b"held"]
            got = TAKE(buffer, pos, received, limit, inbox)  # type: ignore[arg-type]
            assert got == (end, last, sum(map(len, taken)))
            assert inbox == [b"held", *taken]


def check_wrong_arguments(take: Take) -> None:
    frame = codec.encode_data(1, b"x")
    with pytest.raises(TypeError):
        take(frame, 0, 0, 100, ())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        take(frame, len(frame) + 1, 0, 100, [])
    with pytest.raises(ValueError):
        take(frame, -1, 0, 100, [])
    with pytest.raises(OverflowError):
        take(frame, 0, -1, 100, [])
    with pytest.raises(TypeError):
        take("text", 0, 0, 100, [])  # type: ignore[arg-type]


# ---------------------------------------------------------------- whole transports

MORE = [
    "data",
    "data",
    "data",
    "data",
    "data",
    "canonical-announced",
    "garbage",
    "data-wide",
]


def extra_item(kind: str, seq: int, payload: bytes, ack: int) -> tuple[bytes, int]:
    """Items beyond wire_item's: a fixed-width header announcing a frame over the limit,
    random bytes, DATA in the fixed-width layout with a bin16 body (not the C loop's)."""
    if kind == "canonical-announced":
        head = codec.DATA_HEAD.pack(codec.DATA_LEAD, seq, codec.BIN32, LIMIT)
        return head + payload[:40], seq
    if kind == "garbage":
        return payload[:12] or b"\xc1", seq
    if kind == "data-wide":
        frame = b"\x93\x03\xcf" + seq.to_bytes(8, "big") + b"\xc5"
        return frame + len(payload).to_bytes(2, "big") + payload, seq + 1
    return wire_item(kind, seq, payload, ack)


@st.composite
def streams(draw: st.DrawFn, seq: int = 2) -> bytes:
    """Frames and faults from DATA *seq* on (open_server has taken DATA 1)."""
    kinds = draw(
        st.lists(
            st.sampled_from(COMMON) | st.sampled_from(MORE) | st.sampled_from(RARE),
            min_size=1,
            max_size=60,
        )
    )
    out = []
    for kind in kinds:
        payload = draw(st.binary(max_size=120))
        item, seq = extra_item(kind, seq, payload, draw(st.integers(0, 5)))
        out.append(item)
    return b"".join(out)


def outcomes(
    chunks: list[bytes], opener: Callable[[], tuple[Any, Connection, Session]] = open_server
) -> list[tuple[Any, ...]]:
    """Feed *chunks* to a server on each path (and on the slow path); check they hold the
    same incomplete frame after each read; return each one's outcome."""
    opened: list[tuple[Connection, Session]] = []
    for take in PATHS:
        _, conn, session = opener()
        conn._take_run = take
        opened.append((conn, session))
    _, slow, slow_session = opener()
    for chunk in chunks:
        for conn, _ in opened:
            conn.receive_data(chunk, 1000.0)
        slow_receive(slow, chunk, 1000.0)
        held = {conn.buffered_input for conn, _ in opened}
        if not slow.closed:
            held.add(slow.buffered_input)
        assert len(held) == 1
        # the counters the fast paths keep in locals, stored back after each read
        counters = {(s._received, s._inbox_bytes, s.messages_waiting) for _, s in opened}
        assert len(counters) == 1
    return [server_outcome(conn, session) for conn, session in opened] + [
        server_outcome(slow, slow_session)
    ]


@settings(deadline=None, max_examples=400)
@given(stream=streams(), data=st.data())
def test_a_transport_with_the_compiled_loop_equals_one_without(
    stream: bytes, data: st.DataObject
) -> None:
    """Fixed-width DATA amid every other frame and fault, whole, cut at random offsets
    and (when short) byte by byte: the same outcome with the loop, without it, and on
    the slow path."""
    cuts = data.draw(pieces_of(stream))
    for chunks in ([stream], cuts, bytewise(stream) if len(stream) < 200 else cuts):
        first, *others = outcomes(chunks)
        assert all(other == first for other in others)


@settings(deadline=None, max_examples=60)  # a resume costs ~0.1 s (credential rotation)
@given(stream=streams(seq=1), data=st.data())
def test_an_unconfirmed_transport_with_the_compiled_loop_equals_one_without(
    stream: bytes, data: st.DataObject
) -> None:
    """The first frame after a resume confirms the transport through the generic dispatch
    (protocol.md §4.4); when it is a fixed-width DATA the loop takes what follows it."""
    for chunks in ([stream], data.draw(pieces_of(stream))):
        first, *others = outcomes(chunks, open_unconfirmed_server)
        assert all(other == first for other in others)


@pytest.mark.parametrize("cut", [0, 1, 15, 16, 17, 600, 2000, 4111, 4112, 4113])
def test_reads_cut_inside_a_long_fixed_width_frame_equal_the_pure_path(cut: int) -> None:
    """A frame at the limit, cut inside its header or body: the read after the cut ends
    where that frame does (its header says where) and the loop takes the rest."""
    wire = b"".join(
        codec.encode_data(2 + i, bytes([i]) * (LIMIT - codec.DATA_OVERHEAD if i == 1 else 50))
        for i in range(40)
    )
    cut += 66  # inside the second frame (the first is 66 bytes)
    first, *others = outcomes([wire[:cut], wire[cut:]])
    assert all(other == first for other in others)
    assert (first[0], first[1]) == (ConnectionState.OPEN, None)


def test_a_peer_over_its_window_is_closed_the_same_way_with_the_loop() -> None:
    """130 DATA frames against a window of 128 messages, in one read and cut: the
    loop counts the run, then checks the window (as the Python fast path does)."""
    wire = b"".join(codec.encode_data(2 + i, b"w") for i in range(130))
    for chunks in ([wire], [wire[:1000], wire[1000:]], [wire[:-5], wire[-5:]]):
        closes = set()
        for take in PATHS:
            _, conn, _ = open_server()
            conn._take_run = take
            for chunk in chunks:
                conn.receive_data(chunk, 1000.0)
            closes.add((conn.close_code, conn.close_reason))
        assert closes == {(CloseCode.FLOW_CONTROL_ERROR, "peer exceeded our window")}
