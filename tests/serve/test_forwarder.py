"""Forwarder: listeners, accept-time routing, held connections, bind errors (real sockets)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kubefwd.cluster.target import ApiTarget
from kubefwd.errors import NetworkError
from kubefwd.serve.forwarder import Forwarder, ListenPort, PodBackoff, bind_listener
from kubefwd.sim import SimCluster
from kubefwd.tunnel import PodTunnel, TunnelPool

IP = "127.1.99.1"


class ReplySplicer:
    """Stands in for a pod tunnel: answers each connection with ``<name>:<port>:<data>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.threads: list[threading.Thread] = []
        self.taps: list[object] = []  # the tap given with each connection

    def splice(self, local: socket.socket, port: int,
               give_back: Callable[[socket.socket], None] | None = None,
               meter: object = None, prefix: bytes = b"", tap: object = None) -> None:
        self.taps.append(tap)
        def serve() -> None:
            with local:
                data = local.recv(1024)
                local.sendall(f"{self.name}:{port}:".encode() + data)

        thread = threading.Thread(target=serve, name=f"splice/{self.name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(5)


def free_port(ip: str = IP) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def ask(port: int, ip: str = IP, payload: bytes = b"hi", timeout: float = 5.0) -> bytes:
    with socket.create_connection((ip, port), timeout=timeout) as c:
        c.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = c.recv(1024)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def splicers() -> Iterator[dict[str, ReplySplicer]]:
    made = {"a": ReplySplicer("a"), "b": ReplySplicer("b")}
    yield made
    for s in made.values():
        s.join()


def start(fwd: Forwarder) -> Forwarder:
    assert fwd.bind() == []
    fwd.start()
    return fwd


def test_each_connection_is_routed_at_accept_time(splicers: dict[str, ReplySplicer]) -> None:
    current = {"pod": "a"}
    port = free_port()
    fwd = start(Forwarder("ctx/ns/web", IP, [ListenPort(80, port)],
                          lambda key, p: (splicers[current["pod"]], p + 8000)))
    try:
        assert ask(port) == b"a:8080:hi"
        current["pod"] = "b"  # the pod changed: the very next connection goes to b
        assert ask(port) == b"b:8080:hi"
        assert fwd.name == "forward/ctx/ns/web"
    finally:
        assert fwd.stop_and_join()


def test_multi_port_service_routes_by_service_port(splicers: dict[str, ReplySplicer]) -> None:
    p1, p2 = free_port(), free_port()
    seen: list[tuple[str, int]] = []

    def route(key: str, port: int) -> tuple[ReplySplicer, int]:
        seen.append((key, port))
        return splicers["a"], port

    fwd = start(Forwarder("k", IP, [ListenPort(80, p1), ListenPort(443, p2)], route))
    try:
        assert ask(p1) == b"a:80:hi"
        assert ask(p2) == b"a:443:hi"
        assert seen == [("k", 80), ("k", 443)]
    finally:
        fwd.stop_and_join()


def test_held_connection_is_spliced_when_a_pod_becomes_ready(
    splicers: dict[str, ReplySplicer],
) -> None:
    ready = threading.Event()
    port = free_port()
    fwd = start(Forwarder("k", IP, [ListenPort(80, port)],
                          lambda key, p: (splicers["a"], p) if ready.is_set() else None,
                          hold_timeout=10))
    try:
        result: list[bytes] = []
        client = threading.Thread(target=lambda: result.append(ask(port)), name="client")
        client.start()
        deadline = threading.Event()
        for _ in range(200):
            if fwd.held_count():
                break
            deadline.wait(0.01)
        assert fwd.held_count() == 1
        ready.set()
        fwd.poke()
        client.join(5)
        assert result == [b"a:80:hi"]
    finally:
        fwd.stop_and_join()


def test_connection_without_a_pod_is_closed_after_the_hold_timeout() -> None:
    port = free_port()
    fwd = start(Forwarder("k", IP, [ListenPort(80, port)], lambda key, p: None,
                          hold_timeout=0.2))
    try:
        assert ask(port) == b""
        assert ask(port, timeout=2) == b""
        assert fwd.stats.dropped == 2
    finally:
        fwd.stop_and_join()


def test_stop_closes_held_connections_and_listeners() -> None:
    port = free_port()
    fwd = start(Forwarder("k", IP, [ListenPort(80, port)], lambda key, p: None))
    client = socket.create_connection((IP, port), timeout=5)
    with client:
        for _ in range(200):
            if fwd.held_count():
                break
            threading.Event().wait(0.01)
        assert fwd.stop_and_join()
        try:
            assert client.recv(10) == b""
        except ConnectionResetError:
            pass  # a reset is what a held connection gets
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((IP, port), timeout=2).close()


def test_reconfigure_opens_new_ports_and_closes_old_ones(
    splicers: dict[str, ReplySplicer],
) -> None:
    p1, p2 = free_port(), free_port()
    fwd = start(Forwarder("k", IP, [ListenPort(80, p1)], lambda key, p: (splicers["a"], p)))
    try:
        assert fwd.reconfigure(IP, [ListenPort(81, p2)]) == []
        assert fwd.bound_ports() == [p2]
        assert ask(p2) == b"a:81:hi"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((IP, p1), timeout=2).close()
        other_ip = "127.1.99.2"
        assert fwd.reconfigure(other_ip, [ListenPort(81, p2)]) == []
        assert ask(p2, ip=other_ip) == b"a:81:hi"
    finally:
        fwd.stop_and_join()


def test_port_in_use_is_a_clear_error_naming_the_address() -> None:
    port = free_port()
    holder = bind_listener(IP, port)
    try:
        fwd = Forwarder("k", IP, [ListenPort(80, port)], lambda key, p: None)
        errors = fwd.bind()
        assert len(errors) == 1
        message = str(errors[0])
        assert f"{IP}:{port}" in message and "already in use" in message
        assert isinstance(errors[0], NetworkError)
        assert not fwd.listens() and fwd.bound_ports() == []
        holder.close()
        assert fwd.bind() == []  # the address is free again
        assert fwd.listens() and fwd.bound_ports() == [port]
        fwd.stop_and_join()  # never started: still closes what it opened
        assert not fwd.listens()
    finally:
        holder.close()


def test_pod_backoff_doubles_to_the_cap_and_resets_on_success() -> None:
    from kubefwd.serve.forwarder import PodBackoff

    now = [100.0]
    backoff = PodBackoff(clock=lambda: now[0])
    delays = [backoff.failed("pod") for _ in range(11)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == 300.0 and max(delays) == 300.0
    assert not backoff.usable("pod") and backoff.usable("other")
    now[0] += 300.0
    assert backoff.usable("pod")
    backoff.succeeded("pod")
    assert backoff.failed("pod") == 1.0


def test_pod_backoff_is_per_pod_and_says_how_long_is_left() -> None:
    now = [100.0]
    backoff = PodBackoff(initial=2.0, cap=5.0, clock=lambda: now[0])
    assert backoff.remaining("a") == 0.0 and backoff.usable("a")
    assert [backoff.failed("a") for _ in range(3)] == [2.0, 4.0, 5.0]
    assert backoff.failed("b") == 2.0
    assert backoff.remaining("a") == 5.0 and backoff.remaining("b") == 2.0
    now[0] += 1.5
    assert backoff.remaining("a") == 3.5 and not backoff.usable("a")
    now[0] += 0.5
    assert backoff.usable("b") and backoff.remaining("b") == 0.0  # exactly at its end
    now[0] += 10.0
    assert backoff.remaining("a") == 0.0 and backoff.usable("a")  # never negative
    backoff.forget("a")
    backoff.forget("never")  # nothing to forget
    backoff.succeeded("never")
    assert backoff.failed("a") == 2.0  # forgotten: starts again
    assert backoff.failed("b") == 4.0  # the other pod kept its count
    default = PodBackoff(clock=lambda: now[0])
    assert [default.failed("p") for _ in range(10)][-2:] == [256.0, 300.0]


def test_tunnels_live_on_the_forwarder_thread() -> None:
    """A forward with real tunnels: its connections cost no thread beyond its own."""
    import ssl

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "fw"},
           "spec": {"containers": [{"name": "main", "image": "sim/http",
                                    "ports": [{"containerPort": 8080}]}]}}
    with SimCluster(manifests=[pod]) as cluster:
        cluster.wait_ready("fw")
        context = ssl.create_default_context(cadata=(cluster.ca_pem or b"").decode("ascii"))
        target = ApiTarget(host="127.0.0.1", port=cluster.port, scheme="https",
                           ssl_context=context,
                           auth_headers=lambda: {"Authorization": f"Bearer {cluster.token}"})
        pool = TunnelPool()
        port = free_port()
        fwd: Forwarder

        def route(key: str, p: int) -> tuple[PodTunnel, int]:
            return pool.get(target, "sim", "fw", "web", loop=fwd.loop), 8080

        fwd = start(Forwarder("fw/web", IP, [ListenPort(80, port)], route))
        try:
            clients = [socket.create_connection((IP, port), timeout=5) for _ in range(20)]
            for client in clients:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for client in clients:
                answer = b""
                while not answer.endswith(b"web\n"):
                    chunk = client.recv(4096)
                    assert chunk, answer
                    answer += chunk
            names = [t.name for t in threading.enumerate()
                     if t.name.startswith(("forward/", "tunnel"))]
            assert names == ["forward/fw/web"]
            for client in clients:
                client.close()
            (tunnel,) = pool.tunnels()
            assert tunnel.connections == 20 and tunnel.sessions == 1
        finally:
            assert fwd.stop_and_join()
            pool.close()
        assert tunnel.state == "closed"  # the forward's end took its tunnels along


# --- real tunnels: connections a tunnel could not carry are routed again --------------------


def http_pod(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "fw"},
            "spec": {"containers": [{"name": "main", "image": "sim/http",
                                     "ports": [{"containerPort": 8080}]}]}}


def sim_target(cluster: SimCluster,
               credentials: Callable[[], dict[str, str]] | None = None) -> ApiTarget:
    import ssl

    context = ssl.create_default_context(cadata=(cluster.ca_pem or b"").decode("ascii"))
    return ApiTarget(host="127.0.0.1", port=cluster.port, scheme="https", ssl_context=context,
                     auth_headers=credentials or (
                         lambda: {"Authorization": f"Bearer {cluster.token}"}))


class PodRoutes:
    """Routes like the svc command: the first listed pod not backing off; a tunnel failure
    backs its pod off and pokes the forward."""

    def __init__(self, target: ApiTarget, pods: list[str], *, transport: str = "auto") -> None:
        self.target = target
        self.pods = pods
        self.backoff = PodBackoff()
        self.pool = TunnelPool(transport=transport, on_dead=self._died)
        self.forwarder: Forwarder | None = None
        self.routed: list[str] = []
        self.died = threading.Event()

    def _died(self, context: str, namespace: str, pod: str) -> None:
        self.died.set()
        self.backoff.failed(pod)
        if self.forwarder is not None:
            self.forwarder.poke()

    def route(self, key: str, port: int) -> tuple[PodTunnel, int] | None:
        assert self.forwarder is not None
        for pod in self.pods:
            if self.backoff.usable(pod):
                self.routed.append(pod)
                return self.pool.get(self.target, "sim", "fw", pod,
                                     loop=self.forwarder.loop), 8080
        return None

    def start(self, port: int) -> Forwarder:
        self.forwarder = Forwarder("fw/web", IP, [ListenPort(80, port)], self.route,
                                   hold_timeout=20)
        return start(self.forwarder)

    def close(self) -> None:
        if self.forwarder is not None:
            assert self.forwarder.stop_and_join()
        self.pool.close()


def http_get(port: int, timeout: float = 15.0) -> bytes:
    """``GET /`` through the forward: the body (the pod's name and a newline)."""
    with socket.create_connection((IP, port), timeout=timeout) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def api_refuses(cluster: SimCluster) -> bool:
    try:
        socket.create_connection(("127.0.0.1", cluster.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("transport", ["auto", "ws"])
def test_connection_made_while_the_api_server_is_down_is_served_once_it_is_back(
    transport: str,
) -> None:
    with SimCluster(manifests=[http_pod("web")]) as cluster:
        cluster.wait_ready("fw")
        routes = PodRoutes(sim_target(cluster), ["web"], transport=transport)
        port = free_port()
        fwd = routes.start(port)
        try:
            assert http_get(port) == b"web\n"  # the forward is in use: its tunnel is open
            back = threading.Event()

            def restart() -> None:
                cluster.restart_apiserver(downtime=1.5)
                back.set()

            restarter = threading.Thread(target=restart, name="restart-apiserver")
            restarter.start()
            try:
                # The outage has begun once new API connections are refused and (SPDY) the
                # tunnel's session was cut; over WebSockets each connection dials its own.
                deadline = time.monotonic() + 5
                while not (api_refuses(cluster)
                           and (transport == "ws" or routes.died.is_set())):
                    assert time.monotonic() < deadline and not back.is_set()
                    threading.Event().wait(0.02)
                # Made during the outage: the tunnel cannot open until the API server is back
                # (each attempt fails and backs the pod off); the connection waits, then works.
                assert http_get(port) == b"web\n"
                assert back.is_set()
            finally:
                restarter.join(10)
            assert fwd.stats.returned >= 1 and fwd.stats.dropped == 0
        finally:
            routes.close()


def test_connection_goes_to_another_pod_when_its_pod_vanishes_while_the_tunnel_opens() -> None:
    with SimCluster(manifests=[http_pod("a"), http_pod("b")]) as cluster:
        cluster.wait_ready("fw")
        opening, deleted = threading.Event(), threading.Event()

        def slow_credentials() -> dict[str, str]:
            """The first tunnel's credentials take a while (an exec plugin, say): long
            enough for its pod to be deleted before it reaches the API server."""
            if not opening.is_set():
                opening.set()
                deleted.wait(10)
            return {"Authorization": f"Bearer {cluster.token}"}

        routes = PodRoutes(sim_target(cluster, slow_credentials), ["a", "b"])
        port = free_port()
        fwd = routes.start(port)
        try:
            answer: list[bytes] = []
            client = threading.Thread(target=lambda: answer.append(http_get(port)),
                                      name="client")
            client.start()
            assert opening.wait(10)  # routed to pod a, queued on its opening tunnel
            cluster.delete_pod("fw", "a")
            deleted.set()
            client.join(15)
            assert answer == [b"b\n"]  # the open failed (404); b took the connection
            assert routes.routed == ["a", "b"]
            assert fwd.stats.returned == 1 and fwd.stats.dropped == 0
        finally:
            deleted.set()
            routes.close()
