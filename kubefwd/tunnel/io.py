"""Non-blocking byte plumbing for tunnels: the API connection, server WebSocket frames, and
the local end of a forwarded connection.

Everything here runs on a loop thread and never blocks. What a socket cannot take now is
kept (``ApiConnection``: queued bytes; ``LocalConn``: views into the reader's buffer, which
its owner leaves untouched until they are flushed) and sent when the socket is writable.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from kubefwd.events.metrics import PortCounters
from kubefwd.support.sockets import close_quietly, hard_shutdown
from kubefwd.tunnel.dial import AnySocket
from kubefwd.wire import websocket as ws

# Takes back a local socket the tunnel could not carry before any byte of it was relayed
# (the forwarder routes it again); called on the loop thread.
# Takes back a socket nothing of which reached the pod: ``give_back(sock)``, or
# ``give_back(sock, prefix)`` with the bytes the client had sent already (to be sent first
# wherever it goes next).
GiveBack = Callable[..., None]

# At most this many bytes a client sends before the pod's first byte are kept, so that a
# connection whose pod refused it (the kubelet's dial failed) can be replayed elsewhere.
REPLAY_LIMIT = 64 * 1024

# Pieces per sendmsg call (the kernel takes up to 1024).
_IOV_MAX = 512
# Bytes of extended payload length after the second header byte, by its 7-bit length field.
_EXTENDED = {126: 2, 127: 8}
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ApiConnection:
    """The upgraded connection to the API server, non-blocking (plain TCP or TLS).

    TLS: the selector only sees the socket, not records OpenSSL has already decrypted, so a
    reader must keep going while ``has_buffered()``. A TLS write that would block must be
    retried with the same bytes; queued items are only ever retried whole, never merged.
    """

    def __init__(self, sock: AnySocket, initial: bytes) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self._initial = memoryview(initial) if initial else None
        self._out: deque[memoryview] = deque()
        self.queued = 0  # bytes waiting for the socket

    def read_into(self, view: memoryview) -> int:
        """Bytes read (> 0), 0 at the end of the connection, -1 when nothing is there now."""
        if self._initial is not None:
            n = min(len(view), len(self._initial))
            view[:n] = self._initial[:n]
            self._initial = self._initial[n:] if n < len(self._initial) else None
            return n
        try:
            return self.sock.recv_into(view)
        except _WOULD_BLOCK:
            return -1
        except ssl.SSLZeroReturnError:
            return 0

    def fill(self, view: memoryview) -> tuple[int, bool]:
        """Read what is there, up to the size of ``view``: (bytes read, end of connection)."""
        end, size = 0, len(view)
        while end < size:
            n = self.read_into(view[end:])
            if n < 0:
                break
            if n == 0:
                return end, True
            end += n
            if not self.tls and self._initial is None:
                break  # a plain socket gave all it had
        return end, False

    def has_buffered(self) -> bool:
        """Bytes readable without the socket becoming readable (TLS records, the prefix)."""
        sock = self.sock
        return self._initial is not None or (isinstance(sock, ssl.SSLSocket)
                                             and sock.pending() > 0)

    def send(self, data: Any, *, owned: bool = False) -> None:
        """Send ``data`` or queue it (copied unless ``owned``); OSError when the connection
        is gone."""
        if self._out:
            item = memoryview(data if owned else bytes(data))
            self._out.append(item)
            self.queued += len(item)
            return
        view = memoryview(data)
        n = self._send(view)
        if n < len(view):
            rest = view[n:] if owned else memoryview(bytes(view[n:]))
            self._out.append(rest)
            self.queued += len(rest)

    def flush(self) -> bool:
        """Send queued bytes; True once nothing is left. OSError when the connection is gone."""
        out = self._out
        while out:
            head = out[0]
            n = self._send(head)
            self.queued -= n
            if n < len(head):
                if n:
                    out[0] = head[n:]
                return False
            out.popleft()
        return True

    def _send(self, view: memoryview) -> int:
        try:
            return self.sock.send(view)
        except _WOULD_BLOCK:
            return 0

    def shutdown(self) -> None:
        hard_shutdown(self.sock)

    def close(self) -> None:
        self._out.clear()
        self.queued = 0
        close_quietly(self.sock)


def masked_message(payload: Any) -> bytes:
    """One binary WebSocket message as a client sends it (masked)."""
    return ws.encode_frame(ws.OP_BINARY, payload, masked=True)


class WsReader:
    """Incremental parser of the frames a WebSocket server sends (never masked).

    ``feed`` takes whatever bytes arrived; payload bytes of data frames go to
    ``on_data(piece, first)`` (``first``: the piece starts a message), as views into the
    caller's buffer; control frames are gathered and passed whole to ``on_control``.
    """

    def __init__(self, on_data: Callable[[memoryview, bool], None],
                 on_control: Callable[[int, bytes], None]) -> None:
        self.on_data = on_data
        self.on_control = on_control
        self.closed = False  # a close frame arrived
        self._head = bytearray()
        self._left = 0
        self._first = False
        self._control: bytearray | None = None
        self._control_op = 0

    def feed(self, data: memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n and not self.closed:
            if self._left:
                take = min(self._left, n - pos)
                piece = data[pos:pos + take]
                pos += take
                self._left -= take
                if self._control is None:
                    first, self._first = self._first, False
                    self.on_data(piece, first)
                else:
                    self._control += piece
                    if not self._left:
                        self._end_control()
                continue
            head = self._head
            need = 2 if len(head) < 2 else 2 + _EXTENDED.get(head[1] & 0x7F, 0)
            take = min(need - len(head), n - pos)
            head += data[pos:pos + take]
            pos += take
            if len(head) >= 2 and len(head) == 2 + _EXTENDED.get(head[1] & 0x7F, 0):
                self._start_frame()

    def _start_frame(self) -> None:
        head = self._head
        b0, b1 = head[0], head[1]
        if b0 & 0x70 or b1 & 0x80:
            raise ws.WebSocketError("reserved bits or a mask on a frame from the server")
        length = b1 & 0x7F
        if length >= 126:
            length = int.from_bytes(head[2:], "big")
        head.clear()
        opcode = b0 & 0x0F
        self._left = length
        if opcode in (ws.OP_BINARY, ws.OP_TEXT, ws.OP_CONTINUATION):
            self._control = None
            if opcode != ws.OP_CONTINUATION:
                self._first = True
        elif opcode in (ws.OP_PING, ws.OP_PONG, ws.OP_CLOSE):
            if length > 125:
                raise ws.WebSocketError("control frame too long")
            self._control = bytearray()
            self._control_op = opcode
            if not length:
                self._end_control()
        else:
            raise ws.WebSocketError(f"unexpected WebSocket opcode {opcode}")

    def _end_control(self) -> None:
        payload = bytes(self._control or b"")
        self._control = None
        if self._control_op == ws.OP_CLOSE:
            self.closed = True
        self.on_control(self._control_op, payload)


# Connections spliced without a meter count into this one, which nobody reads.
UNMETERED = PortCounters()


class Sniffer(Protocol):
    """Looks at the bytes of one connection as they pass (on the loop thread): what the
    client sends (``client``) and what the pod answers (``server``). It copies what it keeps;
    False means it has seen enough and is dropped. ``end`` when the connection ends."""

    def client(self, data: memoryview) -> bool: ...

    def server(self, data: memoryview) -> bool: ...

    def end(self) -> None: ...


class Tap(Protocol):
    """Given with a connection: a ``Sniffer`` for it, or None to leave it alone."""

    def sniffer(self) -> Sniffer | None: ...


class LocalConn:
    """The local end of one forwarded TCP connection (non-blocking) and its state.

    ``meter`` counts its bytes (``bytes_in``: from the pod to the client, ``bytes_out``: from
    the client to the pod) with an integer add on the loop thread, and its end (``open``).
    ``sniff``, when its ``tap`` gave one, is shown the bytes both ways until it declines
    (then it is None, and the relaying pays one attribute check)."""

    __slots__ = (
        "closed",
        "data_id",
        "ended",
        "error",
        "error_id",
        "give_back",
        "handler",
        "local_done",
        "meter",
        "pending",
        "port",
        "prefix",
        "queued",
        "remote_done",
        "replay",
        "rid",
        "sniff",
        "sock",
        "stall_debt",
        "stalled",
        "started",
        "unstalled",
    )

    def __init__(self, sock: socket.socket, port: int, rid: int,
                 give_back: GiveBack | None = None,
                 meter: PortCounters = UNMETERED, prefix: bytes = b"",
                 tap: Tap | None = None) -> None:
        self.sock = sock
        # Bytes the client sent through an earlier tunnel that refused it: sent first.
        self.prefix = prefix
        # What the client sent before the pod's first byte (None: too much, or the pod
        # answered): replayed elsewhere if the pod turns out to have refused the connection.
        self.replay: bytearray | None = bytearray(prefix)
        self.meter = meter
        self.sniff = tap.sniffer() if tap is not None else None
        if self.sniff is not None and prefix and not self.sniff.client(memoryview(prefix)):
            self.sniff = None
        self.ended = False  # closed for good (not handed back): no longer counted open
        self.port = port
        self.rid = rid
        self.give_back = give_back
        self.started = False  # a byte (or an EOF) went one way or the other
        self.error_id = 0
        self.data_id = 0
        self.local_done = False  # local EOF seen (and passed on)
        self.remote_done = False  # the pod's side ended
        self.error = b""
        self.closed = False
        self.pending: deque[memoryview] = deque()  # bytes the socket could not take yet
        self.queued = 0  # how many bytes ``pending`` holds
        # Its owner's accounting of the time this connection made others wait for it (see
        # ``spdy_client``): since when (0: not now), the seconds owed, when it last stopped.
        self.stalled = 0.0
        self.stall_debt = 0.0
        self.unstalled = 0.0
        self.handler: Callable[[int], None] | None = None  # its owner's event handler
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def queue(self, data: memoryview) -> None:
        """Keep ``data`` for the next ``flush`` (a view: its buffer must stay unchanged)."""
        self.pending.append(data)
        self.queued += len(data)

    def keep(self) -> None:
        """Copy the queued bytes that are views into a reader's buffer (a ``bytearray``), so
        that the reader may reuse it while they wait."""
        pending = self.pending
        for i, piece in enumerate(pending):
            if isinstance(piece.obj, bytearray):
                pending[i] = memoryview(piece.tobytes())

    def flush(self) -> bool:
        """Send what was queued, many pieces per system call; True once nothing is left.
        OSError when the client is gone."""
        pending = self.pending
        while pending:
            pieces = list(itertools.islice(pending, _IOV_MAX))
            try:
                n = self.sock.sendmsg(pieces)
            except (BlockingIOError, InterruptedError):
                return False
            partial = n < sum(len(p) for p in pieces)
            self.queued -= n
            while n:
                head = pending[0]
                if n < len(head):
                    pending[0] = head[n:]
                    break
                n -= len(head)
                pending.popleft()
            if partial:
                return False
        return True

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.meter.open -= 1
            sniff, self.sniff = self.sniff, None
            if sniff is not None:
                sniff.end()
        self.closed = True
        self.pending.clear()
        self.queued = 0
        close_local(self.sock)

    @property
    def unstarted(self) -> bool:
        """Nothing of this connection was relayed either way: it may go elsewhere."""
        return not (self.started or self.local_done or self.remote_done or self.pending
                    or self.error or self.closed)

    def release(self, prefix: bytes = b"") -> None:
        """Hand the local socket back (to ``give_back``, else close it): for a connection
        the tunnel could not carry, with ``prefix``, what of it must be sent first wherever
        it goes. The caller has stopped watching the socket."""
        self.ended = True  # whoever takes it back counts it from now on
        self.sniff = None  # and looks at its bytes, the ones sent already included
        self.closed = True
        self.pending.clear()
        self.queued = 0
        hand_back(self.sock, self.give_back, prefix or self.prefix)

    def keep_for_replay(self, data: memoryview) -> None:
        """Remember bytes sent to the pod before its first byte came back."""
        replay = self.replay
        if replay is not None:
            if len(replay) + len(data) > REPLAY_LIMIT:
                self.replay = None
            else:
                replay += data


def hand_back(sock: socket.socket, to: GiveBack | None, prefix: bytes = b"") -> None:
    """Pass a local socket nobody started relaying to ``to``, or close it if there is none."""
    if to is None:
        close_local(sock)
        return
    try:
        if prefix:
            to(sock, prefix)
        else:
            to(sock)
    except Exception:  # the socket must not leak because a callback failed
        logging.getLogger(__name__).exception("handing a connection back failed")
        close_local(sock)


def close_local(sock: socket.socket) -> None:
    """Close a local socket (a FIN to the client, or an RST if it still sent us data)."""
    hard_shutdown(sock)
    close_quietly(sock)
