"""Dialing the API server's port-forward subresource, and the WebSocket v4 fallback relay.

``dial_upgrade`` opens a TCP (and TLS) connection, sends one upgrade request and returns the
upgraded socket plus the bytes the server sent past its 101 answer; a refusal becomes an
``UpgradeRefused`` carrying the HTTP status and the Status message. ``V4Connection`` carries
one TCP connection over one WebSocket ``v4.channel.k8s.io`` (the protocol has no half-close
and no multiplexing, so it is the last resort).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from kubefwd import __version__
from kubefwd.errors import TunnelError
from kubefwd.wire import websocket as ws

if TYPE_CHECKING:
    from kubefwd.tunnel import ApiTarget

log = logging.getLogger(__name__)

AnySocket = socket.socket | ssl.SSLSocket

PROTOCOL_V4 = "v4.channel.k8s.io"
PROTOCOL_SPDY_WS = "SPDY/3.1+portforward.k8s.io"
PORTFORWARD_PROTOCOL = "portforward.k8s.io"

# Statuses that mean "this will fail the same way on any transport": stop negotiating.
FINAL_STATUSES = frozenset({401, 403, 404})


class UpgradeRefused(TunnelError):
    """The API server answered the upgrade request with something other than 101."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def hard_shutdown(sock: Any) -> None:
    """Shut a (TLS) socket down both ways to wake threads blocked on it; never raises.

    For a TLS socket the descriptor itself is shut down, leaving the TLS object alone so a
    reader blocked in it sees EOF instead of a vanished object.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):
        pass


def close_quietly(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass


class PrefixedSocket:
    """A connected socket whose first reads return bytes that were already read past the
    HTTP head (the start of the upgraded stream)."""

    def __init__(self, sock: AnySocket, prefix: bytes) -> None:
        self.sock = sock
        self._prefix = memoryview(prefix) if prefix else None

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        if self._prefix is not None:
            n = min(len(self._prefix), nbytes or len(buffer))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:] if n < len(self._prefix) else None
            return n
        return self.sock.recv_into(buffer, nbytes)

    def sendall(self, data: Any) -> None:
        self.sock.sendall(data)

    def shutdown(self) -> None:
        hard_shutdown(self.sock)

    def close(self) -> None:
        close_quietly(self.sock)


def _host_header(target: ApiTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def connect(target: ApiTarget, timeout: float,
            track: Callable[[AnySocket | None], None]) -> AnySocket:
    """TCP connect (and TLS handshake) to the API server; ``track`` sees the socket so that
    a concurrent close can abort a slow dial."""
    try:
        raw = socket.create_connection((target.host, target.port), timeout=timeout)
    except OSError as e:
        raise TunnelError(
            f"cannot reach the API server at {target.host}:{target.port}: {e}") from e
    track(raw)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if target.scheme != "https":
        return raw
    context = target.ssl_context or ssl.create_default_context()
    try:
        sock = context.wrap_socket(raw, server_hostname=target.server_hostname or target.host)
    except (OSError, ValueError) as e:
        close_quietly(raw)
        raise TunnelError(f"TLS handshake with {target.host}:{target.port} failed: {e}") from e
    track(sock)
    return sock


def _refusal(head: ws.HttpHead, body: bytes, what: str) -> UpgradeRefused:
    status = head.status
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = head.start_line.split(" ", 2)[-1]
    message = body.decode("utf-8", "replace").strip()
    reason = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            message = str(doc.get("message") or message)
            reason = str(doc.get("reason") or "")
    except ValueError:
        pass
    hint = {401: " (the credentials were not accepted)",
            403: " (not allowed to create pods/portforward)",
            404: " (no such pod)"}.get(status, "")
    text = f"{what} refused: {status} {phrase}{hint}"
    if message:
        text += f": {message[:300]}"
    return UpgradeRefused(text, status=status, reason=reason)


def dial_upgrade(target: ApiTarget, path: str, *, method: str, headers: Mapping[str, str],
                 timeout: float, what: str,
                 track: Callable[[AnySocket | None], None]) -> tuple[AnySocket, ws.HttpHead]:
    """Connect, send one upgrade request, read the answer; returns the socket and the 101
    head (with ``rest``, the upgraded bytes read past it). Raises UpgradeRefused (non-101)
    or TunnelError (network, TLS, garbage)."""
    try:
        auth = target.auth_headers()  # fresh per connection: tokens may have been refreshed
    except Exception as e:  # an exec plugin or token file failing is the user's to fix
        raise TunnelError(f"{what}: cannot get credentials: {e}") from e
    sock = connect(target, timeout, track)
    try:
        base = target.base_path.rstrip("/")
        lines = [f"{method} {base}{path} HTTP/1.1", f"Host: {_host_header(target)}",
                 f"User-Agent: kubefwd/{__version__}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [f"{k}: {v}" for k, v in auth.items()]
        if method == "POST":
            lines.append("Content-Length: 0")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = ws.read_http_head(sock)
        if head.status != 101:
            body = ws.read_http_body(sock, head, limit=64 * 1024)
            raise _refusal(head, body, what)
        sock.settimeout(None)
        return sock, head
    except TunnelError:
        close_quietly(sock)
        raise
    except (OSError, ws.HandshakeError, ValueError) as e:
        close_quietly(sock)
        raise TunnelError(f"{what} failed: {e}") from e
    finally:
        track(None)


def dial_websocket(target: ApiTarget, path: str, protocol: str, *, timeout: float, what: str,
                   track: Callable[[AnySocket | None], None]) -> tuple[AnySocket, bytes]:
    """Open a client WebSocket speaking ``protocol`` (which the server must echo); returns
    the socket and the bytes already read past the 101."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Key": key,
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Protocol": protocol}
    sock, head = dial_upgrade(target, path, method="GET", headers=headers, timeout=timeout,
                              what=what, track=track)
    try:
        chosen = ws.check_handshake_response(head, key, [protocol])
    except ws.HandshakeError as e:
        close_quietly(sock)
        raise UpgradeRefused(f"{what} refused: {e}", status=400) from e
    if chosen != protocol:
        close_quietly(sock)
        raise UpgradeRefused(f"{what} refused: the server did not agree to {protocol}",
                             status=400)
    return sock, head.rest


class WsByteStream:
    """The client end of a WebSocket whose binary messages carry one byte stream (SPDY).

    Payload bytes are read straight into the caller's buffer and frame headers in tiny
    reads, so a tunnel holds no read buffer of its own here. Pings are answered; a close
    frame (or the end of the connection) reads as EOF. ``sendall`` sends one masked binary
    message per call, under a lock (the reader thread may answer a ping meanwhile).
    """

    def __init__(self, sock: AnySocket, initial: bytes) -> None:
        self.sock = sock
        self._raw = PrefixedSocket(sock, initial)
        self._left = 0  # payload bytes still to come in the current data frame
        self._wlock = threading.Lock()

    def _exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        pos = 0
        while pos < n:
            got = self._raw.recv_into(view[pos:], n - pos)
            if not got:
                raise EOFError("the WebSocket ended inside a frame")
            pos += got
        return bytes(buf)

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        while not self._left:
            try:
                b0, b1 = self._exact(2)
            except EOFError:
                return 0
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if b0 & 0x70 or b1 & 0x80:
                raise ws.WebSocketError("reserved bits or a mask on a frame from the server")
            if length == 126:
                (length,) = struct.unpack("!H", self._exact(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._exact(8))
            if opcode in (ws.OP_BINARY, ws.OP_CONTINUATION):
                self._left = length
            elif opcode == ws.OP_PING:
                self._send(ws.OP_PONG, self._exact(length))
            elif opcode == ws.OP_PONG:
                self._exact(length)
            elif opcode == ws.OP_CLOSE:
                self._exact(length)
                try:
                    self._send(ws.OP_CLOSE, ws.close_payload(ws.CLOSE_NORMAL))
                except OSError:
                    pass
                return 0
            else:
                raise ws.WebSocketError(f"unexpected WebSocket opcode {opcode}")
        want = min(self._left, nbytes or len(view))
        got = self._raw.recv_into(view, want)
        if not got:
            raise EOFError("the WebSocket ended inside a frame")
        self._left -= got
        return got

    def _send(self, opcode: int, payload: Any) -> None:
        frame = ws.encode_frame(opcode, payload, masked=True)
        with self._wlock:
            self.sock.sendall(frame)

    def sendall(self, data: Any) -> None:
        self._send(ws.OP_BINARY, data)

    def shutdown(self) -> None:
        hard_shutdown(self.sock)

    def close(self) -> None:
        close_quietly(self.sock)


class V4Connection:
    """One forwarded TCP connection over one ``v4.channel.k8s.io`` WebSocket.

    A thread of its own dials and then copies pod → local (``relay_remote``); the tunnel's
    local-side thread copies local → pod with ``send``. Channel 0 carries data, channel 1
    errors; each starts with a 3-byte message naming the port, which is skipped.
    """

    def __init__(self, local: socket.socket, port: int) -> None:
        self.local = local
        self.port = port
        self.sock: ws.WebSocket | None = None
        self.bytes_in = 0
        self.closed = False
        self.error = ""
        self._dialing: AnySocket | None = None

    def _track(self, sock: AnySocket | None) -> None:
        self._dialing = sock
        if sock is not None and self.closed:
            hard_shutdown(sock)

    def dial(self, target: ApiTarget, path: str, timeout: float) -> None:
        sock, rest = dial_websocket(target, f"{path}?ports={self.port}", PROTOCOL_V4,
                                    timeout=timeout, what="WebSocket port-forward",
                                    track=self._track)
        self.sock = ws.WebSocket(sock, client=True, initial=rest, subprotocol=PROTOCOL_V4)

    def send(self, data: memoryview) -> None:
        """Local → pod; raises OSError when the WebSocket is gone."""
        assert self.sock is not None
        self.sock.send(ws.OP_BINARY, b"\x00" + data)

    def relay_remote(self) -> bool:
        """Copy pod → local until the WebSocket ends; True on a clean end."""
        assert self.sock is not None
        seen_header = [False, False]
        local = self.local
        while True:
            try:
                message = self.sock.recv_message()
            except (OSError, EOFError, ws.WebSocketError, ValueError):
                return False
            if message is None:
                return True
            payload = message[1]
            if not payload or payload[0] > 1:
                continue
            channel = payload[0]
            if not seen_header[channel]:
                seen_header[channel] = True  # the 3-byte port announcement
                continue
            if channel == 1:
                self.error += payload[1:].decode("utf-8", "replace")
                continue
            data = memoryview(payload)[1:]
            try:
                local.sendall(data)
            except OSError:
                return False
            self.bytes_in += len(data)

    def shutdown(self) -> None:
        """Cut the WebSocket and wake the relay thread (dialing or reading); never blocks,
        so no close frame (the server sees the end of the connection instead)."""
        self.closed = True
        if self._dialing is not None:
            hard_shutdown(self._dialing)
        if self.sock is not None:
            hard_shutdown(self.sock.sock)

    def close(self) -> None:
        if self.sock is not None:
            close_quietly(self.sock.sock)
