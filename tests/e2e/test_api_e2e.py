"""The REST API end to end: ``kubefwd svc`` in idle mode (no -n, no -A) as a real process
against the simulated cluster; namespaces added and removed over HTTP, the hosts file
following, the SSE stream, authentication, and where the API listens."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil
import pytest
from helpers import http_text, wait_for
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    Kubefwd,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e


def api_endpoint(home: Path) -> tuple[str, str]:
    files = list((home / "kubefwd").glob("api-*.json"))
    assert len(files) == 1, files
    assert files[0].stat().st_mode & 0o777 == 0o600
    data = json.loads(files[0].read_text())
    return data["url"], data["key"]


def call(url: str, method: str, path: str, key: str | None, body: Any = None,
         timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers=headers)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data


class SseReader:
    """Reads ``GET /api/v1/events`` on a thread, collecting the events."""

    def __init__(self, url: str, key: str, query: str = "") -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.sendall(f"GET /api/v1/events{query} HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {key}\r\n\r\n".encode())
        self.events: list[dict[str, Any]] = []
        self.raw = b""
        self._thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.raw += chunk
            buf += chunk
            for line in buf.split(b"\n"):
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))
            buf = buf[buf.rfind(b"\n") + 1:]

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def start_idle(run: Callable[..., Kubefwd], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> tuple[Kubefwd, str, str]:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("KUBEFWD_API_KEY", raising=False)
    fwd = run("--api-addr", "127.0.0.1:0")
    line = fwd.wait_line(r"^API: http://127\.0\.0\.1:\d+ key ")
    url, key = api_endpoint(tmp_path)
    assert url in line and key in line  # printed once, with the key
    return fwd, url, key


def test_idle_mode_adds_and_removes_a_namespace_over_the_api(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fwd, url, key = start_idle(run, tmp_path, monkeypatch)
    fwd.wait_line(r"ready: 0 services")
    assert hosts.read_bytes() == ORIGINAL_HOSTS  # idle: nothing forwarded
    status, info = call(url, "GET", "/api/info", key)
    assert status == 200 and info["data"]["idle"] is True
    assert info["data"]["namespaces"] == [] and info["data"]["contexts"] == ["one"]
    status, listed = call(url, "GET", "/api/v1/services", key)
    assert listed["data"]["total"] == 0

    sse = SseReader(url, key, "?type=forward_bound,forward_unbound,namespace_watched,"
                              "namespace_unwatched")
    try:
        wait_for(lambda: sse.raw.startswith(b"HTTP/1.1 200") and b": kubefwd events" in
                 sse.raw, 10, "the SSE stream opens")
        status, added = call(url, "POST", "/api/v1/namespaces", key, {"namespace": "shop"})
        assert status == 201, added
        assert added == {"success": True, "error": None, "data": {
            "context": "one", "namespace": "shop", "services": None, "excluded": [],
            "selector": ""}}
        ip = wait_for(lambda: hosts_entries(hosts).get("web.shop"), 10, "web.shop written")
        assert http_text(ip, 80).startswith("web-")
        status, svc = call(url, "GET", "/api/v1/services/" + quote("shop/web", safe=""), key)
        assert status == 200 and svc["data"]["ip"] == ip and "web.shop" in svc["data"]["names"]
        status, page = call(url, "GET", "/api/v1/services?search=cart&limit=1", key)
        assert page["data"]["total"] == 1 and page["data"]["items"][0]["service"] == "cart"

        status, removed = call(url, "DELETE", "/api/v1/namespaces/shop", key)
        assert status == 200, removed
        wait_for(lambda: "web.shop" not in hosts_entries(hosts), 10, "web.shop removed")
        wait_for(lambda: any(e["type"] == "namespace_unwatched" for e in sse.events) and
                 sum(e["type"] == "forward_unbound" for e in sse.events) >=
                 sum(e["type"] == "forward_bound" for e in sse.events) > 0, 10,
                 "the unbinds reach the stream")
        kinds = [e["type"] for e in sse.events]
        # In order: watched, then bound, then unwatched, then the unbinds.
        assert kinds[0] == "namespace_watched"
        assert kinds.index("namespace_unwatched") > max(
            i for i, k in enumerate(kinds) if k == "forward_bound")
        assert {e["key"] for e in sse.events if e["type"] == "forward_bound"} == \
            {e["key"] for e in sse.events if e["type"] == "forward_unbound"}
    finally:
        sse.close()
    status, gone = call(url, "DELETE", "/api/v1/namespaces/shop", key)
    assert status == 404 and gone["error"]["code"] == "not_found"
    fwd.stop_cleanly()
    assert not list((tmp_path / "kubefwd").glob("api-*.json"))  # the key file goes at exit


def test_api_key_enforced_envelope_and_loopback_only(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path,
    cluster: SimCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fwd, url, key = start_idle(run, tmp_path, monkeypatch)
    for bad in (None, "wrong", key[:-1]):
        status, body = call(url, "GET", "/api/v1/services", bad)
        assert status == 401 and body["success"] is False
        assert body["error"]["code"] == "unauthorized"
    status, body = call(url, "GET", "/api/health", None)
    assert status == 200 and body["data"]["status"] == "ok"
    # Bad input: 400 with a sentence; unknown keys: 404; never a traceback.
    status, body = call(url, "POST", "/api/v1/namespaces", key, {"namespace": "Not A Name"})
    assert status == 400 and "namespace name" in body["error"]["message"]
    status, body = call(url, "POST", "/api/v1/namespaces", key, {"nope": 1})
    assert status == 400 and "unknown field" in body["error"]["message"]
    status, body = call(url, "GET", "/api/v1/services/" + quote("shop/nope", safe=""), key)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = call(url, "GET", "/api/v1/no-such-route", key)
    assert status == 404 and body["success"] is False
    status, body = call(url, "GET", "/api/v1/services?limit=x", key)
    assert status == 400 and "limit" in body["error"]["message"]
    # Listens only on its loopback address.
    port = urlsplit(url).port
    listening = [c.laddr for c in psutil.Process(fwd.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert [a for a in listening if a.port == port] == [("127.0.0.1", port)]
    # No credential of the kubeconfig in any answer or in the log.
    token = cluster.token
    call(url, "POST", "/api/v1/namespaces", key, {"namespace": "shop"})
    answers = "".join(json.dumps(call(url, "GET", path, key)[1]) for path in (
        "/api/info", "/api/v1/services", "/api/v1/forwards", "/api/v1/logs?limit=1000",
        "/api/v1/history/events?limit=1000", "/api/v1/diagnostics/network"))
    assert token not in answers and token not in fwd.output
    assert "BEGIN" not in answers
    # Network: every forward's address, and how loopback addresses are made (on Linux all of
    # 127/8 is local: nothing added, nothing to undo).
    status, body = call(url, "GET", "/api/v1/diagnostics/network", key)
    network = body["data"]
    assert status == 200 and network["loopback"] == "linux" and network["aliases"] == []
    assert {a["ip"] for a in network["addresses"]} and all(
        a["ip"].startswith("127.") and a["ports"] for a in network["addresses"])
    fwd.stop_cleanly()
