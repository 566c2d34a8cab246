"""SPDY/3.1 on the wire: frame layouts, header blocks and their zlib dictionary.

Pure encoding and decoding, no threads and no sockets: the session in ``spdy`` uses it, and
so does the client tunnel, which writes its frames itself. Kept apart from the session so the
byte formats (and their tests against the spec's dictionary) can be read on their own.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

Buffer = bytes | bytearray | memoryview

VERSION = 3

# Control frame types.
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
# Passed to on_reset when the session ended before the stream finished (not a wire code).
SESSION_CLOSED = 0

# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

MAX_DATA_LENGTH = 0xFFFFFF  # DATA and control lengths are 24-bit
MAX_CONTROL_LENGTH = 1 << 20  # we refuse bigger control frames (header bombs, garbage)
MAX_HEADER_BLOCK = 1 << 20  # decompressed header block size limit


def _build_dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (SPDY/3 spec, section 2.6.10.1)."""
    words = (
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
        "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
        "cache-control", "connection", "content-base", "content-encoding", "content-language",
        "content-length", "content-location", "content-md5", "content-range", "content-type",
        "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
        "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
        "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
        "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
        "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
        "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
    )
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    out = bytearray()
    for word in words:
        raw = word.encode("ascii")
        out += struct.pack("!I", len(raw)) + raw
    return bytes(out + tail.encode("ascii"))


DICTIONARY = _build_dictionary()


class SpdyError(Exception):
    """The peer sent something that is not valid SPDY/3.1; the session cannot go on."""


# --- header blocks -------------------------------------------------------------------------


def encode_header_block(headers: Mapping[str, str]) -> bytes:
    """Uncompressed name/value block: u32 count, then u32-length-prefixed names and values.

    Names are lower-cased (Go's framer rejects upper-case names).
    """
    parts = [struct.pack("!I", len(headers))]
    for name, value in headers.items():
        raw_name = name.lower().encode("utf-8")
        raw_value = str(value).encode("utf-8")
        parts += (struct.pack("!I", len(raw_name)), raw_name)
        parts += (struct.pack("!I", len(raw_value)), raw_value)
    return b"".join(parts)


def decode_header_block(raw: bytes) -> dict[str, str]:
    """Parse an uncompressed name/value block into a dict with lower-case names."""
    try:
        (count,) = struct.unpack_from("!I", raw)
        pos = 4
        headers: dict[str, str] = {}
        for _ in range(count):
            (n,) = struct.unpack_from("!I", raw, pos)
            pos += 4
            name = raw[pos : pos + n]
            pos += n
            (m,) = struct.unpack_from("!I", raw, pos)
            pos += 4
            value = raw[pos : pos + m]
            pos += m
            if len(name) != n or len(value) != m or not name:
                raise SpdyError("truncated header block")
            headers[name.decode("utf-8").lower()] = value.decode("utf-8")
    except (struct.error, UnicodeDecodeError) as e:
        raise SpdyError(f"malformed header block: {e}") from e
    if pos != len(raw):
        raise SpdyError("trailing bytes after the header block")
    return headers


class HeaderCompressor:
    """One direction's compression context, shared by every frame of a connection."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                   zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Mapping[str, str]) -> bytes:
        raw = encode_header_block(headers)
        return self._z.compress(raw) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The peer's compression context, mirrored; every block must end at a sync flush."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, DICTIONARY)

    def decompress(self, block: Buffer) -> dict[str, str]:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise SpdyError(f"bad compressed header block: {e}") from e
        if self._z.unconsumed_tail:
            raise SpdyError("header block too large")
        return decode_header_block(raw)


# --- frame encoding ------------------------------------------------------------------------


def control_frame(frame_type: int, flags: int, payload: Buffer) -> bytes:
    """A control frame: 0x8003, type u16, flags u8, length u24, payload."""
    head = struct.pack("!HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload))
    return head + bytes(payload)


def data_frame_header(stream_id: int, length: int, *, fin: bool = False) -> bytes:
    return struct.pack("!II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | length)


def data_frame(stream_id: int, data: Buffer, *, fin: bool = False) -> bytes:
    return b"".join((data_frame_header(stream_id, len(data), fin=fin), data))


def syn_stream_frame(
    stream_id: int, block: bytes, *, fin: bool = False, priority: int = 0, associated: int = 0
) -> bytes:
    payload = struct.pack("!IIBB", stream_id, associated, (priority & 7) << 5, 0) + block
    return control_frame(SYN_STREAM, FLAG_FIN if fin else 0, payload)


def syn_reply_frame(stream_id: int, block: bytes, *, fin: bool = False) -> bytes:
    return control_frame(SYN_REPLY, FLAG_FIN if fin else 0, struct.pack("!I", stream_id) + block)


def rst_stream_frame(stream_id: int, status: int) -> bytes:
    return control_frame(RST_STREAM, 0, struct.pack("!II", stream_id, status))


def ping_frame(ping_id: int) -> bytes:
    return control_frame(PING, 0, struct.pack("!I", ping_id))


def goaway_frame(last_good_stream_id: int, status: int = GOAWAY_OK) -> bytes:
    return control_frame(GOAWAY, 0, struct.pack("!II", last_good_stream_id, status))
