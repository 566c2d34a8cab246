"""Dialing the API server's port-forward subresource (blocking: run on an opener thread).

``dial_upgrade`` opens a TCP (and TLS) connection, sends one upgrade request and returns the
upgraded socket plus the bytes the server sent past its 101 answer; a refusal becomes an
``UpgradeRefused`` carrying the HTTP status and the Status message. ``negotiate`` tries the
transports in order (SPDY in a WebSocket, plain SPDY, WebSocket v4), stopping at a refusal
that no other transport would change (401, 403, 404).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus

from kubefwd import __version__
from kubefwd.cluster.proxy import open_socket
from kubefwd.cluster.target import ApiTarget
from kubefwd.cluster.throttle import is_throttled
from kubefwd.errors import KubefwdError, TunnelError
from kubefwd.support.sockets import close_quietly
from kubefwd.support.transports import AUTO_ORDER
from kubefwd.wire import websocket as ws

log = logging.getLogger(__name__)

AnySocket = socket.socket | ssl.SSLSocket

PROTOCOL_V4 = "v4.channel.k8s.io"
PROTOCOL_SPDY_WS = "SPDY/3.1+portforward.k8s.io"
PORTFORWARD_PROTOCOL = "portforward.k8s.io"

# Statuses that mean "this will fail the same way on any transport": stop negotiating.
FINAL_STATUSES = frozenset({401, 403, 404})


class UpgradeRefused(TunnelError):
    """The API server answered the upgrade request with something other than 101."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "",
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after  # the Retry-After header of a 429 or 503


def _host_header(target: ApiTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


class _TlsSessions:
    """The newest TLS session per API server and TLS context, to resume on the next dial.

    A tunnel is one TLS connection; thousands of pods mean thousands of handshakes, each a
    certificate check on our side and a signature on the server's. Resuming a session (a
    TLS 1.3 ticket) skips both; a server that does not resume just gets a full handshake.

    A kept session is used again by every dial until one does not resume with it (the
    server's ticket keys rotated, the ticket expired or was single-use) or it is
    ``REFRESH_AFTER`` seconds old: only then is the new connection's session taken. Taking
    one copies it whole (Python's ``ssl`` serialises and parses it, peer certificate
    included), which cost about as much CPU as the resumed handshake itself.
    """

    REFRESH_AFTER = 300.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        # The context is kept with its session: its id in the key stays its own.
        self._sessions: dict[tuple[str, int, str, int],
                             tuple[ssl.SSLContext, ssl.SSLSession, float]] = {}
        self.taken = 0  # sessions copied out of a connection so far

    @staticmethod
    def _key(target: ApiTarget, context: ssl.SSLContext) -> tuple[str, int, str, int]:
        return (target.host, target.port, target.server_hostname or "", id(context))

    def get(self, target: ApiTarget, context: ssl.SSLContext) -> ssl.SSLSession | None:
        with self._lock:
            kept = self._sessions.get(self._key(target, context))
        return kept[1] if kept is not None and kept[0] is context else None

    def put(self, target: ApiTarget, sock: ssl.SSLSocket) -> None:
        key = self._key(target, sock.context)
        now = self._clock()
        with self._lock:
            kept = self._sessions.get(key)
        if (kept is not None and kept[0] is sock.context and sock.session_reused
                and now - kept[2] < self.REFRESH_AFTER):
            return  # it resumed with the kept one: keep using that
        session = sock.session
        if session is None or not session.has_ticket:
            return
        with self._lock:
            self.taken += 1
            if len(self._sessions) > 64:  # contexts come and go with credentials
                self._sessions.clear()
            self._sessions[key] = (sock.context, session, now)


_tls_sessions = _TlsSessions()


def connect(target: ApiTarget, timeout: float,
            track: Callable[[AnySocket | None], None]) -> AnySocket:
    """TCP connect (and TLS handshake) to the API server; ``track`` sees the socket so that
    a concurrent close can abort a slow dial."""
    if target.proxy is not None:
        raw = open_socket(target.proxy, target.host, target.port, timeout=timeout,
                          track=track, user_agent=f"kubefwd/{__version__}")
    else:
        try:
            raw = socket.create_connection((target.host, target.port), timeout=timeout)
        except OSError as e:
            raise TunnelError(
                f"cannot reach the API server at {target.host}:{target.port}: {e}") from e
    track(raw)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if target.scheme != "https":
        return raw
    try:
        context = target.tls_context()  # per connection: a client certificate may rotate
    except KubefwdError as e:
        close_quietly(raw)
        raise TunnelError(f"{e}") from e
    try:
        sock = context.wrap_socket(raw, server_hostname=target.server_hostname or target.host,
                                   session=_tls_sessions.get(target, context))
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
    return UpgradeRefused(text, status=status, reason=reason,
                          retry_after=head.headers.get("retry-after"))


# Throttled upgrade attempts (429, 503 with Retry-After) one dial makes before giving up.
THROTTLED_ATTEMPTS = 5


def dial_upgrade(target: ApiTarget, path: str, *, method: str, headers: Mapping[str, str],
                 timeout: float, what: str,
                 track: Callable[[AnySocket | None], None]) -> tuple[AnySocket, ws.HttpHead]:
    """Connect, send one upgrade request, read the answer; returns the socket and the 101
    head (with ``rest``, the upgraded bytes read past it). Raises UpgradeRefused (non-101)
    or TunnelError (network, TLS, garbage).

    A 429 (or 503 with Retry-After) is waited out as the server asks, through the target's
    throttle shared with the list/watch client: each wait is capped at ``timeout``, and the
    refusal is raised after THROTTLED_ATTEMPTS of them."""
    throttle = target.throttle
    attempt = 0
    while True:
        if throttle is not None:
            pause = threading.Event()  # never set: a bounded, timed wait
            pause.wait(min(throttle.delay(), timeout))
        try:
            result = _dial_upgrade_once(target, path, method=method, headers=headers,
                                        timeout=timeout, what=what, track=track)
        except UpgradeRefused as e:
            attempt += 1
            if throttle is None or attempt >= THROTTLED_ATTEMPTS \
                    or not is_throttled(e.status, e.retry_after):
                raise
            throttle.refused(e.status, e.retry_after, what)
            continue
        if throttle is not None:
            throttle.accepted()
        return result


def _dial_upgrade_once(target: ApiTarget, path: str, *, method: str,
                       headers: Mapping[str, str], timeout: float, what: str,
                       track: Callable[[AnySocket | None], None]
                       ) -> tuple[AnySocket, ws.HttpHead]:
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
        lines += [f"{k}: {v}" for k, v in target.extra_headers]
        if method == "POST":
            lines.append("Content-Length: 0")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = ws.read_http_head(sock)
        if head.status != 101:
            body = ws.read_http_body(sock, head, limit=64 * 1024)
            raise _refusal(head, body, what)
        sock.settimeout(None)
        if isinstance(sock, ssl.SSLSocket):
            _tls_sessions.put(target, sock)  # its ticket came before the answer
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



Track = Callable[[AnySocket | None], None]


def negotiate(target: ApiTarget, path: str, *, transport: str, prefer: str, timeout: float,
              track: Track, label: str) -> tuple[str, AnySocket | None, bytes]:
    """Dial the transports in order; the first that upgrades wins.

    Returns the transport's name, the upgraded socket (blocking, no timeout) and the bytes
    read past the 101; for ``ws`` no socket (each connection dials its own WebSocket).
    """
    order = [transport]
    if transport == "auto":
        order = list(AUTO_ORDER)
        if prefer in order:
            order = order[order.index(prefer):]
    refused: UpgradeRefused | None = None
    for name in order:
        if name == "ws":
            return "ws", None, b""
        try:
            if name == "spdy-ws":
                sock, rest = dial_websocket(target, path, PROTOCOL_SPDY_WS, timeout=timeout,
                                            what="SPDY-over-WebSocket upgrade", track=track)
                return name, sock, rest
            sock, head = dial_upgrade(
                target, path, method="POST", timeout=timeout, what="SPDY upgrade",
                track=track, headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                                      "X-Stream-Protocol-Version": PORTFORWARD_PROTOCOL})
            return name, sock, head.rest
        except UpgradeRefused as e:
            if e.status in FINAL_STATUSES or name == order[-1]:
                raise
            log.debug("%s: %s; trying the next transport", label, e)
            refused = e
    raise refused or TunnelError("no transport")


def dial_v4(target: ApiTarget, path: str, port: int, *, timeout: float,
            track: Track) -> tuple[AnySocket, bytes]:
    """One ``v4.channel.k8s.io`` WebSocket for one connection to ``port``."""
    return dial_websocket(target, f"{path}?ports={port}", PROTOCOL_V4, timeout=timeout,
                          what="WebSocket port-forward", track=track)
