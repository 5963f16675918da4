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


def test_a_released_unpacker_serves_the_next_read_of_any_decoder() -> None:
    first, second = FrameDecoder(1 << 20), FrameDecoder(1 << 20)
    frame = codec.encode_data(1, b"payload")
    assert first.feed(frame) == [(codec.DATA, 1, b"payload")]
    assert first.release() is True
    spare = codec._SPARE[1 << 20]
    # the other decoder takes it, with its offsets; a frame split over two reads
    assert second.feed(codec.encode_ack(2) + frame[:9]) == [(codec.ACK, 2)]
    assert second._unpacker is spare and second.buffered == 9
    assert (1 << 20) not in codec._SPARE  # in use: no one else gets it
    assert first.feed(frame[:4]) == []  # so the first makes a new one
    assert first._unpacker is not spare
    assert second.feed(frame[9:]) == [(codec.DATA, 1, b"payload")]
    assert second.release() is True
    assert first.feed(frame[4:]) == [(codec.DATA, 1, b"payload")]
    assert first.release() is True  # the spare is now the first's; one kept per limit
    assert codec._SPARE[1 << 20] is not spare
    # a decoder with another limit never gets it
    other = FrameDecoder(4096)
    assert other.feed(frame) == [(codec.DATA, 1, b"payload")]
    assert other._unpacker is not codec._SPARE[1 << 20]
