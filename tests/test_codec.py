"""FrameDecoder's memory: the unpacker exists only while a transport is busy."""

from __future__ import annotations

from sessiond_client.protocol import codec
from sessiond_client.protocol.codec import FrameDecoder

from tests.pair import Pair


def test_release_keeps_a_partial_frame_and_frees_an_idle_decoder() -> None:
    decoder = FrameDecoder(1 << 20)
    assert decoder.release() is False  # nothing allocated yet
    frame = codec.encode_data(1, b"payload")
    assert decoder.feed(frame[:5]) == []
    assert decoder.release() is False  # a partial frame is held
    assert decoder.feed(frame[5:]) == [(codec.DATA, 1, b"payload")]
    assert decoder.release() is True
    assert decoder.buffered == 0
    # a new unpacker picks up where the old one stopped, offsets reset
    assert decoder.feed(codec.encode_ack(3) + frame[:3]) == [(codec.ACK, 3)]
    assert decoder.buffered == 3
    assert decoder.feed(frame[3:]) == [(codec.DATA, 1, b"payload")]


def test_connection_keeps_an_unpacker_only_for_a_partial_frame() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    conn = pair.server_conn
    assert conn is not None
    assert conn._decoder._unpacker is None  # every read ended on a frame boundary
    frame = codec.encode_data(1, b"split")
    conn.receive_data(frame[:7], pair.clock.now)
    assert conn._decoder._unpacker is not None
    conn.receive_data(frame[7:], pair.clock.now)
    assert conn._decoder._unpacker is None
    assert pair.server.take_messages(pair.clock.now) == [b"split"]
