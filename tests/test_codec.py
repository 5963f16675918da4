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


def test_idle_connection_frees_its_unpacker_on_a_timer_tick() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    conn = pair.server_conn
    assert conn is not None
    assert conn._decoder._unpacker is not None
    pair.tick(pair.client.params.heartbeat_interval)  # the heartbeat timers fire
    assert conn._decoder._unpacker is None
    pair.pump()  # the peer's PING arrives: a new unpacker
    assert conn._decoder._unpacker is not None
    pair.client.send(b"after", pair.clock.now)
    pair.pump()
    assert pair.take_server() == [b"after"]
