"""WebSocket framing and handshakes (RFC 6455), checked against websocket-client's encoder."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from websocket import ABNF

from kubefwd.sim import wssession
from kubefwd.wire import websocket as ws


def slow_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    return bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(data))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 4097, 65536 + 3, 300_001])
def test_mask_matches_the_definition(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    for offset in range(4):
        assert ws.mask(data, key, offset) == slow_mask(data, key, offset)


@pytest.mark.parametrize("length,header_size", [(0, 2), (125, 2), (126, 4), (65535, 4),
                                                (65536, 10)])
def test_frame_header_length_forms(length: int, header_size: int) -> None:
    assert len(ws.frame_header(ws.OP_BINARY, length)) == header_size
    assert len(ws.frame_header(ws.OP_BINARY, length, mask_key=b"abcd")) == header_size + 4


def test_accept_key_rfc_example() -> None:
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def handshake_headers(**extra: str) -> dict[str, str]:
    headers = {"Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


def test_server_handshake_picks_the_first_supported_protocol_in_client_order() -> None:
    supported = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"]
    chosen, response = ws.server_handshake(
        handshake_headers(Sec_WebSocket_Protocol="v5.channel.k8s.io, v4.base64.channel.k8s.io,"
                                                 " v4.channel.k8s.io"), supported)
    assert chosen == "v4.base64.channel.k8s.io"
    head = ws.parse_http_head(response.rstrip(b"\r\n"))
    assert head.status == 101
    assert head.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert head.headers["sec-websocket-protocol"] == "v4.base64.channel.k8s.io"
    assert ws.check_handshake_response(head, "dGhlIHNhbXBsZSBub25jZQ==", supported) == chosen


def test_server_handshake_errors() -> None:
    with pytest.raises(ws.HandshakeError) as e:
        ws.server_handshake(handshake_headers(Sec_WebSocket_Protocol="v5.channel.k8s.io"),
                            ["v4.channel.k8s.io"])
    assert e.value.status == 403
    for bad in (handshake_headers(Sec_WebSocket_Version="8"),
                handshake_headers(Sec_WebSocket_Key="short"),
                {"Upgrade": "websocket"}):
        with pytest.raises(ws.HandshakeError) as e:
            ws.server_handshake(bad, ["x"])
        assert e.value.status == 400
    assert ws.server_handshake(handshake_headers(), ["x"])[0] is None


def test_client_rejects_a_wrong_accept_or_protocol() -> None:
    request, key = ws.client_handshake_request(host="h", path="/p?q=1", protocols=["a", "b"],
                                               headers={"Authorization": "Bearer t"})
    head = ws.parse_http_head(request.rstrip(b"\r\n"))
    assert head.start_line == "GET /p?q=1 HTTP/1.1"
    assert ws.server_handshake(head.headers, ["b"])[0] == "b"
    good = {"upgrade": "websocket", "connection": "Upgrade",
            "sec-websocket-accept": ws.accept_key(key)}
    assert ws.check_handshake_response(ws.HttpHead("HTTP/1.1 101 x", good), key, ["a"]) is None
    with pytest.raises(ws.HandshakeError):
        ws.check_handshake_response(
            ws.HttpHead("HTTP/1.1 101 x", {**good, "sec-websocket-accept": "nope"}), key, ["a"])
    with pytest.raises(ws.HandshakeError):
        ws.check_handshake_response(
            ws.HttpHead("HTTP/1.1 101 x", {**good, "sec-websocket-protocol": "c"}), key, ["a"])
    with pytest.raises(ws.HandshakeError) as e:
        ws.check_handshake_response(ws.HttpHead("HTTP/1.1 403 Forbidden", {}), key, ["a"])
    assert e.value.status == 403


def test_server_reads_frames_encoded_by_websocket_client(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    server = wssession.WebSocket(b, client=False)
    big = os.urandom(200_000)
    a.sendall(ABNF.create_frame(big, ABNF.OPCODE_BINARY).format())
    first = ABNF(0, 0, 0, 0, ABNF.OPCODE_TEXT, 1, b"frag")
    last = ABNF(1, 0, 0, 0, ABNF.OPCODE_CONT, 1, "mentéd".encode())
    a.sendall(first.format() + ABNF.create_frame(b"hi", ABNF.OPCODE_PING).format()
              + last.format())
    assert server.recv_message() == (ws.OP_BINARY, big)
    assert server.recv_message() == (ws.OP_TEXT, "fragmentéd".encode())
    # The ping in the middle of the fragmented message was answered with an unmasked pong.
    assert a.recv(100) == b"\x8a\x02hi"
    a.sendall(ABNF.create_frame(struct.pack("!H", 1000), ABNF.OPCODE_CLOSE).format())
    assert server.recv_message() is None
    assert server.close_code == 1000 and a.recv(100) == b"\x88\x02\x03\xe8"


def test_client_and_server_round_trip(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    client, server = wssession.WebSocket(a, client=True), wssession.WebSocket(b, client=False)
    pongs: list[bytes] = []
    client.on_pong = pongs.append
    client.send_binary(b"x" * 70_000)
    client.send_text("héllo")
    assert server.recv_message() == (ws.OP_BINARY, b"x" * 70_000)
    assert server.recv_message() == (ws.OP_TEXT, "héllo".encode())
    client.ping(b"p")
    client.send_binary(b"next")
    assert server.recv_message() == (ws.OP_BINARY, b"next")  # answers the ping on the way
    server.send_binary(b"answer")
    assert client.recv_message() == (ws.OP_BINARY, b"answer")
    assert pongs == [b"p"]
    server.send_close(1001, "bye")
    assert client.recv_message() is None and client.close_code == 1001
    assert server.recv_message() is None  # the client echoed the close


@pytest.mark.parametrize("frame,code", [
    (ws.encode_frame(ws.OP_BINARY, b"unmasked", masked=False), ws.CLOSE_PROTOCOL_ERROR),
    (b"\xc2\x80abcd", ws.CLOSE_PROTOCOL_ERROR),  # RSV1 without an extension
    (ws.encode_frame(ws.OP_PING, b"x" * 126, masked=True), ws.CLOSE_PROTOCOL_ERROR),
    (ws.encode_frame(ws.OP_CONTINUATION, b"x", masked=True), ws.CLOSE_PROTOCOL_ERROR),
    (ws.encode_frame(0x3, b"x", masked=True), ws.CLOSE_PROTOCOL_ERROR),
    (ws.encode_frame(ws.OP_TEXT, b"\xff\xfe", masked=True), ws.CLOSE_INVALID_DATA),
], ids=["unmasked", "rsv1", "long-ping", "lone-continuation", "unknown-opcode", "bad-utf8"])
def test_protocol_violations_are_errors(pair: tuple[socket.socket, socket.socket],
                                        frame: bytes, code: int) -> None:
    a, b = pair
    a.sendall(frame)
    with pytest.raises(ws.WebSocketError) as e:
        wssession.WebSocket(b, client=False).recv_message()
    assert e.value.code == code


def test_message_size_limit(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(ws.frame_header(ws.OP_BINARY, 1 << 40, mask_key=b"abcd"))
    with pytest.raises(ws.WebSocketError) as e:
        wssession.WebSocket(b, client=False, max_message=1 << 20).recv_message()
    assert e.value.code == ws.CLOSE_TOO_BIG


def test_byte_stream_ignores_message_boundaries(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    client = wssession.WebSocketByteStream(wssession.WebSocket(a, client=True))
    server = wssession.WebSocketByteStream(wssession.WebSocket(b, client=False))
    payload = os.urandom(3_000_000)
    sizes = [1, 2, 100_000, 7, 1_000_000]

    def writer() -> None:
        pos = 0
        for size in sizes * 10:
            if pos >= len(payload):
                break
            client.sendall(payload[pos:pos + size])
            client.ws.ping()
            pos += size
        client.sendall(payload[pos:])
        client.ws.send_close()

    thread = threading.Thread(target=writer, name="test-ws-writer")
    thread.start()
    got = bytearray()
    buf = bytearray(65536 + 3)
    while n := server.recv_into(buf):
        got += buf[:n]
    thread.join(10)
    assert bytes(got) == payload
