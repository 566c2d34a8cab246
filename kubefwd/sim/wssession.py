"""A threaded WebSocket connection (either end) and a byte stream over its binary messages:
the simulated cluster's port-forward server uses them; kubefwd's own tunnels drive the codec
in ``kubefwd.wire.websocket`` from their selector loop instead.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from kubefwd.sim.buffers import read_buffer
from kubefwd.wire.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    CONTROL_OPS,
    DATA_OPS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Buffer,
    WebSocketError,
    close_payload,
    encode_frame,
    mask,
    parse_close_payload,
)

_READ_CHUNK = 256 * 1024


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
        self._rbuf = read_buffer(max(_READ_CHUNK, len(initial)))
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
        if opcode in CONTROL_OPS:
            if not fin or length > 125:
                raise WebSocketError("fragmented or oversized control frame")
        elif opcode not in DATA_OPS:
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
            if opcode in CONTROL_OPS:
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
            if opcode in CONTROL_OPS:
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
