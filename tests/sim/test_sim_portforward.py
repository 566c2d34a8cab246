"""Port-forward through the simulated API server, judged by real clients.

kubectl (SPDY tunnelled in a WebSocket, and plain SPDY), the official ``kubernetes`` Python
client (WebSocket v4), and raw connections built on ``kubefwd.wire`` for the error paths:
handshake errors, unreachable ports, garbage frames, pod deletion.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers import echo_roundtrip, http_get, kubectl_port_forward, manifests, service, wait_for

from kubefwd.sim import SimCluster, wssession
from kubefwd.sim import spdysession as spdy
from kubefwd.wire import websocket as ws

pytestmark = pytest.mark.e2e

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: default, labels: {app: echo}}
spec:
  containers: [{name: echo, image: sim/echo, ports: [{containerPort: 7000}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  containers: [{name: web, image: sim/http, ports: [{containerPort: 8080}]}]
"""
MANIFESTS = manifests(PODS, service("echo", "default", ports="[{port: 7000, targetPort: 7000}]"),
                      service("web", "default", ports="[{port: 80, targetPort: 8080}]"))
PF_PATH = "/api/v1/namespaces/default/pods/{pod}/portforward"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimCluster]:
    with SimCluster(manifests=MANIFESTS) as c:
        c.wait_ready("default")
        yield c


@pytest.fixture(autouse=True)
def _no_latency(cluster: SimCluster) -> Iterator[None]:
    yield
    cluster.port_forward_latency(0.0)


# --- helpers -------------------------------------------------------------------------------


def api_connect(cluster: SimCluster) -> ssl.SSLSocket:
    assert cluster.credentials is not None
    raw = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)
    return cluster.credentials.client_context().wrap_socket(raw, server_hostname="127.0.0.1")


def upgrade_request(cluster: SimCluster, pod: str, headers: dict[str, str],
                    method: str = "POST", query: str = "") -> tuple[ssl.SSLSocket, ws.HttpHead]:
    sock = api_connect(cluster)
    lines = [f"{method} {PF_PATH.format(pod=pod)}{query} HTTP/1.1", "Host: 127.0.0.1",
             f"Authorization: Bearer {cluster.token}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock, ws.read_http_head(sock)


SPDY_HEADERS = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                "X-Stream-Protocol-Version": "portforward.k8s.io"}


class SpdyForward:
    """A minimal SPDY port-forward client on kubefwd.wire, as kubectl does it."""

    def __init__(self, cluster: SimCluster, pod: str) -> None:
        sock, head = upgrade_request(cluster, pod, SPDY_HEADERS)
        assert head.status == 101, head.start_line
        assert head.headers["x-stream-protocol-version"] == "portforward.k8s.io"
        self.session = spdy.SpdySession(sock, server=False, initial=head.rest,
                                        name="test-spdy").start()
        self._request = 0

    def open(self, port: int) -> tuple[spdy.SpdyStream, spdy.SpdyStream, dict[str, Any]]:
        state: dict[str, Any] = {"data": bytearray(), "error": bytearray(),
                                 "data_fin": threading.Event(), "error_fin": threading.Event()}
        common = {"port": str(port), "requestID": str(self._request)}
        self._request += 1
        error = self.session.open_stream(
            {"streamType": "error", **common}, on_data=lambda v: state["error"].extend(v),
            on_fin=state["error_fin"].set, on_reset=lambda c: state["error_fin"].set())
        error.close()
        data = self.session.open_stream(
            {"streamType": "data", **common}, on_data=lambda v: state["data"].extend(v),
            on_fin=state["data_fin"].set, on_reset=lambda c: state["data_fin"].set())
        assert error.wait_reply(5) and data.wait_reply(5)
        return data, error, state

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> SpdyForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- kubectl -------------------------------------------------------------------------------


@pytest.mark.parametrize("websockets", [True, False], ids=["spdy-in-websocket", "spdy"])
def test_kubectl_pod_concurrent_large_and_half_close(cluster: SimCluster,
                                                     websockets: bool) -> None:
    with kubectl_port_forward(cluster, "pod/echo", 7000, websockets=websockets) as (port, _proc):
        results: dict[int, bool] = {}

        def one(i: int) -> None:
            data = os.urandom(200_000 + i)
            results[i] = echo_roundtrip("127.0.0.1", port, data) == data

        threads = [threading.Thread(target=one, args=(i,), name=f"test-conn-{i}")
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {i: True for i in range(8)}

        big = os.urandom(50 << 20)
        back = echo_roundtrip("127.0.0.1", port, big)
        assert hashlib.sha256(back).hexdigest() == hashlib.sha256(big).hexdigest()

        # Half-close: the echo pod sees EOF only after everything was sent, and answers all.
        assert echo_roundtrip("127.0.0.1", port, b"last words") == b"last words"


@pytest.mark.parametrize("websockets", [True, False], ids=["spdy-in-websocket", "spdy"])
def test_kubectl_service(cluster: SimCluster, websockets: bool) -> None:
    with kubectl_port_forward(cluster, "svc/web", 80, websockets=websockets) as (port, _proc):
        status, body = http_get("127.0.0.1", port, "/", timeout=10, version="1.1")
        assert status.endswith("200 OK") and body == b"web\n"
        status, body = http_get("127.0.0.1", port, "/bytes/1000000", timeout=10, version="1.1")
        assert len(body) == 1_000_000
    with kubectl_port_forward(cluster, "svc/echo", 7000, websockets=websockets) as (port, _proc):
        assert echo_roundtrip("127.0.0.1", port, b"via service") == b"via service"


def test_kubectl_unused_port_reports_the_kubelet_error(cluster: SimCluster) -> None:
    with kubectl_port_forward(cluster, "pod/web", 9999, websockets=False) as (port, proc):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(100) == b""
        # Newer kubectl gives up the whole forward after an error; older ones keep going.
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    assert "error forwarding port 9999 to pod web" in err
    assert "connection refused" in err


# --- the official Python client (WebSocket v4) ---------------------------------------------


@contextmanager
def python_portforward(cluster: SimCluster, pod: str, port: int) -> Iterator[tuple[Any, Any]]:
    """The official client's port-forward to ``pod``; yields (PortForward, its socket)."""
    from kubernetes import client, config
    from kubernetes.stream import portforward

    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    api = client.CoreV1Api(api_client)
    pf = portforward(api.connect_get_namespaced_pod_portforward, pod, "default",
                     ports=str(port))
    try:
        sock = pf.socket(port)
        sock.settimeout(10)
        yield pf, sock
        sock.close()
    finally:
        pf.close()
        api_client.close()


def test_python_client_portforward_http(cluster: SimCluster) -> None:
    with python_portforward(cluster, "web", 8080) as (pf, sock):
        sock.sendall(b"GET /bytes/300000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = bytearray()
        while chunk := sock.recv(1 << 20):
            raw.extend(chunk)
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and len(body) == 300_000
        assert pf.error(8080) is None


def test_python_client_unused_port_gets_the_error(cluster: SimCluster) -> None:
    with python_portforward(cluster, "web", 9999) as (pf, sock):
        assert sock.recv(10) == b""
        error = wait_for(lambda: pf.error(9999), 5, "the port's error")
        assert error.startswith("error forwarding port 9999 to pod web, uid ")
        assert error.endswith("connect: connection refused")


# --- raw protocol checks -------------------------------------------------------------------


def test_spdy_upgrade_needs_the_protocol_header(cluster: SimCluster) -> None:
    headers = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
    sock, head = upgrade_request(cluster, "web", headers)
    sock.close()
    assert head.status == 400
    sock, head = upgrade_request(cluster, "web",
                                 {**headers, "X-Stream-Protocol-Version": "channel.k8s.io"})
    sock.close()
    assert head.status == 403


def test_spdy_half_close_and_error_stream(cluster: SimCluster) -> None:
    with SpdyForward(cluster, "echo") as client:
        data, _error, state = client.open(7000)
        data.send(b"hello ")
        data.send(b"world", fin=True)
        assert state["data_fin"].wait(5) and state["error_fin"].wait(5)
        assert bytes(state["data"]) == b"hello world" and state["error"] == b""

        _data, _error, state = client.open(9999)
        assert state["error_fin"].wait(5) and state["data_fin"].wait(5)
        message = state["error"].decode()
        assert re.fullmatch(r"error forwarding port 9999 to pod echo, uid [0-9a-f-]+: "
                            r".*connect: connection refused", message), message
        assert client.session.ping(5) < 1.0


def test_spdy_data_stream_first_with_early_data(cluster: SimCluster) -> None:
    with SpdyForward(cluster, "echo") as client:
        got = bytearray()
        fin = threading.Event()
        common = {"port": "7000", "requestID": "7"}
        data = client.session.open_stream({"streamType": "data", **common},
                                          on_data=got.extend, on_fin=fin.set)
        assert data.wait_reply(5)
        data.send(b"before the pair was complete", fin=True)
        error = client.session.open_stream({"streamType": "error", **common})
        error.close()
        assert fin.wait(5) and bytes(got) == b"before the pair was complete"


def test_websocket_v4_base64_and_repeated_ports(cluster: SimCluster) -> None:
    protocols = ["v5.channel.k8s.io", "v4.base64.channel.k8s.io"]
    request, key = ws.client_handshake_request(host="127.0.0.1", path="/", protocols=protocols)
    sock, head = upgrade_request(cluster, "web", {
        line.split(": ", 1)[0]: line.split(": ", 1)[1]
        for line in request.decode().split("\r\n")[2:] if line
    }, method="GET", query="?ports=8080&ports=9999")
    assert ws.check_handshake_response(head, key, protocols) == "v4.base64.channel.k8s.io"
    conn = wssession.WebSocket(sock, client=True, initial=head.rest)
    try:
        firsts = [conn.recv_message() for _ in range(4)]
        assert [m and m[0] for m in firsts] == [ws.OP_TEXT] * 4
        ports = {m[1][:1]: base64.b64decode(m[1][1:]) for m in firsts if m}
        assert ports == {b"0": struct.pack("<H", 8080), b"1": struct.pack("<H", 8080),
                         b"2": struct.pack("<H", 9999), b"3": struct.pack("<H", 9999)}
        request_bytes = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        conn.send_text(b"0" + base64.b64encode(request_bytes))
        received: dict[int, bytes] = {0: b"", 3: b""}
        while (message := conn.recv_message()) is not None:
            channel = message[1][0] - 48
            received[channel] = received.get(channel, b"") + base64.b64decode(message[1][1:])
        assert received[0].startswith(b"HTTP/1.1 200") and received[0].endswith(b"web\n")
        assert b"error forwarding port 9999 to pod web" in received[3]
    finally:
        conn.close()


def test_garbage_frames_close_only_that_connection(cluster: SimCluster) -> None:
    with SpdyForward(cluster, "echo") as healthy:
        # Garbage after a SPDY upgrade.
        sock, head = upgrade_request(cluster, "echo", SPDY_HEADERS)
        assert head.status == 101
        sock.sendall(b"\x80\x02\x00\x01" + b"\xff" * 100)
        sock.settimeout(5)
        while sock.recv(65536):
            pass
        sock.close()
        # Garbage after a WebSocket upgrade (an unmasked frame from a client).
        request, _key = ws.client_handshake_request(host="x", path="/",
                                                    protocols=["v4.channel.k8s.io"])
        hdrs = dict(line.split(": ", 1) for line in request.decode().split("\r\n")[2:] if line)
        sock, head = upgrade_request(cluster, "echo", hdrs, method="GET", query="?ports=7000")
        assert head.status == 101
        sock.sendall(ws.encode_frame(ws.OP_BINARY, b"\x00abc", masked=False))
        sock.settimeout(5)
        while sock.recv(65536):
            pass
        sock.close()
        # The other connection did not notice.
        data, _error, state = healthy.open(7000)
        data.send(b"still fine", fin=True)
        assert state["data_fin"].wait(5) and bytes(state["data"]) == b"still fine"


WS_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}


def _cut(sock: ssl.SSLSocket, reset: bool) -> None:
    """End a connection as a client that goes away does: a FIN, or a reset."""
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket.shutdown(sock, socket.SHUT_RDWR)
    sock.close()


@pytest.mark.parametrize("when", ["after opening streams", "before the 101"])
def test_a_client_gone_during_a_reply_is_a_quiet_end(
    cluster: SimCluster, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    # SPDY in a WebSocket over TLS: the client opens stream pairs and goes away at once, so
    # the server's SYN_REPLY (or its 101) meets a closed connection. That is how connections
    # end, not an error: nothing is logged above debug, and the server keeps serving.
    caplog.set_level(logging.DEBUG, logger="kubefwd.sim")

    def serving() -> int:  # the API server's connection threads
        return sum(t.name.startswith("sim-api-conn-") for t in threading.enumerate())

    before = serving()
    ends = 0
    for i in range(12):
        key = base64.b64encode(os.urandom(16)).decode()
        headers = {**WS_HEADERS, "Sec-WebSocket-Key": key,
                   "Sec-WebSocket-Protocol": "SPDY/3.1+portforward.k8s.io"}
        if when == "before the 101":
            sock = api_connect(cluster)
            lines = [f"POST {PF_PATH.format(pod='echo')} HTTP/1.1", "Host: 127.0.0.1",
                     f"Authorization: Bearer {cluster.token}",
                     *(f"{k}: {v}" for k, v in headers.items())]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            _cut(sock, reset=bool(i % 2))
            ends += 1
            continue
        sock, head = upgrade_request(cluster, "echo", headers)
        assert head.status == 101, head.start_line
        conn = wssession.WebSocket(sock, client=True, initial=head.rest)
        session = spdy.SpdySession(wssession.WebSocketByteStream(conn), server=False,
                                   name="test-gone").start()
        for request in range(3):
            common = {"port": "7000", "requestID": str(request)}
            session.open_stream({"streamType": "error", **common})
            session.open_stream({"streamType": "data", **common})
        _cut(sock, reset=bool(i % 2))
        session.close(1.0)
        ends += 1
    wait_for(lambda: serving() <= before, what="the server to see every client go")
    loud = [f"{r.name} {r.levelname} {r.getMessage()} {r.exc_info and r.exc_info[1]!r}"
            for r in caplog.records if r.levelno > logging.DEBUG and r.name.startswith("kubefwd")]
    assert not loud, loud
    assert ends == 12
    with SpdyForward(cluster, "echo") as healthy:
        data, _error, state = healthy.open(7000)
        data.send(b"still serving", fin=True)
        assert state["data_fin"].wait(5) and bytes(state["data"]) == b"still serving"


@pytest.mark.parametrize("how", ["delete", "kill"])
def test_pod_deletion_or_death_ends_its_forwarded_connections(how: str) -> None:
    with SimCluster(manifests=MANIFESTS.split("---")[0]) as c:
        c.wait_ready("default")
        with SpdyForward(c, "echo") as client:
            data, _error, state = client.open(7000)
            data.send(b"ping")
            c.wait_for(lambda: bytes(state["data"]) == b"ping", 5)
            if how == "delete":
                c.delete_pod("default", "echo")
            else:
                c.kill_pod("default", "echo")
            assert state["data_fin"].wait(5) and state["error_fin"].wait(5)
            # Like a kubelet, the port-forward connection itself stays up.
            assert client.session.ping(5) < 1.0


def test_apiserver_restart_ends_port_forward_connections(cluster: SimCluster) -> None:
    with SpdyForward(cluster, "echo") as client:
        data, _error, state = client.open(7000)
        data.send(b"x")
        cluster.wait_for(lambda: bytes(state["data"]) == b"x", 5)
        cluster.restart_apiserver()
        assert client.session.closed.wait(5) and state["data_fin"].wait(5)
    with SpdyForward(cluster, "echo") as client:  # the restarted server serves new ones
        data, _error, state = client.open(7000)
        data.send(b"again", fin=True)
        assert state["data_fin"].wait(5) and bytes(state["data"]) == b"again"


def _one_connection_seconds(cluster: SimCluster) -> float:
    """How long opening a forwarded connection and an echo through it takes."""
    with SpdyForward(cluster, "echo") as client:
        start = time.monotonic()
        data, _error, state = client.open(7000)
        data.send(b"x", fin=True)
        assert state["data_fin"].wait(5) and bytes(state["data"]) == b"x"
        return time.monotonic() - start


def test_latency_fault_delays_each_new_connection(cluster: SimCluster) -> None:
    cluster.port_forward_latency(0.0)
    fast = _one_connection_seconds(cluster)
    cluster.port_forward_latency(0.3)
    assert _one_connection_seconds(cluster) >= 0.3 > fast
