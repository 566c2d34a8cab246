"""Built-in pod servers: an HTTP server and a TCP echo server bound to a pod IP.

Hundreds of pods may run at once, so idle listeners cost no thread: one ``AcceptHub`` thread
accepts for every listener of a kubelet, and each accepted connection gets its own thread that
ends with the connection. The hot paths (``/bytes/N``, uploads, echo) move data through one
large reusable buffer per connection with ``recv_into`` and ``sendall`` of memoryviews.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Iterable

from kubefwd.sim.buffers import read_buffer
from kubefwd.support.sockets import hard_shutdown
from kubefwd.support.threads import StoppableThread

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# The body of ``GET /bytes/N``: byte i is ``i % 256``, so a client can check what it got.
PATTERN = bytes(range(256)) * (CHUNK // 256)
_PATTERN_VIEW = memoryview(PATTERN)
_HEAD_LIMIT = 64 * 1024
_SMALL_BODY = 64 * 1024


def pattern_bytes(n: int) -> bytes:
    """The first ``n`` bytes of the ``/bytes`` body (for tests; builds the whole thing)."""
    whole, rest = divmod(n, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


def server_kind(image: str) -> str:
    """The built-in server for a container image: ``echo`` for ``*echo*``, else ``http``."""
    return "echo" if "echo" in image.lower() else "http"


class AcceptHub(StoppableThread):
    """One thread accepting connections for many listening sockets (a selector loop)."""

    def __init__(self, name: str = "sim-pod-accept") -> None:
        super().__init__(name)
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._handlers: dict[socket.socket, Callable[[socket.socket], None]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)

    def add(self, listener: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        """Accept on ``listener`` from now on; ``on_accept`` gets each new blocking socket."""
        listener.setblocking(False)
        with self._lock:
            self._handlers[listener] = on_accept
            self._selector.register(listener, selectors.EVENT_READ)

    def remove(self, listener: socket.socket) -> None:
        """Stop accepting on ``listener``; after this returns it may be closed."""
        with self._lock:
            if self._handlers.pop(listener, None) is not None:
                self._selector.unregister(listener)

    def on_stop(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run_loop(self) -> None:
        try:
            while not self.stopping.is_set():
                events = self._selector.select()
                accepted: list[tuple[Callable[[socket.socket], None], socket.socket]] = []
                with self._lock:
                    for key, _mask in events:
                        sock = key.fileobj
                        if sock is self._wake_r:
                            self._drain_wake()
                            continue
                        assert isinstance(sock, socket.socket)
                        handler = self._handlers.get(sock)
                        if handler is not None:
                            accepted.extend((handler, conn) for conn in _accept_some(sock))
                for handler, conn in accepted:
                    try:
                        handler(conn)
                    except Exception:
                        log.exception("pod server failed to take a connection")
                        conn.close()
        finally:
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass


def _accept_some(listener: socket.socket, limit: int = 64) -> list[socket.socket]:
    conns = []
    for _ in range(limit):
        try:
            conn, _addr = listener.accept()
        except BlockingIOError:
            break
        except OSError as e:
            log.warning("accept failed on %s: %s", listener, e)
            break
        conn.setblocking(True)
        conns.append(conn)
    return conns


class PodServers:
    """The built-in server of one container: a listener per port, a thread per connection."""

    def __init__(self, hub: AcceptHub, *, kind: str, ip: str, ports: Iterable[int],
                 pod_name: str, label: str,
                 log_line: Callable[[str], None] | None = None) -> None:
        if kind not in ("http", "echo"):
            raise ValueError(f"unknown built-in server {kind!r}")
        self.kind = kind
        self.ip = ip
        self.ports = sorted(set(ports))
        self.pod_name = pod_name
        self.label = label
        self.log_line = log_line  # a line per request (HTTP) or connection (echo)
        self._hub = hub
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopped = False

    def start(self) -> None:
        """Bind and listen on every port; raises OSError (and holds nothing) on failure."""
        bound: list[socket.socket] = []
        try:
            for port in self.ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                bound.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.ip, port))
                sock.listen(1024)
        except OSError:
            for sock in bound:
                sock.close()
            raise
        with self._lock:
            self._listeners = bound
        for sock in bound:
            port = sock.getsockname()[1]
            self._hub.add(sock, functools.partial(self._on_accept, port=port))

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listeners and every open connection, and wait for their threads."""
        with self._lock:
            self._stopped = True
            listeners, self._listeners = self._listeners, []
            threads = list(self._conns.values())
            for conn in self._conns:
                hard_shutdown(conn)
        for sock in listeners:
            self._hub.remove(sock)
            sock.close()
        for thread in threads:
            thread.join(timeout)

    def _on_accept(self, conn: socket.socket, *, port: int) -> None:
        with contextlib.suppress(OSError):  # the peer may already have reset it
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stopped:
                conn.close()
                return
            thread = threading.Thread(target=self._serve, args=(conn, port), daemon=True,
                                      name=f"pod-{self.kind} {self.label}:{port}")
            self._conns[conn] = thread
            try:
                thread.start()
            except RuntimeError:  # out of threads: refuse this one connection
                del self._conns[conn]
                conn.close()
                log.warning("pod %s: no thread for a new connection", self.label)

    def _serve(self, conn: socket.socket, port: int) -> None:
        try:
            if self.kind == "echo":
                if self.log_line is not None:
                    self.log_line(f"echo: connection on port {port}")
                serve_echo(conn)
            else:
                serve_http(conn, self.pod_name, self.log_line)
        except OSError:
            pass  # the peer went away or the pod was stopped
        except Exception:
            log.exception("built-in %s server of %s failed", self.kind, self.label)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
                conn.close()


def serve_echo(conn: socket.socket) -> None:
    """Echo everything until EOF, then shut down our write side (half-close friendly)."""
    buf = read_buffer(256 * 1024)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        conn.sendall(view[:n])
    conn.shutdown(socket.SHUT_WR)


class _BadRequest(Exception):
    pass


class _Reader:
    """Buffered reads of request heads and bodies from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self._scratch: bytearray | None = None

    def read_until(self, sep: bytes, limit: int) -> bytes | None:
        """Bytes up to ``sep`` (dropped); None on a clean EOF before any byte."""
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise _BadRequest("request head too large")
            start = max(0, len(self.buf) - len(sep) + 1)
            data = self.sock.recv(65536)
            if not data:
                if self.buf:
                    raise _BadRequest("truncated request")
                return None
            self.buf += data

    def feed(self, n: int, sink: Callable[[memoryview], object]) -> None:
        """Pass the next ``n`` bytes to ``sink`` without collecting them."""
        if self.buf and n:
            take = min(n, len(self.buf))
            sink(memoryview(bytes(self.buf[:take])))
            del self.buf[:take]
            n -= take
        if not n:
            return
        if self._scratch is None:
            self._scratch = bytearray(CHUNK)
        view = memoryview(self._scratch)
        while n:
            got = self.sock.recv_into(view, min(n, len(view)))
            if not got:
                raise _BadRequest("truncated body")
            sink(view[:got])
            n -= got


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest("bad header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return parts[0], parts[1], parts[2], headers


def _response(status: str, body: bytes, *, close: bool,
              content_type: str = "text/plain; charset=utf-8", length: int | None = None) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n")
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def serve_http(conn: socket.socket, pod_name: str,
               log_line: Callable[[str], None] | None = None) -> None:
    """HTTP/1.1 with keep-alive: ``/`` names the pod, ``/bytes/N``, uploads, ``/healthz``;
    ``log_line`` gets one line per request."""
    reader = _Reader(conn)
    while True:
        try:
            head = reader.read_until(b"\r\n\r\n", _HEAD_LIMIT)
            if head is None:
                return
            if not head:
                continue  # stray CRLF between requests
            method, target, version, headers = _parse_head(head)
            tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
            close = "keep-alive" not in tokens if version == "HTTP/1.0" else "close" in tokens
            body_len, digest = _read_body(conn, reader, headers)
        except (_BadRequest, ValueError) as e:
            conn.sendall(_response("400 Bad Request", f"{e}\n".encode(), close=True))
            return
        path = target.split("?", 1)[0]
        if log_line is not None:
            log_line(f"{method} {target} {version}")
        if method in ("POST", "PUT"):
            body = json.dumps({"length": body_len, "sha256": digest}).encode() + b"\n"
            conn.sendall(_response("200 OK", body, close=close, content_type="application/json"))
        elif method in ("GET", "HEAD"):
            _answer_get(conn, path, pod_name, close=close, head_only=method == "HEAD")
        else:
            conn.sendall(_response("405 Method Not Allowed", b"method not allowed\n", close=close))
        if close:
            conn.shutdown(socket.SHUT_WR)
            return


def _read_body(conn: socket.socket, reader: _Reader,
               headers: dict[str, str]) -> tuple[int, str]:
    """Consume the request body; its length and sha256."""
    hasher = hashlib.sha256()
    total = 0

    def sink(data: memoryview) -> None:
        nonlocal total
        hasher.update(data)
        total += len(data)

    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = int(headers.get("content-length", "0") or "0")
    if length < 0:
        raise _BadRequest("negative Content-Length")
    if (chunked or length) and headers.get("expect", "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if chunked:
        while True:
            line = reader.read_until(b"\r\n", 4096)
            if line is None:
                raise _BadRequest("truncated chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while reader.read_until(b"\r\n", _HEAD_LIMIT):
                    pass  # trailers
                break
            reader.feed(size, sink)
            if reader.read_until(b"\r\n", 2) != b"":
                raise _BadRequest("bad chunk terminator")
    else:
        reader.feed(length, sink)
    return total, hasher.hexdigest()


def _answer_get(conn: socket.socket, path: str, pod_name: str, *, close: bool,
                head_only: bool) -> None:
    if path.startswith("/bytes/"):
        try:
            n = int(path[len("/bytes/"):])
            if n < 0:
                raise ValueError
        except ValueError:
            conn.sendall(_response("400 Bad Request", b"bad byte count\n", close=close))
            return
        head = _response("200 OK", b"", close=close, length=n,
                         content_type="application/octet-stream")
        if head_only:
            conn.sendall(head)
        elif n <= _SMALL_BODY:
            conn.sendall(head + PATTERN[:n])
        else:
            conn.sendall(head)
            chunk = len(PATTERN)
            while n >= chunk:
                conn.sendall(_PATTERN_VIEW)
                n -= chunk
            if n:
                conn.sendall(_PATTERN_VIEW[:n])
        return
    if path == "/":
        status, body = "200 OK", f"{pod_name}\n".encode()
    elif path == "/healthz":
        status, body = "200 OK", b"ok"
    else:
        status, body = "404 Not Found", b"not found\n"
    response = _response(status, body, close=close)
    conn.sendall(response[: len(response) - len(body)] if head_only else response)
