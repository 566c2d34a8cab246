"""PodTunnel and TunnelPool against the simulated cluster, over real sockets.

Run as a script (``python tests/test_tunnel.py``) for a one-connection throughput probe:
tunnel vs. straight to the pod, in one run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubefwd.cluster.target import ApiTarget
from kubefwd.errors import TunnelError
from kubefwd.sim import SimCluster
from kubefwd.tunnel import Loop, LoopThread, PodTunnel, TunnelPool
from kubefwd.tunnel.openers import Openers
from kubefwd.wire import spdyframes
from kubefwd.wire import websocket as ws

NS = "tun"
HTTP_PORT = 8080
ECHO_PORT = 7000


def pod(name: str, image: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "main", "image": image,
                                     "ports": [{"containerPort": port}]}]}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimCluster]:
    with SimCluster(manifests=[pod("web", "sim/http", HTTP_PORT),
                               pod("echo", "sim/echo", ECHO_PORT)]) as c:
        c.wait_ready(NS)
        yield c


def target_for(cluster: SimCluster, token: str | None = None) -> ApiTarget:
    context = ssl.create_default_context(cadata=(cluster.ca_pem or b"").decode("ascii"))
    bearer = token if token is not None else cluster.token
    return ApiTarget(host="127.0.0.1", port=cluster.port, scheme="https", ssl_context=context,
                     auth_headers=lambda: {"Authorization": f"Bearer {bearer}"})


@contextlib.contextmanager
def tunnel_to(cluster: SimCluster, pod_name: str, **kwargs: Any) -> Iterator[PodTunnel]:
    tunnel = PodTunnel(target_for(cluster), NS, pod_name, **kwargs)
    try:
        yield tunnel
    finally:
        tunnel.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback: (client end, accepted end)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    return client, accepted


def connect_through(tunnel: PodTunnel, port: int) -> socket.socket:
    """A client socket whose peer was handed to ``tunnel.splice``."""
    client, accepted = tcp_pair()
    client.settimeout(10)
    tunnel.splice(accepted, port)
    return client


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def http_get(tunnel: PodTunnel, path: str = "/") -> bytes:
    with connect_through(tunnel, HTTP_PORT) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response = read_all(client)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        tick.wait(0.02)


def tunnel_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tunnel")]


# --- transports ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["spdy-ws", "spdy", "ws"])
def test_http_request_through_each_transport(cluster: SimCluster, transport: str) -> None:
    with tunnel_to(cluster, "web", transport=transport) as tunnel:
        assert http_get(tunnel) == b"web\n"
        assert http_get(tunnel, "/bytes/100000") == bytes(http_get(tunnel, "/bytes/100000"))
        assert tunnel.transport_name == transport
        assert tunnel.alive
        assert tunnel.bytes_in > 100000
        assert tunnel.bytes_out > 0


def test_auto_prefers_spdy_in_websocket(cluster: SimCluster) -> None:
    with tunnel_to(cluster, "web") as tunnel:
        tunnel.open()
        assert tunnel.transport_name == "spdy-ws"
        assert http_get(tunnel) == b"web\n"


@pytest.mark.parametrize("transport", ["spdy-ws", "spdy"])
def test_twenty_concurrent_connections_share_one_thread(cluster: SimCluster,
                                                        transport: str) -> None:
    with tunnel_to(cluster, "echo", transport=transport) as tunnel:
        tunnel.open()
        clients = [connect_through(tunnel, ECHO_PORT) for _ in range(20)]
        try:
            for i, client in enumerate(clients):
                client.sendall(f"hello {i}\n".encode() * 1000)
            for i, client in enumerate(clients):
                want = f"hello {i}\n".encode() * 1000
                got = b""
                while len(got) < len(want):
                    chunk = client.recv(65536)
                    assert chunk
                    got += chunk
                assert got == want
            assert tunnel_threads() == [f"tunnel {NS}/echo"]  # its loop; no opener left
        finally:
            for client in clients:
                client.close()
        wait_until(lambda: tunnel.active == 0)
        assert tunnel.connections == 20 and tunnel.alive


def test_connections_spliced_while_opening_wait_and_all_get_through(
        cluster: SimCluster) -> None:
    with tunnel_to(cluster, "echo") as tunnel:
        clients = [connect_through(tunnel, ECHO_PORT) for _ in range(10)]  # before it opens
        try:
            for i, client in enumerate(clients):
                echo_once(client, f"queued {i}".encode())
            assert tunnel.sessions == 1 and tunnel.connections == 10
        finally:
            for client in clients:
                client.close()


@pytest.mark.parametrize("transport", ["spdy-ws", "spdy", "ws"])
def test_client_reset_drops_only_its_connection(cluster: SimCluster, transport: str) -> None:
    with tunnel_to(cluster, "echo", transport=transport) as tunnel:
        rude = connect_through(tunnel, ECHO_PORT)
        echo_once(rude, b"hello")
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()  # RST instead of FIN
        wait_until(lambda: tunnel.active == 0)
        assert tunnel.alive
        with connect_through(tunnel, ECHO_PORT) as client:
            echo_once(client, b"fine")


def echo_transfer(tunnel: PodTunnel, size: int) -> tuple[str, str, int]:
    """Send ``size`` bytes, half-close, read the echo to EOF: (sent sha, echoed sha, n)."""
    block = os.urandom(1 << 20)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    got = 0
    client = connect_through(tunnel, ECHO_PORT)

    def send() -> None:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            client.sendall(piece)
            sent.update(piece)
            left -= len(piece)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, name="test-sender")
    sender.start()
    try:
        while chunk := client.recv(1 << 20):
            received.update(chunk)
            got += len(chunk)
    finally:
        sender.join()
        client.close()
    return sent.hexdigest(), received.hexdigest(), got


@pytest.mark.parametrize("transport", ["spdy-ws", "spdy"])
def test_large_echo_with_half_close_is_intact(cluster: SimCluster, transport: str) -> None:
    size = 50 << 20
    with tunnel_to(cluster, "echo", transport=transport) as tunnel:
        sent, echoed, got = echo_transfer(tunnel, size)
        assert got == size
        assert sent == echoed
        assert tunnel.bytes_in == size and tunnel.bytes_out == size
        assert tunnel.alive


def test_ws_transport_echo(cluster: SimCluster) -> None:
    with tunnel_to(cluster, "echo", transport="ws") as tunnel, \
            connect_through(tunnel, ECHO_PORT) as client:
        payload = os.urandom(300_000)
        client.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = client.recv(65536)
            assert chunk
            got += chunk
        assert got == payload


def echo_once(client: socket.socket, data: bytes) -> None:
    client.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = client.recv(65536)
        assert chunk
        got += chunk
    assert got == data


@pytest.mark.parametrize("transport", ["spdy-ws", "spdy", "ws"])
def test_forwarding_error_retires_the_tunnel_but_spares_open_connections(
        cluster: SimCluster, transport: str) -> None:
    dead = threading.Event()
    with tunnel_to(cluster, "echo", transport=transport,
                   on_dead=lambda t: dead.set()) as tunnel:
        healthy = connect_through(tunnel, ECHO_PORT)
        with healthy:
            echo_once(healthy, b"before\n")
            with connect_through(tunnel, 9) as refused:  # nothing listens on port 9
                assert read_all(refused) == b""
            assert dead.wait(5)
            assert not tunnel.alive
            assert "connection refused" in str(tunnel.last_error)
            echo_once(healthy, b"still here\n")  # the open connection is untouched
            with connect_through(tunnel, ECHO_PORT) as late:  # no new ones on a retired tunnel
                assert read_all(late) == b""
        wait_until(lambda: tunnel.state == "dead")  # the last connection ended


def test_idle_tunnel_closes_its_session_and_reopens_on_demand(cluster: SimCluster) -> None:
    with tunnel_to(cluster, "web", idle_timeout=0.2) as tunnel:
        assert http_get(tunnel) == b"web\n"
        wait_until(lambda: tunnel.state == "idle")
        assert tunnel_threads() == [f"tunnel {NS}/web"]  # only the loop it runs on
        assert tunnel.alive
        assert http_get(tunnel) == b"web\n"  # opens a new session
        assert tunnel.state == "open"
        tunnel.open()
        wait_until(lambda: tunnel.state == "idle")
        tunnel.open()
        assert tunnel.state == "open"


def test_connections_racing_an_idle_close_all_get_through(cluster: SimCluster) -> None:
    pause = threading.Event()
    with tunnel_to(cluster, "web", idle_timeout=0.002) as tunnel:
        for i in range(40):
            assert http_get(tunnel) == b"web\n"
            pause.wait(0.001 * (i % 4))
        assert tunnel.alive
        assert tunnel.sessions > 5


@contextlib.contextmanager
def shared_loop() -> Iterator[Loop]:
    """One loop on one thread, as a forwarder runs it."""
    loop = Loop("shared")
    thread = LoopThread(loop, "test-loop")
    thread.start()
    try:
        yield loop
    finally:
        assert thread.stop_and_join()


def test_tunnels_to_several_pods_run_on_one_loop_thread(cluster: SimCluster) -> None:
    with shared_loop() as loop:
        web = PodTunnel(target_for(cluster), NS, "web", loop=loop)
        echo = PodTunnel(target_for(cluster), NS, "echo", loop=loop)
        try:
            clients = [connect_through(echo, ECHO_PORT) for _ in range(10)]
            try:
                assert http_get(web) == b"web\n"
                for i, client in enumerate(clients):
                    echo_once(client, f"conn {i}".encode())
                assert tunnel_threads() == []  # no thread per tunnel, none per connection
            finally:
                for client in clients:
                    client.close()
        finally:
            web.close()
            echo.close()
        assert web.state == echo.state == "closed"


def test_a_stalled_client_does_not_stall_another_tunnel_on_the_same_loop(
        cluster: SimCluster) -> None:
    with shared_loop() as loop:
        stuck = PodTunnel(target_for(cluster), NS, "web", loop=loop)
        lively = PodTunnel(target_for(cluster), NS, "echo", loop=loop)
        try:
            with connect_through(stuck, HTTP_PORT) as sleeper:
                # 64 MiB that nobody reads: the local socket fills, that tunnel stops
                # reading its API connection, the loop goes on serving everyone else.
                sleeper.sendall(b"GET /bytes/67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
                wait_until(lambda: stuck.bytes_in > 1 << 20)
                with connect_through(lively, ECHO_PORT) as client:
                    for i in range(50):
                        echo_once(client, f"still moving {i}".encode() * 100)
                assert stuck.bytes_in < 64 << 20
                got = 0
                sleeper.settimeout(10)
                while got < 64 << 20:  # and the stalled one resumes when read
                    chunk = sleeper.recv(1 << 20)
                    assert chunk
                    got += len(chunk)
            assert stuck.alive and lively.alive
        finally:
            stuck.close()
            lively.close()


def test_closing_the_loop_closes_its_tunnels_and_their_connections(
        cluster: SimCluster) -> None:
    loop = Loop("closing")
    thread = LoopThread(loop, "test-loop")
    thread.start()
    tunnel = PodTunnel(target_for(cluster), NS, "echo", loop=loop)
    with connect_through(tunnel, ECHO_PORT) as client:
        echo_once(client, b"hi")
        assert thread.stop_and_join()
        assert read_all(client) == b""
    assert tunnel.state == "closed"
    with pytest.raises(TunnelError):
        tunnel.open()
    tunnel.close()  # still fine


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["auto", "spdy"])
def test_wrong_token_is_a_clear_401(cluster: SimCluster, transport: str) -> None:
    tunnel = PodTunnel(target_for(cluster, token="wrong"), NS, "web", transport=transport)
    try:
        with pytest.raises(TunnelError, match="401"):
            tunnel.open()
        assert not tunnel.alive
    finally:
        tunnel.close()


def test_failed_open_closes_queued_connections(cluster: SimCluster) -> None:
    dead = threading.Event()
    tunnel = PodTunnel(target_for(cluster, token="wrong"), NS, "web",
                       on_dead=lambda t: dead.set())
    try:
        clients = [connect_through(tunnel, HTTP_PORT) for _ in range(3)]
        for client in clients:
            assert read_all(client) == b""
            client.close()
        assert dead.wait(10)
        assert tunnel.last_error is not None and "401" in str(tunnel.last_error)
    finally:
        tunnel.close()


class GivenBack:
    """A ``give_back`` callback that keeps what it gets (and what had happened by then)."""

    def __init__(self, dead: threading.Event | None = None) -> None:
        self.socks: list[socket.socket] = []
        self.dead_first: list[bool] = []
        self.dead = dead
        self.event = threading.Event()

    def __call__(self, sock: socket.socket) -> None:
        self.dead_first.append(self.dead is not None and self.dead.is_set())
        self.socks.append(sock)
        self.event.set()

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def test_failed_open_hands_queued_connections_back_after_reporting(
        cluster: SimCluster) -> None:
    dead = threading.Event()
    tunnel = PodTunnel(target_for(cluster, token="wrong"), NS, "web",
                       on_dead=lambda t: dead.set())
    given = GivenBack(dead)
    pairs = [tcp_pair() for _ in range(3)]
    try:
        for _client, accepted in pairs:
            tunnel.splice(accepted, HTTP_PORT, given)
        wait_until(lambda: len(given.socks) == 3)
        # The very sockets spliced, open and untouched: whoever routes them again can.
        assert sorted(map(id, given.socks)) == sorted(id(a) for _c, a in pairs)
        assert given.dead_first == [True] * 3  # the failure was reported before
        client, accepted = pairs[0]
        client.sendall(b"still here")
        accepted.setblocking(True)
        assert accepted.recv(100) == b"still here"
        # A tunnel that is dead hands back what is spliced into it too.
        late_client, late = tcp_pair()
        tunnel.splice(late, HTTP_PORT, given)
        wait_until(lambda: len(given.socks) == 4)
        assert given.socks[-1] is late
        late_client.close()
    finally:
        tunnel.close()
        for client, accepted in pairs:
            client.close()
            accepted.close()
        given.close()


def test_lost_session_hands_back_only_connections_nothing_was_relayed_for(
        cluster: SimCluster) -> None:
    dead = threading.Event()
    used, unused = GivenBack(dead), GivenBack(dead)
    with tunnel_to(cluster, "echo", on_dead=lambda t: dead.set()) as tunnel:
        busy_client, busy = tcp_pair()
        idle_client, idle = tcp_pair()
        try:
            tunnel.splice(busy, ECHO_PORT, used)
            busy_client.settimeout(10)
            echo_once(busy_client, b"relayed")
            tunnel.splice(idle, ECHO_PORT, unused)  # streams opened, nothing sent yet
            wait_until(lambda: tunnel.active == 2)
            cluster.restart_apiserver()  # the session is cut
            assert unused.event.wait(10)
            assert unused.socks == [idle] and unused.dead_first == [True]
            assert read_all(busy_client) == b""  # bytes went through: never replayed
            assert used.socks == []
            assert tunnel.state == "dead"
        finally:
            busy_client.close()
            idle_client.close()
            idle.close()
            used.close()


def test_unknown_pod_is_a_clear_404(cluster: SimCluster) -> None:
    with tunnel_to(cluster, "nope") as tunnel, pytest.raises(TunnelError, match="404"):
        tunnel.open()


def test_deleted_pod_closes_connections_and_kills_the_tunnel(cluster: SimCluster) -> None:
    cluster.apply(pod("victim", "sim/echo", ECHO_PORT))
    cluster.wait_ready(NS)
    dead = threading.Event()
    with tunnel_to(cluster, "victim", on_dead=lambda t: dead.set()) as tunnel:
        with connect_through(tunnel, ECHO_PORT) as client:
            echo_once(client, b"ping\n")
            cluster.delete_pod(NS, "victim")
            assert read_all(client) == b""  # the pod's side went away
        # The API server keeps the session, as a kubelet does; the next connection gets
        # the kubelet's error, which retires the tunnel.
        with connect_through(tunnel, ECHO_PORT) as client:
            assert read_all(client) == b""
        assert dead.wait(5)
        assert not tunnel.alive
        wait_until(lambda: tunnel.state == "dead")


def test_kubelet_error_hands_back_a_connection_nothing_was_relayed_for(
        cluster: SimCluster) -> None:
    cluster.apply(pod("victim2", "sim/echo", ECHO_PORT))
    cluster.wait_ready(NS)
    dead = threading.Event()
    given = GivenBack(dead)
    with tunnel_to(cluster, "victim2", on_dead=lambda t: dead.set()) as tunnel:
        with connect_through(tunnel, ECHO_PORT) as client:
            echo_once(client, b"ping\n")
            cluster.delete_pod(NS, "victim2")
            assert read_all(client) == b""  # it had bytes relayed: it ends
        # Its streams open on the session the API server keeps; the kubelet cannot reach
        # the pod and says so before anything was relayed: it may go to another pod.
        client, accepted = tcp_pair()
        try:
            tunnel.splice(accepted, ECHO_PORT, given)
            assert given.event.wait(10)
            assert given.socks == [accepted] and given.dead_first == [True]
            assert "error forwarding port" in str(tunnel.last_error)
            wait_until(lambda: tunnel.state == "dead")  # retired, and its last one is gone
        finally:
            client.close()
            given.close()


def test_api_server_restart_kills_the_tunnel_and_the_pool_replaces_it(
        cluster: SimCluster) -> None:
    died = threading.Event()
    pool = TunnelPool(on_dead=lambda *key: died.set())
    target = target_for(cluster)
    try:
        first = pool.get(target, "sim", NS, "echo")
        with connect_through(first, ECHO_PORT) as client:
            echo_once(client, b"before")
            cluster.restart_apiserver()
            assert read_all(client) == b""
        assert died.wait(5)
        assert not first.alive
        second = pool.get(target, "sim", NS, "echo")
        assert second is not first
        with connect_through(second, ECHO_PORT) as client:
            echo_once(client, b"after")
    finally:
        pool.close()


# --- keepalive and fallback against a stub server ------------------------------------------


class StubServer:
    """A tiny plain-HTTP API server: ``handler(sock, head)`` serves each connection."""

    def __init__(self, handler: Callable[[socket.socket, ws.HttpHead], None]) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.requests: list[ws.HttpHead] = []
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._run, name="stub-accept")
        self._accept.start()

    def target(self) -> ApiTarget:
        return ApiTarget(host="127.0.0.1", port=self.listener.getsockname()[1], scheme="http")

    def _run(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), name="stub-conn")
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            head = ws.read_http_head(sock)
            self.requests.append(head)
            self.handler(sock, head)
        except (OSError, ws.HandshakeError):
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._accept.join()
        for sock in self.conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join()
        for sock in self.conns:
            sock.close()


def status_response(code: int, message: str) -> bytes:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": message, "code": code}).encode()
    return (f"HTTP/1.1 {code} Nope\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def silent_spdy(sock: socket.socket, head: ws.HttpHead) -> None:
    """Refuse WebSockets; accept the SPDY upgrade, then never answer anything."""
    if head.headers.get("upgrade", "").lower() == "websocket":
        sock.sendall(status_response(400, "no websockets here"))
        return
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                 b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n")
    while sock.recv(65536):
        pass


def test_auto_falls_back_to_spdy_and_dead_peer_is_detected() -> None:
    stub = StubServer(silent_spdy)
    dead = threading.Event()
    tunnel = PodTunnel(stub.target(), NS, "web", ping_interval=0.1,
                       on_dead=lambda t: dead.set())
    try:
        tunnel.open()
        assert tunnel.transport_name == "spdy"
        assert [r.start_line.split()[0] for r in stub.requests] == ["GET", "POST"]
        client = connect_through(tunnel, HTTP_PORT)
        assert dead.wait(5)
        assert not tunnel.alive
        assert "keepalive" in str(tunnel.last_error)
        assert read_all(client) == b""
        client.close()
    finally:
        tunnel.close()
        stub.close()


def test_an_idle_session_sends_no_pings_and_pings_again_once_it_carries_a_connection() -> None:
    """Thousands of idle sessions must not wake a thread each few seconds: pings run only
    while a session carries connections (TCP keepalive watches an idle one)."""
    received: list[bytes] = []

    def recording_spdy(sock: socket.socket, head: ws.HttpHead) -> None:
        if head.headers.get("upgrade", "").lower() == "websocket":
            sock.sendall(status_response(400, "no websockets here"))
            return
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n")
        while chunk := sock.recv(65536):
            received.append(chunk)

    stub = StubServer(recording_spdy)
    tunnel = PodTunnel(stub.target(), NS, "web", ping_interval=0.05)
    try:
        tunnel.open()
        threading.Event().wait(0.5)  # ten ping intervals
        assert b"".join(received) == b""
        client = connect_through(tunnel, HTTP_PORT)
        deadline = time.monotonic() + 5
        pings = 0
        while not pings and time.monotonic() < deadline:
            threading.Event().wait(0.05)
            data = b"".join(received)
            pings = data.count(bytes([0x80, 0x03, 0x00, spdyframes.PING]))
        assert pings >= 1  # the first, unanswered, so the session is then given up
        client.close()
    finally:
        tunnel.close()
        stub.close()


@pytest.mark.parametrize("transport", ["spdy-ws", "spdy"])
def test_a_session_whose_last_connection_ended_keeps_no_ping_timer(
    cluster: SimCluster, transport: str,
) -> None:
    """Its keepalive timer is cancelled and dropped at once, not left to wake the loop for
    nothing one ping interval later (thousands of sessions just used all at once)."""

    def keepalives() -> list[Any]:
        return [t for _when, _seq, t in tunnel.loop._timers
                if not t.cancelled and getattr(t.fn, "__name__", "") == "_keepalive"]

    with tunnel_to(cluster, "web", transport=transport, ping_interval=30.0) as tunnel:
        client = connect_through(tunnel, HTTP_PORT)
        wait_until(lambda: tunnel.load == 1 and len(keepalives()) == 1)
        client.close()
        wait_until(lambda: tunnel.load == 0, 5)
        tunnel.loop.call_soon(lambda: None)  # one more round: the loop drops what it can
        wait_until(lambda: not keepalives() and not any(
            t.cancelled for _when, _seq, t in tunnel.loop._timers), 5)
        again = connect_through(tunnel, HTTP_PORT)  # a new connection pings again
        wait_until(lambda: len(keepalives()) == 1)
        again.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(again).endswith(b"web\n")
        again.close()


def spdy_then_goaway(sock: socket.socket, head: ws.HttpHead) -> None:
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                 b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n")
    sock.sendall(spdyframes.goaway_frame(0))
    while sock.recv(65536):
        pass


def test_goaway_retires_the_tunnel() -> None:
    stub = StubServer(spdy_then_goaway)
    dead = threading.Event()
    tunnel = PodTunnel(stub.target(), NS, "web", transport="spdy",
                       on_dead=lambda t: dead.set())
    try:
        with contextlib.suppress(TunnelError):  # it may be over before open() returns
            tunnel.open()
        assert dead.wait(5)
        assert "GOAWAY" in str(tunnel.last_error)
        wait_until(lambda: tunnel.state == "dead")
    finally:
        tunnel.close()
        stub.close()


def test_credentials_are_fetched_fresh_for_every_session() -> None:
    stub = StubServer(silent_spdy)
    calls: list[int] = []

    def auth() -> dict[str, str]:
        calls.append(len(calls) + 1)
        return {"Authorization": f"Bearer token-{len(calls)}"}

    target = ApiTarget(host="127.0.0.1", port=stub.listener.getsockname()[1], scheme="http",
                       auth_headers=auth)
    tunnel = PodTunnel(target, NS, "web", transport="spdy", idle_timeout=0.05)
    try:
        tunnel.open()
        wait_until(lambda: tunnel.state == "idle")
        tunnel.open()
        sent = [r.headers.get("authorization") for r in stub.requests]
        assert sent == ["Bearer token-1", "Bearer token-2"]
    finally:
        tunnel.close()
        stub.close()


def never_answer(sock: socket.socket, head: ws.HttpHead) -> None:
    while sock.recv(65536):
        pass


def test_close_while_opening_returns_promptly_and_closes_queued_connections() -> None:
    stub = StubServer(never_answer)
    tunnel = PodTunnel(stub.target(), NS, "web", open_timeout=30)
    try:
        client = connect_through(tunnel, HTTP_PORT)
        wait_until(lambda: stub.requests)
        started = time.monotonic()
        tunnel.close()
        assert time.monotonic() - started < 2
        assert read_all(client) == b""
        client.close()
    finally:
        tunnel.close()
        stub.close()


def refuse_all(sock: socket.socket, head: ws.HttpHead) -> None:
    sock.sendall(status_response(400, "upgrade not supported"))


def test_auto_falls_back_to_websocket_v4_when_spdy_is_refused() -> None:
    stub = StubServer(refuse_all)
    tunnel = PodTunnel(stub.target(), NS, "web")
    try:
        tunnel.open()
        assert tunnel.transport_name == "ws"
        client = connect_through(tunnel, HTTP_PORT)
        assert read_all(client) == b""  # the v4 upgrade is refused too: connection closed
        client.close()
        assert [r.start_line.split()[1] for r in stub.requests][-1].endswith("?ports=8080")
    finally:
        tunnel.close()
        stub.close()


# --- pool ---------------------------------------------------------------------------------


def test_pool_shares_tunnels_and_replaces_dead_ones(cluster: SimCluster) -> None:
    pool = TunnelPool()
    target = target_for(cluster)
    try:
        first = pool.get(target, "sim", NS, "web")
        assert pool.get(target, "sim", NS, "web") is first
        assert http_get(first) == b"web\n"
        first.kill("simulated death")
        wait_until(lambda: not first.alive)
        second = pool.get(target, "sim", NS, "web")
        assert second is not first
        assert first.state == "closed"
        assert http_get(second) == b"web\n"
        pool.drop("sim", NS, "web")
        assert not second.alive and second.state == "closed"
    finally:
        pool.close()


def test_pool_replaces_a_tunnel_when_the_target_changes_without_cutting_it(
        cluster: SimCluster) -> None:
    died: list[tuple[str, str, str]] = []
    pool = TunnelPool(on_dead=lambda *key: died.append(key))
    try:
        first = pool.get(target_for(cluster), "sim", NS, "echo")
        with connect_through(first, ECHO_PORT) as client:
            echo_once(client, b"a")
            second = pool.get(target_for(cluster), "sim", NS, "echo")  # new credentials
            assert second is not first and first.retiring
            echo_once(client, b"b")
        wait_until(lambda: first.state == "dead")
        assert died == []  # a planned replacement is no failure of the pod
    finally:
        pool.close()


def test_pool_keeps_a_retiring_tunnel_until_its_connections_end(cluster: SimCluster) -> None:
    pool = TunnelPool()
    target = target_for(cluster)
    try:
        first = pool.get(target, "sim", NS, "echo")
        healthy = connect_through(first, ECHO_PORT)
        echo_once(healthy, b"x")
        with connect_through(first, 9) as refused:
            assert read_all(refused) == b""
        wait_until(lambda: not first.alive)
        second = pool.get(target, "sim", NS, "echo")
        assert second is not first and first.retiring
        echo_once(healthy, b"still")
        healthy.close()
        wait_until(lambda: first.state == "dead")
        assert pool.tunnels() == [second]
        assert first.state == "closed"
    finally:
        pool.close()


# --- throughput probe (not a test) --------------------------------------------------------


def _probe(size: int) -> None:
    """One-connection download MB/s: straight to the pod, then through each transport.

    The simulated cluster runs in a process of its own, so the client and the server do
    not share one interpreter lock, as in real use.
    """
    import base64
    import subprocess
    import tempfile
    import urllib.request

    import yaml

    def timed_download(sock: socket.socket) -> float:
        with sock:
            start = time.perf_counter()
            sock.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: x\r\n"
                         "Connection: close\r\n\r\n".encode())
            buf = bytearray(1 << 20)
            total = 0
            while n := sock.recv_into(buf):
                total += n
            elapsed = time.perf_counter() - start
        assert total > size
        return size / elapsed / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        manifest = os.path.join(tmp, "pod.yaml")
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(manifest, "w") as f:
            yaml.safe_dump(pod("web", "sim/http", HTTP_PORT), f)
        sim = subprocess.Popen([sys.executable, "-m", "kubefwd", "sim", "-o", kubeconfig,
                                "-f", manifest], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(kubeconfig):
                assert time.monotonic() < deadline and sim.poll() is None
                time.sleep(0.05)
            with open(kubeconfig) as f:
                config = yaml.safe_load(f)
            server = config["clusters"][0]["cluster"]
            ca = base64.b64decode(server["certificate-authority-data"]).decode()
            token = config["users"][0]["user"]["token"]
            port = int(server["server"].rsplit(":", 1)[1])
            context = ssl.create_default_context(cadata=ca)
            target = ApiTarget(host="127.0.0.1", port=port, scheme="https",
                               ssl_context=context,
                               auth_headers=lambda: {"Authorization": f"Bearer {token}"})
            request = urllib.request.Request(
                f"{server['server']}/api/v1/namespaces/{NS}/pods/web",
                headers={"Authorization": f"Bearer {token}"})
            while True:
                with urllib.request.urlopen(request, context=context) as response:
                    status = json.load(response).get("status", {})
                if status.get("podIP") and status.get("phase") == "Running":
                    break
                time.sleep(0.05)
            print(f"download of {size >> 20} MiB over one connection, sim in its own process")
            for _ in range(2):  # the second round is warm
                results = [("direct", timed_download(
                    socket.create_connection((status["podIP"], HTTP_PORT))))]
                for transport in ("spdy-ws", "spdy", "ws"):
                    tunnel = PodTunnel(target, NS, "web", transport=transport)
                    try:
                        tunnel.open()
                        results.append((transport,
                                        timed_download(connect_through(tunnel, HTTP_PORT))))
                    finally:
                        tunnel.close()
            for name, rate in results:
                print(f"  {name:<8} {rate:8.1f} MB/s")
        finally:
            sim.terminate()
            sim.wait(10)


if __name__ == "__main__":
    _probe((int(sys.argv[1]) if len(sys.argv) > 1 else 500) << 20)


def test_later_dials_resume_the_tls_session(cluster: SimCluster) -> None:
    """Thousands of tunnels are thousands of TLS handshakes: after the first, each resumes
    the session (no certificate check, no server signature) and still works."""
    from kubefwd.tunnel.dial import _tls_sessions, negotiate

    target = target_for(cluster)
    path = f"/api/v1/namespaces/{NS}/pods/web/portforward"
    reused = []
    taken = _tls_sessions.taken
    for _ in range(4):
        _name, sock, _rest = negotiate(target, path, transport="spdy", prefer="", timeout=10,
                                       track=lambda _s: None, label="web")
        assert isinstance(sock, ssl.SSLSocket)
        reused.append(sock.session_reused)
        sock.close()
    assert reused == [False, True, True, True]
    # The first session is kept and used again: not copied out of every connection.
    assert _tls_sessions.taken - taken == 1
    with tunnel_to(cluster, "web") as tunnel:  # a fresh context: a full handshake, and works
        client = connect_through(tunnel, HTTP_PORT)
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_all(client).startswith(b"HTTP/1.")
        client.close()


def test_a_kept_tls_session_is_replaced_when_a_dial_does_not_resume_or_it_is_old(
        cluster: SimCluster) -> None:
    """The kept session is used again until the server stops resuming it (new ticket keys)
    or it is old; then the new connection's session is kept instead."""
    from kubefwd.tunnel.dial import _TlsSessions, connect

    now = [0.0]
    sessions = _TlsSessions(clock=lambda: now[0])
    target = target_for(cluster)
    context = target.tls_context()

    def dial() -> ssl.SSLSocket:
        sock = connect(target, 10, lambda _s: None)
        assert isinstance(sock, ssl.SSLSocket)
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        read_all(sock)  # the tickets come after the handshake
        return sock

    first = dial()
    sessions.put(target, first)
    kept = sessions.get(target, context)
    assert kept is not None and sessions.taken == 1
    second = context.wrap_socket(socket.create_connection(("127.0.0.1", cluster.port)),
                                 server_hostname="127.0.0.1", session=kept)
    assert second.session_reused
    sessions.put(target, second)
    assert sessions.get(target, context) is kept and sessions.taken == 1
    # Not resumed (as after the server rotated its ticket keys): the new session is kept.
    third = dial()
    assert not third.session_reused
    sessions.put(target, third)
    assert sessions.get(target, context) is not kept and sessions.taken == 2
    # Resumed, but the kept session is old: refreshed.
    kept = sessions.get(target, context)
    now[0] += _TlsSessions.REFRESH_AFTER + 1
    fourth = context.wrap_socket(socket.create_connection(("127.0.0.1", cluster.port)),
                                 server_hostname="127.0.0.1", session=kept)
    assert fourth.session_reused
    sessions.put(target, fourth)
    assert sessions.get(target, context) is not kept and sessions.taken == 3
    for sock in (first, second, third, fourth):
        sock.close()


def test_tunnels_opening_at_once_share_a_few_opener_threads(cluster: SimCluster) -> None:
    openers = Openers(limit=2, name="test-dialer")
    with shared_loop() as loop:
        tunnels = [PodTunnel(target_for(cluster), NS, "web", loop=loop, openers=openers)
                   for _ in range(8)]
        try:
            clients = [connect_through(t, HTTP_PORT) for t in tunnels]
            for client in clients:
                client.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
                assert read_all(client).endswith(b"web\n")
                client.close()
            assert all(t.sessions == 1 for t in tunnels)
            assert 1 <= openers.started <= 2  # eight dials, not eight threads
        finally:
            for t in tunnels:
                t.close()
    wait_until(lambda: openers.running == 0)
