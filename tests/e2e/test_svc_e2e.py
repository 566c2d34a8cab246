"""``kubefwd svc`` end to end: the real process against ``kubefwd.sim``, a hosts file in a temp
directory, real clients (sockets, curl, redis-cli, getent) reaching the services."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import (
    REPO,
    hosts_file,
    http_text,
    locked_block,
    manifests,
    namespace,
    needs_root,
    service,
    try_http,
    unused_port,
    wait_for,
    workload,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e

# Pods get addresses from a range no other test suite uses, so parallel runs do not collide.
POD_RANGE = "127.250.0.0/20"
# Third octets a test takes for its forwarded addresses (see the ``block`` fixture).
BLOCK_SIZE = 8
# Foreign content that must come back byte for byte: CRLF, comments, no final newline.
ORIGINAL_HOSTS = (
    b"127.0.0.1\tlocalhost\r\n# a comment the user wrote\n::1 ip6-localhost ip6-loopback\n"
    b"10.0.0.5 build-server  # trailing comment"
)

MANIFESTS = manifests(
    workload("web", "shop"),
    service("web", "shop"),
    workload("cart", "shop",
             ports="[{name: http, containerPort: 8080}, {name: admin, containerPort: 9090}]"),
    service("cart", "shop", ports="[{name: http, port: 8080, targetPort: http},"
                                  " {name: admin, port: 9090, targetPort: admin}]"),
    workload("db", "shop", kind="StatefulSet", replicas=2, image="sim/echo",
             ports="[{name: pg, containerPort: 5432}]"),
    service("db", "shop", ports="[{name: pg, port: 5432, targetPort: pg}]", headless=True),
    workload("api", "payments", ports="[{containerPort: 8080}]"),
    service("api", "payments", ports="[{name: http, port: 80, targetPort: 8080},"
                                     " {name: dns, port: 53, protocol: UDP, targetPort: 53}]"),
    service("legacy", "payments", ports="[{port: 80}]", selector=False),
)


# -- helpers -------------------------------------------------------------------------------


def hosts_entries(path: Path) -> dict[str, str]:
    """name → IP of kubefwd's lines in a hosts file."""
    names: dict[str, str] = {}
    for line in path.read_bytes().decode().splitlines():
        if "# kubefwd pid=" not in line:
            continue
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            names[name] = fields[0]
    return names


def echo(ip: str, port: int, payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


class Kubefwd:
    """``python -m kubefwd svc ...`` as a child process, with its output collected."""

    def __init__(self, cluster: SimCluster, hosts: Path, *args: str, home: Path,
                 wrapper: Sequence[str] = ()) -> None:
        env = dict(os.environ, HOME=str(home), PYTHONUNBUFFERED="1")
        env.pop("SUDO_USER", None)
        self.hosts = hosts
        self.argv = [*wrapper, sys.executable, "-m", "kubefwd", "svc", "-c",
                     str(cluster.kubeconfig_path), "--hosts-path", str(hosts), *args]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="kubefwd-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 15.0, start: int = 0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.2))

    def wait_ready(self, timeout: float = 20.0) -> None:
        self.wait_line(r"ready: \d+ services", timeout)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("kubefwd did not stop in time:\n" + self.output) from None
        self._reader.join(5)
        return code

    def stop_cleanly(self, sig: int = signal.SIGINT) -> None:
        """Stop with exit code 0, leaving the hosts file as it was before any run."""
        assert self.stop(sig) == 0
        assert self.hosts.read_bytes() == ORIGINAL_HOSTS

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    with SimCluster(manifests=MANIFESTS, contexts=("one", "two"), pod_ip_range=POD_RANGE) as c:
        c.wait_ready(timeout=15)
        yield c


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    return hosts_file(tmp_path, ORIGINAL_HOSTS)


@pytest.fixture
def block() -> Iterator[int]:
    """The third octet of this test's own addresses: kubefwd gets ``127.1.<block>.1`` as its
    base (127.[1+context].[block+namespace].n), and the block stays locked for the test, so
    runs in parallel on one machine never forward to the same address."""
    with locked_block("svc", range(128, 256 - BLOCK_SIZE, BLOCK_SIZE)) as third:
        yield third


@pytest.fixture
def run(cluster: SimCluster, hosts: Path, tmp_path: Path,
        block: int) -> Iterator[Callable[..., Kubefwd]]:
    started: list[Kubefwd] = []
    base_conf = tmp_path / "base.yaml"
    base_conf.write_text(f"baseUnreservedIP: 127.1.{block}.1\n")

    def start(*args: str, hosts_path: Path = hosts, wrapper: Sequence[str] = (),
              ready: bool = True) -> Kubefwd:
        """Start ``kubefwd svc`` with ``args`` (and this test's base address unless ``args``
        name a -z file of their own); with ``ready``, wait until it says it is."""
        own = args[:args.index("--")] if "--" in args else args
        if "-z" not in own:
            args = (*own, "-z", str(base_conf), *args[len(own):])
        fwd = Kubefwd(cluster, hosts_path, *args, home=tmp_path, wrapper=wrapper)
        started.append(fwd)
        if ready:
            fwd.wait_ready()
        return fwd

    yield start
    for fwd in started:
        fwd.kill()
        # Shown by pytest only when the test failed.
        print(f"--- output of {' '.join(fwd.argv)}\n{fwd.output}")


def assert_foreign_lines_kept(hosts: Path) -> None:
    data = hosts.read_bytes()
    assert data.startswith(b"127.0.0.1\tlocalhost\r\n# a comment the user wrote\n")
    for line in ORIGINAL_HOSTS.splitlines(keepends=True)[:-1]:
        assert line in data
    assert b"10.0.0.5 build-server  # trailing comment" in data


# -- forwarding ----------------------------------------------------------------------------


def test_namespaces_normal_headless_and_multiport_services(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path
) -> None:
    fwd = run("-n", "shop,payments")
    names = hosts_entries(hosts)
    # Only the system hosts file is backed up to ~/hosts.original; this one (--hosts-path) not.
    assert not (tmp_path / "hosts.original").exists()
    # First namespace: bare names; every namespace: the qualified forms.
    for name in ["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local", "cart",
                 "db", "db-0.db", "db-1.db.shop", "api.payments", "api.payments.svc"]:
        assert name in names, name
    assert "api" not in names and "legacy.payments" not in names
    assert_foreign_lines_kept(hosts)
    # A normal service with a named target port; a multi-port one; a plain numeric one.
    assert http_text(names["web"], 80).startswith("web-")
    assert http_text(names["cart"], 8080).startswith("cart-")
    assert http_text(names["cart.shop"], 9090).startswith("cart-")
    assert http_text(names["api.payments"], 80).startswith("api-")
    # Headless: each pod under its own name and IP, the service name goes to the first pod.
    assert len({names["db"], names["db-0.db"], names["db-1.db"]}) == 3
    assert echo(names["db-0.db"], 5432, b"to zero") == b"to zero"
    assert echo(names["db-1.db.shop"], 5432, b"to one") == b"to one"
    assert echo(names["db"], 5432) == b"ping"
    # The log: one line per forward, with names → IP:port → pod; warnings for what is skipped.
    line = fwd.wait_line(r"Forwarding web, web\.shop")
    assert f"{names['web']}:80" in line and "shop/web-" in line
    fwd.wait_line(r"WARNING .*legacy.*no selector")
    fwd.wait_line(r"WARNING .*api.*53/UDP")
    fwd.stop_cleanly()


def test_two_contexts_get_their_own_ranges_and_qualified_names(
    run: Callable[..., Kubefwd], hosts: Path, block: int
) -> None:
    fwd = run("-x", "one,two", "-n", "shop")
    names = hosts_entries(hosts)
    assert names["web.shop.one"].startswith(f"127.1.{block}.")
    assert names["web.shop.two"].startswith(f"127.2.{block}.")
    assert names["web"] == names["web.shop.one"] and names["web.shop"] == names["web"]
    assert http_text(names["web.shop.two"], 80).startswith("web-")
    assert http_text(names["cart.shop.svc.two"], 9090).startswith("cart-")
    fwd.stop_cleanly()


def test_mappings_reservations_and_fwd_conf(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path, block: int
) -> None:
    net = f"127.1.{block}"
    conf = tmp_path / "fwd.yaml"
    conf.write_text(f"baseUnreservedIP: {net}.1\n"
                    f"serviceConfigurations:\n  - {{name: cart, ip: {net}.88}}\n")
    fwd = run("-n", "shop", "-m", "80:8081", "-r", f"web:{net}.77", "-z", str(conf),
              "-d", "dev.local")
    names = hosts_entries(hosts)
    assert names["web"] == names["web.dev.local"] == f"{net}.77"
    assert names["cart"] == f"{net}.88"
    assert http_text(f"{net}.77", 8081).startswith("web-")
    with pytest.raises(OSError):
        http_text(f"{net}.77", 80, timeout=1)
    fwd.stop_cleanly()


def test_all_namespaces_and_field_selector(run: Callable[..., Kubefwd], hosts: Path) -> None:
    fwd = run("-A", "-f", "metadata.name=web")
    names = hosts_entries(hosts)
    # Namespaces are numbered in name order; "default" comes first and gets the bare names.
    assert "web.shop" in names and "web" not in names
    assert not any(n.startswith(("cart.", "api.", "db.")) for n in names)
    assert http_text(names["web.shop"], 80).startswith("web-")
    fwd.stop_cleanly()


# -- changes while running -----------------------------------------------------------------

NEW_SERVICE = manifests(
    workload("search", "shop", ports="[{containerPort: 8080}]", container="s"),
    service("search", "shop", ports="[{port: 7700, targetPort: 8080}]"),
)


def add_search_and_reach_it(cluster: SimCluster, hosts: Path, *, name: str = "search",
                            timeout: float = 10.0, when: str = "") -> str:
    """Apply NEW_SERVICE, wait for ``name`` in the hosts file and for a search pod to answer
    there; returns its IP."""
    cluster.apply(NEW_SERVICE)
    ip = wait_for(lambda: hosts_entries(hosts).get(name), timeout, f"{name} in hosts {when}")
    body = wait_for(lambda: try_http(ip, 7700), timeout, f"search answering {when}")
    assert body.startswith("search-")
    return ip


def test_service_added_and_deleted_while_running(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    fwd = run("-n", "shop")
    started = time.monotonic()
    ip = add_search_and_reach_it(cluster, hosts, name="search.shop", timeout=5)
    assert time.monotonic() - started < 3.0
    cluster.delete("Service", "shop", "search")
    wait_for(lambda: "search" not in hosts_entries(hosts), 5, "search gone from hosts")
    fwd.wait_line(r"Stopped forwarding .*search")
    with pytest.raises(OSError):
        socket.create_connection((ip, 7700), timeout=1).close()
    fwd.stop_cleanly()


class Traffic:
    """Requests in a loop on a thread: which pods answered, and the longest outage."""

    def __init__(self, request: Callable[[], str | None]) -> None:
        self.request = request
        self.answers: list[tuple[float, str | None]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="traffic", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.answers.append((time.monotonic(), self.request()))
            self.stopping.wait(0.01)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)

    def bodies(self) -> list[str]:
        return [a for _, a in self.answers if a]


def test_deployment_pod_deleted_mid_run_with_traffic(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    fwd = run("-n", "shop")
    ip = hosts_entries(hosts)["web"]
    (old,) = [p["metadata"]["name"] for p in cluster.pods("shop", "app=web")]
    traffic = Traffic(lambda: try_http(ip, 80))
    try:
        wait_for(lambda: old + "\n" in traffic.bodies(), 5, "traffic to the old pod")
        cluster.delete_pod("shop", old)
        new = wait_for(lambda: [b for b in traffic.bodies() if b != old + "\n"], 10,
                       "traffic reaching the replacement pod")
    finally:
        traffic.stop()
    assert new[0].startswith("web-") and new[-1] != old + "\n"
    fwd.stop_cleanly()


def test_unready_pod_gets_no_new_connections_and_is_used_again_when_ready(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    cluster.apply(MANIFESTS.split("---")[0].replace("replicas: 1", "replicas: 2"))
    cluster.wait_ready("shop", timeout=15)
    fwd = run("-n", "shop")
    ip = hosts_entries(hosts)["web"]
    first = http_text(ip, 80).strip()
    cluster.set_pod_ready("shop", first, False)
    other = wait_for(lambda: (b := try_http(ip, 80)) and b.strip() != first and b.strip(), 5,
                     "connections moving to the other pod")
    assert all(http_text(ip, 80).strip() == other for _ in range(5))
    cluster.set_pod_ready("shop", first, True)
    wait_for(lambda: try_http(ip, 80) == first + "\n", 5, "the first pod used again")
    fwd.stop_cleanly()


def test_statefulset_pod_deleted_mid_run_comes_back_under_its_name(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    fwd = run("-n", "shop")
    ip = hosts_entries(hosts)["db-0.db"]
    assert echo(ip, 5432) == b"ping"
    with socket.create_connection((ip, 5432), timeout=5) as open_conn:
        open_conn.sendall(b"x")
        assert open_conn.recv(10) == b"x"
        uid = cluster.store.get("Pod", "shop", "db-0")["metadata"]["uid"]  # type: ignore[index]
        cluster.delete_pod("shop", "db-0")
        # The connection to the deleted pod ends; it does not hang.
        open_conn.settimeout(5)
        try:
            assert open_conn.recv(10) == b""
        except ConnectionResetError:
            pass

    def replaced() -> bool:
        pod = cluster.store.get("Pod", "shop", "db-0")
        return bool(pod and pod["metadata"]["uid"] != uid)

    wait_for(replaced, 10, "db-0 recreated")

    def answers() -> bool:
        try:
            return echo(ip, 5432, timeout=2) == b"ping"
        except OSError:
            return False

    wait_for(answers, 10, "db-0.db answering again")
    # The replacement gets the same name, and the same address back.
    wait_for(lambda: hosts_entries(hosts).get("db-0.db") == ip, 5, "db-0.db in hosts again")
    fwd.stop_cleanly()


def test_watch_expired_410_mid_run_relists(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    fwd = run("-n", "shop")
    cluster.expire_watch_history()
    add_search_and_reach_it(cluster, hosts, when="after a 410")
    fwd.stop_cleanly()


def test_api_server_restart_mid_run(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    fwd = run("-n", "shop")
    ip = hosts_entries(hosts)["web"]
    assert http_text(ip, 80).startswith("web-")
    cluster.restart_apiserver()
    # Tunnels and watches were cut: new connections and new services work again.
    assert wait_for(lambda: try_http(ip, 80), 10, "web after the restart").startswith("web-")
    add_search_and_reach_it(cluster, hosts, when="after the restart")
    fwd.stop_cleanly()


def test_service_without_ready_pod_holds_then_closes_after_timeout(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    cluster.apply(NEW_SERVICE.replace("replicas: 1", "replicas: 0"))
    fwd = run("-n", "shop", "-t", "2")
    ip = hosts_entries(hosts)["search"]
    started = time.monotonic()
    with socket.create_connection((ip, 7700), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    assert 1.8 < time.monotonic() - started < 6
    fwd.wait_line(r"WARNING .*search.*no ready pod after 2s", timeout=5)
    # A held connection is served as soon as a pod becomes ready.
    result: list[str | None] = []
    client = threading.Thread(target=lambda: result.append(http_text(ip, 7700, timeout=8)),
                              name="client")
    client.start()
    threading.Event().wait(0.3)
    cluster.apply(NEW_SERVICE)
    client.join(10)
    assert result and result[0] and result[0].startswith("search-")
    fwd.stop_cleanly()


# -- the hosts file: sharing, crashes, signals ---------------------------------------------


def hosts_owners(path: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """From kubefwd's lines: name → the IPs given to it, IP → the pids that wrote it."""
    ips: dict[str, set[str]] = {}
    owners: dict[str, set[str]] = {}
    for line in path.read_bytes().decode().splitlines():
        if "# kubefwd pid=" not in line:
            continue
        fields = line.split("#", 1)[0].split()
        pid = line.split("# kubefwd pid=", 1)[1].split()[0]
        owners.setdefault(fields[0], set()).add(pid)
        for name in fields[1:]:
            ips.setdefault(name, set()).add(fields[0])
    return ips, owners


def test_instances_sharing_one_hosts_file_never_share_addresses_or_names(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    # Default settings for all three (the same base address), started at the same time.
    shop = run("-n", "shop", ready=False)
    payments = run("-n", "payments", ready=False)
    both = run("-n", "payments,shop", ready=False)
    for fwd in (shop, payments, both):
        fwd.wait_ready()
    ips, owners = hosts_owners(hosts)
    assert {n: i for n, i in ips.items() if len(i) > 1} == {}  # no name on two addresses
    assert {i: o for i, o in owners.items() if len(o) > 1} == {}  # no address in two runs
    assert set().union(*owners.values()) <= {str(f.proc.pid) for f in (shop, payments, both)}
    names = {n: next(iter(i)) for n, i in ips.items()}
    for name, port, body in [("web", 80, "web-"), ("cart.shop", 8080, "cart-"),
                             ("web.shop", 80, "web-"), ("api.payments", 80, "api-"),
                             ("api", 80, "api-")]:
        assert http_text(names[name], port).startswith(body), name
    assert shop.stop() == 0
    # What the stopped run held is gone; the others keep theirs, and one of them now writes
    # the shop names it had held back.
    assert str(shop.proc.pid) not in set().union(*hosts_owners(hosts)[1].values())
    ip = wait_for(lambda: hosts_entries(hosts).get("cart.shop"), 5, "cart.shop written again")
    assert http_text(ip, 8080).startswith("cart-")
    assert_foreign_lines_kept(hosts)
    assert payments.stop() == 0
    both.stop_cleanly()


def test_kill_9_then_a_fresh_run_purges_the_stale_lines(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    crashed = run("-n", "shop")
    crashed.kill()
    stale = hosts.read_bytes()
    assert f"pid={crashed.proc.pid}".encode() in stale  # left behind by the crash
    fresh = run("-n", "shop")
    text = hosts.read_bytes()
    assert f"pid={crashed.proc.pid}".encode() not in text
    assert f"pid={fresh.proc.pid}".encode() in text
    fresh.stop_cleanly()


@contextmanager
def hosts_lock_held(hosts: Path) -> Iterator[None]:
    """Hold the lock every kubefwd takes before touching ``hosts``: their writes wait."""
    with open(hosts.with_name(hosts.name + ".kubefwd.lock"), "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def test_sigterm_stops_cleanly_and_a_second_signal_only_cleans_hosts(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    fwd = run("-n", "shop")
    fwd.stop_cleanly(signal.SIGTERM)
    pause = threading.Event()
    # A second signal within a second of the first is the same keypress seen twice (a
    # terminal or ``timeout -s INT`` signals the whole group): the shutdown goes on, exit 0.
    # The held hosts lock keeps the shutdown busy while the second signal arrives.
    again = run("-n", "shop")
    with hosts_lock_held(hosts):
        again.proc.send_signal(signal.SIGINT)
        pause.wait(0.2)
        again.proc.send_signal(signal.SIGINT)
        again.wait_line(r"stopping: closing forwards")
        pause.wait(0.3)
    assert again.stop() == 0
    assert hosts.read_bytes() == ORIGINAL_HOSTS
    # A second signal later than that cuts the shutdown short: our lines go, exit 1.
    third = run("-n", "shop")
    with hosts_lock_held(hosts):
        third.proc.send_signal(signal.SIGINT)
        third.wait_line(r"stopping: closing forwards")
        pause.wait(1.3)
        third.proc.send_signal(signal.SIGINT)
        pause.wait(0.3)  # the clean-up now waits for the lock; more signals change nothing
        third.proc.send_signal(signal.SIGINT)
    assert third.stop() == 1
    third.wait_line(r"interrupted again: removed our hosts entries")
    assert hosts.read_bytes() == ORIGINAL_HOSTS


# -- Ctrl-C while start-up is blocked -------------------------------------------------------


def _start_svc(args: list[str], home: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, HOME=str(home))
    return subprocess.Popen([sys.executable, "-m", "kubefwd", "svc", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _interrupt(proc: subprocess.Popen[str], within: float = 5.0) -> tuple[int, float, str]:
    """SIGINT, then (exit code, seconds it took to exit, output)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=within + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return proc.returncode, time.monotonic() - started, out


def _kubeconfig(path: Path, port: int, user: str) -> Path:
    path.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
        users: [{{name: u, user: {user}}}]
        contexts: [{{name: ctx, context: {{cluster: c, user: u, namespace: shop}}}}]
        current-context: ctx
        """))
    return path


def test_ctrl_c_interrupts_a_slow_exec_plugin_and_ends_it(hosts: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "plugin.pid"
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import os, sys, time\n"
                      "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
                      "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
                      "time.sleep(60)\n")
    user = (f"{{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, "
            f"command: {sys.executable}, args: [{plugin}, {pid_file}]}}}}")
    config = _kubeconfig(tmp_path / "kubeconfig", unused_port(), user)
    proc = _start_svc(["-c", str(config), "--hosts-path", str(hosts)], tmp_path)
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 15, "the plugin"))
    try:
        code, took, out = _interrupt(proc)
        assert code == 130, out
        assert took < 5, out
        # The plugin does not outlive us (it would sleep on for a minute).
        wait_for(lambda: not psutil.pid_exists(pid) or
                 psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5, "the plugin ended")
    finally:
        if psutil.pid_exists(pid):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_ctrl_c_interrupts_a_server_that_never_answers(hosts: Path, tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept()[0])  # and never answer

    acceptor = threading.Thread(target=accept, name="silent-server")
    acceptor.start()
    try:
        config = _kubeconfig(tmp_path / "kubeconfig", server.getsockname()[1], "{token: t}")
        # -n: with no namespace kubefwd starts idle and asks the server nothing yet.
        proc = _start_svc(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)],
                          tmp_path)
        wait_for(lambda: accepted, 15, "kubefwd connecting")
        code, took, out = _interrupt(proc)
        assert code == 130, out
        assert took < 5, out
    finally:
        server.close()
        acceptor.join(5)
        for conn in accepted:
            conn.close()
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_ctrl_c_interrupts_a_hosts_write_being_retried(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int
) -> None:
    conf = tmp_path / "base.yaml"
    conf.write_text(f"baseUnreservedIP: 127.1.{block}.1\n")
    lock = hosts.with_name(hosts.name + ".kubefwd.lock")
    (tmp_path / "hosts.original").write_bytes(ORIGINAL_HOSTS)  # no backup to make first
    with hosts_lock_held(hosts):
        proc = _start_svc(["-c", str(cluster.kubeconfig_path), "-n", "shop", "--hosts-path",
                           str(hosts), "-z", str(conf)], tmp_path)

        def waiting_for_the_lock() -> bool:
            try:
                files = psutil.Process(proc.pid).open_files()
            except psutil.Error:
                return False
            return any(f.path == str(lock) for f in files)

        # The first hosts write waits for the lock; the lists against the sim end within
        # milliseconds of it, so a moment later start-up is blocked in the final flush.
        wait_for(waiting_for_the_lock, 15, "kubefwd waiting to write the hosts file")
        threading.Event().wait(1.0)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
    code, took, out = _interrupt(proc)  # a repeat of the same signal, well within a second
    assert code == 130, out
    assert took + (time.monotonic() - started) < 6, out
    assert not re.search(r"ready: \d+ services", out), out
    assert hosts.read_bytes() == ORIGINAL_HOSTS


# -- errors the user must fix --------------------------------------------------------------


def _run_to_end(
    args: list[str], home: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home))
    return subprocess.run([sys.executable, "-m", "kubefwd", "svc", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["-x", "nope"], 3, "context 'nope' not found"),
        (["-n", "missing"], 3, "namespace 'missing' not found in context 'one' (pass "
                               "--wait-namespaces to wait for it to be created)"),
    ],
    ids=["unknown-context", "unknown-namespace"],
)
def test_config_errors_are_one_line_and_touch_nothing(
    cluster: SimCluster, hosts: Path, tmp_path: Path, extra: list[str], code: int, message: str
) -> None:
    result = _run_to_end(["-c", str(cluster.kubeconfig_path), "--hosts-path", str(hosts),
                          *extra], tmp_path)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_unverifiable_namespace_without_services_is_a_warning(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    cluster.forbid("namespaces", "get")  # namespace-scoped rights: no Namespace objects
    fwd = run("-n", "shop,nope")
    fwd.wait_line(r"WARNING could not verify namespace 'nope' exists \(403\) and it has no "
                  r"services")
    assert not [x for x in fwd.lines if "namespace 'shop'" in x]
    assert "web" in hosts_entries(hosts)
    fwd.stop_cleanly()


def test_forbidden_endpointslices_are_not_fatal(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    cluster.forbid("endpointslices")  # pods carry their own readiness: slices only fill gaps
    fwd = run("-n", "shop")
    fwd.wait_line(r"WARNING .*endpointslices in namespace shop \(403\).*; continuing without "
                  r"EndpointSlices")
    assert http_text(hosts_entries(hosts)["web"], 80).startswith("web-")
    fwd.stop_cleanly()


def test_missing_kubeconfig(hosts: Path, tmp_path: Path) -> None:
    result = _run_to_end(["-c", str(tmp_path / "nope"), "--hosts-path", str(hosts)], tmp_path)
    assert result.returncode == 3
    assert "no kubeconfig found" in result.stderr and len(result.stderr.splitlines()) == 1
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_unreachable_api_server(hosts: Path, tmp_path: Path) -> None:
    port = unused_port()
    config = tmp_path / "kubeconfig"
    config.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
        users: [{{name: u, user: {{token: t}}}}]
        contexts: [{{name: gone, context: {{cluster: c, user: u, namespace: shop}}}}]
        current-context: gone
        """))
    result = _run_to_end(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)],
                         tmp_path)
    assert result.returncode == 4, result.stderr
    assert "cannot reach the API server" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_forbidden_pods_names_verb_and_resource(
    cluster: SimCluster, hosts: Path, tmp_path: Path
) -> None:
    cluster.forbid("pods", "list")
    result = _run_to_end(["-c", str(cluster.kubeconfig_path), "-n", "shop", "--hosts-path",
                          str(hosts)], tmp_path)
    assert result.returncode == 4, result.stderr
    assert "list pods in namespace shop" in result.stderr and "403" in result.stderr
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_wrong_token_is_unauthorized_naming_the_context(
    cluster: SimCluster, hosts: Path, tmp_path: Path
) -> None:
    config = tmp_path / "bad-token"
    config.write_text(cluster.kubeconfig_path.read_text().replace(cluster.token, "wrong"))
    result = _run_to_end(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)], tmp_path)
    assert result.returncode == 4, result.stderr
    assert "unauthorized" in result.stderr and "context one" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert hosts.read_bytes() == ORIGINAL_HOSTS


@contextmanager
def listening_on(ip: str, port: int) -> Iterator[None]:
    """Some other program listens on ``ip:port``."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind((ip, port))
        blocker.listen()
        yield
    finally:
        blocker.close()


def test_port_in_use_moves_the_service_to_the_next_free_address(
    run: Callable[..., Kubefwd], hosts: Path, block: int
) -> None:
    cart = f"127.1.{block}.1"  # where cart (first service of shop) would go
    with listening_on(cart, 8080):
        fwd = run("-n", "shop")
        line = fwd.wait_line(r"WARNING .*" + re.escape(f"{cart}:8080"))
        assert "already in use" in line and f"pid {os.getpid()}" in line, line
        moved = re.search(r"moving it to (\S+)", line)
        assert moved, line
        names = hosts_entries(hosts)
        assert names["cart"] == names["cart.shop"] == moved.group(1) != cart
        assert cart not in names.values()
        assert http_text(names["cart"], 8080).startswith("cart-")
        assert http_text(names["cart"], 9090).startswith("cart-")
        assert http_text(names["web"], 80).startswith("web-")
        assert fwd.stop() == 0
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_port_in_use_on_a_reserved_address_is_reported_and_the_rest_still_forwards(
    run: Callable[..., Kubefwd], hosts: Path, block: int
) -> None:
    cart = f"127.1.{block}.40"
    with listening_on(cart, 8080):
        fwd = run("-n", "shop", "-r", f"cart:{cart}")
        line = fwd.wait_line(r"WARNING .*" + re.escape(f"{cart}:8080"))
        assert "already in use" in line and f"pid {os.getpid()}" in line
        assert "moving" not in line
        names = hosts_entries(hosts)
        assert names["cart"] == cart
        assert http_text(cart, 9090).startswith("cart-")
        assert http_text(names["web"], 80).startswith("web-")
        assert fwd.stop() == 0
    assert hosts.read_bytes() == ORIGINAL_HOSTS


@pytest.mark.root
@needs_root("setpriv")
def test_low_ports_without_the_capability_are_named_in_one_warning(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    # Root without CAP_NET_BIND_SERVICE: it may write the hosts file but not bind port 80.
    fwd = run("-n", "shop,payments", wrapper=["setpriv", "--bounding-set", "-net_bind_service"])
    line = fwd.wait_line(r"WARNING not forwarded without root")
    assert re.search(r" 80 \(one/\w+/\w+, one/\w+/\w+\)", line), line
    assert "one/shop/web" in line and "one/payments/api" in line and "-m 80:8080" in line
    fwd.wait_line(r"WARNING one/shop/web: not forwarded: none of its ports could be bound")
    assert not [x for x in fwd.lines if "Forwarding web" in x]
    names = hosts_entries(hosts)
    assert http_text(names["cart"], 8080).startswith("cart-")
    fwd.stop_cleanly()


# -- real resolver and a real server -------------------------------------------------------

REDIS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: cache, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: cache}}
  template:
    metadata: {labels: {app: cache}}
    spec:
      containers:
        - name: redis
          image: redis:7
          command: [redis-server]
          args: [--bind, $(POD_IP), --port, "6379", --save, "", --appendonly, "no"]
          env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
          ports: [{name: redis, containerPort: 6379}]
"""
REDIS = manifests(REDIS, service("cache", "shop", ports="[{port: 6379, targetPort: redis}]"))


@pytest.mark.skipif(not shutil.which("redis-server") or not shutil.which("redis-cli"),
                    reason="needs redis-server and redis-cli")
def test_redis_pod_reached_by_service_name(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    cluster.apply(REDIS)
    cluster.wait_ready("shop", timeout=15)
    fwd = run("-n", "shop")
    ip = hosts_entries(hosts)["cache"]  # the name redis-cli -h cache would resolve

    def cli(*args: str) -> str:
        return subprocess.run(["redis-cli", "-h", ip, "-p", "6379", *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()

    assert cli("PING") == "PONG"
    assert cli("SET", "greeting", "hello") == "OK"
    assert cli("GET", "greeting") == "hello"
    fwd.stop_cleanly()


DRIVER = """
import json, os, shutil, signal, subprocess, sys, time
from kubefwd.sim.cluster import SimCluster

manifests, workdir = sys.argv[1], sys.argv[2]
result = {}
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
before = open("/etc/hosts", "rb").read()
with SimCluster(manifests=open(manifests).read(), pod_ip_range=%(range)r) as cluster:
    cluster.wait_ready(timeout=20)
    env = dict(os.environ, HOME=workdir)
    proc = subprocess.Popen([sys.executable, "-m", "kubefwd", "svc", "-c",
                             str(cluster.kubeconfig_path), "-n", "shop"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if "ready:" in line:
            break
    def run(*argv):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return [done.returncode, done.stdout.strip()]
    result["getent"] = run("getent", "hosts", "web.shop")
    result["curl"] = run("curl", "-sS", "-m", "10", "http://web.shop:80/")
    result["curl_bare"] = run("curl", "-sS", "-m", "10", "http://web/")
    if shutil.which("redis-cli"):
        result["redis"] = run("redis-cli", "-h", "cache", "PING")
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[0]
    result["code"] = proc.returncode
result["restored"] = open("/etc/hosts", "rb").read() == before
print("RESULT " + json.dumps(result))
"""


@pytest.mark.root
@needs_root("unshare", "ip", "getent", "curl")
def test_real_resolver_inside_unshare_with_bind_mounted_etc_hosts(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests.yaml"
    with_redis = bool(shutil.which("redis-server") and shutil.which("redis-cli"))
    manifests.write_text(MANIFESTS + ("---\n" + REDIS if with_redis else ""))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER % {"range": POD_RANGE})
    fake_hosts = tmp_path / "etc-hosts"
    fake_hosts.write_bytes(b"127.0.0.1 localhost\n# the container's own file\n")
    # /etc read-only in the private namespace: nothing kubefwd makes beside the hosts file
    # (its lock sidecars) can land in the machine's real /etc.
    script = (
        "mount --bind /etc /etc && mount -o remount,bind,ro /etc && "
        f"mount --bind {fake_hosts} /etc/hosts && "
        f"exec {sys.executable} {driver} {manifests} {tmp_path}"
    )
    done = subprocess.run(["unshare", "--mount", "--net", "sh", "-c", script],
                          capture_output=True, text=True, timeout=90,
                          cwd=str(REPO))
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stdout + done.stderr
    import json

    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    print(result)
    assert result["getent"][0] == 0 and result["getent"][1].startswith("127.1.27.")
    assert result["getent"][1].split()[1:3] == ["web", "web.shop"] or "web.shop" in \
        result["getent"][1]
    assert result["curl"] == [0, result["curl"][1]] and result["curl"][1].startswith("web-")
    assert result["curl_bare"][0] == 0 and result["curl_bare"][1].startswith("web-")
    if with_redis:
        assert result["redis"] == [0, "PONG"]
    assert result["code"] == 0
    assert result["restored"] is True
    assert fake_hosts.read_bytes() == b"127.0.0.1 localhost\n# the container's own file\n"


def test_in_process_start_and_shutdown_leave_no_threads_or_sockets(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int
) -> None:
    from kubefwd.app.program import Kubefwd as App
    from kubefwd.app.program import SvcOptions

    app = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop"],
                         hosts_path=hosts, backup_dir=tmp_path, base_ip=f"127.1.{block}.1"))
    try:
        app.start()
        assert app.wait_ready(0)
        forwards = app.forwards()
        ip, names, ports = forwards["one/shop/web"]
        assert "web.shop" in names and ports == [80]
        assert http_text(ip, 80).startswith("web-")
        stats = app.stats()
        assert stats["tunnels"] == 1
        # the one connection was accepted and handed to the tunnel at once
        assert (stats["accepted"], stats["spliced"], stats["held"], stats["dropped"],
                stats["returned"]) == (1, 1, 0, 0, 0)
    finally:
        app.shutdown()
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_a_slow_forward_setup_holds_up_no_informer(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forwards are set up off the informer threads: while one namespace's new service is
    stuck setting up its address, another namespace's changes keep reaching the registry."""
    import kubefwd.app.program as app_module
    from kubefwd.app.program import Kubefwd as App
    from kubefwd.app.program import SvcOptions
    from kubefwd.registry.registry import ForwardKey
    from kubefwd.system.loopback import LoopbackStrategy

    armed, entered, release = threading.Event(), threading.Event(), threading.Event()

    class Stuck(LoopbackStrategy):
        def ensure(self, ip: str) -> None:
            if armed.is_set():
                entered.set()
                release.wait(15)  # like an ``ip addr add`` that hangs
            super().ensure(ip)

    monkeypatch.setattr(app_module, "loopback_strategy", Stuck)
    app = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop", "payments"],
                         hosts_path=hosts, backup_dir=tmp_path, base_ip=f"127.1.{block}.1"))
    try:
        app.start()
        assert app.wait_ready(0)
        armed.set()
        cluster.apply(service("search", "shop", ports="[{port: 7700}]"))
        assert entered.wait(5)
        registry = app._registry
        assert registry is not None
        for name in ("first", "second"):
            cluster.apply(service(name, "payments", ports="[{port: 7701}]"))
        wait_for(lambda: registry.get(ForwardKey("one", "payments", "second")), 5,
                 "the second payments service in the registry while shop's is stuck")
        assert "one/payments/second" not in app.forwards()  # applied in order, after search
        release.set()
        wait_for(lambda: "one/payments/second" in app.forwards(), 5, "commands applied")
    finally:
        release.set()
        app.shutdown()
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_statefulset_pod_that_does_not_come_back_is_removed_after_the_grace(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scaled-down StatefulSet's pod keeps its forward for the grace period only; then it
    goes, even when no further event comes in."""
    import kubefwd.app.program as app_module
    from kubefwd.app.program import Kubefwd as App
    from kubefwd.app.program import SvcOptions
    from kubefwd.registry.registry import Registry

    monkeypatch.setattr(app_module, "Registry",
                        lambda **kw: Registry(pod_grace=0.5, **kw))
    app = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop"],
                         hosts_path=hosts, backup_dir=tmp_path, base_ip=f"127.1.{block}.1"))
    try:
        app.start()
        assert "one/shop/db-1.db" in app.forwards()
        cluster.apply(workload("db", "shop", kind="StatefulSet", replicas=1, image="sim/echo",
                               ports="[{name: pg, containerPort: 5432}]"))
        wait_for(lambda: "one/shop/db-1.db" not in app.forwards(), 5, "db-1's forward gone")
        wait_for(lambda: "db-1.db" not in hosts_entries(hosts), 5, "db-1.db gone from hosts")
        assert "one/shop/db-0.db" in app.forwards()
    finally:
        app.shutdown()
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_hosts_lines_left_behind_at_shutdown_exit_6(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our lines could not be removed when stopping (the lock stays held by someone else):
    the run ends with exit code 6 (HOSTS), not 0."""
    import io
    import logging

    import kubefwd.app.program as app_module
    from kubefwd.app.program import Kubefwd as App
    from kubefwd.app.program import SvcOptions
    from kubefwd.events.bus import EventBus
    from kubefwd.events.report import LOGGER_NAME
    from kubefwd.hosts.writer import HostsWriter, remove_owned_lines
    from kubefwd.ui.text import TextLog

    # Give up on the removal after half a second instead of the default several.
    monkeypatch.setattr(app_module, "HostsWriter",
                        lambda *a, **kw: HostsWriter(*a, cleanup_timeout=0.5, **kw))
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.level, logger.propagate)
    out = io.StringIO()
    bus = EventBus()
    app = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop"],
                         hosts_path=hosts, backup_dir=tmp_path, base_ip=f"127.1.{block}.1"),
              bus=bus)
    text = TextLog(bus, out)
    text.start()
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(app.run()), name="kubefwd-run")
    runner.start()
    try:
        assert app.wait_ready(20), out.getvalue()
        with hosts_lock_held(hosts):
            app.request_stop()
            runner.join(15)
    finally:
        app.request_stop()
        runner.join(15)
        text.finish()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    assert codes == [6], out.getvalue()
    assert f"pid={os.getpid()}".encode() in hosts.read_bytes()
    remove_owned_lines(hosts, os.getpid())
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_auto_reconnect_keeps_a_tunnel_open_before_any_connection(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    fwd = run("-n", "shop", "-a", "-v")
    fwd.wait_line(r"tunnel shop/web-\S+ open over", timeout=5)
    fwd.stop_cleanly()


def test_verbose_shutdown_logs_each_step_with_its_time_in_order(
    run: Callable[..., Kubefwd]
) -> None:
    """With -v, each step of the ordered shutdown says how long it took and the CPU spent
    meanwhile: where a slow shutdown goes is read off the log."""
    fwd = run("-n", "shop", "-v")
    fwd.stop_cleanly()
    took = re.compile(r"shutdown: (.+) took (\d+\.\d{3}) s \(CPU (\d+\.\d{3}) s\)")
    steps = [m.group(1) for m in map(took.search, fwd.lines) if m]
    order = ["stop informers", "stop forwarders", "close tunnels", "remove hosts entries",
             "remove loopback addresses"]
    assert [s for s in steps if s in order] == order, fwd.output


def test_connection_held_through_an_api_outage_is_answered_as_soon_as_the_api_is_back(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int
) -> None:
    """During an outage every tunnel attempt fails and the pod's back-off grows (1 s, 2 s,
    4 s, …). Once an informer lists again the API is reachable: the back-off is forgotten and
    the held connection goes through at once, not when the back-off would have run out."""
    from kubefwd.app.program import Kubefwd as App
    from kubefwd.app.program import SvcOptions

    app = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop"],
                         hosts_path=hosts, backup_dir=tmp_path, base_ip=f"127.1.{block}.1",
                         retry_interval=0.25, timeout=30))
    restarter: threading.Thread | None = None
    try:
        app.start()
        ip = app.forwards()["one/shop/web"][0]
        assert http_text(ip, 80).startswith("web-")  # the tunnel is open
        pod = next(p["metadata"]["name"] for p in cluster.pods("shop")
                   if p["metadata"]["name"].startswith("web-"))
        backoff = app._router._backoff
        back_at: list[float] = []

        def outage() -> None:
            cluster.restart_apiserver(downtime=4.0)
            back_at.append(time.monotonic())

        restarter = threading.Thread(target=outage, name="restart-apiserver")
        restarter.start()
        key = ("one", "shop", pod)
        # The outage has begun: new API connections are refused and the tunnel was cut.
        wait_for(lambda: not back_at and _refused("127.0.0.1", cluster.port)
                 and backoff.remaining(key) > 0, 5, "the outage")
        answers: list[tuple[str | None, float]] = []

        def client() -> None:
            text = _http_within(ip, 80, 20.0)
            answers.append((text, time.monotonic()))

        held = threading.Thread(target=client, name="held-client")
        held.start()
        # Until the API is back: when would the pod's back-off let the connection through?
        retry_at = 0.0
        pause = threading.Event()
        while not back_at:
            retry_at = time.monotonic() + backoff.remaining(key)
            pause.wait(0.01)
        held.join(25)
        restarter.join(10)
        assert answers and answers[0][0] and answers[0][0].startswith("web-"), answers
        waited_after = answers[0][1] - back_at[0]
        print(f"back-off would have held it {retry_at - back_at[0]:.2f}s after the API came "
              f"back; answered after {waited_after:.2f}s")
        assert retry_at - back_at[0] > 1.5  # the back-off had grown past the outage
        assert waited_after < 1.0
    finally:
        if restarter is not None:
            restarter.join(10)
        app.shutdown()
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _http_within(ip: str, port: int, timeout: float) -> str | None:
    try:
        return http_text(ip, port, timeout=timeout)
    except (OSError, AssertionError):
        return None


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
def test_terminal_signals_stop_cleanly(
    run: Callable[..., Kubefwd], sig: signal.Signals
) -> None:
    """Closing the terminal (SIGHUP) or Ctrl-\\ (SIGQUIT) runs the same orderly shutdown as
    Ctrl-C: exit 0 and the hosts file as it was."""
    fwd = run("-n", "shop")
    assert hosts_entries(fwd.hosts)
    fwd.stop_cleanly(sig)


def test_stdout_full_keeps_forwarding_quietly(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int
) -> None:
    """With stdout on a full device every log line fails: kubefwd forwards anyway, prints no
    logging traceback, and stops cleanly."""
    conf = tmp_path / "base.yaml"
    conf.write_text(f"baseUnreservedIP: 127.1.{block}.1\n")
    env = dict(os.environ, HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "kubefwd", "svc", "-c", str(cluster.kubeconfig_path),
            "--hosts-path", str(hosts), "-n", "shop", "-z", str(conf),
            # The log cannot say when start-up is over: the ready file does (a SIGINT
            # before it is an interrupted start-up, exit 130).
            "--ready-file", str(tmp_path / "ready")]
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen(argv, stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), 30, "the ready file")
        ip = wait_for(lambda: hosts_entries(hosts).get("web.shop"), 20, "web.shop in hosts")
        assert wait_for(lambda: try_http(ip, 80), 10, "web answers").startswith("web-")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "Logging error" not in err and "Traceback" not in err, err
    assert hosts.read_bytes() == ORIGINAL_HOSTS


# -- services without selectors ------------------------------------------------------------


def endpoint_slice(name: str, service_name: str, ns: str, endpoints: str, ports: str) -> str:
    """An EndpointSlice written by hand for ``service_name``."""
    return (f"\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: {name}, namespace: {ns}, "
            f"labels: {{kubernetes.io/service-name: {service_name}}}}}\n"
            f"addressType: IPv4\nendpoints: {endpoints}\nports: {ports}\n")


def test_service_without_selector_follows_its_endpoint_slices(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    """``legacy`` (no selector) is backed by a hand-written slice naming a pod: it answers by
    name on the slice's port. ``outside``'s slice holds only an address: skipped, one warning."""
    cluster.apply(workload("backend", "payments", ports="[{name: web, containerPort: 8080}]"))
    cluster.wait_ready("payments", timeout=15)
    (pod,) = cluster.pods("payments", "app=backend")
    pod_name, pod_ip = pod["metadata"]["name"], pod["status"]["podIP"]
    cluster.apply(manifests(
        endpoint_slice("legacy-manual", "legacy", "payments",
                       f"[{{addresses: [{pod_ip}], conditions: {{ready: true}}, "
                       f"targetRef: {{kind: Pod, name: {pod_name}, namespace: payments}}}}]",
                       "[{port: 8080, protocol: TCP}]"),
        service("outside", "payments", ports="[{name: pg, port: 5432}]", selector=False),
        endpoint_slice("outside-manual", "outside", "payments",
                       "[{addresses: [10.20.30.40]}]", "[{name: pg, port: 5432}]"),
    ))
    fwd = run("-n", "payments")
    names = hosts_entries(hosts)
    assert "outside" not in names
    assert http_text(names["legacy"], 80).strip() == pod_name
    fwd.wait_line(r"WARNING .*payments/outside: 1 endpoint skipped \(10\.20\.30\.40\).*"
                  r"can only reach pods")
    # The simulated controllers leave a selector-less service's slices alone.
    slice_obj = cluster.store.get("EndpointSlice", "payments", "legacy-manual")
    assert slice_obj is not None and slice_obj["ports"] == [{"port": 8080, "protocol": "TCP"}]
    # The backing pod is replaced: the slice is rewritten to name the new one and the
    # service follows it.
    cluster.delete_pod("payments", pod_name)
    new = wait_for(lambda: next((p for p in cluster.pods("payments", "app=backend")
                                 if p["metadata"]["name"] != pod_name
                                 and p["status"].get("podIP")), None), 10, "a new backend pod")
    assert "legacy" in hosts_entries(hosts)  # kept while its slice names no live pod
    cluster.apply(endpoint_slice(
        "legacy-manual", "legacy", "payments",
        f"[{{addresses: [{new['status']['podIP']}], conditions: {{ready: true}}, "
        f"targetRef: {{kind: Pod, name: {new['metadata']['name']}, namespace: payments}}}}]",
        "[{port: 8080, protocol: TCP}]"))
    wait_for(lambda: try_http(names["legacy"], 80) == new["metadata"]["name"] + "\n", 10,
             "legacy answered by the new pod")
    assert sum("outside" in line for line in fwd.lines if "WARNING" in line) == 1
    fwd.stop_cleanly()


def test_headless_service_without_ports_is_forwarded_on_its_pods_container_ports(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    cluster.apply(manifests(
        workload("grid", "shop", kind="StatefulSet", replicas=2, image="sim/echo",
                 ports="[{name: a, containerPort: 7001}, {name: b, containerPort: 7002}]"),
        service("grid", "shop", ports="[]", headless=True),
    ))
    cluster.wait_ready("shop", timeout=15)
    fwd = run("-n", "shop")
    names = hosts_entries(hosts)
    for name in ("grid", "grid-0.grid", "grid-1.grid"):
        for port in (7001, 7002):
            assert echo(names[name], port, f"{name}:{port}".encode()) == \
                f"{name}:{port}".encode()
    line = fwd.wait_line(r"Forwarding grid-1\.grid")
    assert ":7001,7002 → shop/grid-1" in line
    assert "no TCP ports" not in fwd.output
    fwd.stop_cleanly()


# -- picking services by name --------------------------------------------------------------


def test_service_and_exclude_pick_exactly_the_named_services(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    """Across two namespaces: ``web`` by name, ``payments/a*`` by a qualified glob, ``db``
    named and excluded; ``late*`` and ``ghost`` match nothing at start-up (one warning), and
    a ``latecomer`` created afterwards is picked up while another new service is not."""
    fwd = run("-n", "shop,payments", "--service", "web,payments/a*,db",
              "--service", "late*,ghost", "--exclude", "db,*/nothing")
    forwarded = {line.split()[2].rstrip(",") for line in fwd.lines if " Forwarding " in line}
    assert forwarded == {"web", "api.payments"}
    names = hosts_entries(hosts)
    assert http_text(names["web"], 80).startswith("web-")
    assert http_text(names["api.payments"], 80).startswith("api-")
    assert not any(n.split(".")[0] in ("cart", "db", "legacy", "db-0") for n in names)
    [warning] = [line for line in fwd.lines if "no service matches" in line]
    assert "--service late*, ghost; --exclude */nothing" in warning
    assert "legacy" not in fwd.output  # not picked: not even looked at for a warning
    # Created after start: ``search`` is not named, ``latecomer`` is.
    cluster.apply(NEW_SERVICE)
    cluster.apply(manifests(workload("latecomer", "shop"), service("latecomer", "shop")))
    ip = wait_for(lambda: hosts_entries(hosts).get("latecomer"), 10, "latecomer in hosts")
    assert wait_for(lambda: try_http(ip, 80), 10, "latecomer answers").startswith("latecomer-")
    assert not any(n.startswith("search") for n in hosts_entries(hosts))
    assert sum("no service matches" in line for line in fwd.lines) == 1
    fwd.stop_cleanly()


def test_rollout_restart_under_traffic_moves_every_connection_to_the_new_pods(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    """A 3-replica Deployment restarted with ``kubectl rollout restart``'s change: its pods
    are replaced one by one (never fewer than 3 Ready: maxUnavailable is 0 at 3 replicas), and
    kubefwd follows them, ending on the new pods."""
    cluster.scale("Deployment", "shop", "web", 3)
    cluster.wait_for(lambda: len([p for p in cluster.pods("shop", "app=web")
                                  if _pod_ready(p)]) == 3, 15)
    fwd = run("-n", "shop")
    ip = hosts_entries(hosts)["web"]
    before = {p["metadata"]["name"] for p in cluster.pods("shop", "app=web")}
    least_ready = [3]

    def count_ready(_event: str, obj: dict[str, Any]) -> None:
        if obj.get("kind") == "Pod" and recording.is_set():
            ready = sum(1 for p in cluster.store.view("Pod", "shop", "app=web")
                        if _pod_ready(p) and not p["metadata"].get("deletionTimestamp"))
            least_ready[0] = min(least_ready[0], ready)

    recording = threading.Event()
    cluster.store.add_listener(count_ready)
    traffic = Traffic(lambda: try_http(ip, 80))
    try:
        wait_for(lambda: traffic.bodies(), 5, "traffic before the restart")
        recording.set()
        cluster.rollout_restart("shop", "web")

        def replaced() -> bool:
            now = {p["metadata"]["name"] for p in cluster.pods("shop", "app=web")
                   if _pod_ready(p)}
            return len(now) == 3 and not now & before

        wait_for(replaced, 20, "every pod replaced")
        recording.clear()
        started = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) > started + 20, 10, "traffic after the rollout")
    finally:
        traffic.stop()
    failed = sum(1 for _, body in traffic.answers if body is None)
    print(f"rollout restart under traffic: {len(traffic.answers)} attempted, {failed} failed")
    assert least_ready[0] >= 3
    last = [b.strip() for b in traffic.bodies()[-10:]]
    assert last and all(name not in before and name.startswith("web-") for name in last)
    fwd.stop_cleanly()


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def test_a_short_resync_interval_relists_quietly(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    """--resync-interval lists everything again on schedule: no warning, no back-off, and a
    service added meanwhile still arrives."""
    fwd = run("-n", "shop", "--resync-interval", "1s", "-v")
    time.sleep(3.5)
    add_search_and_reach_it(cluster, hosts)
    assert "WARNING" not in fwd.output and "retrying in" not in fwd.output, fwd.output
    assert "expired" not in fwd.output, fwd.output
    fwd.stop_cleanly()


# -- names the cluster may not take ----------------------------------------------------------

# A namespace "com" with a service "github" gives github.com; a service named localhost.
SHADOWING = manifests(
    namespace("com"),
    workload("github", "com"),
    service("github", "com"),
    workload("localhost", "shop"),
    service("localhost", "shop"),
)
PINNED = b"\n140.82.112.3 github.com  # pinned by the user\n"


def _held_back(fwd: Kubefwd, name: str) -> list[str]:
    return [line for line in fwd.lines if f"not writing {name} to the hosts file" in line]


def test_cluster_names_never_shadow_this_machine_or_foreign_lines(
    run: Callable[..., Kubefwd], cluster: SimCluster, tmp_path: Path
) -> None:
    cluster.apply(SHADOWING)
    cluster.wait_ready("com", timeout=15)
    cluster.wait_ready("shop", timeout=15)
    original = ORIGINAL_HOSTS + PINNED
    hosts = hosts_file(tmp_path, original, name="own-hosts")
    fwd = run("-n", "shop,com", hosts_path=hosts)
    names = hosts_entries(hosts)
    assert "localhost" not in names and "github.com" not in names
    # Both services are still forwarded, under their other names.
    assert http_text(names["localhost.shop"], 80).startswith("localhost-")
    assert http_text(names["github.com.svc"], 80).startswith("github-")
    assert hosts.read_bytes().startswith(original)
    [local] = _held_back(fwd, "localhost")
    assert "it names this machine" in local
    [pinned] = _held_back(fwd, "github.com")
    assert "already defines it" in pinned and "--allow-shadowing" in pinned
    # The user pins one of our names later: it is ours no more from the next write on.
    with open(hosts, "ab") as fh:
        fh.write(b"10.9.9.9 web.shop\n")
    add_search_and_reach_it(cluster, hosts, name="search.shop")
    names = hosts_entries(hosts)
    assert "web.shop" not in names and "web" in names and "web.shop.svc" in names
    assert hosts.read_bytes().startswith(original + b"10.9.9.9 web.shop\n")
    fwd.wait_line(r"not writing web\.shop to the hosts file")
    # Warned once each, however many writes happened since.
    assert len(_held_back(fwd, "localhost")) == len(_held_back(fwd, "github.com")) == 1
    assert fwd.stop() == 0
    assert hosts.read_bytes() == original + b"10.9.9.9 web.shop\n"


def test_allow_shadowing_writes_foreign_names_but_never_localhost(
    run: Callable[..., Kubefwd], cluster: SimCluster, tmp_path: Path
) -> None:
    cluster.apply(SHADOWING)
    cluster.wait_ready("com", timeout=15)
    original = ORIGINAL_HOSTS + PINNED
    hosts = hosts_file(tmp_path, original, name="own-hosts")
    fwd = run("-n", "shop,com", "--allow-shadowing", hosts_path=hosts)
    names = hosts_entries(hosts)
    assert "github.com" in names and "localhost" not in names
    assert http_text(names["github.com"], 80).startswith("github-")
    assert not _held_back(fwd, "github.com") and len(_held_back(fwd, "localhost")) == 1
    assert fwd.stop() == 0
    assert hosts.read_bytes() == original


# -- a full disk before start-up ---------------------------------------------------------------

# Run kubefwd inside a private mount namespace, its hosts file on a tiny tmpfs filled to the
# last byte ("$1": the folder to mount on; "$2": where to copy the file afterwards; "$3": a
# file of 0 to 4 KiB to put into the hosts file before the disk is filled).
_ON_A_FULL_DISK = textwrap.dedent(
    """
    set -u
    mount -t tmpfs -o size=64k tmpfs "$1" || exit 99
    cat "$3" > "$1/hosts"
    dd if=/dev/zero of="$1/filler" bs=512 2>/dev/null
    shift 3
    "$@"
    code=$?
    echo "exit code $code"
    """
)


def _full_disk_run(
    cluster: SimCluster, tmp_path: Path, block: int, original: bytes, env: dict[str, str]
) -> tuple[int, str, bytes, float]:
    disk = tmp_path / "disk"
    disk.mkdir()
    start = tmp_path / "original"
    start.write_bytes(original)
    conf = tmp_path / "base.yaml"
    conf.write_text(f"baseUnreservedIP: 127.1.{block}.1\n")
    script = _ON_A_FULL_DISK + 'cp "$DISK/hosts" "$OUT/hosts.after"\n'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "full-disk",
            str(disk), str(tmp_path), str(start),
            sys.executable, "-m", "kubefwd", "svc", "-c", str(cluster.kubeconfig_path),
            "-n", "shop", "--hosts-path", str(disk / "hosts"), "-z", str(conf)]
    full_env = dict(os.environ, HOME=str(tmp_path), PYTHONUNBUFFERED="1", DISK=str(disk),
                    OUT=str(tmp_path), **env)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env)
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if re.search(r"ready: \d+ services", line):
                # Ctrl-C to kubefwd only: the shell around it reports its exit code.
                for child in psutil.Process(proc.pid).children():
                    child.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(5)
    out = "\n".join(lines)
    if "unshare failed" in out:
        pytest.skip("unshare not permitted here")
    match = re.search(r"exit code (\d+)", out)
    assert match, out
    return int(match[1]), out, (tmp_path / "hosts.after").read_bytes(), \
        time.monotonic() - started


@pytest.mark.root
@needs_root("unshare", "mount", "dd")
def test_full_disk_at_start_up_writes_in_place_when_the_file_has_room(
    cluster: SimCluster, tmp_path: Path, block: int
) -> None:
    """A small hosts file on a full tmpfs: our lines fit in the page the file already has, so
    kubefwd writes them in place, becomes ready, and removes them at exit."""
    code, out, after, _ = _full_disk_run(cluster, tmp_path, block, ORIGINAL_HOSTS, {})
    assert re.search(r"ready: \d+ services", out), out
    assert "web.shop" in out
    assert code == 0, out
    assert after == ORIGINAL_HOSTS


@pytest.mark.root
@needs_root("unshare", "mount", "dd")
def test_full_disk_at_start_up_gives_up_with_exit_6_in_bounded_time(
    cluster: SimCluster, tmp_path: Path, block: int
) -> None:
    """A hosts file that fills its pages exactly: our lines need a block the full disk does
    not have. kubefwd gives up after the start-up deadline (shortened here) with exit 6 and
    one line saying why, leaving the file as it was."""
    original = (ORIGINAL_HOSTS + b"\n" + b"#" * 4095 + b"\n")[:8192]
    original = original + b"#" * (8192 - len(original) - 1) + b"\n"
    code, out, after, took = _full_disk_run(
        cluster, tmp_path, block, original, {"KUBEFWD_HOSTS_WRITE_TIMEOUT": "3"})
    assert code == 6, out
    assert not re.search(r"ready: \d+ services", out), out
    errors = [line for line in out.splitlines() if line.startswith("kubefwd: error:")]
    assert len(errors) == 1 and "no space left" in errors[0] and "3s" in errors[0], out
    assert took < 20, out
    assert after == original
