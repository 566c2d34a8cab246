"""Seeing HTTP/1.x exchanges in the bytes of one forwarded connection, incrementally.

``HttpSniffer`` is fed what the client sends (``client``) and what the pod answers
(``server``), in pieces cut anywhere, and reports each finished exchange (method, path,
status, latency, response body size) to its ``emit`` callback. Requests are matched to
responses in order, so keep-alive and pipelined requests pair up; Content-Length and chunked
bodies are skipped by counting, never copied. Only the head of each message is copied, and
at most ``HEAD_LIMIT`` bytes of it.

The first bytes decide: a request line (``METHOD target HTTP/1.x``) from the client or a
status line from the pod makes the connection HTTP; anything else (a TLS handshake, redis,
a server's banner, binary) makes ``client``/``server`` return False, and the caller drops
the sniffer: the rest of the connection costs nothing. Whatever the sniffer does not
understand later (an oversized head, a bad chunk size, an upgrade to another protocol) ends
it the same way.

Pure: the standard library only, no sockets, no threads; the clock is injectable.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

# Bytes of a message head (request or status line and headers) kept at most.
HEAD_LIMIT = 8 * 1024
# Requests waiting for their response, at most (pipelining deeper than this: give up).
PENDING_LIMIT = 100
# Longest chunk-size line or trailer line.
LINE_LIMIT = 1024
# Longest path reported.
PATH_LIMIT = 1024
# Bytes copied at a time while looking for the end of a head.
_STEP = 1024

_REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]{0,19}) ([^\s]+) HTTP/1\.[0-9]\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?:[ \t][^\r\n]*)?\r?\n")
_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-")
_STATUS_PREFIX = b"HTTP/1."
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\n]*)?")
# The header fields that say where a message ends, and how each line holding one starts.
_FRAMING = tuple((name, f"\n{name}:".encode()) for name in
                 ("content-length", "transfer-encoding", "connection", "upgrade"))

# What a side is doing.
_HEAD = 0  # gathering a head
_BODY = 1  # skipping ``left`` body bytes
_CHUNK_SIZE = 2  # reading a chunk-size line
_CHUNK_DATA = 3  # skipping ``left`` chunk bytes
_CHUNK_END = 4  # the CRLF after a chunk
_TRAILER = 5  # trailer lines until an empty one
_UNTIL_CLOSE = 6  # a response body that ends with the connection
_IGNORE = 7  # nothing more to learn on this side (after an upgrade request)


class Exchange(NamedTuple):
    """One request and what is known of its response (None: no response was seen)."""

    method: str
    path: str
    status: int | None
    latency_ms: float | None
    size: int | None


class _Request(NamedTuple):
    method: str
    path: str
    at: float  # when its head was complete


class _Side:
    """The parse state of one direction."""

    __slots__ = ("buf", "left", "size", "state")

    def __init__(self) -> None:
        self.state = _HEAD
        self.buf = bytearray()  # the head, or a chunk-size/trailer line, being gathered
        self.left = 0  # body or chunk bytes still to skip
        self.size = 0  # body bytes of the current message


class NotHttp(Exception):
    """The bytes are not (or no longer) HTTP/1.x we understand."""


class HttpSniffer:
    """The HTTP exchanges of one connection; see the module's description."""

    def __init__(self, emit: Callable[[Exchange], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.clock = clock
        self.dead = False  # gave up: not HTTP, or lost track
        self.http = False  # a request or status line was seen
        self._req = _Side()
        self._resp = _Side()
        self._pending: deque[_Request] = deque()
        # The response being read: its request (None if it had none), status, latency.
        self._answering: _Request | None = None
        self._status = 0
        self._latency: float | None = None
        self._upgrade = False  # the last request asked to switch protocols (or CONNECT)

    # -- feeding -------------------------------------------------------------------------

    def client(self, data: bytes | bytearray | memoryview) -> bool:
        """Bytes from the client to the pod; False once the sniffer has given up."""
        side = self._req
        if side.state == _BODY and len(data) < side.left:  # the bulk of an upload
            side.left -= len(data)
            side.size += len(data)
            return True
        if self.dead:
            return False
        try:
            self._run(self._req, memoryview(data), request=True)
        except Exception:  # NotHttp, or anything else: the relaying must never see it
            self._give_up()
        return not self.dead

    def server(self, data: bytes | bytearray | memoryview) -> bool:
        """Bytes from the pod to the client; False once the sniffer has given up."""
        side = self._resp
        if side.state == _BODY and len(data) < side.left:  # the bulk of a download
            side.left -= len(data)
            side.size += len(data)
            return True
        if self.dead:
            return False
        try:
            self._run(self._resp, memoryview(data), request=False)
        except Exception:  # NotHttp, or anything else: the relaying must never see it
            self._give_up()
        return not self.dead

    def end(self) -> None:
        """The connection ended: report a response cut short or ending with the connection,
        then every request left without a response."""
        if self.dead:
            return
        self.dead = True
        if self._resp.state != _HEAD:
            self._answered()
        self._req.state = self._resp.state = _IGNORE
        while self._pending:
            request = self._pending.popleft()
            self.emit(Exchange(request.method, request.path, None, None, None))

    def _give_up(self) -> None:
        self.dead = True
        self._req.state = self._resp.state = _IGNORE
        self._pending.clear()
        self._req.buf = self._resp.buf = bytearray()

    # -- the state machine ---------------------------------------------------------------

    def _run(self, side: _Side, data: memoryview, *, request: bool) -> None:
        pos, n = 0, len(data)
        while pos < n and not self.dead:
            state = side.state
            if state in (_BODY, _CHUNK_DATA):
                take = min(side.left, n - pos)
                side.left -= take
                side.size += take
                pos += take
                if not side.left:
                    if state == _BODY:
                        self._message_done(side, request)
                    else:
                        side.state = _CHUNK_END
            elif state == _HEAD:
                pos = self._gather_head(side, data, pos, request)
            elif state == _CHUNK_END and not side.buf and data[pos:pos + 2] == b"\r\n":
                pos += 2  # the usual case, done without gathering
                side.state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE and not side.buf and b"\n" in (
                    window := bytes(data[pos:pos + 32])):
                nl = window.index(b"\n")
                pos += nl + 1
                self._chunk_size(side, window[:nl].rstrip(b"\r"))
            elif state == _UNTIL_CLOSE:
                side.size += n - pos
                return
            elif state == _IGNORE:
                return
            else:
                pos = self._gather_line(side, data, pos, request)

    def _gather_head(self, side: _Side, data: memoryview, pos: int, request: bool) -> int:
        buf = side.buf
        n = len(data)
        if not buf:
            # The usual case: the whole head came in one read.
            window = bytes(data[pos:pos + _STEP])
            end = _head_end(window, 0)
            if end >= 0:
                self._head_done(side, window[:end], request)
                return pos + end
            self._check_start(window, request)
            buf += window
            pos += len(window)
        while pos < n:
            old = len(buf)
            take = min(n - pos, _STEP, HEAD_LIMIT - old)
            if take <= 0:
                raise NotHttp("head too long")
            buf += data[pos:pos + take]
            if not self.http or old == 0:
                self._check_start(buf, request)
            end = _head_end(buf, max(0, old - 3))
            if end < 0:
                pos += take
                continue
            pos += end - old
            side.buf = bytearray()
            self._head_done(side, bytes(buf[:end]), request)
            return pos
        return pos

    def _head_done(self, side: _Side, head: bytes, request: bool) -> None:
        if request:
            self._request_head(side, head)
        else:
            self._response_head(side, head)

    def _check_start(self, buf: bytes | bytearray, request: bool) -> None:
        """Whether the first bytes of a message can be its start line; NotHttp if not."""
        if b"\n" in buf:  # the whole start line is there
            line = _REQUEST_LINE if request else _STATUS_LINE
            if line.match(buf) is None:
                raise NotHttp("not a start line")
            return
        if request:
            for i, byte in enumerate(buf[:21]):
                if byte == 0x20 and i > 0:
                    return
                if byte not in _METHOD_CHARS:
                    raise NotHttp("not a request line")
            if len(buf) >= 21:
                raise NotHttp("not a request line")
        else:
            start = bytes(buf[:len(_STATUS_PREFIX)])
            if not _STATUS_PREFIX.startswith(start):
                raise NotHttp("not a status line")

    def _gather_line(self, side: _Side, data: memoryview, pos: int, request: bool) -> int:
        """A chunk-size line, the CRLF after a chunk, or a trailer line."""
        buf = side.buf
        n = len(data)
        while pos < n:
            old = len(buf)
            take = min(n - pos, 64, LINE_LIMIT - old)
            if take <= 0:
                raise NotHttp("chunk line too long")
            buf += data[pos:pos + take]
            nl = buf.find(b"\n", old)
            if nl < 0:
                pos += take
                continue
            pos += nl + 1 - old
            line = bytes(buf[:nl]).rstrip(b"\r")
            buf.clear()
            state = side.state
            if state == _CHUNK_SIZE:
                self._chunk_size(side, line)
            elif state == _CHUNK_END:
                if line:
                    raise NotHttp("no CRLF after a chunk")
                side.state = _CHUNK_SIZE
            elif not line:  # the empty line after the trailers
                self._message_done(side, request)
            return pos
        return pos

    def _chunk_size(self, side: _Side, line: bytes) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise NotHttp("bad chunk size")
        size = int(match.group(1), 16)
        if size:
            side.state, side.left = _CHUNK_DATA, size
        else:
            side.state = _TRAILER

    # -- heads ---------------------------------------------------------------------------

    def _request_head(self, side: _Side, head: bytes) -> None:
        match = _REQUEST_LINE.match(head)
        if match is None:
            raise NotHttp("bad request line")
        self.http = True
        method = match.group(1).decode("ascii")
        path = match.group(2)[:PATH_LIMIT].decode("latin-1")
        headers = _headers(head, match.end())
        if len(self._pending) >= PENDING_LIMIT:
            raise NotHttp("too many requests without a response")
        self._pending.append(_Request(method, path, self.clock()))
        upgrade = method == "CONNECT" or (
            "upgrade" in headers and "upgrade" in headers.get("connection", "").lower())
        self._body(side, headers, request=True)
        if upgrade:
            # What follows may be another protocol: only its response is still read.
            self._upgrade = True
            side.state = _IGNORE

    def _response_head(self, side: _Side, head: bytes) -> None:
        match = _STATUS_LINE.match(head)
        if match is None:
            raise NotHttp("bad status line")
        self.http = True
        status = int(match.group(1))
        headers = _headers(head, match.end())
        if 100 <= status < 200 and status != 101:
            return  # an interim response: the real one follows
        request = self._pending.popleft() if self._pending else None
        self._answering = request
        self._status = status
        self._latency = None if request is None else (self.clock() - request.at) * 1000.0
        side.size = 0
        if status == 101 or (request is not None and request.method == "CONNECT"
                             and 200 <= status < 300):
            self._answered()
            raise NotHttp("switched protocols")
        if self._upgrade and not self._pending:
            # The upgrade was refused; the client's side was not followed since.
            self._answered()
            raise NotHttp("an upgrade request")
        if (request is not None and request.method == "HEAD") or status in (204, 304):
            self._message_done(side, request=False)
            return
        self._body(side, headers, request=False)

    def _body(self, side: _Side, headers: dict[str, str], *, request: bool) -> None:
        """Set ``side`` to skip the body the headers announce."""
        side.size = 0
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.lower().rsplit(",", 1)[-1].strip() == "chunked":
                side.state = _CHUNK_SIZE
            elif request:
                raise NotHttp("a request body without a length")
            else:
                side.state = _UNTIL_CLOSE
            return
        length = headers.get("content-length")
        if length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise NotHttp("bad Content-Length")
            side.left = int(next(iter(values)))
            if side.left:
                side.state = _BODY
                return
        elif not request:
            side.state = _UNTIL_CLOSE
            return
        self._message_done(side, request)

    def _message_done(self, side: _Side, request: bool) -> None:
        side.state = _HEAD
        if not request:
            self._answered()

    def _answered(self) -> None:
        """The response being read is complete (or its connection ended): report it."""
        request, self._answering = self._answering, None
        self._resp.state = _HEAD
        if request is not None:
            self.emit(Exchange(request.method, request.path, self._status, self._latency,
                               self._resp.size))


def _head_end(buf: bytes | bytearray, start: int) -> int:
    """The index just past the blank line ending a head in ``buf`` (searched from
    ``start``), or -1."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    if crlf < 0:
        return -1 if lf < 0 else lf + 2
    if lf < 0 or crlf < lf:
        return crlf + 4
    return lf + 2


def _headers(head: bytes, start: int) -> dict[str, str]:
    """The header fields that frame a message (``_FRAMING``) of a head whose start line
    ends at ``start``, lowercased; a repeated field's values joined with commas."""
    low = head[start - 1:].lower()  # from the newline ending the start line
    fields: dict[str, str] = {}
    if low.find(b":") < 0:
        return fields
    for name, marker in _FRAMING:
        at = low.find(marker)
        while at >= 0:
            begin = at + len(marker)
            end = low.find(b"\n", begin)
            if end < 0:
                end = len(low)
            value = low[begin:end].strip().decode("latin-1")
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
            at = low.find(marker, end)
    return fields
