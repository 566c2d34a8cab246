"""Port-forward tunnels to pods through the Kubernetes API server: the hot path.

A ``PodTunnel`` multiplexes every TCP connection forwarded to one pod over one SPDY/3.1
session (tunnelled in a WebSocket, or through the plain HTTP upgrade): per connection an
error stream and a data stream, with half-close both ways. When the server refuses both SPDY
forms, each connection gets a WebSocket ``v4.channel.k8s.io`` of its own instead.

Threads per tunnel, whatever the number of connections: one *pump* thread reads every local
socket of the tunnel (a selector) and writes DATA frames, opens and closes streams and sends
keepalive pings; one *reader* thread parses frames from the API server and writes each DATA
payload straight into its local socket. Only the v4 fallback adds a thread per connection.
Local sockets are shut down and closed only by the pump; the reader only sends to them.
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubefwd.errors import TunnelError
from kubefwd.tunnel_ws import (
    FINAL_STATUSES,
    PORTFORWARD_PROTOCOL,
    PROTOCOL_SPDY_WS,
    PrefixedSocket,
    UpgradeRefused,
    V4Connection,
    WsByteStream,
    close_quietly,
    dial_upgrade,
    dial_websocket,
    hard_shutdown,
)
from kubefwd.wire import spdy as wire_spdy

log = logging.getLogger(__name__)

__all__ = ["TRANSPORTS", "ApiTarget", "PodTunnel", "TunnelPool", "UpgradeRefused"]

TRANSPORTS = ("auto", "spdy-ws", "spdy", "ws")
# Buffers start small (an idle tunnel costs little memory) and grow on the first bulk
# transfer: a local read carries up to _CHUNK bytes into one DATA frame, and the reader hands
# DATA to local sockets in pieces of up to _READ_BUFFER bytes.
_SMALL = 16 * 1024
_CHUNK = 256 * 1024
_READ_BUFFER = 1 << 20
# Default seconds between keepalive pings; no frame at all for two intervals = dead.
PING_INTERVAL = 7.0
# Default seconds without any connection after which a tunnel closes its session (and its
# threads); the next connection reopens it, which costs one TLS handshake and one upgrade.
IDLE_TIMEOUT = 120.0

_DATA_FIN = wire_spdy.FLAG_FIN
_SYN_STREAM, _SYN_REPLY = wire_spdy.SYN_STREAM, wire_spdy.SYN_REPLY
_RST_STREAM = wire_spdy.RST_STREAM
_PING, _GOAWAY, _HEADERS = wire_spdy.PING, wire_spdy.GOAWAY, wire_spdy.HEADERS

_IDLE, _OPENING, _OPEN, _DEAD, _CLOSED = "idle", "opening", "open", "dead", "closed"
_IDLING = "idling"  # an idle session is being closed; new connections wait and reopen it

Stream = PrefixedSocket | WsByteStream


@dataclass(frozen=True)
class ApiTarget:
    """Where and how to reach one cluster's API server (built from a kubeconfig context)."""

    host: str
    port: int
    scheme: str
    base_path: str = ""
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    # Called for every new connection, so refreshed tokens are picked up.
    auth_headers: Callable[[], dict[str, str]] = dict


class _Conn:
    """One forwarded TCP connection: a local socket and its stream pair (or v4 WebSocket)."""

    __slots__ = (
        "closed",
        "data_id",
        "error",
        "error_id",
        "local_done",
        "port",
        "remote_done",
        "rid",
        "sock",
        "v4",
    )

    def __init__(self, sock: socket.socket, port: int, rid: int) -> None:
        self.sock = sock
        self.port = port
        self.rid = rid
        self.error_id = 0
        self.data_id = 0
        self.local_done = False  # local EOF seen, FIN sent
        self.remote_done = False  # FIN received, local write side shut down
        self.error = b""
        self.closed = False
        self.v4: V4Connection | None = None


class _HeaderCompressor:
    """Our side's SPDY header compression, with a small window and little memory (about
    12 KiB instead of 90 KiB a tunnel): our header blocks are a few dozen bytes, and any
    zlib reader takes a smaller window than its own."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 11, 1,
                                   zlib.Z_DEFAULT_STRATEGY, wire_spdy.DICTIONARY)

    def compress(self, headers: dict[str, str]) -> bytes:
        raw = wire_spdy.encode_header_block(headers)
        return self._z.compress(raw) + self._z.flush(zlib.Z_SYNC_FLUSH)


class PodTunnel:
    """One multiplexed port-forward connection to one pod; see the module docstring."""

    def __init__(self, target: ApiTarget, namespace: str, pod: str, *,
                 transport: str = "auto",
                 on_dead: Callable[[PodTunnel], None] | None = None,
                 ping_interval: float = PING_INTERVAL, open_timeout: float = 10.0,
                 idle_timeout: float = IDLE_TIMEOUT, prefer: str = "") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
        self.target = target
        self.namespace = namespace
        self.pod = pod
        self.transport = transport
        self.on_dead = on_dead
        self.ping_interval = ping_interval
        self.open_timeout = open_timeout
        # Close the session after this many seconds without a connection (0: never).
        self.idle_timeout = idle_timeout
        # With "auto": start negotiating at this transport (one that worked before).
        self.prefer = prefer
        self.on_open: Callable[[PodTunnel], None] | None = None
        self.transport_name = ""  # what was negotiated: spdy-ws, spdy or ws
        self.alive = True
        self.last_error: TunnelError | None = None
        self._bytes_in = 0  # written by the reader thread only
        self.bytes_out = 0  # written by the pump thread only
        self._v4_bytes_in = 0
        self.connections = 0  # connections spliced so far
        self.sessions = 0  # sessions opened so far (more than one after idle closes)
        self.active = 0  # connections open now (pump thread only)
        # Retiring: a stream reported an error, or the server sent GOAWAY. Like kubectl, we
        # stop using the connection, but the connections already on it run to their end.
        self._retiring = False
        self._reported = False
        self._path = f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
        self._lock = threading.Lock()
        self._state = _IDLE
        self._pending: list[tuple[socket.socket, int]] = []
        self._opened = threading.Event()
        self._cmds: deque[Callable[[], None]] = deque()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._pump: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._v4_threads: set[threading.Thread] = set()
        self._v4_conns: set[_Conn] = set()
        self._stream: Stream | None = None
        self._dialing: Any = None
        self._wlock = threading.Lock()
        self._compress = _HeaderCompressor()
        self._decompress = wire_spdy.HeaderDecompressor()
        self._conns: dict[int, _Conn] = {}  # stream id -> connection (error and data ids)
        self._next_stream = 1
        self._next_request = 0
        self._next_ping = 1
        self._last_rx = 0.0
        self._delivering = False
        self._sel: selectors.BaseSelector | None = None
        self._pbuf = bytearray()  # the pump's read buffer
        self._old_pumps: list[threading.Thread] = []
        self._want_open = False
        self._last_activity = 0.0

    # -- public API ---------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<PodTunnel {self.namespace}/{self.pod} {self._state} {self.transport_name}>"

    @property
    def state(self) -> str:
        """idle, opening, open, dead or closed."""
        return self._state

    @property
    def retiring(self) -> bool:
        """True once the tunnel takes no new connections but still carries some."""
        return self._retiring and self._state == _OPEN

    @property
    def bytes_in(self) -> int:
        """Bytes delivered from the pod to local clients."""
        return self._bytes_in + self._v4_bytes_in + sum(
            c.v4.bytes_in for c in list(self._v4_conns) if c.v4 is not None)

    def open(self, timeout: float | None = None) -> None:
        """Connect now (if not yet); raises TunnelError when the tunnel cannot be opened."""
        if timeout is not None:
            self.open_timeout = timeout
        while True:
            with self._lock:
                state = self._state
                if state == _OPEN:
                    return
                if state == _CLOSED:
                    raise TunnelError(f"tunnel to {self.namespace}/{self.pod} is closed")
                if state == _DEAD:
                    raise self.last_error or TunnelError(
                        f"tunnel to {self.namespace}/{self.pod} is dead")
                if state == _IDLE:
                    self._begin_opening()
                elif state == _IDLING:
                    self._want_open = True
            self._opened.wait()

    def splice(self, local: socket.socket, port: int) -> None:
        """Take ownership of a connected local socket and relay it to ``port`` of the pod.

        Returns at once. If the tunnel is dead or closed, or fails to open, the socket is
        closed (the caller routes the next connection elsewhere).
        """
        with self._lock:
            state = self._state
            if state in (_IDLE, _OPENING, _IDLING):
                self._pending.append((local, port))
                if state == _IDLE:
                    self._begin_opening()
                return
            if state == _OPEN and not self._retiring:
                self._post(lambda: self._start_conn(local, port))
                return
        log.debug("tunnel %s/%s is %s; dropping a connection", self.namespace, self.pod, state)
        _close_local(local)

    def close(self) -> None:
        """Close every connection of the tunnel and join its threads."""
        with self._lock:
            if self._state == _CLOSED:
                return
            self._state = _CLOSED
            self.alive = False
            pending, self._pending = self._pending, []
        for sock, _port in pending:
            _close_local(sock)
        if self._dialing is not None:
            hard_shutdown(self._dialing)
        self._shutdown_stream()
        self._wake()
        me = threading.current_thread()
        for thread in [*self._old_pumps, self._pump, self._reader, *list(self._v4_threads)]:
            if thread is not None and thread is not me:
                thread.join(10.0)
        self._opened.set()
        self._release()

    # -- opening ------------------------------------------------------------------------

    def _begin_opening(self) -> None:
        """Start the pump thread, which dials; called with the lock held."""
        self._state = _OPENING
        self._opened.clear()
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_w.setblocking(False)
        if self._pump is not None:  # one that went idle (it has ended, or is ending)
            self._old_pumps = [t for t in self._old_pumps if t.is_alive()] + [self._pump]
        self._pump = threading.Thread(target=self._pump_main, daemon=True,
                                      name=f"tunnel {self.namespace}/{self.pod}")
        self._pump.start()

    def _track(self, sock: Any) -> None:
        self._dialing = sock
        if sock is not None and self._state == _CLOSED:
            hard_shutdown(sock)

    def _negotiate(self) -> tuple[str, Stream | None]:
        """Dial the transports in order; the first that upgrades wins."""
        order = [self.transport]
        if self.transport == "auto":
            order = ["spdy-ws", "spdy", "ws"]
            if self.prefer in order:
                order = order[order.index(self.prefer):]
        timeout = self.open_timeout
        refused: UpgradeRefused | None = None
        for name in order:
            if name == "ws":
                return "ws", None  # dialed per connection
            try:
                if name == "spdy-ws":
                    wsock, rest = dial_websocket(
                        self.target, self._path, PROTOCOL_SPDY_WS, timeout=timeout,
                        what="SPDY-over-WebSocket upgrade", track=self._track)
                    return name, WsByteStream(wsock, rest)
                sock, head = dial_upgrade(
                    self.target, self._path, method="POST", timeout=timeout,
                    what="SPDY upgrade", track=self._track,
                    headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                             "X-Stream-Protocol-Version": PORTFORWARD_PROTOCOL})
                return name, PrefixedSocket(sock, head.rest)
            except UpgradeRefused as e:
                if e.status in FINAL_STATUSES or name == order[-1]:
                    raise
                log.debug("%s/%s: %s; trying the next transport", self.namespace, self.pod, e)
                refused = e
        raise refused or TunnelError("no transport")

    def _pump_main(self) -> None:
        """Open a session, serve it; after an idle close, open again if someone waits."""
        while self._session():
            with self._lock:
                if self._state != _IDLING:
                    return
                if not self._pending and not self._want_open:
                    self._state = _IDLE
                    self._opened.set()
                    return
                self._state = _OPENING
                self._want_open = False

    def _session(self) -> bool:
        """One session, from dialing to teardown; True when it ended by going idle."""
        try:
            name, stream = self._negotiate()
        except TunnelError as e:
            self._open_failed(e)
            return False
        except Exception as e:  # a bug must not leave the tunnel opening forever
            log.exception("tunnel %s/%s: opening failed", self.namespace, self.pod)
            self._open_failed(TunnelError(f"opening failed: {e}"))
            return False
        with self._lock:
            if self._state != _OPENING:  # closed meanwhile
                if stream is not None:
                    stream.close()
                self._opened.set()
                return False
            self._state = _OPEN
            self.sessions += 1
            self.transport_name = name
            if self.transport == "auto":
                self.prefer = name  # reopening after an idle close: start with what worked
            self._stream = stream
            pending, self._pending = self._pending, []
            if stream is not None:
                self._last_rx = time.monotonic()
                self._reader = threading.Thread(
                    target=self._reader_main, args=(stream,), daemon=True,
                    name=f"tunnel-rx {self.namespace}/{self.pod}")
                self._reader.start()
        log.debug("tunnel %s/%s open over %s", self.namespace, self.pod, name)
        self._opened.set()
        if self.on_open is not None:
            self.on_open(self)
        for sock, port in pending:
            self._cmds.append(functools.partial(self._start_conn, sock, port))
        try:
            self._pump_loop()
        except Exception:
            log.exception("tunnel %s/%s: pump failed", self.namespace, self.pod)
            self._die("internal error")
        finally:
            self._cleanup()
        if self._state != _IDLING:
            return False
        self._end_session()
        return True

    def _open_failed(self, error: TunnelError) -> None:
        self.last_error = error
        with self._lock:
            closed = self._state == _CLOSED
            if not closed:
                self._state = _DEAD
                self.alive = False
            pending, self._pending = self._pending, []
        for sock, _port in pending:
            _close_local(sock)
        self._opened.set()
        if not closed:
            log.warning("port-forward to %s/%s: %s", self.namespace, self.pod, error)
            self._report_dead()

    # -- the pump thread: local → pod, stream setup and teardown, keepalive ---------------

    def _post(self, cmd: Callable[[], None]) -> None:
        self._cmds.append(cmd)
        self._wake()

    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass  # full (a wake-up is pending anyway) or closed

    def _pump_loop(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        assert self._wake_r is not None
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pbuf = bytearray(8 + _SMALL)
        spdy = self._stream is not None
        next_ping = time.monotonic() + self.ping_interval
        self._last_activity = time.monotonic()
        while self._state == _OPEN:
            while self._cmds:
                self._cmds.popleft()()
            now = time.monotonic()
            timeout = max(0.0, next_ping - now) if spdy else None
            if self.idle_timeout and self.active <= 0:
                idle_left = self._last_activity + self.idle_timeout - now
                if idle_left <= 0 and self._go_idle():
                    return
                timeout = max(0.0, idle_left if timeout is None else min(timeout, idle_left))
            for key, _events in sel.select(timeout):
                conn = key.data
                if conn is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                elif spdy:
                    self._local_readable(conn)
                else:
                    self._v4_local_readable(conn)
            if spdy and time.monotonic() >= next_ping:
                next_ping = time.monotonic() + self.ping_interval
                self._keepalive()

    def _go_idle(self) -> bool:
        """No connection for ``idle_timeout``: end the session (threads, buffers, the API
        connection); the next splice opens a new one."""
        with self._lock:
            if self._state != _OPEN or self._cmds or self.active > 0 or self._retiring:
                return False
            self._state = _IDLING
            self._opened.clear()
        log.debug("tunnel %s/%s idle: closing its session", self.namespace, self.pod)
        return True

    def _end_session(self) -> None:
        """After an idle close (pump thread): release the session, reset its state."""
        self._shutdown_stream()
        if self._reader is not None:
            self._reader.join(10.0)
            self._reader = None
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        self._conns.clear()
        self._compress = _HeaderCompressor()
        self._decompress = wire_spdy.HeaderDecompressor()
        self._next_stream = 1
        self._next_ping = 1
        self._pbuf = bytearray()

    def _local_readable(self, conn: _Conn) -> None:
        buf = self._pbuf
        view = memoryview(buf)
        try:
            n = conn.sock.recv_into(view[8:])
        except OSError:
            n = -1
        if n > 0:
            # Header in front of the payload in the same buffer: one write, no copy.
            struct.pack_into(">II", buf, 0, conn.data_id, n)
            self._send(view[: 8 + n])
            self.bytes_out += n
            if n == len(buf) - 8 and n < _CHUNK:
                self._pbuf = bytearray(8 + _CHUNK)  # a bulk upload: bigger frames
        elif n == 0:
            self._unregister(conn)
            conn.local_done = True
            self._send(struct.pack(">II", conn.data_id, _DATA_FIN << 24))
            if conn.remote_done:
                self._finish(conn)
        else:
            self._abort(conn, reset=True)

    def _send(self, data: Any) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            with self._wlock:
                stream.sendall(data)
        except (OSError, ValueError, AttributeError) as e:
            self._die(f"connection to the API server lost ({e})")

    def _start_conn(self, sock: socket.socket, port: int) -> None:
        if self._state != _OPEN:
            _close_local(sock)
            return
        conn = _Conn(sock, port, self._next_request)
        self._next_request += 1
        self.connections += 1
        self.active += 1
        try:
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self._stream is None:
            self._start_v4(conn)
            return
        conn.error_id, conn.data_id = self._next_stream, self._next_stream + 2
        self._next_stream += 4
        self._conns[conn.error_id] = conn
        self._conns[conn.data_id] = conn
        headers = {"streamtype": "error", "port": str(port), "requestid": str(conn.rid)}
        with self._wlock:  # compress and send in one order: the zlib context is shared
            frames = [self._syn_stream(conn.error_id, headers),
                      struct.pack(">II", conn.error_id, _DATA_FIN << 24)]
            headers["streamtype"] = "data"
            frames.append(self._syn_stream(conn.data_id, headers))
            stream = self._stream
            try:
                stream.sendall(b"".join(frames))
            except (OSError, ValueError, AttributeError) as e:
                err: Exception | None = e
            else:
                err = None
        if err is not None:
            self._die(f"connection to the API server lost ({err})")
            return
        self._register(conn)

    def _syn_stream(self, stream_id: int, headers: dict[str, str]) -> bytes:
        return wire_spdy.syn_stream_frame(stream_id, self._compress.compress(headers))

    def _register(self, conn: _Conn) -> None:
        assert self._sel is not None
        try:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        except (ValueError, KeyError, OSError):
            self._abort(conn, reset=True)

    def _unregister(self, conn: _Conn) -> None:
        if self._sel is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass

    def _finish(self, conn: _Conn) -> None:
        """Both directions ended: close the local socket, forget the data stream."""
        if conn.closed:
            return
        conn.closed = True
        self._unregister(conn)
        self._conns.pop(conn.data_id, None)
        self._conns.pop(conn.error_id, None)
        _close_local(conn.sock)
        self._ended()

    def _remote_ended(self, conn: _Conn) -> None:
        """The pod's side is done (pump thread): pass the EOF on; close if both are."""
        if conn.closed:
            return
        if conn.local_done:
            self._finish(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _ended(self) -> None:
        self.active -= 1
        self._last_activity = time.monotonic()
        if self._retiring and self.active <= 0:
            self._die("retired", quiet=True)

    def _abort(self, conn: _Conn, *, reset: bool) -> None:
        """Cut a connection now; with ``reset`` tell the server to drop its streams."""
        if conn.closed:
            return
        conn.closed = True
        self._unregister(conn)
        self._conns.pop(conn.data_id, None)
        self._conns.pop(conn.error_id, None)
        if reset and self._stream is not None and self._state == _OPEN:
            self._send(wire_spdy.rst_stream_frame(conn.data_id, wire_spdy.CANCEL)
                       + wire_spdy.rst_stream_frame(conn.error_id, wire_spdy.CANCEL))
        if conn.v4 is not None:
            conn.v4.shutdown()
        _close_local(conn.sock)
        self._ended()

    def _keepalive(self) -> None:
        silent = time.monotonic() - self._last_rx
        if silent > 2 * self.ping_interval and not self._delivering:
            self._die(f"no answer to keepalive pings for {silent:.0f}s")
            return
        ping_id = self._next_ping
        self._next_ping += 2
        self._send(wire_spdy.ping_frame(ping_id))

    # -- the reader thread: pod → local --------------------------------------------------

    def _reader_main(self, stream: Stream) -> None:
        try:
            reason = self._read_frames(stream)
        except (OSError, ValueError, AttributeError, EOFError, struct.error,
                wire_spdy.SpdyError) as e:
            reason = f"connection to the API server lost ({e})"
        except Exception as e:
            log.exception("tunnel %s/%s: reader failed", self.namespace, self.pod)
            reason = f"internal error ({e})"
        self._die(reason)

    def _read_frames(self, stream: Stream) -> str:
        size = _SMALL
        buf = bytearray(size)
        view = memoryview(buf)
        start = end = 0
        recv = stream.recv_into
        conns = self._conns
        while True:
            while end - start < 8:
                if start:
                    buf[: end - start] = buf[start:end]
                    end -= start
                    start = 0
                got = recv(view[end:])
                if not got:
                    return "the API server closed the connection"
                end += got
            self._last_rx = time.monotonic()
            word, length = struct.unpack_from(">II", buf, start)
            flags = length >> 24
            length &= 0xFFFFFF
            start += 8
            if length > size // 2 and size < _READ_BUFFER:  # bigger data: a bigger buffer
                size = min(_READ_BUFFER, max(size * 4, 1 << (length + 8).bit_length()))
                grown = bytearray(size)
                grown[: end - start] = buf[start:end]
                buf, view = grown, memoryview(grown)
                start, end = 0, end - start
            if word & 0x80000000:  # control frame: read it whole
                if length > size:
                    return f"control frame too large ({length} bytes)"
                while end - start < length:
                    if start + length > size:
                        buf[: end - start] = buf[start:end]
                        end -= start
                        start = 0
                    got = recv(view[end:])
                    if not got:
                        return "the API server closed the connection"
                    end += got
                frame = bytes(buf[start:start + length])
                start += length
                verdict = self._control_frame(word & 0xFFFF, flags, frame)
                if verdict:
                    return verdict
                continue
            conn = conns.get(word)
            remaining = length
            while remaining:
                avail = end - start
                if avail < remaining and end < size:
                    # Gather the frame (the server wrote it in one go) or a full buffer, so
                    # the local socket sees a few big writes, not one per TLS record.
                    if start and size - end < size // 4:
                        buf[:avail] = buf[start:end]
                        start, end = 0, avail
                    got = recv(view[end:])
                    if not got:
                        return "the API server closed the connection"
                    end += got
                    continue
                take = min(avail, remaining)
                if conn is not None:
                    self._deliver(conn, word, view[start:start + take])
                start += take
                remaining -= take
                if start == end:
                    start = end = 0
            if flags & _DATA_FIN and conn is not None:
                self._remote_fin(conn, word)

    def _deliver(self, conn: _Conn, stream_id: int, data: memoryview) -> None:
        if stream_id == conn.error_id:
            conn.error += data.tobytes()
            return
        if conn.closed:
            return
        self._delivering = True
        try:
            conn.sock.sendall(data)
        except OSError:
            self._post(lambda: self._abort(conn, reset=True))
        else:
            self._bytes_in += len(data)
        finally:
            self._delivering = False

    def _remote_fin(self, conn: _Conn, stream_id: int) -> None:
        if stream_id == conn.error_id:
            self._conns.pop(stream_id, None)
            if conn.error:
                self._forward_error(conn)
            return
        conn.remote_done = True
        if conn.error:  # the kubelet writes its error before it closes the streams
            self._forward_error(conn)
            return
        self._post(functools.partial(self._remote_ended, conn))

    def _forward_error(self, conn: _Conn) -> None:
        """The server could not forward this connection: drop it (as kubectl does) and stop
        opening new streams on this session."""
        message = conn.error.decode("utf-8", "replace").strip()
        conn.error = b""
        log.warning("port-forward to %s/%s port %d: %s", self.namespace, self.pod,
                    conn.port, message)
        self._post(lambda: self._abort(conn, reset=False))
        self.retire(message)

    def _control_frame(self, kind: int, flags: int, frame: bytes) -> str:
        """Handle one control frame; returns a reason when the session must end."""
        if kind == _PING:
            (ping_id,) = struct.unpack_from(">I", frame)
            if not ping_id & 1:  # the server's ping: echo it
                self._send(wire_spdy.control_frame(_PING, 0, frame[:4]))
        elif kind in (_SYN_REPLY, _HEADERS):
            self._decompress.decompress(frame[4:])
        elif kind == _RST_STREAM:
            stream_id, _status = struct.unpack_from(">II", frame)
            conn = self._conns.get(stream_id)
            if conn is not None:
                self._post(lambda: self._abort(conn, reset=False))
        elif kind == _SYN_STREAM:
            self._decompress.decompress(frame[10:])
            (stream_id,) = struct.unpack_from(">I", frame)
            self._send(wire_spdy.rst_stream_frame(stream_id, wire_spdy.REFUSED_STREAM))
        elif kind == _GOAWAY:
            self.retire("the API server sent GOAWAY")
        return ""

    # -- v4 fallback: one WebSocket and one thread per connection ---------------------------

    def _start_v4(self, conn: _Conn) -> None:
        conn.v4 = V4Connection(conn.sock, conn.port)
        self._v4_conns.add(conn)
        thread = threading.Thread(target=self._v4_main, args=(conn,), daemon=True,
                                  name=f"tunnel-ws {self.namespace}/{self.pod}#{conn.rid}")
        self._v4_threads.add(thread)
        thread.start()

    def _v4_main(self, conn: _Conn) -> None:
        v4 = conn.v4
        assert v4 is not None
        try:
            try:
                v4.dial(self.target, self._path, self.open_timeout)
            except TunnelError as e:
                log.warning("port-forward to %s/%s port %d: %s", self.namespace, self.pod,
                            conn.port, e)
                if isinstance(e, UpgradeRefused) and e.status in FINAL_STATUSES:
                    self.last_error = e
                    self._die(str(e))
                self._post(lambda: self._abort(conn, reset=False))
                return
            self._post(lambda: self._register(conn) if not conn.closed else None)
            clean = v4.relay_remote()
            if v4.error:
                log.warning("port-forward to %s/%s port %d: %s", self.namespace, self.pod,
                            conn.port, v4.error.strip())
                self.retire(v4.error.strip())
            if not clean or v4.error:
                self._post(lambda: self._abort(conn, reset=False))
            else:
                conn.remote_done = True
                self._post(lambda: self._finish(conn))
        finally:
            v4.close()
            with self._lock:
                self._v4_bytes_in += v4.bytes_in
                self._v4_conns.discard(conn)
                self._v4_threads.discard(threading.current_thread())

    def _v4_local_readable(self, conn: _Conn) -> None:
        assert conn.v4 is not None
        view = memoryview(self._pbuf)
        try:
            n = conn.sock.recv_into(view)
        except OSError:
            n = -1
        if n > 0:
            try:
                conn.v4.send(view[:n])
            except (OSError, ValueError, AttributeError):
                self._abort(conn, reset=False)
                return
            self.bytes_out += n
        else:
            # v4 has no half-close: a local EOF ends the whole connection.
            self._abort(conn, reset=False)

    # -- death and teardown ---------------------------------------------------------------

    def retire(self, reason: str, *, report: bool = True) -> None:
        """Take no new connections (from any thread); end once the last one is done.

        ``report``: call ``on_dead`` (the pod misbehaved), not for a planned replacement.
        """
        with self._lock:
            if self._state != _OPEN or self._retiring:
                return
            self._retiring = True
            self.alive = False
        self.last_error = TunnelError(f"tunnel to {self.namespace}/{self.pod}: {reason}")
        log.debug("tunnel to %s/%s retires: %s", self.namespace, self.pod, reason)
        self._post(functools.partial(self._retired, report))

    def _retired(self, report: bool) -> None:
        if report:
            self._report_dead()
        else:
            self._reported = True
        if self.active <= 0:
            self._die("retired", quiet=True)

    def _die(self, reason: str, *, quiet: bool = False) -> None:
        """Mark the tunnel dead (from any thread); the pump then closes everything."""
        with self._lock:
            if self._state != _OPEN:
                return
            self._state = _DEAD
            self.alive = False
        if not quiet:
            self.last_error = TunnelError(f"tunnel to {self.namespace}/{self.pod}: {reason}")
            log.warning("tunnel to %s/%s died: %s", self.namespace, self.pod, reason)
        self._shutdown_stream()
        self._wake()

    def _shutdown_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.shutdown()

    def _cleanup(self) -> None:
        """Pump thread, on its way out: close every connection, then report death."""
        for conn in list(self._conns.values()) + list(self._v4_conns):
            self._abort(conn, reset=False)
        for conn in list(self._v4_conns):
            if conn.v4 is not None:
                conn.v4.shutdown()
        while self._cmds:  # connections that were queued for the pump
            try:
                self._cmds.popleft()()
            except Exception:
                log.exception("tunnel %s/%s: cleanup step failed", self.namespace, self.pod)
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        with self._lock:
            quiet = self._state in (_CLOSED, _IDLING)
        if not quiet:
            self._report_dead()

    def _report_dead(self) -> None:
        if self._reported:
            return
        self._reported = True
        if self.on_dead is not None:
            try:
                self.on_dead(self)
            except Exception:
                log.exception("on_dead callback failed")

    def _release(self) -> None:
        """Close descriptors once every thread is gone."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                close_quietly(sock)


def _close_local(sock: socket.socket) -> None:
    """Close a local socket, waking any thread blocked sending to it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    close_quietly(sock)


class TunnelPool:
    """One ``PodTunnel`` per (context, namespace, pod), shared by every forward to that pod.

    A tunnel that is no longer alive is replaced on the next ``get``; one that is retiring
    (still carrying connections) is kept until they end. The transport that worked for a
    context is tried first by later tunnels of that context (no refused upgrade per pod).
    """

    def __init__(self, *, transport: str = "auto", ping_interval: float = PING_INTERVAL,
                 idle_timeout: float = IDLE_TIMEOUT,
                 on_dead: Callable[[str, str, str], None] | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        self.transport = transport
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.on_dead = on_dead
        self._lock = threading.Lock()
        self._tunnels: dict[tuple[str, str, str], PodTunnel] = {}
        self._retired: list[tuple[tuple[str, str, str], PodTunnel]] = []
        self._learned: dict[str, str] = {}
        self._closed = False

    def get(self, target: ApiTarget, context: str, namespace: str, pod: str) -> PodTunnel:
        """The live tunnel to this pod (created, not yet opened, when there is none)."""
        key = (context, namespace, pod)
        finished: list[PodTunnel] = []
        with self._lock:
            if self._closed:
                raise TunnelError("tunnel pool is closed")
            tunnel = self._tunnels.get(key)
            if tunnel is not None and tunnel.alive and tunnel.target == target:
                return tunnel
            if tunnel is not None:
                if tunnel.alive:  # the API target changed (new endpoint or credentials)
                    tunnel.retire("replaced", report=False)
                if tunnel.retiring:
                    self._retired.append((key, tunnel))
                else:
                    finished.append(tunnel)
            finished += self._prune()
            tunnel = PodTunnel(target, namespace, pod, transport=self.transport,
                               ping_interval=self.ping_interval,
                               idle_timeout=self.idle_timeout,
                               prefer=self._learned.get(context, ""),
                               on_dead=functools.partial(self._tunnel_died, key))
            tunnel.on_open = functools.partial(self._learn, context)
            self._tunnels[key] = tunnel
        for old in finished:
            old.close()
        return tunnel

    def _prune(self) -> list[PodTunnel]:
        """Retired tunnels whose last connection ended (called with the lock held)."""
        done = [t for _k, t in self._retired if not t.retiring]
        self._retired = [(k, t) for k, t in self._retired if t.retiring]
        return done

    def _tunnel_died(self, key: tuple[str, str, str], _tunnel: PodTunnel) -> None:
        if self.on_dead is not None:
            self.on_dead(*key)

    def _learn(self, context: str, tunnel: PodTunnel) -> None:
        self._learned[context] = tunnel.transport_name

    def drop(self, context: str, namespace: str, pod: str) -> None:
        """The pod is gone: close its tunnels and every connection on them."""
        key = (context, namespace, pod)
        with self._lock:
            tunnels = [t for k, t in self._retired if k == key]
            self._retired = [(k, t) for k, t in self._retired if k != key]
            tunnel = self._tunnels.pop(key, None)
            if tunnel is not None:
                tunnels.append(tunnel)
        for tunnel in tunnels:
            tunnel.close()

    def tunnels(self) -> list[PodTunnel]:
        """The current tunnels (retired ones that finished are released on the way)."""
        with self._lock:
            finished = self._prune()
            current = list(self._tunnels.values())
        for tunnel in finished:
            tunnel.close()
        return current

    def close(self) -> None:
        with self._lock:
            self._closed = True
            tunnels = list(self._tunnels.values()) + [t for _k, t in self._retired]
            self._tunnels.clear()
            self._retired.clear()
        for tunnel in tunnels:
            tunnel.close()
