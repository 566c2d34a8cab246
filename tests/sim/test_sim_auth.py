"""The simulated API server's connection settings: client certificates signed by its CA,
impersonation headers, a path prefix, and the idle-connection cut."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import web_and_headless_db

from kubefwd.sim import SimCluster

WEB = web_and_headless_db("shop", web_replicas=1)


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    with SimCluster(manifests=WEB) as c:
        c.wait_ready("shop")
        yield c


def tls_context(cluster: SimCluster, cert: tuple[bytes, bytes] | None = None) -> ssl.SSLContext:
    assert cluster.credentials is not None
    ctx = cluster.credentials.client_context()
    if cert is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
            with open(cert_path, "wb") as f:
                f.write(cert[0])
            with open(key_path, "wb") as f:
                f.write(cert[1])
            ctx.load_cert_chain(cert_path, key_path)
    return ctx


def get(cluster: SimCluster, path: str, *, token: bool = True,
        cert: tuple[bytes, bytes] | None = None,
        headers: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, timeout=10,
                                       context=tls_context(cluster, cert))
    try:
        conn.putrequest("GET", path)
        if token:
            conn.putheader("Authorization", f"Bearer {cluster.token}")
        for name, value in headers or []:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_client_certificate_signed_by_the_cluster_ca_authenticates(cluster: SimCluster) -> None:
    status, _ = get(cluster, "/api/v1/namespaces/shop/pods", token=False)
    assert status == 401
    cert = cluster.issue_client_cert("alice", ["devs", "ops"])
    status, body = get(cluster, "/api/v1/namespaces/shop/pods", token=False, cert=cert)
    assert status == 200, body
    assert ("alice", ("devs", "ops"), "") in cluster.identities
    # The token still works, as itself.
    assert get(cluster, "/api/v1/namespaces/shop/pods")[0] == 200
    assert "sim-user" in cluster.users_seen()


def test_expired_or_foreign_client_certificates_are_refused(cluster: SimCluster) -> None:
    expired = cluster.issue_client_cert("alice", expires_in=-1)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(cluster, "/api/v1/namespaces/shop/pods", token=False, cert=expired)
    with SimCluster() as other:
        foreign = other.issue_client_cert("mallory")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(cluster, "/api/v1/namespaces/shop/pods", token=False, cert=foreign)
    assert "alice" not in cluster.users_seen() and "mallory" not in cluster.users_seen()


def test_a_short_lived_certificate_works_until_it_expires(cluster: SimCluster) -> None:
    cert = cluster.issue_client_cert("bob", expires_in=2)
    assert get(cluster, "/api/v1/namespaces", token=False, cert=cert)[0] == 200
    time.sleep(2.5)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(cluster, "/api/v1/namespaces", token=False, cert=cert)


def test_impersonation_is_recorded_and_can_be_refused(cluster: SimCluster) -> None:
    status, _ = get(cluster, "/api/v1/namespaces/shop/services",
                    headers=[("Impersonate-User", "carol"), ("Impersonate-Group", "qa"),
                             ("Impersonate-Group", "eu")])
    assert status == 200
    assert ("carol", ("qa", "eu", "system:authenticated"), "sim-user") in cluster.identities
    cluster.refuse_impersonation(user="dave")
    status, body = get(cluster, "/api/v1/namespaces/shop/services",
                       headers=[("Impersonate-User", "dave")])
    assert status == 403
    assert 'User "sim-user" cannot impersonate resource "users"' in body["message"]
    cluster.refuse_impersonation(group="admins")
    status, body = get(cluster, "/api/v1/namespaces/shop/services",
                       headers=[("Impersonate-User", "carol"), ("Impersonate-Group", "admins")])
    assert status == 403 and 'groups "admins" is forbidden' in body["message"]
    status, _ = get(cluster, "/api/v1/namespaces/shop/services",
                    headers=[("Impersonate-Group", "qa")])
    assert status == 400
    assert "dave" not in cluster.users_seen()


def test_path_prefix() -> None:
    with SimCluster(manifests=WEB, path_prefix="/k8s/clusters/c-1") as c:
        assert c.url.endswith(f":{c.port}/k8s/clusters/c-1")
        assert c.kubeconfig()["clusters"][0]["cluster"]["server"] == c.url
        status, body = get(c, "/k8s/clusters/c-1/api/v1/namespaces/shop/services")
        assert status == 200 and {i["metadata"]["name"] for i in body["items"]} == {"web", "db"}
        assert get(c, "/api/v1/namespaces/shop/services")[0] == 404
        assert get(c, "/k8s/clusters/c-2/api/v1/namespaces")[0] == 404


def test_idle_cut_closes_idle_connections_only(cluster: SimCluster) -> None:
    cluster.cut_idle_connections(1.0)
    idle, busy = (tls_context(cluster).wrap_socket(
        socket.create_connection(("127.0.0.1", cluster.port), timeout=10),
        server_hostname="127.0.0.1") for _ in range(2))
    silent = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)  # no TLS
    request = (f"GET /healthz HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {cluster.token}\r\n\r\n").encode()
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # a request every 0.3 s keeps it open
            busy.sendall(request)
            assert b"200 OK" in busy.recv(4096)
            time.sleep(0.3)
        assert idle.recv(1) == b""  # cut: end of stream
        assert silent.recv(1) == b""  # a handshake never started is cut as well
        assert cluster.idle_cuts == 1, cluster.idle_cuts
        busy.sendall(request)
        assert b"200 OK" in busy.recv(4096)
        cluster.cut_idle_connections(None)
        cuts = cluster.idle_cuts
        time.sleep(1.5)
        busy.sendall(request)
        assert b"200 OK" in busy.recv(4096)
        assert cluster.idle_cuts == cuts
    finally:
        idle.close()
        busy.close()
        silent.close()
