"""HTTP/1.1 plumbing of the simulated API server: one connection, requests in, responses out.

Written on raw sockets rather than ``http.server`` because a port-forward takes over the
connection after its request (the upgrade), and a restart must abort any connection from
another thread.
"""

from __future__ import annotations

import email.message
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

MAX_HEADER = 64 * 1024
MAX_BODY = 32 * 1024 * 1024

@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: email.message.Message
    body: bytes

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default


class ConnectionClosed(Exception):
    """The peer closed the connection (or it was dropped)."""


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    peer: str
    dropped: threading.Event = field(default_factory=threading.Event)
    buf: bytearray = field(default_factory=bytearray)
    handed_over: bool = False
    responded: bool = False  # whether anything of the current response has been sent
    # (user, groups) of the client certificate the TLS handshake verified, if any.
    identity: tuple[str, tuple[str, ...]] | None = None

    def drop(self) -> None:
        """Abort from another thread: wake any blocked read or write on this socket."""
        self.dropped.set()
        try:
            # The raw shutdown, not SSLSocket.shutdown, which is not safe across threads.
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionClosed() from exc
        if not data:
            raise ConnectionClosed()
        self.buf += data

    def read_head(self) -> bytes | None:
        """The request line and headers, or None at a clean end of the connection."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEADER:
                raise ConnectionClosed()
            try:
                self._fill()
            except ConnectionClosed:
                if not self.buf:
                    return None
                raise

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > MAX_HEADER:
                raise ConnectionClosed()
            self._fill()

    def send(self, data: bytes) -> None:
        if self.dropped.is_set():
            raise ConnectionClosed()
        self.responded = True
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionClosed() from exc

    def read_body(self, headers: email.message.Message) -> bytes:
        """The request body (Content-Length or chunked); ValueError for bad framing."""
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size = int(self.read_line().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.read_line():
                        pass
                    return b"".join(parts)
                total += size
                if total > MAX_BODY:
                    raise ConnectionClosed()
                parts.append(self.read_exact(size))
                self.read_line()
        length = int(headers.get("Content-Length", "0") or 0)
        if length > MAX_BODY:
            raise ConnectionClosed()
        return self.read_exact(length) if length else b""


REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    409: "Conflict", 410: "Gone", 415: "Unsupported Media Type", 422: "Unprocessable Entity",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}


def send_json(conn: Connection, code: int, obj: Any, *, close: bool = False,
              content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
    """One complete JSON response (``headers``: extra ones, such as Retry-After)."""
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"HTTP/1.1 {code} {REASONS.get(code, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache, private\r\n"
        + extra
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    conn.send(head.encode("latin-1") + body)

