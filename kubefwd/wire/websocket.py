"""WebSocket (RFC 6455) framing and handshakes, for both ends of a connection.

The client masks every frame it sends and the server never does; each side rejects frames
masked the wrong way. Reads go through ``recv_into`` on large buffers and payloads land in
their final buffer; each frame is written with one ``sendall``. ``WebSocketByteStream`` turns
the binary messages of a WebSocket into a plain byte stream (message boundaries carry no
meaning), which is how SPDY travels inside a WebSocket.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Buffer = bytes | bytearray | memoryview

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPS = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

_READ_CHUNK = 256 * 1024
_HTTP_HEAD_LIMIT = 64 * 1024


class WebSocketError(Exception):
    """The peer broke the WebSocket protocol; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class HandshakeError(Exception):
    """An opening handshake failed; ``status`` is the HTTP status a server should answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- masking and frame headers -------------------------------------------------------------


# 0x00000001 repeated: times a 32-bit key it gives the key repeated, in one multiplication.
_REP_WORDS = 1 << 14
_REP = int.from_bytes(b"\x01\x00\x00\x00" * _REP_WORDS, "little")
_MASK_PIECE = _REP_WORDS * 4  # big-int work stays fast while it fits in the CPU cache


def _mask_piece(data: Buffer, key_word: int) -> bytes:
    n = len(data)
    words = (n + 3) >> 2
    rep = _REP >> (32 * (_REP_WORDS - words))
    out = (int.from_bytes(data, "little") ^ (key_word * rep)).to_bytes(words * 4, "little")
    return out if words * 4 == n else out[:n]


def mask(data: Buffer, key: bytes, offset: int = 0) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` starting at key position ``offset``.

    Big-integer XOR over whole pieces of the payload: far faster than a per-byte loop.
    """
    n = len(data)
    if n == 0:
        return b""
    shift = offset & 3
    if shift:
        key = key[shift:] + key[:shift]
    key_word = int.from_bytes(key, "little")
    if n <= _MASK_PIECE:
        return _mask_piece(data, key_word)
    view = memoryview(data)
    return b"".join(
        _mask_piece(view[i : i + _MASK_PIECE], key_word) for i in range(0, n, _MASK_PIECE)
    )


def frame_header(opcode: int, length: int, *, fin: bool = True, mask_key: bytes = b"") -> bytes:
    """Encode a frame header (with the masking key when ``mask_key`` is given)."""
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask_key else 0
    if length < 126:
        head = struct.pack("!BB", first, masked | length)
    elif length < 0x10000:
        head = struct.pack("!BBH", first, masked | 126, length)
    else:
        head = struct.pack("!BBQ", first, masked | 127, length)
    return head + mask_key if mask_key else head


def encode_frame(opcode: int, payload: Buffer, *, fin: bool = True, masked: bool) -> bytes:
    """A whole frame as one bytes object; ``masked`` for frames a client sends."""
    if masked:
        key = os.urandom(4)
        return frame_header(opcode, len(payload), fin=fin, mask_key=key) + mask(payload, key)
    return b"".join((frame_header(opcode, len(payload), fin=fin), payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:120]


def parse_close_payload(payload: Buffer) -> tuple[int | None, str]:
    """Close code and reason of a close frame (code None for an empty payload)."""
    if len(payload) == 0:
        return None, ""
    if len(payload) == 1:
        raise WebSocketError("close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise WebSocketError("close reason is not UTF-8", CLOSE_INVALID_DATA) from e
    return code, reason


# --- HTTP heads and handshakes -------------------------------------------------------------


@dataclass
class HttpHead:
    """The start line and headers of an HTTP message, plus the bytes read past its end."""

    start_line: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    rest: bytes = b""

    @property
    def status(self) -> int:
        """Status code of a response head (0 when the line is not a response line)."""
        parts = self.start_line.split(" ", 2)
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            return int(parts[1])
        return 0


def parse_http_head(raw: bytes) -> HttpHead:
    """Parse an HTTP head (without the blank line); repeated headers are joined with ", "."""
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError(f"malformed header line {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return HttpHead(lines[0], headers)


def read_http_head(sock: Any, *, limit: int = _HTTP_HEAD_LIMIT) -> HttpHead:
    """Read one HTTP head from ``sock``; bytes after it are kept in ``rest``."""
    data = bytearray()
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = parse_http_head(bytes(data[:end]))
            head.rest = bytes(data[end + 4 :])
            return head
        if len(data) > limit:
            raise HandshakeError("HTTP head too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise HandshakeError("connection closed before the HTTP head was complete")
        data += chunk


def read_http_body(sock: Any, head: HttpHead, *, limit: int = 1 << 20) -> bytes:
    """Read the body of a (non-101) response: by Content-Length, else until EOF."""
    body = bytearray(head.rest)
    length_text = head.headers.get("content-length")
    want = int(length_text) if length_text and length_text.isdigit() else limit
    want = min(want, limit)
    while len(body) < want:
        try:
            chunk = sock.recv(min(65536, want - len(body)))
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    return bytes(body[:want])


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """All comma-separated tokens of a header, from a dict or an ``email.message.Message``."""
    get_all = getattr(headers, "get_all", None)
    if callable(get_all):
        raw: Iterable[str] = get_all(name) or []
    else:
        value = headers.get(name)
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
        raw = [value] if value is not None else []
    return [token.strip() for value in raw for token in str(value).split(",") if token.strip()]


def is_websocket_request(headers: Mapping[str, str]) -> bool:
    """True when the request asks to upgrade to WebSocket."""
    upgrade = [v.lower() for v in header_values(headers, "Upgrade")]
    connection = [v.lower() for v in header_values(headers, "Connection")]
    return "websocket" in upgrade and "upgrade" in connection


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def server_handshake(
    headers: Mapping[str, str],
    supported: Sequence[str],
    *,
    allow_no_protocol: bool = True,
) -> tuple[str | None, bytes]:
    """Validate a client's opening handshake; return the chosen subprotocol and the 101.

    The first protocol in the client's order that we support wins. A request without any
    subprotocol is accepted (protocol None) when ``allow_no_protocol``. Raises
    HandshakeError with the status to answer (400 malformed, 403 no common protocol).
    """
    if not is_websocket_request(headers):
        raise HandshakeError("not a WebSocket upgrade request", 400)
    versions = header_values(headers, "Sec-WebSocket-Version")
    if versions != ["13"]:
        raise HandshakeError("unsupported Sec-WebSocket-Version (want 13)", 400)
    keys = header_values(headers, "Sec-WebSocket-Key")
    if len(keys) != 1:
        raise HandshakeError("missing Sec-WebSocket-Key", 400)
    try:
        if len(base64.b64decode(keys[0], validate=True)) != 16:
            raise ValueError("wrong length")
    except ValueError as e:
        raise HandshakeError("invalid Sec-WebSocket-Key", 400) from e
    offered = header_values(headers, "Sec-WebSocket-Protocol")
    chosen: str | None = None
    if offered:
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            raise HandshakeError(
                f"requested protocol(s) are not supported: {offered}; supports {list(supported)}",
                403,
            )
    elif not allow_no_protocol:
        raise HandshakeError("no WebSocket subprotocol requested", 400)
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(keys[0])}",
    ]
    if chosen is not None:
        lines.append(f"Sec-WebSocket-Protocol: {chosen}")
    return chosen, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_handshake_request(
    *,
    host: str,
    path: str,
    protocols: Sequence[str],
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> tuple[bytes, str]:
    """Build a client's opening handshake; returns the request bytes and the key sent."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


def check_handshake_response(head: HttpHead, key: str, protocols: Sequence[str]) -> str | None:
    """Verify a server's 101 answer; return the protocol it chose (None if it named none)."""
    if head.status != 101:
        raise HandshakeError(f"WebSocket upgrade refused: {head.start_line}", head.status or 400)
    if not is_websocket_request(head.headers):
        raise HandshakeError("101 answer without Upgrade: websocket / Connection: Upgrade")
    if head.headers.get("sec-websocket-accept") != accept_key(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept")
    chosen = head.headers.get("sec-websocket-protocol")
    if chosen is not None and chosen not in protocols:
        raise HandshakeError(f"server chose a protocol we did not offer: {chosen!r}")
    return chosen


# --- the connection ------------------------------------------------------------------------


class WebSocket:
    """One WebSocket connection over a connected socket (plain or TLS), either end.

    Threading: one thread reads (``recv_message`` or ``recv_into_stream``); any number of
    threads may send, each frame goes out whole under a lock. Pings are answered by the
    reading thread; close frames are answered and end the reading (``None``/0). When reads
    and writes happen in different threads the socket must be blocking (no timeout): a TLS
    socket with a timeout is non-blocking inside, and concurrent use can fake an EOF.
    """

    def __init__(
        self,
        sock: Any,
        *,
        client: bool,
        initial: bytes = b"",
        subprotocol: str | None = None,
        max_message: int = 64 << 20,
    ) -> None:
        self.sock = sock
        self.client = client
        self.subprotocol = subprotocol
        self.max_message = max_message
        self.on_pong: Callable[[bytes], None] | None = None
        self.close_code: int | None = None  # what the peer's close frame said
        self.close_sent = False
        self._wlock = threading.Lock()
        self._rbuf = bytearray(max(_READ_CHUNK, len(initial)))
        self._rbuf[: len(initial)] = initial
        self._rstart = 0
        self._rend = len(initial)
        # Byte-stream reading state: what is left of the current data frame.
        self._remaining = 0
        self._key = b""
        self._key_offset = 0
        self._in_fragmented = False

    # -- sending --

    def send(self, opcode: int, payload: Buffer = b"", *, fin: bool = True) -> None:
        """Send one frame; raises OSError when the connection is gone."""
        frame = encode_frame(opcode, payload, fin=fin, masked=self.client)
        with self._wlock:
            self.sock.sendall(frame)

    def send_binary(self, payload: Buffer) -> None:
        self.send(OP_BINARY, payload)

    def send_text(self, text: str | bytes) -> None:
        self.send(OP_TEXT, text.encode("utf-8") if isinstance(text, str) else text)

    def ping(self, payload: bytes = b"") -> None:
        self.send(OP_PING, payload)

    def send_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame once; errors are ignored (the peer may be gone already)."""
        if self.close_sent:
            return
        self.close_sent = True
        try:
            self.send(OP_CLOSE, close_payload(code, reason))
        except OSError:
            pass

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame (if not yet sent) and close the socket."""
        self.send_close(code, reason)
        try:
            self.sock.close()
        except OSError:
            pass

    def shutdown(self) -> None:
        """Wake a blocked reader and writers without closing the descriptor.

        A close frame goes out first when no other thread is in the middle of a write.
        """
        if not self.close_sent and self._wlock.acquire(blocking=False):
            try:
                self.close_sent = True
                self.sock.sendall(encode_frame(OP_CLOSE, close_payload(CLOSE_GOING_AWAY),
                                               masked=self.client))
            except (OSError, ValueError):
                pass
            finally:
                self._wlock.release()
        try:
            if isinstance(self.sock, socket.socket):
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # raw: thread-safe for TLS
            else:
                self.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass

    # -- low-level reading --

    def _fill(self, n: int) -> bool:
        """Make at least ``n`` bytes available in the read buffer; False at EOF."""
        while self._rend - self._rstart < n:
            if len(self._rbuf) - self._rstart < n:
                avail = self._rend - self._rstart
                self._rbuf[:avail] = self._rbuf[self._rstart : self._rend]
                self._rstart, self._rend = 0, avail
            got = self.sock.recv_into(memoryview(self._rbuf)[self._rend :])
            if not got:
                return False
            self._rend += got
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise EOFError
        data = bytes(self._rbuf[self._rstart : self._rstart + n])
        self._rstart += n
        return data

    def _read_into(self, view: memoryview) -> int:
        """Read up to len(view) bytes: buffered ones first, else straight from the socket."""
        avail = self._rend - self._rstart
        if avail:
            n = min(avail, len(view))
            view[:n] = self._rbuf[self._rstart : self._rstart + n]
            self._rstart += n
            return n
        return int(self.sock.recv_into(view))

    def _read_exact_into(self, view: memoryview) -> None:
        pos = 0
        while pos < len(view):
            got = self._read_into(view[pos:])
            if not got:
                raise EOFError
            pos += got

    def _next_header(self) -> tuple[bool, int, int, bytes] | None:
        """Read a frame header: (fin, opcode, length, mask key); None at a clean EOF."""
        if not self._fill(2):
            if self._rend == self._rstart:
                return None
            raise EOFError
        b0, b1 = self._rbuf[self._rstart], self._rbuf[self._rstart + 1]
        self._rstart += 2
        if b0 & 0x70:
            raise WebSocketError("reserved bits set (no extension was negotiated)")
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        masked, length = bool(b1 & 0x80), b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
            if length >> 63:
                raise WebSocketError("frame length has the top bit set")
        if masked == self.client:
            raise WebSocketError("frame masked wrongly for its direction")
        key = self._take(4) if masked else b""
        if opcode in _CONTROL_OPS:
            if not fin or length > 125:
                raise WebSocketError("fragmented or oversized control frame")
        elif opcode not in _DATA_OPS:
            raise WebSocketError(f"unknown opcode {opcode}")
        return fin, opcode, length, key

    def _read_payload(self, length: int, key: bytes) -> bytes:
        buf = bytearray(length)
        self._read_exact_into(memoryview(buf))
        return mask(buf, key) if key else bytes(buf)

    def _handle_control(self, opcode: int, payload: bytes) -> bool:
        """Answer a control frame; True when it was a close frame (reading ends)."""
        if opcode == OP_PING:
            if not self.close_sent:
                try:
                    self.send(OP_PONG, payload)
                except OSError:
                    pass
            return False
        if opcode == OP_PONG:
            if self.on_pong is not None:
                self.on_pong(payload)
            return False
        code, _reason = parse_close_payload(payload)
        self.close_code = code
        self.send_close(code if code is not None else CLOSE_NORMAL)
        return True

    # -- message reading --

    def recv_message(self) -> tuple[int, bytes] | None:
        """Next whole data message as (OP_TEXT or OP_BINARY, payload); None when closed.

        Fragments are joined; pings are answered; raises WebSocketError on a protocol
        violation (the caller then closes with ``err.code``) and EOFError on a cut
        connection in the middle of a frame.
        """
        parts: list[bytes] = []
        size = 0
        message_op = 0
        while True:
            header = self._next_header()
            if header is None:
                if parts:
                    raise EOFError
                return None
            fin, opcode, length, key = header
            if opcode in _CONTROL_OPS:
                if self._handle_control(opcode, self._read_payload(length, key)):
                    return None
                continue
            if opcode == OP_CONTINUATION:
                if not message_op:
                    raise WebSocketError("continuation frame without a message")
            elif message_op:
                raise WebSocketError("new message inside a fragmented one")
            else:
                message_op = opcode
            size += length
            if size > self.max_message:
                raise WebSocketError("message too big", CLOSE_TOO_BIG)
            parts.append(self._read_payload(length, key))
            if fin:
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if message_op == OP_TEXT:
                    try:
                        data.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise WebSocketError("text message is not UTF-8", CLOSE_INVALID_DATA) from e
                return message_op, data

    # -- byte-stream reading (binary messages, boundaries ignored) --

    def recv_into_stream(self, view: memoryview) -> int:
        """Read payload bytes of binary messages into ``view``; 0 when the peer closed.

        Message boundaries are ignored: this is the byte-stream view used to carry SPDY.
        Text messages are a protocol error.
        """
        while self._remaining == 0:
            header = self._next_header()
            if header is None:
                return 0
            _fin, opcode, length, key = header
            if opcode in _CONTROL_OPS:
                if self._handle_control(opcode, self._read_payload(length, key)):
                    return 0
                continue
            if opcode == OP_TEXT:
                raise WebSocketError("text message on a binary stream", CLOSE_UNSUPPORTED)
            if opcode == OP_CONTINUATION and not self._in_fragmented:
                raise WebSocketError("continuation frame without a message")
            if opcode == OP_BINARY and self._in_fragmented:
                raise WebSocketError("new message inside a fragmented one")
            self._in_fragmented = not _fin
            self._remaining, self._key, self._key_offset = length, key, 0
        want = min(len(view), self._remaining)
        got = self._read_into(view[:want])
        if not got:
            raise EOFError
        if self._key:
            # The rest of this frame is on its way (the peer sent the frame whole), so read
            # more of it before unmasking: one big XOR instead of one per TLS record.
            want = min(want, 1 << 20)
            while got < want:
                n = self._read_into(view[got:want])
                if not n:
                    raise EOFError
                got += n
            view[:got] = mask(view[:got], self._key, self._key_offset)
            self._key_offset += got
        self._remaining -= got
        return got


class WebSocketByteStream:
    """A socket-like byte stream over binary WebSocket messages (SPDY in a WebSocket).

    ``recv_into`` returns payload bytes regardless of message boundaries; ``sendall`` sends
    one binary message per call. Same threading rules as ``WebSocket``.
    """

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    @property
    def sock(self) -> Any:
        """The socket underneath (plain or TLS)."""
        return self.ws.sock

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        view = memoryview(buffer)
        if nbytes:
            view = view[:nbytes]
        try:
            return self.ws.recv_into_stream(view)
        except EOFError:
            return 0

    def sendall(self, data: Buffer) -> None:
        self.ws.send(OP_BINARY, data)

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        self.ws.shutdown()

    def close(self) -> None:
        self.ws.close()
