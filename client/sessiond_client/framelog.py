"""DEBUG summaries of the frames a client transport carries (protocol.md §2).

Made only while the ``sessiond_client`` logger is enabled for DEBUG: one
:class:`FrameLog` per transport decodes a copy of what was written and read and
says which frames went by (``DATA x3 seq 4-6 (192 bytes), ACK 12``). It never
shows a payload, a credential or a resume token: only frame types, sequence
numbers, sizes and close codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from .protocol import CloseCode, codec

_NAMES = {
    codec.HELLO: "HELLO",
    codec.WELCOME: "WELCOME",
    codec.DATA: "DATA",
    codec.ACK: "ACK",
    codec.PING: "PING",
    codec.PONG: "PONG",
    codec.GOAWAY: "GOAWAY",
    codec.CLOSE: "CLOSE",
}


def _code(value: Any) -> str:
    try:
        return CloseCode(value).name
    except (ValueError, TypeError):
        return repr(value)


def _hello(frame: tuple[Any, ...]) -> str:
    body = frame[1] if len(frame) > 1 and isinstance(frame[1], dict) else {}
    return "HELLO (resume)" if body.get("resume") is not None else "HELLO (new session)"


def _welcome(frame: tuple[Any, ...]) -> str:
    body = frame[1] if len(frame) > 1 and isinstance(frame[1], dict) else {}
    return "WELCOME (resumed)" if body.get("resumed") else "WELCOME (new session)"


def _closing(frame: tuple[Any, ...]) -> str:
    return f"{_NAMES[frame[0]]} {_code(frame[1] if len(frame) > 1 else None)}"


_DESCRIBE: dict[int, Callable[[tuple[Any, ...]], str]] = {
    codec.HELLO: _hello,
    codec.WELCOME: _welcome,
    codec.GOAWAY: _closing,
    codec.CLOSE: _closing,
}


class FrameLog:
    """Summaries of one direction of one transport; feed it every chunk, in order."""

    def __init__(self) -> None:
        self._unpacker: Any = msgpack.Unpacker(use_list=False, raw=False, strict_map_key=False)
        self._broken = False

    def summary(self, data: bytes) -> str:
        """What *data* (the next chunk of the stream) held, without any payload."""
        if self._broken:
            return f"{len(data)} bytes"
        self._unpacker.feed(data)
        parts: list[str] = []
        seqs: list[int] = []
        sizes = 0
        try:
            for frame in self._unpacker:
                kind = frame[0] if isinstance(frame, tuple) and frame else None
                if kind == codec.DATA and len(frame) == 3:
                    seqs.append(frame[1])
                    sizes += len(frame[2])
                    continue
                if seqs:
                    parts.append(_data(seqs, sizes))
                    seqs, sizes = [], 0
                describe = _DESCRIBE.get(kind) if isinstance(kind, int) else None
                if describe is not None:
                    parts.append(describe(frame))
                elif kind == codec.ACK and len(frame) > 1:
                    parts.append(f"ACK {frame[1]}")
                else:
                    parts.append(_NAMES.get(kind, "?") if isinstance(kind, int) else "?")
        except (ValueError, TypeError, msgpack.UnpackException):
            self._broken = True  # a summary is a courtesy: never fail the transport for it
        if seqs:
            parts.append(_data(seqs, sizes))
        return f"{len(data)} bytes: {', '.join(parts) or 'part of a frame'}"


def _data(seqs: list[int], sizes: int) -> str:
    if len(seqs) == 1:
        return f"DATA seq {seqs[0]} ({sizes} bytes)"
    return f"DATA x{len(seqs)} seq {seqs[0]}-{seqs[-1]} ({sizes} bytes)"
