
"""``kubefwd svc`` through real proxies (tinyproxy for HTTP CONNECT, microsocks for SOCKS5),
chosen by the kubeconfig's ``proxy-url`` or by ``HTTPS_PROXY``, with kubectl given the same
settings as the judge. The proxies are real programs on free loopback ports; the simulated
cluster knows nothing of them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from helpers import http_text, kubectl, needs_kubectl, unused_port, wait_for
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    Kubefwd,
    _run_to_end,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e

TINYPROXY = shutil.which("tinyproxy")
MICROSOCKS = shutil.which("microsocks")
needs_tinyproxy = pytest.mark.skipif(TINYPROXY is None, reason="tinyproxy is not installed")
needs_microsocks = pytest.mark.skipif(MICROSOCKS is None, reason="microsocks is not installed")

USER, PASSWORD = "alice", "s3cret-Pw"
WRONG_PASSWORD = "wrong-Pw-9f3c"


class ProxyProcess:
    """A proxy program we started; ``log`` is what it logged (tinyproxy's log file or
    microsocks' output)."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log_path = log
        self._out = open(log.with_suffix(".out"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)
        wait_for(lambda: _accepts(port) or self.proc.poll() is not None, 10,
                 f"{argv[0]} listening on {port}")
        assert self.proc.poll() is None, log.with_suffix(".out").read_text()

    def url(self, scheme: str, user: str = "", password: str = "") -> str:
        auth = f"{user}:{password}@" if user else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        text = ""
        for path in (self.log_path, self.log_path.with_suffix(".out")):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def upstream_connections(self, port: int) -> int:
        """Established connections the proxy holds to ``port`` (the API server)."""
        return sum(1 for c in psutil.Process(self.proc.pid).net_connections(kind="inet")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def tinyproxy(tmp_path: Path, cluster: SimCluster) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(auth: bool = False) -> ProxyProcess:
        if TINYPROXY is None:
            pytest.skip("tinyproxy is not installed")
        port = unused_port()
        log = tmp_path / f"tinyproxy-{port}.log"
        conf = tmp_path / f"tinyproxy-{port}.conf"
        lines = [f"Port {port}", "Listen 127.0.0.1", "Allow 127.0.0.1",
                 f"ConnectPort {cluster.port}", "LogLevel Connect", f'LogFile "{log}"',
                 "MaxClients 100", "Timeout 600"]
        if auth:
            lines.append(f"BasicAuth {USER} {PASSWORD}")
        conf.write_text("\n".join(lines) + "\n")
        proxy = ProxyProcess([TINYPROXY, "-d", "-c", str(conf)], port, log)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def microsocks(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(auth: bool = False) -> ProxyProcess:
        if MICROSOCKS is None:
            pytest.skip("microsocks is not installed")
        port = unused_port()
        argv = [MICROSOCKS, "-i", "127.0.0.1", "-p", str(port)]
        if auth:
            argv += ["-u", USER, "-P", PASSWORD]
        proxy = ProxyProcess(argv, port, tmp_path / f"microsocks-{port}.log")
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def proxied_kubeconfig(cluster: SimCluster, tmp_path: Path, proxy_url: str | None, *,
                       server_host: str | None = None) -> Path:
    """The cluster's kubeconfig with ``proxy-url`` on every cluster (and, with
    ``server_host``, the server named by that host, its certificate checked as localhost)."""
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    for entry in doc["clusters"]:
        if proxy_url:
            entry["cluster"]["proxy-url"] = proxy_url
        if server_host:
            entry["cluster"]["server"] = f"https://{server_host}:{cluster.port}"
            entry["cluster"]["tls-server-name"] = "localhost"
    path = tmp_path / f"kubeconfig-{len(list(tmp_path.glob('kubeconfig-*')))}"
    path.write_text(yaml.safe_dump(doc))
    return path


def direct_connections(fwd: Kubefwd, port: int) -> int:
    """Connections the kubefwd process holds straight to the API server's port."""
    return sum(1 for c in psutil.Process(fwd.proc.pid).net_connections(kind="inet")
               if c.raddr and c.raddr.port == port)


def loopback_alias_name() -> str:
    """A name other than ``localhost`` that resolves to loopback: the environment's proxy
    is never used for localhost or loopback addresses (as in Go, hence kubectl)."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = ""
    if name == "localhost" or not address.startswith("127."):
        pytest.skip("this machine's name does not resolve to a loopback address")
    return name


def assert_forwarded_through(fwd: Kubefwd, hosts: Path, cluster: SimCluster,
                             proxy: ProxyProcess) -> None:
    entries = hosts_entries(hosts)
    assert http_text(entries["web"], 80).startswith("web-")  # traffic through a tunnel
    # Nothing bypasses the proxy: kubefwd holds no connection of its own to the API server,
    # while the proxy holds the watches' and the tunnel's.
    assert direct_connections(fwd, cluster.port) == 0
    wait_for(lambda: proxy.upstream_connections(cluster.port) >= 2, 5, "proxied connections")


# -- HTTP CONNECT (tinyproxy) ----------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("auth", [False, True], ids=["open", "basic-auth"])
def test_http_proxy_url(run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path,
                        tmp_path: Path, tinyproxy: Callable[..., ProxyProcess],
                        auth: bool) -> None:
    proxy = tinyproxy(auth=auth)
    url = proxy.url("http", USER, PASSWORD) if auth else proxy.url("http")
    config = proxied_kubeconfig(cluster, tmp_path, url)
    fwd = run("-c", str(config), "-n", "shop")
    assert_forwarded_through(fwd, hosts, cluster, proxy)
    connects = proxy.log.count(f"CONNECT 127.0.0.1:{cluster.port}")
    assert connects >= 2, proxy.log  # the list/watch client and the tunnel
    # The judge: kubectl with the same kubeconfig goes through the same proxy.
    out = kubectl(config, "get", "pods", "-n", "shop", "-o", "name").stdout
    assert "pod/web-" in out
    assert proxy.log.count(f"CONNECT 127.0.0.1:{cluster.port}") > connects
    assert PASSWORD not in fwd.output
    fwd.stop_cleanly()


@needs_kubectl
def test_https_proxy_environment(run: Callable[..., Kubefwd], cluster: SimCluster,
                                 hosts: Path, tmp_path: Path,
                                 tinyproxy: Callable[..., ProxyProcess],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    name = loopback_alias_name()
    proxy = tinyproxy(auth=True)
    config = proxied_kubeconfig(cluster, tmp_path, None, server_host=name)
    for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url("http", USER, PASSWORD))
    fwd = run("-c", str(config), "-n", "shop")
    assert_forwarded_through(fwd, hosts, cluster, proxy)
    connects = proxy.log.count(f"CONNECT {name}:{cluster.port}")
    assert connects >= 2, proxy.log
    out = kubectl(config, "get", "pods", "-n", "shop", "-o", "name").stdout
    assert "pod/web-" in out
    assert proxy.log.count(f"CONNECT {name}:{cluster.port}") > connects
    fwd.stop_cleanly()


def test_no_proxy_and_loopback_bypass_the_environment_proxy(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that does not exist: had it been used, start-up would fail with exit 4.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{unused_port()}")
    fwd = run("-n", "shop")  # the server is 127.0.0.1: loopback is never proxied
    assert http_text(hosts_entries(hosts)["web"], 80).startswith("web-")
    fwd.stop_cleanly()
    name = loopback_alias_name()
    config = proxied_kubeconfig(cluster, tmp_path, None, server_host=name)
    monkeypatch.setenv("NO_PROXY", f"example.com,{name}:{cluster.port}")
    fwd = run("-c", str(config), "-n", "shop")
    assert http_text(hosts_entries(hosts)["web"], 80).startswith("web-")
    fwd.stop_cleanly()
    monkeypatch.setenv("NO_PROXY", f"{name}:1")  # another port: the proxy applies
    result = _run_to_end(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)],
                         tmp_path)
    assert result.returncode == 4, result.stderr
    assert "cannot reach the proxy http://127.0.0.1:" in result.stderr


# -- SOCKS5 (microsocks) ---------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize(("scheme", "auth"),
                         [("socks5", False), ("socks5h", False), ("socks5", True)],
                         ids=["socks5", "socks5h", "socks5-auth"])
def test_socks5_proxy_url(run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path,
                          tmp_path: Path, microsocks: Callable[..., ProxyProcess],
                          scheme: str, auth: bool) -> None:
    proxy = microsocks(auth=auth)
    url = proxy.url(scheme, USER, PASSWORD) if auth else proxy.url(scheme)
    # socks5h leaves the name to the proxy: name the server, not its address.
    config = proxied_kubeconfig(cluster, tmp_path, url,
                                server_host="localhost" if scheme == "socks5h" else None)
    fwd = run("-c", str(config), "-n", "shop")
    assert_forwarded_through(fwd, hosts, cluster, proxy)
    wanted = f"connected to localhost:{cluster.port}" if scheme == "socks5h" else \
        f"connected to 127.0.0.1:{cluster.port}"
    wait_for(lambda: proxy.log.count(wanted) >= 2, 5, f"{wanted!r} in the proxy's log")
    if scheme == "socks5":  # kubectl knows socks5 only
        before = proxy.log.count(wanted)
        out = kubectl(config, "get", "pods", "-n", "shop", "-o", "name").stdout
        assert "pod/web-" in out
        wait_for(lambda: proxy.log.count(wanted) > before, 5, "kubectl in the proxy's log")
    assert PASSWORD not in fwd.output
    fwd.stop_cleanly()


# -- refusals ---------------------------------------------------------------------------------


def _refused_run(cluster: SimCluster, hosts: Path, tmp_path: Path,
                 url: str) -> subprocess.CompletedProcess[str]:
    config = proxied_kubeconfig(cluster, tmp_path, url)
    result = _run_to_end(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)],
                         tmp_path)
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    assert hosts.read_bytes() == ORIGINAL_HOSTS
    return result


def test_wrong_http_proxy_password_is_one_line_exit_4_without_the_password(
    cluster: SimCluster, hosts: Path, tmp_path: Path, tinyproxy: Callable[..., ProxyProcess]
) -> None:
    proxy = tinyproxy(auth=True)
    result = _refused_run(cluster, hosts, tmp_path, proxy.url("http", USER, WRONG_PASSWORD))
    assert f"the proxy http://{USER}@127.0.0.1:{proxy.port} refused CONNECT" in result.stderr
    assert "wrong proxy credentials" in result.stderr


def test_wrong_socks_password_is_one_line_exit_4_without_the_password(
    cluster: SimCluster, hosts: Path, tmp_path: Path, microsocks: Callable[..., ProxyProcess]
) -> None:
    proxy = microsocks(auth=True)
    result = _refused_run(cluster, hosts, tmp_path, proxy.url("socks5", USER, WRONG_PASSWORD))
    assert f"the proxy socks5://{USER}@127.0.0.1:{proxy.port}" in result.stderr


def test_unreachable_proxy_and_denied_connect_are_one_line_exit_4(
    cluster: SimCluster, hosts: Path, tmp_path: Path, tinyproxy: Callable[..., ProxyProcess]
) -> None:
    port = unused_port()
    result = _refused_run(cluster, hosts, tmp_path,
                          f"http://{USER}:{WRONG_PASSWORD}@127.0.0.1:{port}")
    assert f"cannot reach the proxy http://{USER}@127.0.0.1:{port}" in result.stderr
    proxy = tinyproxy()
    # tinyproxy allows CONNECT to the configured port only: another port is denied.
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{unused_port()}"
        entry["cluster"]["proxy-url"] = proxy.url("http")
    config = tmp_path / "denied"
    config.write_text(yaml.safe_dump(doc))
    result = _run_to_end(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)],
                         tmp_path)
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"the proxy http://127.0.0.1:{proxy.port} refused CONNECT" in result.stderr


def test_bad_proxy_url_is_a_config_error(cluster: SimCluster, hosts: Path,
                                         tmp_path: Path) -> None:
    config = proxied_kubeconfig(cluster, tmp_path, f"ftp://{USER}:{WRONG_PASSWORD}@127.0.0.1:1")
    result = _run_to_end(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)],
                         tmp_path)
    assert result.returncode == 3, result.stderr
    assert "unsupported proxy scheme 'ftp'" in result.stderr
    assert WRONG_PASSWORD not in result.stderr
    assert os.path.exists(hosts)
