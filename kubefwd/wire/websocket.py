"""WebSocket (RFC 6455) framing and handshakes, for both ends of a connection.

Codecs only: frames, masks, close payloads, the HTTP heads and handshakes of both ends. The
client masks every frame it sends and the server never does. The threaded connection the
simulated cluster serves with lives in ``kubefwd.sim.wssession``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
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
DATA_OPS = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

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
