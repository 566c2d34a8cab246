"""The simulated cluster's pod runtime: real pod IPs, real servers, real processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from helpers import echo_roundtrip, http_get, locked_block, wait_for

from kubefwd.sim.kubelet import Kubelet
from kubefwd.sim.podservers import pattern_bytes
from kubefwd.sim.processes import expand

NS = "shop"


class Statuses:
    """Collects reported pod statuses and waits for one that matches."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        self._cond = threading.Condition()

    def __call__(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self._cond:
            self.seen.append((namespace, name, status))
            self._cond.notify_all()

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [s for _ns, n, s in self.seen if n == name]

    def wait(self, name: str, check: Callable[[dict[str, Any]], bool],
             timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _ns, n, s in reversed(self.seen):
                    if n == name:
                        if check(s):
                            return s
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{name}: no matching status; last: {self.of(name)[-1:]}")
                self._cond.wait(left)


def ready(status: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])


def pod(name: str, *, image: str = "sim/http", ports: tuple[int, ...] = (8080,),
        **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "main", "image": image,
                            "ports": [{"containerPort": p} for p in ports], **container}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
            "spec": {"containers": [spec]}}


@pytest.fixture
def statuses() -> Statuses:
    return Statuses()


@pytest.fixture
def net() -> Iterator[str]:
    """127.3.<n>: addresses of this test's own, locked so that parallel runs on one machine
    never use them at the same time."""
    with locked_block("kubelet", range(1, 255)) as third:
        yield f"127.3.{third}"


@pytest.fixture
def kubelet(statuses: Statuses) -> Iterator[Kubelet]:
    k = Kubelet(on_status=statuses)
    try:
        yield k
    finally:
        k.close()


def run_pod(kubelet: Kubelet, statuses: Statuses, manifest: dict[str, Any]) -> str:
    kubelet.start_pod(manifest)
    name = manifest["metadata"]["name"]
    statuses.wait(name, ready)
    ip = kubelet.pod_ip(NS, name)
    assert ip is not None
    return ip


def ended(sock: socket.socket) -> bool:
    """True when the peer closed or reset the connection (a reset when it was never accepted)."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def curl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], input=stdin,
                          capture_output=True, check=True, timeout=15)


def redis_pod(name: str) -> dict[str, Any]:
    """A redis-server command container listening on its pod IP."""
    return pod(name, image="redis:7", ports=(6379,), command=["redis-server"],
               args=["--bind", "$(POD_IP)", "--port", "6379", "--save", ""])


def redis_ping(ip: str) -> bytes:
    ping = subprocess.run(["redis-cli", "-h", ip, "ping"], capture_output=True, timeout=10)
    return ping.stdout.strip()


def read_response(reader: Any, *, head: bool = False) -> tuple[bytes, dict[str, str], bytes]:
    """One response from a keep-alive connection: (status line with its CRLF, lower-cased
    headers, body by Content-Length, none for HEAD)."""
    status = reader.readline()
    headers = {}
    while (line := reader.readline()) != b"\r\n":
        key, _, value = line.decode().partition(":")
        headers[key.lower()] = value.strip()
    return status, headers, b"" if head else reader.read(int(headers["content-length"]))


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server/redis-cli are not installed")


def test_pod_goes_pending_then_running_and_ready_with_a_real_status() -> None:
    statuses = Statuses()
    with Kubelet(on_status=statuses, start_delay=0.2) as kubelet:
        kubelet.start_pod(pod("web-1"))
        running = statuses.wait("web-1", ready)
        ip = kubelet.pod_ip(NS, "web-1")
    pending = statuses.of("web-1")[0]
    phases = [s["phase"] for s in statuses.of("web-1")]
    assert phases[0] == "Pending" and phases[-1] == "Running"
    assert phases == sorted(phases, key=["Pending", "Running"].index)
    assert pending["podIP"] == ip and pending["podIPs"] == [{"ip": ip}]
    assert pending["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert not ready(pending)
    assert ip is not None and ip.startswith("127.1.")
    assert running["hostIP"] == "127.0.0.1" and running["startTime"].endswith("Z")
    kinds = {c["type"]: c for c in running["conditions"]}
    assert {"PodScheduled", "Initialized", "ContainersReady", "Ready"} <= set(kinds)
    assert all(c["lastTransitionTime"].endswith("Z") for c in kinds.values())
    (container,) = running["containerStatuses"]
    assert container["ready"] and container["started"] and container["restartCount"] == 0
    assert "startedAt" in container["state"]["running"]


@needs_curl
def test_http_server_answers_name_bytes_and_uploads(kubelet: Kubelet, statuses: Statuses,
                                                    tmp_path: Any) -> None:
    ip = run_pod(kubelet, statuses, pod("web-1"))
    assert kubelet.listening_ports(NS, "web-1") == {8080}
    assert curl(f"http://{ip}:8080/").stdout == b"web-1\n"
    assert curl(f"http://{ip}:8080/healthz").stdout == b"ok"
    body = tmp_path / "body"
    curl("-o", str(body), f"http://{ip}:8080/bytes/1000000")
    assert body.stat().st_size == 1_000_000
    assert hashlib.sha256(body.read_bytes()).digest() == \
        hashlib.sha256(pattern_bytes(1_000_000)).digest()
    upload = tmp_path / "upload"
    upload.write_bytes(os.urandom(3_000_000))
    answer = json.loads(curl("--data-binary", f"@{upload}", f"http://{ip}:8080/up").stdout)
    assert answer == {"length": 3_000_000,
                      "sha256": hashlib.sha256(upload.read_bytes()).hexdigest()}
    # Read from stdin, curl sends the body chunked.
    chunked = json.loads(curl("-T", "-", f"http://{ip}:8080/up", stdin=b"hello chunks").stdout)
    assert chunked == {"length": 12, "sha256": hashlib.sha256(b"hello chunks").hexdigest()}


def test_http_keeps_connections_alive_and_honours_close(kubelet: Kubelet,
                                                        statuses: Statuses) -> None:
    ip = run_pod(kubelet, statuses, pod("web-1"))
    with socket.create_connection((ip, 8080), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _headers, body = read_response(reader)
            assert status == b"HTTP/1.1 200 OK\r\n" and body == b"web-1\n"
        sock.sendall(b"GET /bytes/5 HTTP/1.1\r\nConnection: close\r\n\r\n")
        rest = reader.read()  # the server closes after answering
        assert rest.endswith(b"\r\n\r\n" + bytes(range(5)))
        assert b"Connection: close" in rest


def test_echo_server_echoes_until_half_close(kubelet: Kubelet, statuses: Statuses) -> None:
    ip = run_pod(kubelet, statuses, pod("echo-1", image="sim/tcp-echo", ports=(7, 9000)))
    assert kubelet.listening_ports(NS, "echo-1") == {7, 9000}
    data = os.urandom(4 << 20)
    assert echo_roundtrip(ip, 9000, data, timeout=5) == data


@needs_redis
def test_redis_server_runs_as_a_command_container_on_its_pod_ip(kubelet: Kubelet,
                                                                 statuses: Statuses) -> None:
    ip = run_pod(kubelet, statuses, redis_pod("cache-0"))
    assert redis_ping(ip) == b"PONG"
    assert kubelet.listening_ports(NS, "cache-0") == {6379}
    kubelet.stop_pod(NS, "cache-0")
    with pytest.raises(OSError):
        socket.create_connection((ip, 6379), timeout=2).close()


def test_command_args_expand_env_and_field_refs(kubelet: Kubelet, statuses: Statuses) -> None:
    script = "import os, sys; print(' '.join(sys.argv[1:]), os.environ['MY_IP'], flush=True)"
    manifest = pod("job-1", ports=(), command=["python3", "-c", script],
                   args=["ip=$(MY_IP)", "name=$(MY_NAME)", "ns=$(MY_NS)", "greet=$(GREETING)",
                         "keep=$$(MY_IP)", "unknown=$(NOPE)", "pod=$(POD_IP)"],
                   env=[{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "MY_NAME",
                         "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "MY_NS",
                         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "GREETING", "value": "hi-$(MY_NAME)"}])
    manifest["spec"]["restartPolicy"] = "Never"
    kubelet.start_pod(manifest)
    done = statuses.wait("job-1", lambda s: s["phase"] == "Succeeded")
    ip = done["podIP"]
    assert done["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert kubelet.logs(NS, "job-1").split() == [
        f"ip={ip}", "name=job-1", f"ns={NS}", "greet=hi-job-1", "keep=$(MY_IP)",
        "unknown=$(NOPE)", f"pod={ip}", ip]


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$$(A) $(C) $ $(A", env) == "$(A) $(C) $ $(A"
    assert expand("$$$(A)", env) == "$1"


def test_kill_closes_connections_and_the_container_restarts(kubelet: Kubelet,
                                                            statuses: Statuses) -> None:
    ip = run_pod(kubelet, statuses, pod("web-1"))
    tracked = kubelet.connect(NS, "web-1", 8080)
    direct = socket.create_connection((ip, 8080), timeout=5)
    other = socket.socket()
    try:
        with kubelet.track(NS, "web-1", other):
            kubelet.kill_pod(NS, "web-1")
            assert ended(tracked)
            assert ended(direct)
            down = statuses.wait("web-1", lambda s: not ready(s))
            assert down["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
            up = statuses.wait("web-1", lambda s: ready(s)
                               and s["containerStatuses"][0]["restartCount"] == 1)
    finally:
        for s in (tracked, direct, other):
            s.close()
    assert up["podIP"] == ip
    assert "terminated" in up["containerStatuses"][0]["lastState"]
    assert http_get(ip, 8080)[1] == b"web-1\n"


@needs_redis
def test_killed_process_restarts_with_restart_count(kubelet: Kubelet,
                                                    statuses: Statuses) -> None:
    ip = run_pod(kubelet, statuses, redis_pod("cache-0"))
    with kubelet.connect(NS, "cache-0", 6379) as conn:
        kubelet.kill_pod(NS, "cache-0")
        assert ended(conn)
    statuses.wait("cache-0", lambda s: ready(s)
                  and s["containerStatuses"][0]["restartCount"] == 1)
    assert redis_ping(ip) == b"PONG"


def test_stop_releases_the_ip_and_closes_the_port(statuses: Statuses, net: str) -> None:
    # A /30 has three usable addresses (.1-.3; .0 is skipped).
    with Kubelet(on_status=statuses, ip_range=f"{net}.0/30") as kubelet:
        for i in range(3):
            run_pod(kubelet, statuses, pod(f"web-{i}"))
        with pytest.raises(RuntimeError):
            kubelet.start_pod(pod("web-3"))
        ip = kubelet.pod_ip(NS, "web-1")
        assert ip is not None
        with kubelet.connect(NS, "web-1", 8080) as conn:
            kubelet.stop_pod(NS, "web-1")
            assert ended(conn)
        assert kubelet.pod_ip(NS, "web-1") is None
        assert kubelet.listening_ports(NS, "web-1") == set()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, 8080), timeout=2).close()
        with pytest.raises(ConnectionRefusedError):
            kubelet.connect(NS, "web-1", 8080)
        assert run_pod(kubelet, statuses, pod("web-3")) == ip


def test_set_ready_flips_ready_and_containers_ready(kubelet: Kubelet,
                                                    statuses: Statuses) -> None:
    run_pod(kubelet, statuses, pod("web-1"))
    kubelet.set_ready(NS, "web-1", False)
    down = statuses.wait("web-1", lambda s: not ready(s))
    conditions = {c["type"]: c["status"] for c in down["conditions"]}
    assert conditions["ContainersReady"] == "False"
    assert down["phase"] == "Running" and not down["containerStatuses"][0]["ready"]
    kubelet.set_ready(NS, "web-1", True)
    statuses.wait("web-1", ready)


def test_many_pods_start_fast_without_a_thread_each(kubelet: Kubelet,
                                                    statuses: Statuses) -> None:
    threads_before = threading.active_count()
    started = time.monotonic()
    for i in range(200):
        kubelet.start_pod(pod(f"web-{i}", ports=(80, 8080)))
    for i in range(200):
        statuses.wait(f"web-{i}", ready, timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert threading.active_count() - threads_before < 5
    ips = {kubelet.pod_ip(NS, f"web-{i}") for i in range(200)}
    assert len(ips) == 200


def test_crashing_command_restarts_with_its_exit_code_in_last_state(
        kubelet: Kubelet, statuses: Statuses) -> None:
    kubelet.start_pod(pod("crash-1", ports=(), command=["python3", "-c", "raise SystemExit(3)"]))
    again = statuses.wait("crash-1", lambda s: s["containerStatuses"][0]["restartCount"] >= 1)
    last = again["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error"
    assert again["phase"] == "Running"


def test_stop_kills_the_whole_process_group_after_the_grace_period(
        kubelet: Kubelet, statuses: Statuses) -> None:
    manifest = pod("stubborn-1", ports=(), command=["sh", "-c"],
                   args=["trap '' TERM; sleep 30 & sleep 30; wait"])
    manifest["spec"]["terminationGracePeriodSeconds"] = 1
    kubelet.start_pod(manifest)
    statuses.wait("stubborn-1", ready)
    me = psutil.Process()
    wait_for(lambda: len(me.children(recursive=True)) >= 3, 5, "the shell and its two sleeps",
             interval=0.01)
    assert len(me.children(recursive=True)) == 3
    started = time.monotonic()
    kubelet.stop_pod(NS, "stubborn-1")
    assert 0.9 < time.monotonic() - started < 3
    assert me.children(recursive=True) == []


def test_close_ends_open_connections_and_processes(statuses: Statuses) -> None:
    kubelet = Kubelet(on_status=statuses)
    try:
        web = run_pod(kubelet, statuses, pod("web-1"))
        echo = run_pod(kubelet, statuses, pod("echo-1", image="echo", ports=(7,)))
        run_pod(kubelet, statuses, pod("sleeper-1", ports=(), command=["sleep", "30"]))
        idle = [socket.create_connection((web, 8080), timeout=5),
                socket.create_connection((echo, 7), timeout=5)]
        idle[1].sendall(b"x")
        assert idle[1].recv(1) == b"x"
    finally:
        kubelet.close()
    for sock in idle:
        assert ended(sock)
        sock.close()
    assert psutil.Process().children() == []


def test_addresses_taken_by_someone_else_are_skipped(statuses: Statuses, net: str) -> None:
    # Another simulated cluster on this machine already serves .1 and .2 on 8080.
    others = []
    for ip in (f"{net}.1", f"{net}.2"):
        other = socket.socket()
        other.bind((ip, 8080))
        other.listen()
        others.append(other)
    try:
        with Kubelet(on_status=statuses, ip_range=f"{net}.0/30") as kubelet:
            assert run_pod(kubelet, statuses, pod("web-1")) == f"{net}.3"
            # A pod on other ports may share the addresses the other cluster uses.
            assert run_pod(kubelet, statuses, pod("web-2", ports=(9090,))) != f"{net}.3"
    finally:
        for other in others:
            other.close()


def test_http_handles_pipelining_chunks_head_and_bad_requests(kubelet: Kubelet,
                                                              statuses: Statuses) -> None:
    ip = run_pod(kubelet, statuses, pod("web-1"))
    with socket.create_connection((ip, 8080), timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET /nope HTTP/1.1\r\n\r\n"
                     b"HEAD /bytes/100 HTTP/1.1\r\n\r\n"
                     b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Expect: 100-continue\r\n\r\n"
                     b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
                     b"DELETE / HTTP/1.1\r\n\r\n")
        assert read_response(reader)[0] == b"HTTP/1.1 404 Not Found\r\n"
        status, headers, _ = read_response(reader, head=True)
        assert status == b"HTTP/1.1 200 OK\r\n"
        assert headers["content-length"] == "100"
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        status, _, body = read_response(reader)
        assert json.loads(body) == {"length": 11,
                                    "sha256": hashlib.sha256(b"hello world").hexdigest()}
        assert read_response(reader)[0] == b"HTTP/1.1 405 Method Not Allowed\r\n"
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert read_response(reader)[0] == b"HTTP/1.1 400 Bad Request\r\n"
        assert reader.read() == b""
