"""SPDY/3.1 sessions as Kubernetes port-forwarding uses them: streams over one connection.

A ``SpdySession`` runs over any byte transport with ``recv_into``/``sendall`` (a plain or
TLS socket, or ``WebSocketByteStream`` for SPDY inside a WebSocket). One reader thread per
session parses frames and calls per-stream callbacks; writes from any thread are serialized
by one lock. Like spdystream (the Go implementation kubelet and kubectl use) there is no
flow control: SETTINGS and WINDOW_UPDATE are ignored and never sent.

This module owns the session and its streams; the byte formats are in ``spdyframes``.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kubefwd.sim.buffers import read_buffer as _read_buffer
from kubefwd.wire.spdyframes import (
    CANCEL,
    FLAG_FIN,
    GOAWAY,
    GOAWAY_PROTOCOL_ERROR,
    HEADERS,
    INTERNAL_ERROR,
    MAX_CONTROL_LENGTH,
    MAX_DATA_LENGTH,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SESSION_CLOSED,
    SYN_REPLY,
    SYN_STREAM,
    VERSION,
    Buffer,
    HeaderCompressor,
    HeaderDecompressor,
    SpdyError,
    data_frame_header,
    goaway_frame,
    ping_frame,
    rst_stream_frame,
    syn_reply_frame,
    syn_stream_frame,
)

log = logging.getLogger(__name__)

# --- transport -----------------------------------------------------------------------------


class Transport(Protocol):
    """What a session needs from its byte transport (a socket satisfies it)."""

    def recv_into(self, buffer: Any, nbytes: int = ...) -> int: ...

    def sendall(self, data: Any) -> Any: ...

    def close(self) -> None: ...


def ensure_blocking(transport: Any) -> None:
    """Put the socket under ``transport`` in blocking mode (no timeout).

    A TLS socket with a timeout runs non-blocking inside; a read in one thread and a write in
    another then share OpenSSL's per-connection error state, and the reader can see a false
    EOF. A session always reads and writes from different threads, so it must block.
    """
    raw = transport if isinstance(transport, socket.socket) else getattr(transport, "sock", None)
    if isinstance(raw, socket.socket) and raw.gettimeout() is not None:
        raw.settimeout(None)


def shutdown_transport(transport: Any) -> None:
    """Wake every thread blocked on ``transport`` without closing its descriptor.

    For sockets this is the raw ``shutdown``: ``SSLSocket.shutdown`` drops the TLS state
    under the feet of other threads, which is not safe.
    """
    try:
        if isinstance(transport, socket.socket):
            socket.socket.shutdown(transport, socket.SHUT_RDWR)
        elif hasattr(transport, "shutdown"):
            transport.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


# --- streams and the session ---------------------------------------------------------------

DataCallback = Callable[[memoryview], None]
FinCallback = Callable[[], None]
ResetCallback = Callable[[int], None]


class SpdyStream:
    """One SPDY stream. Callbacks run on the session's reader thread.

    ``on_data(view)``: bytes received; ``view`` is only valid during the call (copy or
    ``sendall`` it at once). ``on_fin()``: the peer half-closed (sends nothing more).
    ``on_reset(code)``: the stream was reset by the peer, or the session ended
    (``SESSION_CLOSED``) before the stream finished; no callback follows it. A callback that
    raises gets the stream reset with CANCEL (and its ``on_reset`` called).
    """

    def __init__(
        self,
        session: SpdySession,
        stream_id: int,
        headers: dict[str, str],
        *,
        on_data: DataCallback | None = None,
        on_fin: FinCallback | None = None,
        on_reset: ResetCallback | None = None,
    ) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers  # SYN_STREAM headers (accepted) or SYN_REPLY headers (opened)
        self.on_data = on_data
        self.on_fin = on_fin
        self.on_reset = on_reset
        self.replied = threading.Event()  # reply sent (accepted) / received or reset (opened)
        self.local_closed = False
        self.remote_closed = False
        self.reset_code: int | None = None

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} {self.headers.get('streamtype', '')}>"

    @property
    def finished(self) -> bool:
        return self.reset_code is not None or (self.local_closed and self.remote_closed)

    def reply(self, headers: Mapping[str, str] | None = None, *, fin: bool = False) -> None:
        """Accept a stream the peer opened (SYN_REPLY)."""
        self.session._send_reply(self, headers or {}, fin)

    def wait_reply(self, timeout: float | None = None) -> bool:
        """Wait for the peer's SYN_REPLY; False on timeout. Check ``reset_code`` after."""
        return self.replied.wait(timeout)

    def send(self, data: Buffer, *, fin: bool = False) -> None:
        """Send bytes (split into DATA frames); raises OSError if the stream/session is gone.

        Any thread may call it, but one stream should have one writer at a time so that
        its bytes stay in order. It blocks while the transport does (no flow control).
        """
        self.session._send_data(self, data, fin)

    def close(self) -> None:
        """Half-close: send FIN. Harmless when already closed or reset."""
        if self.local_closed or self.reset_code is not None:
            return
        try:
            self.session._send_data(self, b"", True)
        except OSError:
            pass

    def reset(self, status: int = CANCEL) -> None:
        """Abort the stream (RST_STREAM); no callbacks follow."""
        self.session._reset_stream(self, status, notify=False)


class _Ping:
    """One outstanding PING: when it was sent, and its round trip once answered."""

    def __init__(self) -> None:
        self.sent = time.monotonic()
        self.rtt: float | None = None
        self.answered = threading.Event()


class SpdySession:
    """A SPDY/3.1 connection, client or server end, over one transport.

    Client: ``open_stream(headers, on_data=…, on_fin=…, on_reset=…)`` then
    ``stream.wait_reply(t)``. Server: ``on_stream(stream)`` is called (on the reader thread)
    for every SYN_STREAM; it sets the stream's callbacks and calls ``stream.reply()`` or
    ``stream.reset()``. Pings from the peer are answered; ``ping()`` measures the RTT.
    ``on_close(session, error)`` is called once, on the reader thread, when the session ends
    (``error`` None for a clean EOF or a local ``close()``).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        server: bool,
        on_stream: Callable[[SpdyStream], None] | None = None,
        on_close: Callable[[SpdySession, BaseException | None], None] | None = None,
        initial: bytes = b"",
        name: str = "spdy",
        max_frame: int = 1 << 20,
        read_buffer: int = 1 << 20,
    ) -> None:
        ensure_blocking(transport)
        self.transport = transport
        self.server = server
        self.on_stream = on_stream
        self.on_close = on_close
        self.name = name
        self.max_frame = min(max_frame, MAX_DATA_LENGTH)
        self.rtt: float | None = None  # last measured ping round trip, seconds
        self.goaway_received = False
        self.error: BaseException | None = None
        self.closed = threading.Event()  # set once the session has ended and on_close ran
        self._ended = False  # no more writes: the transport is (being) closed
        self._closing = False
        self._write_failed: OSError | None = None  # the first write the transport refused
        self._lock = threading.Lock()  # streams, ids, pings
        self._wlock = threading.Lock()  # the transport's write side and the compressor
        self._streams: dict[int, SpdyStream] = {}
        self._next_id = 2 if server else 1
        self._last_peer_id = 0
        self._next_ping = 2 if server else 1
        self._pings: dict[int, _Ping] = {}
        self._deflate = HeaderCompressor()
        self._inflate = HeaderDecompressor()
        self._rbuf = _read_buffer(max(read_buffer, 64 * 1024, len(initial)))
        self._rbuf[: len(initial)] = initial
        self._initial_len = len(initial)
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> SpdySession:
        """Start the reader thread; returns self."""
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-reader", daemon=True)
        self._thread.start()
        return self

    def serve(self) -> None:
        """Run the reader loop in the calling thread until the session ends."""
        self._thread = threading.current_thread()
        self._run()

    def close(self, timeout: float = 5.0) -> None:
        """End the session: wake the reader, close the transport, join the reader thread."""
        self._closing = True
        self._shutdown_transport()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        elif thread is None:
            self._finish(None)

    @property
    def active_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    # -- client side --

    def open_stream(
        self,
        headers: Mapping[str, str],
        *,
        on_data: DataCallback | None = None,
        on_fin: FinCallback | None = None,
        on_reset: ResetCallback | None = None,
        fin: bool = False,
    ) -> SpdyStream:
        """Send SYN_STREAM with ``headers``; returns at once (see ``wait_reply``)."""
        if self._ended or self._closing:
            raise ConnectionError("SPDY session is closed")
        if self.goaway_received:
            raise ConnectionError("SPDY peer sent GOAWAY")
        with self._wlock:
            with self._lock:
                stream_id = self._next_id
                self._next_id += 2
                if stream_id > 0x7FFFFFFF:
                    raise ConnectionError("SPDY stream ids exhausted")
                stream = SpdyStream(self, stream_id, {}, on_data=on_data, on_fin=on_fin,
                                    on_reset=on_reset)
                stream.local_closed = fin
                self._streams[stream_id] = stream
            block = self._deflate.compress(headers)
            self._sendall(syn_stream_frame(stream_id, block, fin=fin))
        return stream

    # -- pings --

    def send_ping(self) -> int:
        """Send a PING and return its id (its answer updates ``rtt``)."""
        with self._lock:
            ping_id = self._next_ping
            self._next_ping = ping_id + 2 if ping_id < 0x7FFFFFF0 else (2 if self.server else 1)
            self._pings[ping_id] = _Ping()
        self._write(ping_frame(ping_id))
        return ping_id

    def ping(self, timeout: float = 10.0) -> float:
        """Round trip of one PING, in seconds; raises TimeoutError or ConnectionError."""
        ping_id = self.send_ping()
        with self._lock:
            entry = self._pings.get(ping_id)
        try:
            if entry is None:
                raise ConnectionError("SPDY session is closed")
            if not entry.answered.wait(timeout):
                raise TimeoutError(f"no answer to SPDY ping within {timeout:g}s")
            if entry.rtt is None:
                raise ConnectionError("SPDY session is closed")
            return entry.rtt
        finally:
            with self._lock:
                self._pings.pop(ping_id, None)

    # -- writing --

    def _sendall(self, data: Buffer) -> None:
        try:
            self.transport.sendall(data)
        except OSError as e:
            self._write_failed = e
            raise
        except Exception as e:  # SSL errors after a shutdown, WebSocket errors
            self._write_failed = ConnectionError(str(e))
            raise self._write_failed from e

    def _write(self, frame: bytes) -> None:
        if self._ended:
            raise ConnectionError("SPDY session is closed")
        with self._wlock:
            self._sendall(frame)

    def _send_reply(self, stream: SpdyStream, headers: Mapping[str, str], fin: bool) -> None:
        with self._wlock:
            block = self._deflate.compress(headers)
            self._sendall(syn_reply_frame(stream.id, block, fin=fin))
        stream.replied.set()
        if fin:
            stream.local_closed = True
            self._maybe_forget(stream)

    def _send_data(self, stream: SpdyStream, data: Buffer, fin: bool) -> None:
        if stream.reset_code is not None:
            raise ConnectionResetError(f"SPDY stream {stream.id} was reset")
        if stream.local_closed:
            raise BrokenPipeError(f"SPDY stream {stream.id} is half-closed")
        if self._ended:
            raise ConnectionError("SPDY session is closed")
        view = memoryview(data)
        total = len(view)
        step = self.max_frame
        pos = 0
        while True:
            chunk = view[pos : pos + step]
            last = pos + len(chunk) >= total
            frame = b"".join((data_frame_header(stream.id, len(chunk), fin=fin and last), chunk))
            with self._wlock:
                self._sendall(frame)
            pos += len(chunk)
            if last:
                break
        if fin:
            stream.local_closed = True
            self._maybe_forget(stream)

    def _reset_stream(self, stream: SpdyStream, status: int, *, notify: bool) -> None:
        if stream.reset_code is not None:
            return
        stream.reset_code = status
        stream.replied.set()
        with self._lock:
            self._streams.pop(stream.id, None)
        if not stream.local_closed or not stream.remote_closed:
            try:
                self._write(rst_stream_frame(stream.id, status))
            except OSError:
                pass
        if notify:
            self._notify_reset(stream, status)

    def _maybe_forget(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            with self._lock:
                self._streams.pop(stream.id, None)

    def _shutdown_transport(self) -> None:
        shutdown_transport(self.transport)

    # -- reading --

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._read_loop()
        except SpdyError as e:
            error = e
            log.debug("%s: protocol error: %s", self.name, e)
            try:
                self._write(goaway_frame(self._last_peer_id, GOAWAY_PROTOCOL_ERROR))
            except OSError:
                pass
        except (OSError, EOFError, ValueError) as e:
            if not self._closing:
                error = e if isinstance(e, OSError) else ConnectionError(str(e) or "EOF")
        except Exception as e:  # keep the process alive; report through on_close
            log.exception("%s: reader failed", self.name)
            error = e
        finally:
            self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self.error = error
        self._shutdown_transport()
        with self._wlock:
            try:
                self.transport.close()
            except Exception:  # closing a broken transport may fail in many ways
                pass
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
            pings = list(self._pings.values())
        for entry in pings:
            entry.answered.set()
        for stream in streams:
            if stream.reset_code is None:
                stream.reset_code = SESSION_CLOSED
                stream.replied.set()
                self._notify_reset(stream, SESSION_CLOSED)
        if self.on_close is not None:
            try:
                self.on_close(self, error)
            except Exception:
                log.exception("%s: on_close failed", self.name)
        self.closed.set()

    def _notify_reset(self, stream: SpdyStream, status: int) -> None:
        callback = stream.on_reset
        if callback is not None:
            try:
                callback(status)
            except Exception:
                log.exception("%s: on_reset of stream %d failed", self.name, stream.id)

    def _read_loop(self) -> None:
        buf = self._rbuf
        mv = memoryview(buf)
        cap = len(buf)
        coalesce = min(256 * 1024, cap // 2)
        recv_into = self.transport.recv_into
        start, end = 0, self._initial_len
        while True:
            # Frame header: 8 bytes.
            while end - start < 8:
                if cap - end < 65536:
                    buf[: end - start] = buf[start:end]
                    start, end = 0, end - start
                n = recv_into(mv[end:])
                if not n:
                    if end == start:
                        return
                    raise EOFError("connection closed inside a SPDY frame header")
                end += n
            b0 = buf[start]
            word = int.from_bytes(mv[start + 4 : start + 8], "big")
            flags, length = word >> 24, word & 0xFFFFFF
            if b0 & 0x80:
                version = ((b0 & 0x7F) << 8) | buf[start + 1]
                frame_type = (buf[start + 2] << 8) | buf[start + 3]
                start += 8
                if version != VERSION:
                    raise SpdyError(f"unsupported SPDY version {version}")
                if length > MAX_CONTROL_LENGTH:
                    raise SpdyError(f"control frame too large ({length} bytes)")
                if length <= cap:
                    while end - start < length:
                        if cap - start < length or cap - end < 65536:
                            buf[: end - start] = buf[start:end]
                            start, end = 0, end - start
                        n = recv_into(mv[end:])
                        if not n:
                            raise EOFError("connection closed inside a SPDY control frame")
                        end += n
                    payload = bytes(mv[start : start + length])
                    start += length
                else:  # only with a small read buffer
                    big = bytearray(length)
                    have = end - start
                    big[:have] = buf[start:end]
                    start = end = 0
                    bview = memoryview(big)
                    while have < length:
                        n = recv_into(bview[have:])
                        if not n:
                            raise EOFError("connection closed inside a SPDY control frame")
                        have += n
                    payload = bytes(big)
                self._on_control(frame_type, flags, payload)
                continue
            # DATA frame: deliver as it arrives, coalescing small reads (TLS records).
            stream_id = int.from_bytes(mv[start : start + 4], "big") & 0x7FFFFFFF
            start += 8
            if stream_id == 0:
                raise SpdyError("DATA frame on stream 0")
            stream = self._streams.get(stream_id)
            remaining = length
            while remaining:
                have = end - start
                if have < remaining and have < coalesce:
                    if cap - end < 65536 or have == 0:
                        buf[:have] = buf[start:end]
                        start, end = 0, have
                    n = recv_into(mv[end:])
                    if not n:
                        raise EOFError("connection closed inside a SPDY DATA frame")
                    end += n
                    continue
                chunk = min(have, remaining)
                if stream is not None and stream.reset_code is None:
                    on_data = stream.on_data
                    if on_data is not None:
                        try:
                            on_data(mv[start : start + chunk])
                        except Exception as e:
                            log.debug("%s: stream %d data handler: %s", self.name, stream_id, e)
                            self._reset_stream(stream, CANCEL, notify=True)
                start += chunk
                remaining -= chunk
            if flags & FLAG_FIN and stream is not None:
                self._remote_fin(stream)

    def _remote_fin(self, stream: SpdyStream) -> None:
        if stream.remote_closed or stream.reset_code is not None:
            return
        stream.remote_closed = True
        self._maybe_forget(stream)
        callback = stream.on_fin
        if callback is not None:
            try:
                callback()
            except Exception as e:
                log.debug("%s: stream %d fin handler: %s", self.name, stream.id, e)
                self._reset_stream(stream, CANCEL, notify=True)

    def _on_control(self, frame_type: int, flags: int, payload: bytes) -> None:
        if frame_type == SYN_STREAM:
            self._on_syn_stream(flags, payload)
        elif frame_type == SYN_REPLY:
            if len(payload) < 4:
                raise SpdyError("short SYN_REPLY")
            stream_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            headers = self._inflate.decompress(payload[4:])
            stream = self._streams.get(stream_id)
            if stream is None or stream.replied.is_set():
                return
            stream.headers = headers
            stream.replied.set()
            if flags & FLAG_FIN:
                self._remote_fin(stream)
        elif frame_type == RST_STREAM:
            if len(payload) != 8:
                raise SpdyError("RST_STREAM with a bad length")
            stream_id, status = struct.unpack("!II", payload)
            stream = self._streams.get(stream_id & 0x7FFFFFFF)
            if stream is not None and stream.reset_code is None:
                stream.reset_code = status or CANCEL
                stream.replied.set()
                with self._lock:
                    self._streams.pop(stream.id, None)
                self._notify_reset(stream, stream.reset_code)
        elif frame_type == PING:
            if len(payload) != 4:
                raise SpdyError("PING with a bad length")
            (ping_id,) = struct.unpack("!I", payload)
            if (ping_id & 1) != (self._next_ping & 1):
                try:
                    self._write(ping_frame(ping_id))
                except OSError:
                    pass
                return
            with self._lock:
                entry = self._pings.get(ping_id)
            if entry is not None:
                entry.rtt = self.rtt = time.monotonic() - entry.sent
                entry.answered.set()
        elif frame_type == GOAWAY:
            self.goaway_received = True
        elif frame_type == HEADERS:
            if len(payload) < 4:
                raise SpdyError("short HEADERS")
            stream_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self._inflate.decompress(payload[4:])  # keeps the shared context in step
            stream = self._streams.get(stream_id)
            if stream is not None and flags & FLAG_FIN:
                self._remote_fin(stream)
        # SETTINGS, WINDOW_UPDATE and unknown types are ignored, as spdystream does.

    def _on_syn_stream(self, flags: int, payload: bytes) -> None:
        if len(payload) < 10:
            raise SpdyError("short SYN_STREAM")
        stream_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        headers = self._inflate.decompress(payload[10:])
        expected_parity = 0 if self.server else 1  # the peer's ids: odd from clients
        if stream_id == 0 or (stream_id & 1) == expected_parity or stream_id <= self._last_peer_id:
            try:
                self._write(rst_stream_frame(stream_id, PROTOCOL_ERROR))
            except OSError:
                pass
            return
        self._last_peer_id = stream_id
        stream = SpdyStream(self, stream_id, headers)
        stream.remote_closed = bool(flags & FLAG_FIN)
        if self.goaway_received or self._closing or self.on_stream is None:
            stream.reset_code = REFUSED_STREAM
            try:
                self._write(rst_stream_frame(stream_id, REFUSED_STREAM))
            except OSError:
                pass
            return
        with self._lock:
            self._streams[stream_id] = stream
        try:
            self.on_stream(stream)
        except Exception as e:
            if self._write_failed is not None:
                # The reply (or an error message) could not be written: the peer closed the
                # connection while the stream was being set up. That ends the session like
                # any cut connection; it is not a failure of the handler.
                log.debug("%s: stream %d: connection gone during its reply: %s",
                          self.name, stream_id, e)
                raise ConnectionError(f"connection gone: {self._write_failed}") from e
            log.exception("%s: stream handler failed", self.name)
            self._reset_stream(stream, INTERNAL_ERROR, notify=False)
            return
        if stream.remote_closed and stream.reset_code is None:
            stream.remote_closed = False
            self._remote_fin(stream)
