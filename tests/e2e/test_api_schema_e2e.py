"""The API against its own OpenAPI spec (``/openapi.yaml``): schemathesis generates a bounded
number of requests per operation against kubefwd running on the simulated cluster; no 5xx,
every answer matches the spec, and every operation but health refuses a missing key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_svc_e2e import (
    ORIGINAL_HOSTS,
)

from kubefwd.api.server import ApiServer
from kubefwd.app.control import ControlError
from kubefwd.app.program import Kubefwd as App
from kubefwd.app.program import SvcOptions
from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e

KEY = "schema-test-key"
# Streams never end by themselves: they are checked in test_api_e2e, not fuzzed.
STREAMS = r"^/api/v1/(events|logs/stream)$"


class FakeLookups:
    """The look-up interface the API uses, answering from a fixed little cluster."""

    PODS = {"web-1": {"metadata": {"name": "web-1", "namespace": "shop"}, "status": {}}}

    def _ns(self, namespace: str) -> None:
        if namespace != "shop":
            raise ControlError(f"namespace {namespace!r} not found", "not_found")

    def contexts(self) -> list[str]:
        return ["one", "two"]

    def namespaces(self, context: str | None = None) -> list[dict[str, Any]]:
        return [{"metadata": {"name": "shop", "managedFields": [{}]}}]

    def services(self, namespace: str, context: str | None = None) -> list[dict[str, Any]]:
        self._ns(namespace)
        return [{"metadata": {"name": "web"}}]

    def pods(self, namespace: str, context: str | None = None,
             selector: str = "") -> list[dict[str, Any]]:
        self._ns(namespace)
        return list(self.PODS.values())

    def pod(self, namespace: str, name: str, context: str | None = None) -> dict[str, Any]:
        self._ns(namespace)
        if name not in self.PODS:
            raise ControlError(f"pod {name!r} not found", "not_found")
        return self.PODS[name]

    def pod_logs(self, namespace: str, pod: str, **kwargs: Any) -> Iterator[str]:
        self.pod(namespace, pod)
        return iter(["line one", "line two"])

    def events(self, namespace: str, context: str | None = None) -> list[dict[str, Any]]:
        self._ns(namespace)
        return []

    def endpoints(self, namespace: str, service: str,
                  context: str | None = None) -> list[dict[str, Any]]:
        self._ns(namespace)
        return []


@pytest.fixture
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from helpers import hosts_file, locked_block
    from test_svc_e2e import BLOCK_SIZE, MANIFESTS, POD_RANGE

    tmp = tmp_path_factory.mktemp("schema")
    hosts_path = hosts_file(tmp, ORIGINAL_HOSTS)
    with locked_block("svc", range(128, 256 - BLOCK_SIZE, BLOCK_SIZE)) as third, \
            SimCluster(manifests=MANIFESTS, contexts=("one", "two"),
                       pod_ip_range=POD_RANGE) as sim:
        sim.wait_ready(timeout=15)
        app = App(SvcOptions(kubeconfig=str(sim.kubeconfig_path), namespaces=["shop"],
                             hosts_path=hosts_path, backup_dir=tmp,
                             base_ip=f"127.1.{third}.1"))
        app.lookups = FakeLookups()  # type: ignore[attr-defined]
        server = ApiServer(app, KEY, ("127.0.0.1", 0), threads=8)
        try:
            server.start()
            app.start()
            assert app.wait_ready(0)
            yield server.url
        finally:
            server.stop()
            app.shutdown()
        assert hosts_path.read_bytes() == ORIGINAL_HOSTS


# Checks that hold for every operation (the stateful ones, such as "valid input is
# accepted", cannot: a random valid namespace name does not exist in the cluster).
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance,ignored_auth")


def test_every_operation_matches_the_spec(api_url: str, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run",
         f"{api_url}/openapi.yaml", "-H", f"Authorization: Bearer {KEY}",
         "--max-examples", "15", "--checks", CHECKS, "--exclude-path-regex", STREAMS,
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
         "--workers", "1", "--seed", "1", "--no-color", "--report", "junit",
         "--report-junit-path", str(report)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "No issues found" in proc.stdout or " passed" in proc.stdout, proc.stdout[-3000:]
    print(proc.stdout[-4000:])


def test_every_operation_but_health_needs_the_key(api_url: str) -> None:
    spec = yaml.safe_load(Path(__file__).resolve().parents[2].joinpath(
        "kubefwd", "api", "openapi.yaml").read_text())
    checked = 0
    for path, item in spec["paths"].items():
        for method in ("get", "post", "delete"):
            if method not in item:
                continue
            url = api_url + path.replace("{key}", "shop%2Fweb").replace(
                "{namespace}", "shop").replace("{pod}", "web-1").replace("{service}", "web")
            request = urllib.request.Request(url, method=method.upper(),
                                             data=b"{}" if method == "post" else None)
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    status = resp.status
                    body = json.loads(resp.read()) if path == "/api/health" else None
            except urllib.error.HTTPError as exc:
                status = exc.code
                body = json.loads(exc.read())
            if path == "/api/health":
                assert status == 200 and body and body["success"] is True
            else:
                assert status == 401, (method, path, status)
                assert body and body["error"]["code"] == "unauthorized"
            checked += 1
    assert checked >= 39


def test_stops_cleanly_with_sse_clients(api_url: str) -> None:
    # An SSE client that is attached while the module's server stops must not hold it up;
    # this only opens one and leaves it to the fixture's teardown.
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(api_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}"
                 "\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    sock.close()
