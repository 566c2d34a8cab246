"""The last-resort transport: one ``v4.channel.k8s.io`` WebSocket per forwarded connection.

Driven by a loop like the SPDY session, no thread of its own. Each message starts with a
channel byte (0 data, 1 error); the first message of each channel only names the port and is
skipped. The protocol has no half-close: a local EOF ends the whole connection.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from kubefwd.tunnel.dial import AnySocket
from kubefwd.tunnel.io import ApiConnection, LocalConn, WsReader
from kubefwd.tunnel.loop import READ, WRITE, Loop, Timer
from kubefwd.tunnel.spdy_client import API_HIGH_WATER, CHUNK, READ_BUFFER, SMALL
from kubefwd.wire import websocket as ws

if TYPE_CHECKING:
    from kubefwd.tunnel.pod import PodTunnel

_READ_ROUNDS = 4


class V4Link:
    """One local connection relayed over its own WebSocket, on ``loop``."""

    def __init__(self, tunnel: PodTunnel, loop: Loop, conn: LocalConn, sock: AnySocket,
                 initial: bytes) -> None:
        self.tunnel = tunnel
        self.loop = loop
        self.conn = conn
        self.api = ApiConnection(sock, initial)
        self.reader = WsReader(self._data, self._control)
        self.error = ""
        self.closed = False
        self._rx = bytearray(SMALL)
        self._tx = bytearray(1 + SMALL)
        self._seen = [False, False]  # the port announcement of each channel came
        self._channel = -1  # of the message being read
        self._skip = False
        self._remote_ended = False
        self._blocked = False  # the local socket holds undelivered bytes
        self._api_full = False
        self._on_api_handler = self._on_api
        self._on_local_handler = self._on_local
        self._last_rx = time.monotonic()
        self._ping_timer: Timer | None = None

    def start(self) -> None:
        prefix = self.conn.prefix
        if prefix:  # what the client sent through a tunnel that refused it
            self.conn.started = True
            try:
                self.api.send(ws.encode_frame(ws.OP_BINARY, b"\0" + prefix, masked=True),
                              owned=True)
            except OSError:
                self._finish()
                return
        self._update()
        self.loop.call_soon(self._read_soon)  # bytes that came with the 101, if any
        if self.tunnel.ping_interval > 0:
            self._ping_timer = self.loop.call_later(self.tunnel.ping_interval,
                                                    self._keepalive)

    def _keepalive(self) -> None:
        """Ping the API server now and then: a quiet connection (an idle psql session)
        is then never idle on the wire, which load balancers and kubelets with an idle
        timeout would cut; no answer for two intervals ends the link."""
        self._ping_timer = None
        if self.closed or self._remote_ended:
            return
        interval = self.tunnel.ping_interval
        now = time.monotonic()
        if self._blocked:
            self._last_rx = now  # we are not reading: the silence is ours
        if now - self._last_rx > 2 * interval:
            self._end(clean=False)
            return
        try:
            self.api.send(ws.encode_frame(ws.OP_PING, b"kubefwd", masked=True), owned=True)
        except OSError:
            self._end(clean=False)
            return
        self._update()
        self._ping_timer = self.loop.call_later(interval, self._keepalive)

    def close(self) -> None:
        """Tear down both sockets (no close frame: the server sees the connection end)."""
        if self.closed:
            return
        self.closed = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self.loop.forget(self.api.sock)
        self.api.close()
        self.loop.forget(self.conn.sock)
        self.conn.close()

    def _end(self, *, clean: bool) -> None:
        """The WebSocket ended: pass on the error text, or close the local side."""
        if self.closed:
            return
        error = self.error.strip()
        if error:
            self.tunnel._forward_error(self.conn.port, error)
        if clean and not error:
            self.conn.remote_done = True
            self._remote_ended = True
            if self.conn.pending:
                self.loop.forget(self.api.sock)
                self.api.close()
                self._update()
                return  # closed once the local socket took the rest
        self._finish()

    def _finish(self) -> None:
        self.close()
        self.tunnel._link_ended(self)

    def _update(self) -> None:
        if self.closed:
            return
        conn = self.conn
        events = 0 if self._api_full else READ
        if conn.pending:
            events |= WRITE
        if self._remote_ended:
            events &= ~READ
        self.loop.set_events(conn.sock, events, self._on_local_handler)
        if not self._remote_ended:
            api_events = 0 if self._blocked else READ
            if self.api.queued:
                api_events |= WRITE
            self.loop.set_events(self.api.sock, api_events, self._on_api_handler)

    # -- local side ------------------------------------------------------------------------

    def _on_local(self, mask: int) -> None:
        conn = self.conn
        if mask & WRITE:
            try:
                flushed = conn.flush()
            except OSError:
                self._finish()
                return
            if flushed:
                if self._remote_ended:
                    self._finish()
                    return
                self._blocked = False
                self._update()
                self.loop.call_soon(self._read_soon)
        if mask & READ and not self.closed:
            self._local_readable()

    def _local_readable(self) -> None:
        buf = self._tx
        view = memoryview(buf)
        try:
            n = self.conn.sock.recv_into(view[1:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = -1
        if n <= 0:
            self._finish()  # no half-close in v4: a local EOF ends the connection
            return
        buf[0] = 0  # the data channel
        try:
            self.api.send(ws.encode_frame(ws.OP_BINARY, view[:1 + n], masked=True), owned=True)
        except OSError:
            self._finish()
            return
        self.tunnel.bytes_out += n
        conn = self.conn
        conn.meter.bytes_out += n
        if conn.sniff is not None and not conn.sniff.client(view[1:1 + n]):
            conn.sniff = None
        if n == len(buf) - 1 and n < CHUNK:
            self._tx = bytearray(1 + CHUNK)
        if self.api.queued:
            self._api_full = self.api.queued > API_HIGH_WATER
            self._update()

    # -- the WebSocket ---------------------------------------------------------------------

    def _read_soon(self) -> None:
        if not self.closed and not self._blocked and not self._remote_ended:
            self._on_api(READ)

    def _on_api(self, mask: int) -> None:
        try:
            if mask & WRITE and self.api.flush():
                self._api_full = False
                self._update()
            if mask & READ:
                self._read()
        except (OSError, ValueError, EOFError, struct.error, ws.WebSocketError):
            self._end(clean=False)

    def _read(self) -> None:
        for _ in range(_READ_ROUNDS):
            if self.closed or self._blocked or self._remote_ended:
                return
            view = memoryview(self._rx)
            got, eof = self.api.fill(view)
            if got:
                self._last_rx = time.monotonic()
                self.reader.feed(view[:got])
                if self.reader.closed:
                    eof = True
                flushed = self._flush()
                if self.closed or (not flushed and not eof):
                    return
                if got == len(view) and len(view) < READ_BUFFER:
                    self._rx = bytearray(READ_BUFFER)
            if eof:
                self._end(clean=True)
                return
            if got < len(view) and not self.api.has_buffered():
                return
        if self.api.has_buffered():
            self.loop.call_soon(self._read_soon)

    def _flush(self) -> bool:
        """Hand what arrived to the local socket; False when it is blocked or gone."""
        if self.closed or not self.conn.pending:
            return not self.closed
        try:
            flushed = self.conn.flush()
        except OSError:
            self._finish()
            return False
        if not flushed:
            self._blocked = True
            self._update()
        return flushed

    def _data(self, piece: memoryview, first: bool) -> None:
        if first:
            self._channel = piece[0] if piece else -1
            piece = piece[1:]
            self._skip = self._channel not in (0, 1) or not self._seen[self._channel]
            if self._channel in (0, 1):
                self._seen[self._channel] = True
        if self._skip or not piece or self.closed:
            return
        if self._channel == 1:
            self.error += piece.tobytes().decode("utf-8", "replace")
            return
        conn = self.conn
        conn.queue(piece)
        self.tunnel.bytes_in += len(piece)
        conn.meter.bytes_in += len(piece)
        if conn.sniff is not None and not conn.sniff.server(piece):
            conn.sniff = None

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == ws.OP_PING:
            try:
                self.api.send(ws.encode_frame(ws.OP_PONG, payload, masked=True), owned=True)
            except OSError:
                return
            self._update()
