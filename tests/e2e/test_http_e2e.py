"""HTTP requests seen end to end: ``kubefwd svc --api`` as a real process on the simulated
cluster, keep-alive and pipelined requests (and curl) through a forward, then the API's
``/http`` routes list them with method, path, status and size; an echo connection, whatever
it carries, lists nothing. Over SPDY and over the per-connection WebSocket, whose byte paths
are separate."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import wait_for
from test_api_e2e import api_endpoint, call
from test_svc_e2e import (  # noqa: F401  (fixtures)
    Kubefwd,
    block,
    cluster,
    echo,
    hosts,
    hosts_entries,
    run,
)

pytestmark = pytest.mark.e2e

PIPELINED = (
    b"GET /bytes/100000 HTTP/1.1\r\nHost: web\r\n\r\n"
    b"POST /upload?x=1 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    b"HEAD /bytes/7 HTTP/1.1\r\nHost: web\r\n\r\n"
    b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
)


def exchange_all(ip: str, port: int, data: bytes) -> bytes:
    """Send ``data`` at once (every request pipelined), read until the server closes."""
    with socket.create_connection((ip, port), timeout=10) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(1 << 16):
            got += chunk
    return got


def http_log(url: str, key: str, service: str) -> list[dict[str, Any]]:
    status, answer = call(url, "GET", f"/api/v1/services/{quote(service, safe='')}/http",
                          key)
    assert status == 200, answer
    return list(answer["data"])


@pytest.mark.parametrize("transport", ["spdy-ws", "ws"])
def test_http_requests_through_a_forward_are_listed_and_echo_traffic_is_not(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("KUBEFWD_API_KEY", raising=False)
    fwd = run("-n", "shop", "--api", "--api-addr", "127.0.0.1:0", "--transport", transport)
    fwd.wait_line(r"^API: http://127\.0\.0\.1:\d+ key ")
    url, key = api_endpoint(tmp_path)
    names = hosts_entries(hosts)
    web, db = names["web"], names["db-0.db"]

    # Not HTTP, and HTTP-looking bytes echoed back (no status line): nothing is listed.
    assert echo(db, 5432, b"\x16\x03\x01\x00\x05hello") == b"\x16\x03\x01\x00\x05hello"
    assert echo(db, 5432, b"GET /echoed HTTP/1.1\r\n\r\n") == b"GET /echoed HTTP/1.1\r\n\r\n"
    for _ in range(4):  # the port is then no longer looked at
        assert echo(db, 5432, b"*1\r\n$4\r\nPING\r\n") == b"*1\r\n$4\r\nPING\r\n"

    answer = exchange_all(web, 80, PIPELINED)
    assert answer.count(b"HTTP/1.1 200 OK") == 4
    expected = [("GET", "/bytes/100000", 200, 100000), ("POST", "/upload?x=1", 200, None),
                ("HEAD", "/bytes/7", 200, 0), ("GET", "/", 200, None)]
    curl = shutil.which("curl")
    if curl:  # keep-alive: two requests on one connection
        out = subprocess.run([curl, "-sS", "-o", "/dev/null", "-o", "/dev/null",
                              "-w", "%{http_code} %{num_connects}\n",
                              f"http://{web}/healthz", f"http://{web}/nowhere"],
                             capture_output=True, text=True, timeout=30, check=True)
        assert out.stdout.split("\n")[1].split()[1] == "0", out.stdout  # the same connection
        expected += [("GET", "/healthz", 200, 2), ("GET", "/nowhere", 404, None)]

    seen = wait_for(lambda: (lambda got: got if len(got) >= len(expected) else None)(
        http_log(url, key, "shop/web")), 10, "the requests are listed")
    assert [(s["method"], s["path"], s["status"]) for s in seen] == [
        (m, p, st) for m, p, st, _ in expected]
    for item, (_, _, _, size) in zip(seen, expected, strict=True):
        if size is not None:
            assert item["size"] == size, item
        else:
            assert item["size"] > 0, item
        assert item["latency_ms"] is not None and item["latency_ms"] >= 0
        assert item["port"] == 80 and item["key"].endswith("shop/web")
    upload = json.loads(answer.split(b"\r\n\r\n")[2].split(b"HTTP/1.1")[0])
    assert upload["length"] == 11  # the chunked body went through whole
    assert seen[1]["size"] == len(json.dumps(upload)) + 1
    # The same through the forward's own route.
    status, by_forward = call(url, "GET", f"/api/v1/forwards/{quote(seen[0]['key'], safe='')}"
                              "/http?limit=2", key)
    assert status == 200 and [s["path"] for s in by_forward["data"]] == [
        s["path"] for s in seen[-2:]]
    assert http_log(url, key, "shop/db") == []
    # Each request is in the HTTP log, not in the event history (one per request: busy).
    status, history = call(url, "GET", "/api/v1/history/events", key)
    assert status == 200 and history["data"]
    assert not any(e["type"] == "http_request_seen" for e in history["data"])
    fwd.stop_cleanly()


def test_json_output_has_a_line_per_http_request(
    run: Callable[..., Kubefwd], hosts: Path,  # noqa: F811
) -> None:
    fwd = run("-n", "shop", "-o", "json", ready=False)
    fwd.wait_line(r'"type":"ready"', timeout=20)
    web = hosts_entries(hosts)["web"]
    answer = exchange_all(web, 80, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    line = json.loads(fwd.wait_line(r'"type":"http_request_seen"'))
    assert {k: line[k] for k in ("key", "port", "method", "path", "status", "size")} == {
        "key": "one/shop/web", "port": 80, "method": "GET", "path": "/healthz",
        "status": 200, "size": 2}
    fwd.stop_cleanly()
