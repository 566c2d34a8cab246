"""SPDY/3.1 frames, header compression and sessions over real sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from kubefwd.sim import spdysession as spdy
from kubefwd.sim import wssession
from kubefwd.wire import spdyframes


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(spdyframes.DICTIONARY) == 1423
    assert hashlib.sha256(spdyframes.DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")


def test_header_blocks_share_one_context_per_direction() -> None:
    compressor, decompressor = spdyframes.HeaderCompressor(), spdyframes.HeaderDecompressor()
    independent = zlib.decompressobj(zdict=spdyframes.DICTIONARY)
    for i in range(3):
        headers = {"streamType": "data", "port": "8080", "requestID": str(i)}
        block = compressor.compress(headers)
        assert block.endswith(b"\x00\x00\xff\xff")  # sync flush: each frame stands alone
        assert decompressor.decompress(block) == {k.lower(): v for k, v in headers.items()}
        raw = independent.decompress(block)
        assert raw == spdyframes.encode_header_block(headers)
    assert raw[:4] == struct.pack("!I", 3) and b"streamtype" in raw


def test_malformed_header_blocks() -> None:
    with pytest.raises(spdyframes.SpdyError):
        spdyframes.decode_header_block(struct.pack("!II", 1, 10) + b"abc")
    with pytest.raises(spdyframes.SpdyError):
        spdyframes.HeaderDecompressor().decompress(b"not zlib at all")


def test_frame_layouts() -> None:
    assert spdyframes.ping_frame(7) == b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x07"
    assert spdyframes.rst_stream_frame(3, spdyframes.CANCEL) == (
        b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x05")
    assert spdyframes.data_frame(5, b"hi", fin=True) == b"\x00\x00\x00\x05\x01\x00\x00\x02hi"
    syn = spdyframes.syn_stream_frame(1, b"BLOCK", fin=True, priority=7)
    assert syn[:8] == b"\x80\x03\x00\x01\x01\x00\x00\x0f"
    assert syn[8:18] == b"\x00\x00\x00\x01\x00\x00\x00\x00\xe0\x00" and syn[18:] == b"BLOCK"
    assert spdyframes.goaway_frame(9)[8:] == b"\x00\x00\x00\x09\x00\x00\x00\x00"


class Recorder:
    """Per-stream callbacks collecting what arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.fin = threading.Event()
        self.reset: list[int] = []
        self.done = threading.Event()

    def callbacks(self) -> dict[str, Any]:
        return {"on_data": self.data.extend, "on_fin": self.on_fin, "on_reset": self.on_reset}

    def on_fin(self) -> None:
        self.fin.set()
        self.done.set()

    def on_reset(self, code: int) -> None:
        self.reset.append(code)
        self.done.set()


@pytest.fixture
def sessions() -> Iterator[tuple[spdy.SpdySession, spdy.SpdySession, list[spdy.SpdyStream]]]:
    """A client and a server session over a socket pair; the server echoes every stream."""
    a, b = socket.socketpair()
    accepted: list[spdy.SpdyStream] = []

    def on_stream(stream: spdy.SpdyStream) -> None:
        accepted.append(stream)
        if stream.headers.get("refuse"):
            stream.reset(spdyframes.REFUSED_STREAM)
            return
        stream.on_data = lambda view: stream.send(view)
        stream.on_fin = stream.close
        stream.reply({"accepted": "yes"})

    server = spdy.SpdySession(b, server=True, on_stream=on_stream, name="test-server").start()
    client = spdy.SpdySession(a, server=False, name="test-client").start()
    yield client, server, accepted
    client.close()
    server.close()


def test_open_reply_echo_and_half_close(sessions: Any) -> None:
    client, _server, accepted = sessions
    rec = Recorder()
    stream = client.open_stream({"streamType": "data", "Port": "80"}, **rec.callbacks())
    assert stream.id == 1 and stream.wait_reply(5)
    assert stream.headers == {"accepted": "yes"}
    payload = os.urandom(3 << 20)
    stream.send(payload)
    stream.close()  # half-close: the echo still comes back, then the server's FIN
    assert rec.fin.wait(10) and bytes(rec.data) == payload and rec.reset == []
    assert accepted[0].headers == {"streamtype": "data", "port": "80"}
    second = client.open_stream({"x": "y"})
    assert second.id == 3 and second.wait_reply(5)
    client.ping(5)
    assert client.active_streams == 1  # the finished stream was forgotten


def test_refused_stream_is_reset(sessions: Any) -> None:
    client, _server, _accepted = sessions
    rec = Recorder()
    stream = client.open_stream({"refuse": "1"}, **rec.callbacks())
    assert rec.done.wait(5) and rec.reset == [spdyframes.REFUSED_STREAM]
    assert stream.reset_code == spdyframes.REFUSED_STREAM and stream.replied.is_set()
    with pytest.raises(ConnectionResetError):
        stream.send(b"x")


def test_ping_round_trip_and_session_end(sessions: Any) -> None:
    client, server, _accepted = sessions
    assert 0 <= client.ping(5) < 1 and client.rtt is not None
    assert server.ping(5) < 1  # even ids from the server are answered by the client
    rec = Recorder()
    client.open_stream({"a": "b"}, **rec.callbacks()).wait_reply(5)
    ended: list[BaseException | None] = []
    client.on_close = lambda session, error: ended.append(error)
    server.close()
    assert rec.done.wait(5) and rec.reset == [spdyframes.SESSION_CLOSED]
    assert client.closed.wait(5) and ended == [None]
    with pytest.raises(ConnectionError):
        client.open_stream({"a": "b"})
    with pytest.raises(ConnectionError):
        client.ping(1)


def test_failing_callback_resets_only_its_stream(sessions: Any) -> None:
    client, _server, _accepted = sessions

    def broken(view: memoryview) -> None:
        raise BrokenPipeError("local socket is gone")

    resets: list[int] = []
    bad = client.open_stream({"a": "1"}, on_data=broken, on_reset=resets.append)
    good = Recorder()
    ok = client.open_stream({"a": "2"}, **good.callbacks())
    bad.wait_reply(5)
    ok.wait_reply(5)
    bad.send(b"boom")
    ok.send(b"fine", fin=True)
    assert good.fin.wait(5) and bytes(good.data) == b"fine"
    assert resets == [spdyframes.CANCEL] and bad.reset_code == spdyframes.CANCEL


def raw_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5)
    return a, b


def test_peer_ping_is_echoed_and_goaway_stops_new_streams() -> None:
    peer, mine = raw_pair()
    session = spdy.SpdySession(mine, server=False, name="test-client").start()
    try:
        peer.sendall(spdyframes.ping_frame(2))  # a server's ping id: even
        assert peer.recv(12) == spdyframes.ping_frame(2)
        peer.sendall(spdyframes.control_frame(spdyframes.SETTINGS, 0, struct.pack("!I", 0)))
        peer.sendall(
            spdyframes.control_frame(spdyframes.WINDOW_UPDATE, 0, struct.pack("!II", 1, 100))
        )
        peer.sendall(spdyframes.goaway_frame(0))
        peer.sendall(spdyframes.ping_frame(4))
        assert peer.recv(12) == spdyframes.ping_frame(4)  # SETTINGS/WINDOW_UPDATE were ignored
        assert session.goaway_received
        with pytest.raises(ConnectionError):
            session.open_stream({"a": "b"})
    finally:
        session.close()
        peer.close()


@pytest.mark.parametrize("garbage", [
    b"\x80\x02\x00\x01\x00\x00\x00\x00",  # SPDY/2
    b"\x80\x03\x00\x01\x00\xff\xff\xff",  # a control frame far too large
    spdyframes.control_frame(
        spdyframes.SYN_STREAM, 0, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00junk"
    ),
    b"\x00\x00\x00\x00\x00\x00\x00\x01x",  # DATA on stream 0
])
def test_garbage_ends_the_session_with_goaway(garbage: bytes) -> None:
    peer, mine = raw_pair()
    errors: list[BaseException | None] = []
    session = spdy.SpdySession(mine, server=True, on_stream=lambda s: s.reply(),
                               on_close=lambda s, e: errors.append(e), name="test-server")
    session.start()
    try:
        peer.sendall(garbage)
        assert session.closed.wait(5)
        assert isinstance(errors[0], spdyframes.SpdyError)
        answer = peer.recv(100)
        assert answer[:4] == b"\x80\x03\x00\x07"  # GOAWAY
        assert answer[-4:] == struct.pack("!I", spdyframes.GOAWAY_PROTOCOL_ERROR)
    finally:
        session.close()
        peer.close()


def test_stream_ids_must_be_new_and_from_the_client() -> None:
    peer, mine = raw_pair()
    accepted: list[int] = []
    session = spdy.SpdySession(mine, server=True, name="test-server",
                               on_stream=lambda s: (accepted.append(s.id), s.reply()))
    session.start()
    try:
        compressor = spdyframes.HeaderCompressor()
        peer.sendall(spdyframes.syn_stream_frame(2, compressor.compress({"a": "b"})))
        assert peer.recv(100)[:4] == b"\x80\x03\x00\x03"  # RST_STREAM for an even id
        peer.sendall(spdyframes.syn_stream_frame(5, compressor.compress({"a": "b"})))
        assert peer.recv(100)[:4] == b"\x80\x03\x00\x02"  # SYN_REPLY
        peer.sendall(spdyframes.syn_stream_frame(3, compressor.compress({"a": "b"})))
        assert peer.recv(100)[:4] == b"\x80\x03\x00\x03"  # not above the last one
        assert accepted == [5]
    finally:
        session.close()
        peer.close()


def test_session_over_a_websocket_byte_stream() -> None:
    a, b = socket.socketpair()
    client_ws = wssession.WebSocketByteStream(wssession.WebSocket(a, client=True))
    server_ws = wssession.WebSocketByteStream(wssession.WebSocket(b, client=False))

    def on_stream(stream: spdy.SpdyStream) -> None:
        stream.on_data = lambda view: stream.send(view)
        stream.on_fin = stream.close
        stream.reply()

    server = spdy.SpdySession(server_ws, server=True, on_stream=on_stream,
                              name="test-server").start()
    client = spdy.SpdySession(client_ws, server=False, name="test-client", max_frame=50_000)
    client.start()
    try:
        rec = Recorder()
        stream = client.open_stream({"port": "1"}, **rec.callbacks())
        assert stream.wait_reply(5)
        payload = os.urandom(1_000_003)
        stream.send(payload, fin=True)
        assert rec.fin.wait(10) and bytes(rec.data) == payload
    finally:
        client.close()
        server.close()
