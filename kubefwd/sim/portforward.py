"""The port-forward subresource of the simulated API server, speaking what a kubelet speaks.

Three forms, as real clients use them:

- SPDY/3.1 by plain HTTP upgrade (``X-Stream-Protocol-Version: portforward.k8s.io``);
- SPDY/3.1 tunnelled in a WebSocket (subprotocol ``SPDY/3.1+portforward.k8s.io``);
- WebSocket ``v4.channel.k8s.io`` (and its base64 text variant), one TCP connection per port
  given in ``?ports=``.

Over SPDY each forwarded connection is a (error, data) stream pair matched by ``requestID``;
half-close works both ways. A port nothing listens on gets the kubelet's error text on the
error stream/channel. The API server hands us the raw connection after its own checks.
"""

from __future__ import annotations

import base64
import http
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kubefwd.sim import spdysession as spdy
from kubefwd.sim import wssession
from kubefwd.sim.buffers import read_buffer
from kubefwd.sim.objects import StatusError
from kubefwd.support.sockets import close_quietly
from kubefwd.wire import spdyframes
from kubefwd.wire import websocket as ws

log = logging.getLogger(__name__)

PORTFORWARD_PROTOCOL = "portforward.k8s.io"
SPDY_UPGRADE = "SPDY/3.1"
WS_V4_BINARY = "v4.channel.k8s.io"
WS_V4_BASE64 = "v4.base64.channel.k8s.io"
WS_SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"
# What we accept, for the client's order to pick from (v5.channel.k8s.io is exec-only).
WS_PROTOCOLS = (WS_V4_BINARY, WS_V4_BASE64, WS_SPDY_TUNNEL)
# How long a stream waits for its partner before the pair is given up, as the kubelet does.
STREAM_PAIR_TIMEOUT = 30.0
_RELAY_BUFFER = 256 * 1024


@dataclass
class PortForwardRequest:
    """What the API server knows about a port-forward request when it hands it over."""

    method: str
    headers: Mapping[str, str]  # case-insensitive (an email.message.Message)
    query: dict[str, list[str]]
    namespace: str
    pod: str
    pod_uid: str
    connect: Callable[[int], socket.socket]  # raises OSError when nothing listens there
    latency: float = 0.0  # fault injection: delay before each new forwarded connection
    stopping: threading.Event | None = None  # set when the API server shuts down
    initial: bytes = b""  # bytes the API server read past the request head, if any


def serve_portforward(sock: socket.socket, req: PortForwardRequest) -> None:
    """Negotiate, write the 101 (or an error Status), and serve until the connection ends."""
    try:
        if ws.is_websocket_request(req.headers):
            _serve_websocket(sock, req)
        else:
            _serve_spdy_upgrade(sock, req)
    except OSError as e:  # the client went away (mid-reply, say): a connection's end
        log.debug("port-forward to %s/%s: connection ended: %s", req.namespace, req.pod, e)
    except Exception:  # one bad connection must never take the server down
        log.exception("port-forward to %s/%s failed", req.namespace, req.pod)
    finally:
        close_quietly(sock)


# --- negotiation ---------------------------------------------------------------------------


def _send_status(sock: socket.socket, code: int, message: str) -> None:
    """Answer with a Status error, as the API server does before any upgrade."""
    reason = {400: "BadRequest", 403: "Forbidden", 405: "MethodNotAllowed"}.get(code, "")
    body = json.dumps(StatusError(code, reason, message).to_status()).encode()
    head = (
        f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    try:
        sock.sendall(head + body)
    except OSError:
        pass


def _serve_spdy_upgrade(sock: socket.socket, req: PortForwardRequest) -> None:
    upgrade = [v.lower() for v in ws.header_values(req.headers, "Upgrade")]
    connection = [v.lower() for v in ws.header_values(req.headers, "Connection")]
    if "upgrade" not in connection or not upgrade:
        _send_status(sock, 400, "unable to upgrade: missing upgrade headers in request")
        return
    if upgrade != [SPDY_UPGRADE.lower()]:
        _send_status(sock, 400, f'unable to upgrade: upgrade "{",".join(upgrade)}" not supported, '
                                f'only "{SPDY_UPGRADE}"')
        return
    offered = ws.header_values(req.headers, "X-Stream-Protocol-Version")
    if not offered:
        _send_status(sock, 400, "unable to upgrade: X-Stream-Protocol-Version is required")
        return
    if PORTFORWARD_PROTOCOL not in offered:
        _send_status(sock, 403, f"unable to upgrade: unable to negotiate protocol: client "
                                f"supports {offered}, server accepts [{PORTFORWARD_PROTOCOL}]")
        return
    sock.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Connection: Upgrade\r\n"
            f"Upgrade: {SPDY_UPGRADE}\r\n"
            f"X-Stream-Protocol-Version: {PORTFORWARD_PROTOCOL}\r\n\r\n"
        ).encode("latin-1")
    )
    _SpdyForwarder(sock, req, req.initial).serve()


def _serve_websocket(sock: socket.socket, req: PortForwardRequest) -> None:
    ports: list[int] = []
    try:
        protocol, response = ws.server_handshake(req.headers, WS_PROTOCOLS)
        if protocol != WS_SPDY_TUNNEL:
            ports = _query_ports(req.query)
    except ws.HandshakeError as e:
        _send_status(sock, e.status, str(e))
        return
    except ValueError as e:
        _send_status(sock, 400, str(e))
        return
    sock.sendall(response)
    conn = wssession.WebSocket(sock, client=False, initial=req.initial, subprotocol=protocol)
    if protocol == WS_SPDY_TUNNEL:
        _SpdyForwarder(wssession.WebSocketByteStream(conn), req, b"").serve()
    else:
        _WebSocketForwarder(conn, req, ports, text=protocol == WS_V4_BASE64).serve()


def _query_ports(query: Mapping[str, list[str]]) -> list[int]:
    """Ports from ``?ports=`` (comma-separated and/or repeated), validated like the kubelet."""
    values = query.get("ports") or []
    if not values:
        raise ValueError('query parameter "ports" is required')
    ports = []
    for value in values:
        if not value:
            raise ValueError('query parameter "ports" cannot be empty')
        for part in value.split(","):
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise ValueError(f'unable to parse "{value}" as a port')
            ports.append(int(part))
    return ports


def _forward_error(req: PortForwardRequest, port: int, err: OSError) -> str:
    """The kubelet's message for a port it could not forward."""
    if isinstance(err, ConnectionRefusedError):
        cause = f"dial tcp4 127.0.0.1:{port}: connect: connection refused"
    elif isinstance(err, TimeoutError | socket.timeout):
        cause = f"dial tcp4 127.0.0.1:{port}: i/o timeout"
    else:
        cause = f"dial tcp4 127.0.0.1:{port}: {err.strerror or err}"
    return f"error forwarding port {port} to pod {req.pod}, uid {req.pod_uid}: {cause}"


# --- one forwarded connection to the pod ---------------------------------------------------


class _PodLink:
    """One TCP connection to a pod port, relayed to a client stream by one thread.

    The thread waits the injected latency, connects, then copies pod → client. Bytes the
    client sends before the connection exists are held and flushed in order. With
    ``half_close`` the socket stays open after the pod's EOF until the client finished too.
    """

    def __init__(
        self,
        req: PortForwardRequest,
        port: int,
        *,
        name: str,
        to_client: Callable[[memoryview], None],
        on_eof: Callable[[], None],
        on_error: Callable[[str], None],
        half_close: bool,
    ) -> None:
        self.req = req
        self.port = port
        self._to_client = to_client
        self._on_eof = on_eof
        self._on_error = on_error
        self._half_close = half_close
        self._lock = threading.Lock()
        self._use = threading.Lock()
        self._sock: socket.socket | None = None
        self._pending: list[bytes] = []
        self._pending_fin = False
        self._aborted = False
        self._client_done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    # Called from the client side's reader thread. ``_use`` keeps the relay thread from
    # closing the socket while it is in use here (a closed descriptor number can be reused by
    # another connection at once).

    def to_pod(self, data: memoryview) -> None:
        with self._use:
            with self._lock:
                sock = self._sock
                if sock is None:
                    if not self._aborted:
                        self._pending.append(bytes(data))
                    return
            try:
                sock.sendall(data)
                return
            except OSError:
                pass
        self.abort()

    def client_fin(self) -> None:
        with self._use:
            with self._lock:
                sock = self._sock
                if sock is None:
                    self._pending_fin = True
                    return
            _shutdown(sock, socket.SHUT_WR)
        self._client_done.set()

    def abort(self) -> None:
        """The client side is gone: end the pod connection now (from any thread)."""
        with self._lock:
            self._aborted = True
            self._pending.clear()
            sock = self._sock
            if sock is not None:
                _shutdown(sock, socket.SHUT_RDWR)
        self._client_done.set()

    # The relay thread.

    def _run(self) -> None:
        req = self.req
        if req.latency > 0:
            (req.stopping or threading.Event()).wait(req.latency)
        if self._aborted or (req.stopping is not None and req.stopping.is_set()):
            return
        try:
            sock = req.connect(self.port)
        except OSError as e:
            self._on_error(_forward_error(req, self.port, e))
            return
        try:
            self._relay(sock)
        finally:
            _shutdown(sock, socket.SHUT_RDWR)  # wakes a sendall blocked in to_pod
            with self._use, self._lock:
                self._sock = None
                self._aborted = True
                sock.close()

    def _relay(self, sock: socket.socket) -> None:
        with self._lock:
            if self._aborted:
                return
            pending, self._pending = self._pending, []
            try:
                for chunk in pending:
                    sock.sendall(chunk)
                if self._pending_fin:
                    _shutdown(sock, socket.SHUT_WR)
                    self._client_done.set()
            except OSError:
                self._client_done.set()
            self._sock = sock
        buf = read_buffer(_RELAY_BUFFER)
        view = memoryview(buf)
        while True:
            try:
                n = sock.recv_into(buf)
            except OSError:
                n = 0
            if not n:
                break
            try:
                self._to_client(view[:n])
            except OSError:
                self.abort()
                return
        self._on_eof()
        if self._half_close:
            self._client_done.wait()


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


# --- SPDY ----------------------------------------------------------------------------------


class _Pair:
    """The error and data streams of one forwarded connection (matched by requestID)."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.created = time.monotonic()
        self.data: spdy.SpdyStream | None = None
        self.error: spdy.SpdyStream | None = None
        self.early = bytearray()  # data sent before the pair was complete


class _SpdyForwarder:
    """Serves one SPDY connection: stream pairs in, one _PodLink per pair."""

    def __init__(self, transport: spdy.Transport, req: PortForwardRequest, initial: bytes) -> None:
        self.req = req
        self.session = spdy.SpdySession(
            transport, server=True, on_stream=self._on_stream, initial=initial,
            name=f"pf-{req.pod}",
        )
        self._pairs: dict[str, _Pair] = {}
        self._links: list[_PodLink] = []
        self._count = 0

    def serve(self) -> None:
        try:
            self.session.serve()  # this thread reads until the connection ends
        finally:
            for link in self._links:
                link.abort()
            for link in self._links:
                link.thread.join(10)

    def _on_stream(self, stream: spdy.SpdyStream) -> None:
        self._expire_pairs()
        headers = stream.headers
        port_text = headers.get("port", "")
        stream_type = headers.get("streamtype", "")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536 or stream_type not in (
            "data", "error",
        ):
            stream.reset(spdyframes.CANCEL)  # the kubelet rejects the stream
            return
        request_id = headers.get("requestid") or str(
            stream.id if stream_type == "error" else stream.id - 2
        )
        pair = self._pairs.setdefault(request_id, _Pair(request_id))
        stream.reply()
        if stream_type == "error":
            if pair.error is not None:
                self._print_error(pair, f"error processing stream for request {request_id}: "
                                        "error stream already assigned")
                stream.reset()
                return
            pair.error = stream
        else:
            if pair.data is not None:
                self._print_error(pair, f"error processing stream for request {request_id}: "
                                        "data stream already assigned")
                stream.reset()
                return
            pair.data = stream
            stream.on_data = pair.early.extend
        if pair.data is not None and pair.error is not None:
            del self._pairs[request_id]
            self._start(pair, int(pair.data.headers["port"]))

    def _expire_pairs(self) -> None:
        now = time.monotonic()
        for request_id, pair in list(self._pairs.items()):
            if now - pair.created > STREAM_PAIR_TIMEOUT:
                del self._pairs[request_id]
                self._print_error(pair, f"(request={request_id}) timed out waiting for streams")
                for stream in (pair.data, pair.error):
                    if stream is not None:
                        stream.close()

    @staticmethod
    def _print_error(pair: _Pair, message: str) -> None:
        if pair.error is not None:
            try:
                pair.error.send(message.encode())
            except OSError:
                pass

    def _start(self, pair: _Pair, port: int) -> None:
        data, error = pair.data, pair.error
        assert data is not None and error is not None

        def finish() -> None:
            data.close()
            error.close()

        def failed(message: str) -> None:
            try:
                error.send(message.encode())
            except OSError:
                pass
            finish()

        self._count += 1
        link = _PodLink(
            self.req, port, name=f"pf-{self.req.pod}-{port}-{self._count}",
            to_client=data.send, on_eof=finish, on_error=failed, half_close=True,
        )
        if pair.early:
            link.to_pod(memoryview(bytes(pair.early)))
        data.on_data = link.to_pod
        data.on_fin = link.client_fin
        data.on_reset = lambda _code: link.abort()
        if data.remote_closed:
            link.client_fin()
        self._links = [x for x in self._links if x.thread.is_alive() or not x.thread.ident]
        self._links.append(link)
        link.start()


# --- WebSocket v4 ----------------------------------------------------------------------------


class _WebSocketForwarder:
    """Serves one WebSocket v4 connection: one pod connection per requested port."""

    def __init__(self, conn: wssession.WebSocket, req: PortForwardRequest, ports: list[int], *,
                 text: bool) -> None:
        self.conn = conn
        self.req = req
        self.ports = ports
        self.text = text
        self._links: list[_PodLink] = []
        self._left = len(ports)
        self._lock = threading.Lock()
        self._reader_done = threading.Event()

    def _send(self, channel: int, data: memoryview | bytes) -> None:
        if self.text:
            self.conn.send_text(bytes((48 + channel,)) + base64.b64encode(data))
        else:
            self.conn.send_binary(bytes((channel,)) + bytes(data))

    def _port_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:  # every pod connection ended: close the WebSocket, as the kubelet does
            self.conn.send_close()
            # Let the client answer the close frame (and read all we sent) before cutting.
            if not self._reader_done.wait(5.0):
                self.conn.shutdown()

    def serve(self) -> None:
        conn = self.conn
        try:
            for i, port in enumerate(self.ports):
                self._send(2 * i, struct.pack("<H", port))
                self._send(2 * i + 1, struct.pack("<H", port))
            for i, port in enumerate(self.ports):
                self._links.append(self._make_link(i, port))
            for link in self._links:
                link.start()
            self._read_loop()
        except ws.WebSocketError as e:
            conn.send_close(e.code, str(e))
        except (OSError, EOFError):
            pass
        finally:
            self._reader_done.set()
            for link in self._links:
                link.abort()
            conn.shutdown()
            for link in self._links:
                if link.thread.ident:
                    link.thread.join(10)

    def _make_link(self, index: int, port: int) -> _PodLink:
        def failed(message: str) -> None:
            try:
                self._send(2 * index + 1, message.encode())
            except OSError:
                pass
            self._port_done()

        return _PodLink(
            self.req, port, name=f"pf-{self.req.pod}-{port}-ws",
            to_client=lambda view: self._send(2 * index, view),
            on_eof=self._port_done, on_error=failed, half_close=False,
        )

    def _read_loop(self) -> None:
        while True:
            message = self.conn.recv_message()
            if message is None:
                return
            opcode, payload = message
            if not payload:
                continue
            if opcode == ws.OP_TEXT:
                channel = payload[0] - 48
                try:
                    data = base64.b64decode(payload[1:], validate=True)
                except ValueError as e:
                    raise ws.WebSocketError("invalid base64 payload", ws.CLOSE_INVALID_DATA) from e
            else:
                channel, data = payload[0], payload[1:]
            index, kind = divmod(channel, 2)
            if channel < 0 or index >= len(self._links) or kind != 0:
                continue  # unknown or write-only (error) channel: ignored like wsstream
            if data:
                self._links[index].to_pod(memoryview(data))
