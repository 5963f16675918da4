"""Stream codec: msgpack frames on a byte stream, with every size bounded (protocol.md §1).

A frame is one msgpack array whose first element is the frame type. Frames are
self-delimiting, so the stream is simply concatenated frames; a streaming
``msgpack.Unpacker`` decodes whole socket reads (about 3x faster per frame than
a length prefix plus ``unpackb``, see ``bench/RESULTS.md``).

Bounding: the receiver never holds more than ``max_frame_size`` bytes of one
incomplete frame, and rejects a frame as soon as a header inside its first
:data:`HEAD_SCAN` bytes announces a length that takes it over the limit.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from .errors import CloseCode, RemoteProtocolError

#: Frame types (protocol.md §2).
HELLO = 1
WELCOME = 2
DATA = 3
ACK = 4
PING = 5
PONG = 6
GOAWAY = 7
CLOSE = 8

#: Bytes a DATA frame adds to its payload with the fixed-width encoding we write.
DATA_OVERHEAD = 16
#: Largest value of a sequence number or timestamp field.
U64_MAX = (1 << 64) - 1
#: How many bytes of an incomplete frame are scanned for announced lengths.
HEAD_SCAN = 64
#: The largest piece fed to the unpacker at once; bounds its buffer.
FEED_PIECE = 64 * 1024
#: Limits on containers and strings inside frames (payloads are bin, limited by frame size).
MAX_ARRAY_LEN = 16
MAX_MAP_LEN = 32
MAX_STR_LEN = 4096

#: Header of a DATA frame as we write it: fixarray(3), 3, uint64 seq, bin32 length,
#: packed as ``DATA_HEAD.pack(DATA_LEAD, seq, BIN32, size)``: the constant bytes go in as
#: two strings, cheaper than a range-checked integer conversion each (a quarter of the
#: header's cost, measured with callgrind).
DATA_HEAD = struct.Struct(">3sQsI")
DATA_LEAD = bytes((0x93, DATA, 0xCF))  # fixarray of 3, the type, uint64 marker
BIN32 = b"\xc6"
_U64_FRAME = struct.Struct(">BBBQ")

#: ``take(data, pos, received, limit, inbox) -> (pos, received, added)``: the optional
#: compiled loop of the receive path (``_datarun.c``, built by ``client/setup.py`` where a
#: C compiler is present). From ``data[pos:]`` it appends to *inbox* the payloads of the
#: longest run of DATA frames in the fixed-width layout above that are complete, at most
#: *limit* bytes and numbered ``received + 1, received + 2, ...``; it stops (never
#: raises) at anything else, which the msgpack path then decodes and judges.
#: None where it is not built, or with ``SESSIOND_PURE=1`` in the environment (the suite
#: runs both ways); ``Connection`` then decodes everything with msgpack, with the same
#: results (``tests/test_codec_fastpath.py``).
TakeDataRun = Callable[[bytes, int, int, int, list[bytes]], tuple[int, int, int]]


def _compiled_take() -> TakeDataRun | None:
    if os.environ.get("SESSIOND_PURE"):
        return None
    try:
        from ._datarun import take  # noqa: PLC0415 (optional, and skipped when pure)
    except ImportError:  # not built here: the pure-Python path
        return None
    return take


take_data_run = _compiled_take()


def encode_data(seq: int, payload: bytes) -> bytes:
    """Encode a DATA frame: ``[3, seq, payload]`` with uint64 and bin32 headers."""
    return DATA_HEAD.pack(DATA_LEAD, seq, BIN32, len(payload)) + payload


def encode_ack(seq: int) -> bytes:
    """Encode an ACK frame: ``[4, seq]``."""
    return _U64_FRAME.pack(0x92, ACK, 0xCF, seq)


def encode_ping(stamp: int) -> bytes:
    """Encode a PING frame: ``[5, stamp]``."""
    return _U64_FRAME.pack(0x92, PING, 0xCF, stamp)


def encode_pong(stamp: int) -> bytes:
    """Encode a PONG frame: ``[6, stamp]``."""
    return _U64_FRAME.pack(0x92, PONG, 0xCF, stamp)


def encode_value(value: Any) -> bytes:
    """Encode a control frame (any msgpack value) canonically: bytes as bin, str as str."""
    encoded: bytes = msgpack.packb(value, use_bin_type=True)
    return encoded


def min_encoded_size(head: bytes) -> int:
    """Return a lower bound of the size of the msgpack value that *head* begins.

    Every value still expected counts as at least one byte; a str/bin/ext header
    adds its announced length. Used to reject an oversized frame from its header.
    """
    pos = 0
    need = 1
    end = len(head)
    while need and pos < end:
        b = head[pos]
        need -= 1
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            pos += 1
        elif b <= 0x8F:  # fixmap
            pos += 1
            need += 2 * (b & 0x0F)
        elif b <= 0x9F:  # fixarray
            pos += 1
            need += b & 0x0F
        elif b <= 0xBF:  # fixstr
            pos += 1 + (b & 0x1F)
        elif b in _LEN_HEADERS:
            width, extra = _LEN_HEADERS[b]
            if pos + 1 + width > end:
                return pos + 1 + width + extra + need
            length = int.from_bytes(head[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width + extra + length
        elif b in _CONTAINER_HEADERS:
            width, per_item = _CONTAINER_HEADERS[b]
            if pos + 1 + width > end:
                return pos + 1 + width + need
            count = int.from_bytes(head[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
            need += per_item * count
        elif b in _FIXED_SIZES:
            pos += _FIXED_SIZES[b]
        else:  # 0xc1 is never valid; the unpacker reports it
            return pos + 1
    return pos + need


# header byte -> (bytes of the length field, bytes between it and the body)
_LEN_HEADERS = {
    0xC4: (1, 0),
    0xC5: (2, 0),
    0xC6: (4, 0),
    0xD9: (1, 0),
    0xDA: (2, 0),
    0xDB: (4, 0),
    0xC7: (1, 1),
    0xC8: (2, 1),
    0xC9: (4, 1),
}
_CONTAINER_HEADERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_FIXED_SIZES = {
    0xCA: 5,
    0xCB: 9,
    0xCC: 2,
    0xCD: 3,
    0xCE: 5,
    0xCF: 9,
    0xD0: 2,
    0xD1: 3,
    0xD2: 5,
    0xD3: 9,
    0xD4: 3,
    0xD5: 4,
    0xD6: 6,
    0xD7: 10,
    0xD8: 18,
}


def pieces(data: bytes) -> tuple[bytes, ...] | list[memoryview]:
    """Split *data* into pieces of at most FEED_PIECE bytes, without copying."""
    if len(data) <= FEED_PIECE:
        return (data,)
    view = memoryview(data)
    return [view[start : start + FEED_PIECE] for start in range(0, len(data), FEED_PIECE)]


#: Per frame-size limit, one Unpacker holding no bytes, ready for the next read. An
#: Unpacker costs ~57 KiB, zeroed when made: about 6 µs on a loaded 2-core machine, paid
#: per read (a ping-pong pays it per message). dict.pop is atomic under the GIL, so
#: decoders on several threads never share one.
_SPARE: dict[int, Any] = {}
_NOTHING = object()


class FrameDecoder:
    """Turn stream bytes into decoded frames (tuples), bounded by *max_frame_size*.

    Call :meth:`feed` with whatever the transport delivered; it returns the
    complete frames it holds, in order, and keeps at most one incomplete frame.
    Malformed input raises :class:`RemoteProtocolError`; after that the decoder
    must be dropped together with its transport.
    """

    __slots__ = (
        "_boundary",
        "_fed",
        "_head",
        "_head_start",
        "_max",
        "_place_fresh",
        "_place_full",
        "_place_pending",
        "_unpacker",
    )

    def __init__(self, max_frame_size: int) -> None:
        self._max = max_frame_size
        # An Unpacker holds ~41 KiB (its parse stack) plus its buffer: it exists only
        # while data flows, see release(). Offsets below count from its creation.
        self._unpacker: Any = None
        self._fed = 0  # stream offset of the end of the bytes fed so far
        self._boundary = 0  # stream offset where the incomplete frame starts
        self._head = b""
        self._head_start = -1
        # Whether the next piece's frames are decoded without measuring each one and
        # the boundary found afterwards by place(): per kind of piece (starting on a
        # frame boundary, starting inside a frame, or FEED_PIECE long: see placeable),
        # as the last piece of that kind turned out.
        self._place_fresh = True
        self._place_pending = True
        self._place_full = True

    def _new_unpacker(self) -> Any:
        limit = self._max
        spare = _SPARE.pop(limit, None)
        if spare is not None:
            # Offsets count from the unpacker's creation: go on from where it is.
            self._fed = self._boundary = spare.tell()
            return spare
        return msgpack.Unpacker(
            use_list=False,
            raw=False,
            strict_map_key=True,
            read_size=min(16 * 1024, limit + FEED_PIECE),
            max_buffer_size=limit + FEED_PIECE,
            max_bin_len=limit,
            max_str_len=min(MAX_STR_LEN, limit),
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
        )

    def discard(self) -> None:
        """Drop everything held: the transport is closed and nothing more is decoded."""
        self._unpacker = None
        self._head = b""
        # Nothing is held now (buffered is 0), whichever frame the failure stopped in.
        self._fed = self._boundary = 0

    def release(self) -> bool:
        """Free the unpacker if no incomplete frame is held (an idle transport's
        decoder then costs a few hundred bytes); the next piece makes a new one."""
        unpacker = self._unpacker
        if unpacker is None or self._boundary != self._fed:
            return False
        # It holds nothing now: kept as the process's spare for the next read of any
        # transport (one at a time is in use), instead of allocating ~57 KiB per read.
        _SPARE[self._max] = unpacker
        self._unpacker = None
        self._fed = self._boundary = 0
        self._head = b""
        self._head_start = -1
        return True

    @property
    def buffered(self) -> int:
        """Bytes held for the incomplete frame at the end of the stream."""
        return self._fed - self._boundary

    def feed(self, data: bytes) -> list[Any]:
        """Decode *data*; return the frames it completes (possibly none)."""
        frames: list[Any] = []
        for piece in pieces(data):
            unpacker = self.push(piece)
            append = frames.append
            # The unpacker parses incrementally, so its tell() also counts bytes of
            # an incomplete frame; right after a frame is yielded it is that frame's end.
            tell = unpacker.tell
            boundary = self._boundary
            limit = self._max
            stop = self._fed
            try:
                for frame in unpacker:
                    end = tell()
                    if end - boundary > limit:
                        raise self.too_large(end - boundary)
                    append(frame)
                    boundary = end
                    if end == stop:
                        # Nothing more was fed: not asking the unpacker for one more
                        # frame saves the two exceptions that end its iteration
                        # (OutOfData inside, StopIteration out, each with a Cython-made
                        # traceback: about 2.8k instructions, bench/PROFILE.md).
                        break
            except (ValueError, msgpack.UnpackException) as exc:
                raise self.undecodable(piece, boundary, exc) from None
            self.settle(piece, boundary)
        return frames

    # The calls below let a hot path iterate the unpacker itself instead of a list
    # (Connection does, see bench/RESULTS.md): push() a piece, iterate the returned
    # unpacker checking each frame's size with tell() as feed() does, then
    # settle() with the offset where the last complete frame ended.

    @property
    def max_frame_size(self) -> int:
        return self._max

    def too_large(self, size: int) -> RemoteProtocolError:
        """The error for a frame of *size* bytes over the limit."""
        return RemoteProtocolError(
            f"frame of {size} bytes, limit {self._max}", CloseCode.FRAME_TOO_LARGE
        )

    def undecodable(
        self, piece: bytes | memoryview, boundary: int, exc: Exception
    ) -> RemoteProtocolError:
        """The error for a frame the unpacker refused, starting at stream offset *boundary*.

        A length over a limit is reported as FRAME_TOO_LARGE when it takes the frame
        over max_frame_size. Only the bytes up to the refused element are looked at,
        so the code is the same whether the frame arrived whole or in pieces.
        """
        failed_at = (self._unpacker.tell() if self._unpacker is not None else 0) + 1
        if failed_at - boundary > self._max:  # the frame was over the limit before the fault
            return self.too_large(failed_at - boundary)
        offset = boundary - (self._fed - len(piece))
        if offset >= 0:
            head = bytes(piece[offset : offset + HEAD_SCAN])
        else:
            earlier = self._head if self._head_start == boundary else b""
            head = (earlier + bytes(piece[:HEAD_SCAN]))[:HEAD_SCAN]
        announced = min_encoded_size(head[: max(0, failed_at - boundary)])
        if announced > self._max:
            return self.too_large(announced)
        return RemoteProtocolError(f"undecodable frame: {exc}")

    # Placing a boundary after the fact. Measuring each frame (tell() after it, and the
    # size check) is about a fifth of a DATA frame's receive cost. A piece no longer
    # than the limit cannot hold a frame over it once a frame boundary inside it is
    # known (the piece's start when nothing was pending, else the end of the first
    # frame it completes): from there a hot path may iterate the unpacker without
    # measuring, then call place() for the end of the last complete frame. The
    # unpacker does not say whether it holds part of a frame, so place() asks it:
    # a nil fed after a complete frame is a whole frame of its own, and is read back
    # as None; fed inside a frame it is not. When the piece did end inside a frame
    # (or decoding failed), rescan() decodes the piece again from the known boundary
    # with a new unpacker, measuring each frame as feed() does: the same bytes give
    # the same frames, the same boundary and the same error. Each kind of piece
    # takes this path only while the last piece of its kind ended on a boundary
    # (see _receive_piece), so a stream of cut reads does not pay for two decodes.
    # The kinds: a piece of FEED_PIECE bytes (pieces() cut a longer read there, at
    # any offset, so it nearly always ends inside a frame), else one beginning on a
    # boundary (fresh), else one beginning inside a frame (pending). Without the
    # first kind, a read split into a whole piece (ending inside a frame) and a
    # short one (ending where the peer's write did) made the pending guess wrong
    # every other piece, each miss decoding 64 KiB twice: +8 % instructions per
    # message on one windowed session (bench/PROFILE.md). (A checkpoint every 32
    # placed frames, for rescan() to start from, made a miss cheap but cost every
    # placed frame more than it saved: also there.)

    def placeable(self, piece: bytes | memoryview) -> bool:
        """Whether the frames of *piece* (just pushed) may be iterated unmeasured
        from the first known boundary on, and placed afterwards with :meth:`place`."""
        size = len(piece)
        if size > self._max:
            return False
        if size == FEED_PIECE:
            return self._place_full
        if self._fed - size == self._boundary:
            return self._place_fresh
        return self._place_pending

    def place(self, piece: bytes | memoryview, start: int) -> int:
        """Return the stream offset where the last complete frame of *piece* ends.

        *start* is a frame boundary inside the piece (or at its start) after which
        every frame the unpacker yielded was taken. Then call :meth:`settle`.
        """
        unpacker = self._unpacker
        end = self._fed
        placed = False
        if unpacker.tell() == end:
            unpacker.feed(b"\xc0")
            try:
                placed = next(unpacker, _NOTHING) is None
            except (ValueError, msgpack.UnpackException):  # refused: inside a frame
                placed = False
        if placed:
            self._fed = end + 1  # the nil is consumed: it counts as stream
            return end + 1
        return self.rescan(piece, start)

    def rescan(self, piece: bytes | memoryview, start: int) -> int:
        """Decode *piece* again from stream offset *start* (a frame boundary) with a new
        unpacker, which replaces the current one; return where the last complete
        frame ends, or where the frame the unpacker refuses begins (the unpacker is
        left at the refusal, for :meth:`undecodable`)."""
        fed, boundary = self._fed, self._boundary
        skip = start - (fed - len(piece))
        self._unpacker = None
        # (A spare unpacker, taken here, resets _fed and _boundary to its own offset:
        # they are set again below from the values read before.)
        unpacker = self._unpacker = self._new_unpacker()
        base: int = unpacker.tell()
        tail = piece[skip:] if skip else piece
        unpacker.feed(tail)
        # Offsets now count in the new unpacker, whose position *base* is *start*. (The
        # head kept for a frame begun before *start* is of no use: that frame is done.)
        shift = base - start
        self._fed = fed + shift
        self._boundary = boundary + shift
        self._head_start = -1
        self._head = b""
        tell: Callable[[], int] = unpacker.tell
        end = base
        try:
            for _ in unpacker:
                end = tell()
        except (ValueError, msgpack.UnpackException):
            pass
        return end

    @property
    def boundary(self) -> int:
        """Stream offset where the last complete frame ended."""
        return self._boundary

    def push(self, piece: bytes | memoryview) -> Any:
        """Feed one piece (at most FEED_PIECE bytes, see :func:`pieces`); return the unpacker."""
        unpacker = self._unpacker
        if unpacker is None:
            unpacker = self._unpacker = self._new_unpacker()
        unpacker.feed(piece)
        self._fed += len(piece)
        return unpacker

    def settle(self, piece: bytes | memoryview, boundary: int) -> None:
        """Record where the last complete frame ended; check the incomplete one's size."""
        self._boundary = boundary
        if boundary != self._fed:
            self._check_pending(piece, boundary)

    def learn(self, piece: bytes | memoryview, fresh: bool) -> None:
        """After :meth:`settle`: the next piece of the kind of *piece* (*fresh*: it began
        on a frame boundary) is placed only if this one ended on a boundary
        (:meth:`placeable`)."""
        if len(piece) == FEED_PIECE:
            self._place_full = self._boundary == self._fed
        elif fresh:
            self._place_fresh = self._boundary == self._fed
        else:
            self._place_pending = self._boundary == self._fed

    def _check_pending(self, piece: bytes | memoryview, start: int) -> None:
        pending = self._fed - start
        if pending > self._max:
            raise RemoteProtocolError(f"frame exceeds {self._max} bytes", CloseCode.FRAME_TOO_LARGE)
        if start != self._head_start:
            self._head_start = start
            self._head = b""
        if len(self._head) >= HEAD_SCAN:
            return
        if pending <= len(piece):
            self._head = bytes(piece[len(piece) - pending :][:HEAD_SCAN])
        else:
            self._head = (self._head + bytes(piece[:HEAD_SCAN]))[:HEAD_SCAN]
        announced = min_encoded_size(self._head)
        if announced > self._max:
            raise RemoteProtocolError(
                f"frame announces {announced} bytes, limit {self._max}",
                CloseCode.FRAME_TOO_LARGE,
            )
