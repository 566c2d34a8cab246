"""The client end of a SPDY/3.1 port-forward session, driven by a loop (no threads).

Per forwarded connection an error stream and a data stream, with half-close both ways. The
session reads the API connection into one buffer, parses SPDY frames incrementally (out of
WebSocket binary messages for SPDY-in-WebSocket) and writes DATA payloads straight into the
local sockets; it reads local sockets into DATA frames.

A client that stops reading must not stall the other connections of the session. SPDY/3.1
has per-stream flow control (WINDOW_UPDATE), but the kubelet's SPDY library ignores it, as
does the simulated cluster: the pod's bytes for every stream come on the one API connection
whatever we announce, and the only brake is not reading that connection, which stops every
stream at once (``kubectl port-forward`` does just that, so one stuck client freezes all the
others to the pod). So, per stream:

- what a local socket cannot take is kept for it (copied out of the read buffer, which is
  reused at once) and the session goes on reading for the others;
- past ``STREAM_CAP`` bytes kept for one connection, the session stops reading the API
  connection (memory stays bounded) until that client has taken half of it;
- a connection may hold the session up like that for at most ``STALL_LIMIT`` seconds at a
  time, and for at most ``STALL_SHARE`` of the time in the long run (what it owes decays at
  that rate); past that it is cut (a reset to its client, RST_STREAM to the server) so
  the others flow again. A slow reader keeps its connection as long as it keeps up within
  that budget, and for ever while it is the only connection of the session (it then holds
  nobody up: the pod is simply slowed down, as over a plain TCP connection); one that stopped
  reading loses it rather than freezing everyone else.

Moving the stuck connection to a session of its own is not possible: its bytes are already
on their way through the shared one, and a new session would be a new connection to the pod.
The WebSocket ``v4`` transport (one WebSocket per connection) needs none of this: TCP's own
flow control holds each connection back on its own.

Toward the API server: while it has too much queued, local sockets are not read.

Thousands of sessions may be open and idle at once, so an idle one costs little: its read
and write buffers are dropped while it carries no connection, the header blocks the server
sends are not inflated (nothing in a port-forward reply is used, and skipping them spares
each session zlib's 32 KiB window), ours are written as stored deflate blocks (no zlib state
either), and keepalive pings run only while it carries
connections; an idle session is watched by TCP keepalive in the kernel instead, which wakes
no thread, and a closed one is seen at once by its selector.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any

from kubefwd.tunnel.dial import AnySocket
from kubefwd.tunnel.io import ApiConnection, LocalConn, WsReader, masked_message
from kubefwd.tunnel.loop import READ, WRITE, Loop, Timer
from kubefwd.wire import spdyframes
from kubefwd.wire import websocket as ws

if TYPE_CHECKING:
    from kubefwd.tunnel.pod import PodTunnel

log = logging.getLogger(__name__)

# Buffers start small (an idle tunnel costs little memory) and grow on the first bulk
# transfer: a local read carries up to CHUNK bytes into one DATA frame; the API connection is
# read READ_BUFFER bytes at a time.
SMALL = 16 * 1024
CHUNK = 256 * 1024
READ_BUFFER = 1 << 20
# Bytes queued toward the API server above which local sockets are not read.
API_HIGH_WATER = 1 << 20
# Bytes kept for one connection whose client does not take them, above which the session
# stops reading the API connection (for everyone) until that client has taken half of them.
STREAM_CAP = 4 << 20
# Seconds one connection may keep the session from reading at a time; and the share of the
# time, in the long run, that it may do so (what it owes decays at this rate). Past either,
# the connection is cut so that the others flow again.
STALL_LIMIT = 2.0
STALL_SHARE = 0.1
# Buffer fills per readiness of the API connection before other sockets get a turn.
_READ_ROUNDS = 4
# TCP keepalive of an idle session's API connection: first probe after this many seconds
# of silence, then every _KEEPALIVE_INTERVAL, given up after _KEEPALIVE_COUNT probes.
_KEEPALIVE_IDLE = 30
_KEEPALIVE_INTERVAL = 10
_KEEPALIVE_COUNT = 3

_FIN = spdyframes.FLAG_FIN
_HEADER = struct.Struct(">II")


class HeaderCompressor:
    """Our side's SPDY header blocks as one zlib stream of stored (uncompressed) deflate
    blocks, each ended by a sync flush: byte for byte what zlib writes at level 0, which
    every zlib reader takes, with no compression state at all (zlib's would be 15 KiB a
    session at its smallest useful settings). Our header blocks are a few dozen bytes a
    connection: compressing them saved nothing worth that memory."""

    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started = False

    def compress(self, headers: dict[str, str]) -> bytes:
        return self.wrap(spdyframes.encode_header_block(headers))

    def wrap(self, raw: bytes) -> bytes:
        """``raw`` as the next piece of the stream (the zlib header and the dictionary's
        id first), as ``compress(raw) + flush(Z_SYNC_FLUSH)`` does at level 0."""
        parts: list[bytes | memoryview] = [] if self._started else [_ZLIB_HEADER]
        self._started = True
        view = memoryview(raw)
        for at in range(0, len(raw), _STORED_MAX):
            piece = view[at:at + _STORED_MAX]
            parts += [_STORED.pack(0, len(piece), len(piece) ^ 0xFFFF), piece]
        parts.append(_SYNC_FLUSH)
        return b"".join(parts)


# A zlib stream: deflate with a 32 KiB window at level 0 (0x78 0x3f), a preset dictionary
# (FDICT) named by its Adler-32. Then stored blocks: not final, type 0, byte-aligned, their
# length and its complement; an empty one is the sync-flush mark.
_ZLIB_HEADER = b"\x78\x3f" + zlib.adler32(spdyframes.DICTIONARY).to_bytes(4, "big")
_STORED = struct.Struct("<BHH")
_STORED_MAX = 0xFFFF
_SYNC_FLUSH = _STORED.pack(0, 0, 0xFFFF)


def never_reached(message: str) -> bool:
    """Whether the kubelet's error text says it could not connect to the pod's port at all
    (``dial tcp4 127.0.0.1:8080: connect: connection refused``, or containerd's ``failed to
    connect to localhost:8080 inside namespace``): the pod's process got no byte."""
    return "dial tcp" in message or "failed to connect" in message


class SpdySession:
    """One SPDY session to one pod, living on ``loop``; reports to its ``PodTunnel``."""

    def __init__(self, tunnel: PodTunnel, loop: Loop, sock: AnySocket, initial: bytes, *,
                 websocket: bool, ping_interval: float) -> None:
        self.tunnel = tunnel
        self.loop = loop
        self.api = ApiConnection(sock, initial)
        self.ws = WsReader(self._ws_data, self._ws_control) if websocket else None
        self.ping_interval = ping_interval
        self.closed = False
        self.conns: set[LocalConn] = set()
        self._streams: dict[int, LocalConn] = {}  # error and data stream ids
        self._compress = HeaderCompressor()
        self._next_stream = 1
        self._next_ping = 1
        self._rx = bytearray()  # allocated while there is something to read
        self._tx = bytearray()  # allocated while there are connections
        # Connections holding more than STREAM_CAP undelivered bytes: while there is one, the
        # API connection is not read.
        self._blocked: set[LocalConn] = set()
        # Alone on the session and its client cannot take more: the session waits for it
        # without copying anything (the read buffer is left as it is until it drained).
        self._alone_waiting: LocalConn | None = None
        self._api_full = False
        self._last_rx = time.monotonic()
        self._ping_timer: Timer | None = None
        self._read_soon = False
        self._touched: dict[LocalConn, None] = {}  # connections with data queued this round
        # Frame parser state: a partial header, the DATA payload still to come, or a
        # control frame being gathered.
        self._head = bytearray()
        self._left = 0
        self._data_id = 0
        self._data_fin = False
        self._ctrl: bytearray | None = None
        self._ctrl_left = 0
        self._ctrl_kind = 0

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        _tcp_keepalive(self.api.sock)
        self._update_api()
        self._schedule_read()  # bytes that came with the 101, if any

    def close(self, *, keep_unstarted: bool = False) -> list[LocalConn]:
        """Tear down (loop thread): the API connection and every local socket.

        With ``keep_unstarted`` the connections nothing was relayed for yet are not closed
        but returned (no longer watched), for the tunnel to hand back.
        """
        if self.closed:
            return []
        self.closed = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self.loop.forget(self.api.sock)
        self.api.close()
        kept: list[LocalConn] = []
        for conn in list(self.conns):
            self.loop.forget(conn.sock)
            if keep_unstarted and conn.unstarted:
                kept.append(conn)
            else:
                conn.close()
        self.conns.clear()
        self._streams.clear()
        self._blocked.clear()
        self._touched.clear()
        return kept

    def _lost(self, reason: str) -> None:
        if not self.closed:
            self.tunnel._session_lost(self, reason)

    # -- connections -----------------------------------------------------------------------

    def add(self, conn: LocalConn) -> None:
        """Open the stream pair of a new connection and start relaying it."""
        conn.error_id, conn.data_id = self._next_stream, self._next_stream + 2
        self._next_stream += 4
        self._streams[conn.error_id] = conn
        self._streams[conn.data_id] = conn
        self.conns.add(conn)
        if self._alone_waiting is not None:
            self._share_session()
        if self.ping_interval > 0 and self._ping_timer is None:
            self._last_rx = time.monotonic()  # the silence before was nobody's concern
            self._ping_timer = self.loop.call_later(self.ping_interval, self._keepalive)
        headers = {"streamtype": "error", "port": str(conn.port), "requestid": str(conn.rid)}
        frames = [self._syn_stream(conn.error_id, headers),
                  _HEADER.pack(conn.error_id, _FIN << 24)]
        headers["streamtype"] = "data"
        frames.append(self._syn_stream(conn.data_id, headers))
        if conn.prefix:  # what the client sent through a tunnel that refused it
            conn.started = True
            frames += [_HEADER.pack(conn.data_id, len(conn.prefix)), conn.prefix]
        self._send(b"".join(frames), owned=True)
        self._update_local(conn)

    def _syn_stream(self, stream_id: int, headers: dict[str, str]) -> bytes:
        return spdyframes.syn_stream_frame(stream_id, self._compress.compress(headers))

    def _update_local(self, conn: LocalConn) -> None:
        if conn.closed:
            return
        events = 0 if conn.local_done or self._api_full else READ
        if conn.pending:
            events |= WRITE
        if conn.handler is None:
            conn.handler = functools.partial(self._on_local, conn)
        self.loop.set_events(conn.sock, events, conn.handler)

    def _forget(self, conn: LocalConn) -> None:
        conn.closed = True
        self.loop.forget(conn.sock)
        self.conns.discard(conn)
        self._streams.pop(conn.data_id, None)
        self._streams.pop(conn.error_id, None)
        self._touched.pop(conn, None)
        if self._alone_waiting is conn:
            self._alone_waiting = None
        if conn in self._blocked:
            self._blocked.discard(conn)
            if not self._blocked:
                self._unblocked()
        if not self.conns:
            self._release_buffers()
            if self._ping_timer is not None:  # idle: TCP keepalive watches it; ``add`` re-arms
                self._ping_timer.cancel()
                self._ping_timer = None

    def _release_buffers(self) -> None:
        """No connection left: shrink the buffers a bulk transfer grew (an idle tunnel
        costs little memory); nothing points into them any more."""
        self._rx = bytearray()
        self._tx = bytearray()

    def finish(self, conn: LocalConn) -> None:
        """Both directions ended: close the local socket."""
        if conn.closed:
            return
        self._forget(conn)
        conn.close()
        self.tunnel._conn_ended()

    def abort(self, conn: LocalConn, *, reset: bool) -> None:
        """Cut a connection now; with ``reset`` tell the server to drop its streams."""
        if conn.closed:
            return
        self._forget(conn)
        conn.close()
        if reset and not self.closed:
            self._send(spdyframes.rst_stream_frame(conn.data_id, spdyframes.CANCEL)
                       + spdyframes.rst_stream_frame(conn.error_id, spdyframes.CANCEL), owned=True)
        self.tunnel._conn_ended()

    def _on_local(self, conn: LocalConn, mask: int) -> None:
        if mask & WRITE:
            try:
                flushed = conn.flush()
            except OSError:
                self.abort(conn, reset=True)
                return
            if conn is self._alone_waiting:
                if flushed:
                    self._alone_waiting = None
                    self._blocked.discard(conn)
                    if not self._blocked:
                        self._unblocked()
            elif conn in self._blocked and conn.queued <= STREAM_CAP // 2:
                self._unstall(conn)
            if flushed:
                if conn.remote_done:
                    self._remote_ended(conn)
                if conn.closed:
                    return
                self._update_local(conn)
        if mask & READ and not conn.closed:
            self._local_readable(conn)

    def _local_readable(self, conn: LocalConn) -> None:
        if not self._tx:
            self._tx = bytearray(8 + SMALL)
        buf = self._tx
        view = memoryview(buf)
        try:
            n = conn.sock.recv_into(view[8:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = -1
        if n >= 0:
            conn.started = True
        if n > 0:
            # The header goes in front of the payload in the same buffer: one write, no copy.
            _HEADER.pack_into(buf, 0, conn.data_id, n)
            if conn.replay is not None:
                conn.keep_for_replay(view[8:8 + n])
            self._send(view[:8 + n], owned=False)
            self.tunnel.bytes_out += n
            conn.meter.bytes_out += n
            if conn.sniff is not None and not conn.sniff.client(view[8:8 + n]):
                conn.sniff = None
            if n == len(buf) - 8 and n < CHUNK:
                self._tx = bytearray(8 + CHUNK)  # a bulk upload: bigger frames
        elif n == 0:
            conn.local_done = True
            self._send(_HEADER.pack(conn.data_id, _FIN << 24), owned=True)
            if conn.remote_done and not conn.pending:
                self.finish(conn)
            else:
                self._update_local(conn)
        else:
            self.abort(conn, reset=True)

    # -- the API connection ----------------------------------------------------------------

    def _send(self, data: Any, *, owned: bool) -> None:
        if self.closed:
            return
        if self.ws is not None:
            data = masked_message(data)
            owned = True
        try:
            self.api.send(data, owned=owned)
        except OSError as e:
            self._lost(f"connection to the API server lost ({e})")
            return
        if self.api.queued:
            self._update_api()
            if self.api.queued > API_HIGH_WATER and not self._api_full:
                self._api_full = True
                for conn in list(self.conns):
                    self._update_local(conn)

    def _update_api(self) -> None:
        if self.closed:
            return
        events = 0 if self._blocked else READ
        if self.api.queued:
            events |= WRITE
        self.loop.set_events(self.api.sock, events, self._on_api)

    def _unblocked(self) -> None:
        """Every local socket took its bytes: read the API connection again."""
        self._update_api()
        self._schedule_read()

    def _schedule_read(self) -> None:
        if not self._read_soon and not self.closed:
            self._read_soon = True
            self.loop.call_soon(self._read_now)

    def _read_now(self) -> None:
        self._read_soon = False
        if not self.closed and not self._blocked:
            self._on_api(READ)

    def _on_api(self, mask: int) -> None:
        try:
            if mask & WRITE and self.api.flush():
                self._update_api()
                if self._api_full:
                    self._api_full = False
                    for conn in list(self.conns):
                        self._update_local(conn)
            if mask & READ:
                self._read_api()
        except (OSError, ValueError, EOFError, struct.error, zlib.error,
                spdyframes.SpdyError, ws.WebSocketError) as e:
            self._lost(f"connection to the API server lost ({e})")

    def _read_api(self) -> None:
        if not self._rx:
            self._rx = bytearray(SMALL)
        try:
            self._read_rounds()
        finally:
            if not self.conns:
                self._release_buffers()

    def _read_rounds(self) -> None:
        for _ in range(_READ_ROUNDS):
            if self.closed or self._blocked:
                return
            if not self._rx:  # released by a connection that ended in the last round
                self._rx = bytearray(SMALL)
            buf = self._rx
            view = memoryview(buf)
            got, eof = self.api.fill(view)
            if got:
                self._last_rx = time.monotonic()
                if self.ws is not None:
                    self.ws.feed(view[:got])
                    if self.ws.closed:
                        eof = True
                else:
                    self._feed(view[:got])
                self._flush_touched()
                if got == len(buf) and len(buf) < READ_BUFFER:
                    self._rx = bytearray(READ_BUFFER)  # bulk data: read more at a time
            if eof:
                self._lost("the API server closed the connection")
                return
            if got < len(buf) and not self.api.has_buffered():
                return  # drained: the selector says when there is more
        if self.api.has_buffered():
            self._schedule_read()  # TLS records the selector cannot see

    def _ws_data(self, piece: memoryview, _first: bool) -> None:
        self._feed(piece)

    def _ws_control(self, opcode: int, payload: bytes) -> None:
        if opcode == ws.OP_PING:
            self._send_ws(ws.OP_PONG, payload)
        elif opcode == ws.OP_CLOSE:
            self._send_ws(ws.OP_CLOSE, ws.close_payload(ws.CLOSE_NORMAL))

    def _send_ws(self, opcode: int, payload: bytes) -> None:
        try:
            self.api.send(ws.encode_frame(opcode, payload, masked=True), owned=True)
        except OSError:
            pass
        self._update_api()

    # -- SPDY frames from the server -------------------------------------------------------

    def _feed(self, data: memoryview) -> None:
        pos, n = 0, len(data)
        streams = self._streams
        while pos < n and not self.closed:
            if self._left:  # inside a DATA payload
                take = min(self._left, n - pos)
                conn = streams.get(self._data_id)
                if conn is not None:
                    self._deliver(conn, data[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._end_data()
                continue
            if self._ctrl is not None:  # gathering a control frame
                take = min(self._ctrl_left, n - pos)
                self._ctrl += data[pos:pos + take]
                pos += take
                self._ctrl_left -= take
                if not self._ctrl_left:
                    self._end_control()
                continue
            if not self._head and n - pos >= 8:
                word, length = _HEADER.unpack_from(data, pos)
                pos += 8
            else:
                take = min(8 - len(self._head), n - pos)
                self._head += data[pos:pos + take]
                pos += take
                if len(self._head) < 8:
                    continue
                word, length = _HEADER.unpack_from(self._head)
                self._head.clear()
            flags = length >> 24
            length &= 0xFFFFFF
            if word & 0x80000000:
                if length > spdyframes.MAX_CONTROL_LENGTH:
                    raise spdyframes.SpdyError(f"control frame too large ({length} bytes)")
                self._ctrl = bytearray()
                self._ctrl_left = length
                self._ctrl_kind = word & 0xFFFF
                if not length:
                    self._end_control()
            else:
                self._data_id = word
                self._data_fin = bool(flags & _FIN)
                self._left = length
                if not length:
                    self._end_data()

    def _deliver(self, conn: LocalConn, data: memoryview) -> None:
        """Queue a DATA payload for its local socket; sent when the read round ends."""
        if self._data_id == conn.error_id:
            conn.error += data.tobytes()
            return
        conn.started = True
        conn.replay = None  # the pod answered: this connection is its for good
        self._touched[conn] = None
        conn.queue(data)
        self.tunnel.bytes_in += len(data)
        conn.meter.bytes_in += len(data)
        if conn.sniff is not None and not conn.sniff.server(data):
            conn.sniff = None

    def _flush_touched(self) -> None:
        """End of a read round: hand what arrived to the local sockets, a few big writes
        rather than one per frame. What a socket cannot take is copied out of the read
        buffer and kept for it; past STREAM_CAP the session stops reading."""
        touched, self._touched = self._touched, {}
        for conn in touched:
            if conn.closed:
                continue
            try:
                flushed = conn.flush()
            except OSError:
                self.abort(conn, reset=True)
                continue
            if flushed:
                if conn.remote_done:
                    self._remote_ended(conn)
                continue
            if len(self.conns) == 1 and not self._blocked:
                # Alone, it holds nobody up: wait for its client without copying, as a
                # plain TCP connection would (the bulk of a download goes this way).
                self._alone_waiting = conn
                self._blocked.add(conn)
                self._update_api()
                self._update_local(conn)
                continue
            conn.keep()  # the read buffer is about to be reused
            self._update_local(conn)
            if conn.queued > STREAM_CAP and conn not in self._blocked:
                self._stall(conn)

    # -- a client that does not read ---------------------------------------------------------

    def _share_session(self) -> None:
        """A connection joins a session that waits for a lone slow client: that client's
        bytes are copied out of the read buffer and it is held to the per-stream rules."""
        conn, self._alone_waiting = self._alone_waiting, None
        if conn is None:
            return
        conn.keep()
        self._blocked.discard(conn)
        if conn.queued > STREAM_CAP:
            self._stall(conn)
        elif not self._blocked:
            self._unblocked()

    def _stall(self, conn: LocalConn) -> None:
        """``conn`` holds too much: stop reading the API connection for a bounded time."""
        now = time.monotonic()
        if conn.unstalled:
            conn.stall_debt = max(0.0, conn.stall_debt - (now - conn.unstalled) * STALL_SHARE)
        allowed = STALL_LIMIT - conn.stall_debt
        if allowed <= 0:
            if len(self.conns) > 1:
                self._cut(conn, now)
                return
            allowed = STALL_LIMIT
        conn.stalled = now
        self._blocked.add(conn)
        if len(self._blocked) == 1:
            self._update_api()
        self.loop.call_later(allowed, functools.partial(self._stall_expired, conn, now))

    def _unstall(self, conn: LocalConn) -> None:
        """``conn``'s client took enough: read the API connection again."""
        now = time.monotonic()
        if len(self.conns) > 1:  # alone, it held nobody up
            conn.stall_debt += now - conn.stalled
        conn.stalled = 0.0
        conn.unstalled = now
        self._blocked.discard(conn)
        if not self._blocked:
            self._unblocked()

    def _stall_expired(self, conn: LocalConn, since: float) -> None:
        if conn.closed or conn.stalled != since or conn not in self._blocked:
            return
        if len(self.conns) == 1:
            # Alone on the session it holds nobody up: wait for its client as long as it
            # takes, as TCP would (checking again in case others come).
            conn.stalled = now = time.monotonic()
            self.loop.call_later(STALL_LIMIT, functools.partial(self._stall_expired, conn, now))
            return
        self._cut(conn, time.monotonic())

    def _cut(self, conn: LocalConn, now: float) -> None:
        owed = conn.stall_debt + (now - conn.stalled if conn.stalled else 0.0)
        log.warning("tunnel to %s port %d: a client stopped reading (%d bytes waiting for "
                    "it, the others held up %.1fs); cut it so the other connections flow",
                    self.tunnel.label, conn.port, conn.queued, owed)
        self.abort(conn, reset=True)

    def _end_data(self) -> None:
        if not self._data_fin:
            return
        stream_id = self._data_id
        conn = self._streams.get(stream_id)
        if conn is None:
            return
        if stream_id == conn.error_id:
            self._streams.pop(stream_id, None)
            if conn.error:
                self._stream_error(conn)
            return
        if conn.error:  # the kubelet writes its error before it closes the streams
            self._stream_error(conn)
            return
        conn.remote_done = True
        if not conn.pending:
            self._remote_ended(conn)

    def _remote_ended(self, conn: LocalConn) -> None:
        """The pod's side is done and delivered: pass the EOF on; close if both are."""
        if conn.closed:
            return
        if conn.local_done:
            self.finish(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _stream_error(self, conn: LocalConn) -> None:
        """The server could not forward this connection: stop opening new streams on this
        session, and drop the connection (as kubectl does) or, if nothing of it was relayed
        either way, hand it back to be routed again."""
        message = conn.error.decode("utf-8", "replace").strip()
        conn.error = b""
        if conn.unstarted or (conn.replay is not None and not conn.local_done
                              and never_reached(message)):
            # Nothing reached the pod's process (the kubelet could not even connect to it),
            # so nothing is lost by sending what the client sent so far somewhere else.
            self.tunnel._forward_error(conn.port, message, report_now=True)
            self._forget(conn)
            conn.release(bytes(conn.replay or b""))
            self.tunnel._conn_ended()
            return
        self.abort(conn, reset=False)
        self.tunnel._forward_error(conn.port, message)

    def _end_control(self) -> None:
        frame = bytes(self._ctrl or b"")
        self._ctrl = None
        kind = self._ctrl_kind
        if kind == spdyframes.PING:
            (ping_id,) = struct.unpack_from(">I", frame)
            if not ping_id & 1:  # the server's ping: echo it
                self._send(spdyframes.control_frame(spdyframes.PING, 0, frame[:4]), owned=True)
        elif kind == spdyframes.RST_STREAM:
            stream_id, _status = struct.unpack_from(">II", frame)
            conn = self._streams.get(stream_id)
            if conn is not None:
                self.abort(conn, reset=False)
        elif kind == spdyframes.SYN_STREAM:
            (stream_id,) = struct.unpack_from(">I", frame)
            self._send(spdyframes.rst_stream_frame(stream_id, spdyframes.REFUSED_STREAM),
                       owned=True)
        elif kind == spdyframes.GOAWAY:
            self.tunnel.retire("the API server sent GOAWAY")

    # -- keepalive -------------------------------------------------------------------------

    def _keepalive(self) -> None:
        self._ping_timer = None
        if self.closed or not self.conns:
            return  # idle: TCP keepalive watches the connection; ``add`` re-arms
        now = time.monotonic()
        if self._blocked:
            self._last_rx = now  # we are not reading: the silence is ours
        silent = now - self._last_rx
        if silent > 2 * self.ping_interval:
            self._lost(f"no answer to keepalive pings for {silent:.0f}s")
            return
        ping_id = self._next_ping
        self._next_ping += 2
        self._send(spdyframes.ping_frame(ping_id), owned=True)
        self._ping_timer = self.loop.call_later(self.ping_interval, self._keepalive)


def _tcp_keepalive(sock: AnySocket) -> None:
    """Let the kernel probe an idle API connection (no thread wakes for it)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", _KEEPALIVE_IDLE),
                            ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL),
                            ("TCP_KEEPCNT", _KEEPALIVE_COUNT)):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass
