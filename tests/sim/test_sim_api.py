"""The simulated API server over real sockets: auth, errors, discovery, list/watch, faults.

Raw HTTP(S) requests check the wire format; the official ``kubernetes`` client checks that a
real client accepts it (list, watch, 410 recovery).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml
from helpers import web_and_headless_db

from kubefwd.sim import SimCluster

WEB = web_and_headless_db("shop", web_replicas=2)


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    with SimCluster(manifests=WEB) as c:
        c.wait_ready("shop")
        yield c


def connect(cluster: SimCluster) -> http.client.HTTPConnection:
    if cluster.credentials is None:
        return http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    return http.client.HTTPSConnection("127.0.0.1", cluster.port, timeout=10,
                                       context=cluster.credentials.client_context())


def call(cluster: SimCluster, method: str, path: str, body: Any = None, *,
         token: bool = True, content_type: str = "application/json",
         conn: http.client.HTTPConnection | None = None) -> tuple[int, Any]:
    own = conn is None
    conn = conn or connect(cluster)
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {cluster.token}"
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        if own:
            conn.close()


def assert_status(result: tuple[int, Any], code: int, reason: str) -> dict[str, Any]:
    status, body = result
    assert status == code, body
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == code and body["reason"] == reason
    assert body["message"]
    return dict(body)


def pod_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "sim/http",
                                     "ports": [{"containerPort": 8080}]}]}}


def test_kubeconfig_has_server_ca_token_and_every_context() -> None:
    with SimCluster(contexts=("sim", "sim2")) as c:
        config = yaml.safe_load(c.kubeconfig_path.read_text())
        assert config["current-context"] == "sim"
        assert [x["name"] for x in config["contexts"]] == ["sim", "sim2"]
        assert all(x["context"]["namespace"] == "default" for x in config["contexts"])
        assert {x["cluster"]["server"] for x in config["clusters"]} == {c.url}
        assert c.url.startswith("https://127.0.0.1:")
        assert config["clusters"][0]["cluster"]["certificate-authority-data"]
        assert config["users"][0]["user"]["token"] == c.token
    assert not c.kubeconfig_path.exists()


def test_requests_without_the_token_get_401(cluster: SimCluster) -> None:
    assert_status(call(cluster, "GET", "/api/v1/pods", token=False), 401, "Unauthorized")
    assert call(cluster, "GET", "/api/v1/pods")[0] == 200


def test_tls_is_verified_against_the_generated_ca(cluster: SimCluster) -> None:
    strict = ssl.create_default_context()  # the system CAs do not know the sim's CA
    with socket.create_connection(("127.0.0.1", cluster.port)) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        strict.wrap_socket(raw, server_hostname="127.0.0.1")
    assert cluster.credentials is not None
    ctx = cluster.credentials.client_context()
    for host in ("127.0.0.1", "localhost"):
        with socket.create_connection(("127.0.0.1", cluster.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_discovery(cluster: SimCluster) -> None:
    status, version = call(cluster, "GET", "/version")
    assert status == 200 and version["gitVersion"].startswith("v1.")
    assert call(cluster, "GET", "/api")[1]["versions"] == ["v1"]
    groups = {g["name"] for g in call(cluster, "GET", "/apis")[1]["groups"]}
    assert groups == {"apps", "discovery.k8s.io"}
    core = {r["name"]: r for r in call(cluster, "GET", "/api/v1")[1]["resources"]}
    assert core["services"]["shortNames"] == ["svc"] and core["pods"]["namespaced"]
    assert core["namespaces"]["namespaced"] is False and "pods/portforward" in core
    assert "watch" in core["endpoints"]["verbs"]
    apps = {r["name"]: r for r in call(cluster, "GET", "/apis/apps/v1")[1]["resources"]}
    assert apps["statefulsets"]["shortNames"] == ["sts"]
    assert apps["deployments"]["shortNames"] == ["deploy"]
    slices = call(cluster, "GET", "/apis/discovery.k8s.io/v1")[1]["resources"]
    assert slices[0]["kind"] == "EndpointSlice"


def test_lists_carry_kind_api_version_and_resource_version(cluster: SimCluster) -> None:
    status, body = call(cluster, "GET", "/apis/apps/v1/namespaces/shop/deployments")
    assert status == 200
    assert (body["kind"], body["apiVersion"]) == ("DeploymentList", "apps/v1")
    assert isinstance(body["metadata"]["resourceVersion"], str)
    status, body = call(cluster, "GET", "/api/v1/pods?labelSelector=app%3Dweb"
                                        "&fieldSelector=status.phase%3DRunning")
    assert status == 200 and len(body["items"]) == 2


def test_workloads_services_and_endpoints(cluster: SimCluster) -> None:
    pods = cluster.pods("shop")
    web = sorted(p["metadata"]["name"] for p in pods if p["metadata"]["labels"]["app"] == "web")
    db = sorted(p["metadata"]["name"] for p in pods if p["metadata"]["labels"]["app"] == "db")
    assert db == ["db-0", "db-1"]
    assert all(n.startswith("web-") and len(n.split("-")) == 3 for n in web)
    svc = cluster.store.get("Service", "shop", "web")
    assert svc is not None and svc["spec"]["clusterIP"].startswith("10.9")
    headless = cluster.store.get("Service", "shop", "db")
    assert headless is not None and headless["spec"]["clusterIP"] == "None"
    ep = cluster.store.get("Endpoints", "shop", "web")
    assert ep is not None
    assert ep["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP", "name": "http"}]
    assert len(ep["subsets"][0]["addresses"]) == 2
    slices = cluster.store.list("EndpointSlice", "shop",
                                label_selector="kubernetes.io/service-name=db")[0]
    assert len(slices) == 1
    endpoints = slices[0]["endpoints"]
    assert sorted(e["hostname"] for e in endpoints) == ["db-0", "db-1"]
    assert all(e["conditions"]["ready"] for e in endpoints)


def test_unready_pod_leaves_the_ready_endpoints(cluster: SimCluster) -> None:
    cluster.set_pod_ready("shop", "db-0", False)

    def db0_unready() -> bool:
        ep = cluster.store.get("Endpoints", "shop", "db") or {"subsets": [{}]}
        not_ready = ep["subsets"][0].get("notReadyAddresses", [])
        return [a["hostname"] for a in not_ready] == ["db-0"]

    cluster.wait_for(db0_unready, 5.0)
    cluster.set_pod_ready("shop", "db-0", True)
    cluster.wait_for(lambda: not any("notReadyAddresses" in s for s in (
        cluster.store.get("Endpoints", "shop", "db") or {}).get("subsets", [])), 5.0)


def test_deleted_pods_are_replaced(cluster: SimCluster) -> None:
    web = [p["metadata"]["name"] for p in cluster.pods("shop", "app=web")]
    cluster.delete_pod("shop", web[0])
    cluster.delete_pod("shop", "db-1")

    def replaced() -> bool:
        names = {p["metadata"]["name"] for p in cluster.pods("shop", "app=web")}
        return len(names) == 2 and web[0] not in names and web[1] in names

    cluster.wait_for(replaced, 5.0)
    cluster.wait_for(lambda: cluster.store.get("Pod", "shop", "db-1"), 5.0)
    cluster.wait_ready("shop")


def test_create_get_delete_and_status_errors(cluster: SimCluster) -> None:
    base = "/api/v1/namespaces/shop/pods"
    status, created = call(cluster, "POST", base, pod_manifest("solo"))
    assert status == 201 and created["metadata"]["namespace"] == "shop"
    assert_status(call(cluster, "POST", base, pod_manifest("solo")), 409, "AlreadyExists")
    assert call(cluster, "GET", f"{base}/solo")[0] == 200
    assert call(cluster, "DELETE", f"{base}/solo")[0] == 200
    body = assert_status(call(cluster, "GET", f"{base}/solo"), 404, "NotFound")
    assert body["message"] == 'pods "solo" not found'
    assert body["details"] == {"name": "solo", "group": "", "kind": "pods"}


def test_bad_input_gets_the_right_error_and_the_server_keeps_serving(
        cluster: SimCluster) -> None:
    base = "/api/v1/namespaces/shop/pods"
    assert_status(call(cluster, "POST", base, b"{not json"), 400, "BadRequest")
    assert_status(call(cluster, "POST", base, b"a: [b", content_type="application/yaml"),
                  400, "BadRequest")
    assert_status(call(cluster, "POST", base, {"apiVersion": "v1", "metadata": {"name": "x"}}),
                  400, "BadRequest")
    assert_status(call(cluster, "POST", "/api/v1/namespaces/shop/widgets", {"kind": "Widget"}),
                  404, "NotFound")
    assert_status(call(cluster, "GET", "/apis/example.com/v1/widgets"), 404, "NotFound")
    invalid = assert_status(call(cluster, "POST", base, pod_manifest("Bad_Name")),
                            422, "Invalid")
    assert invalid["details"]["causes"][0]["field"] == "metadata.name"
    bad_svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "9svc"},
               "spec": {"ports": [{"port": 80}]}}
    assert_status(call(cluster, "POST", "/api/v1/namespaces/shop/services", bad_svc),
                  422, "Invalid")
    assert_status(call(cluster, "GET", "/api/v1/pods?labelSelector=a%20in%20("),
                  400, "BadRequest")
    labels = pod_manifest("labelled")
    labels["metadata"]["labels"] = {"app": ["not", "a", "string"]}
    assert_status(call(cluster, "POST", base, labels), 422, "Invalid")
    assert_status(call(cluster, "POST", base, {**pod_manifest("x"), "spec": "nope"}),
                  400, "BadRequest")
    assert_status(call(cluster, "PATCH", f"{base}/db-0", b"[1, 2",
                       content_type="application/merge-patch+json"), 400, "BadRequest")
    # A client sending garbage on its own connection does not disturb the others.
    with socket.create_connection(("127.0.0.1", cluster.port)) as raw:
        raw.sendall(b"\x16\x03\x01garbage" * 100)
    assert call(cluster, "GET", "/api/v1/namespaces/shop/pods")[0] == 200


def test_yaml_bodies_are_accepted(cluster: SimCluster) -> None:
    body = yaml.safe_dump(pod_manifest("from-yaml")).encode()
    status, created = call(cluster, "POST", "/api/v1/namespaces/shop/pods", body,
                           content_type="application/yaml")
    assert status == 201 and created["metadata"]["name"] == "from-yaml"


def test_patches(cluster: SimCluster) -> None:
    path = "/api/v1/namespaces/shop/services/web"
    status, svc = call(cluster, "PATCH", path, {"metadata": {"labels": {"team": "a"}}},
                       content_type="application/merge-patch+json")
    assert status == 200 and svc["metadata"]["labels"] == {"team": "a"}
    patch = {"spec": {"ports": [{"name": "metrics", "port": 9090}],
                      "$setElementOrder/ports": [{"port": 80}, {"port": 9090}]}}
    status, svc = call(cluster, "PATCH", path, patch,
                       content_type="application/strategic-merge-patch+json")
    assert status == 200, svc
    assert [p["port"] for p in svc["spec"]["ports"]] == [80, 9090]
    status, svc = call(cluster, "PATCH", path,
                       [{"op": "replace", "path": "/metadata/labels/team", "value": "b"}],
                       content_type="application/json-patch+json")
    assert status == 200 and svc["metadata"]["labels"] == {"team": "b"}


def test_forbid_answers_403_for_that_resource_only(cluster: SimCluster) -> None:
    cluster.forbid("pods", "list")
    body = assert_status(call(cluster, "GET", "/api/v1/namespaces/shop/pods"), 403, "Forbidden")
    assert 'cannot list resource "pods"' in body["message"]
    assert call(cluster, "GET", "/api/v1/namespaces/shop/pods/db-0")[0] == 200
    assert call(cluster, "GET", "/api/v1/namespaces/shop/services")[0] == 200
    cluster.allow("pods", "list")
    assert call(cluster, "GET", "/api/v1/namespaces/shop/pods")[0] == 200


def test_namespace_deletion_cascades(cluster: SimCluster) -> None:
    status, ns = call(cluster, "DELETE", "/api/v1/namespaces/shop")
    assert status == 200 and ns["status"]["phase"] == "Terminating"
    # While it terminates, nothing new may be created in it.
    assert_status(call(cluster, "POST", "/api/v1/namespaces/shop/pods", pod_manifest("late")),
                  403, "Forbidden")
    cluster.wait_for(lambda: cluster.store.get("Namespace", "", "shop") is None, 5.0)
    for kind in ("Pod", "Service", "Deployment", "StatefulSet", "Endpoints", "EndpointSlice"):
        assert cluster.store.list(kind, "shop")[0] == [], kind
    assert_status(call(cluster, "DELETE", "/api/v1/namespaces/default"), 403, "Forbidden")


@contextmanager
def watch(cluster: SimCluster, path: str) -> Iterator[http.client.HTTPResponse]:
    """The response to an authorized ``GET path`` (a watch) on a connection of its own."""
    conn = connect(cluster)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {cluster.token}"})
        yield conn.getresponse()
    finally:
        conn.close()


def read_events(resp: http.client.HTTPResponse, count: int) -> list[dict[str, Any]]:
    return [json.loads(resp.readline()) for _ in range(count)]


def test_watch_streams_chunked_events(cluster: SimCluster) -> None:
    _, listing = call(cluster, "GET", "/api/v1/namespaces/shop/services")
    rv = listing["metadata"]["resourceVersion"]
    with watch(cluster, f"/api/v1/namespaces/shop/services?watch=1&resourceVersion={rv}") as resp:
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        cluster.apply({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "new", "namespace": "shop"},
                       "spec": {"selector": {"app": "x"}, "ports": [{"port": 1}]}})
        cluster.delete("Service", "shop", "new")
        events = read_events(resp, 2)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "new"), ("DELETED", "new")
        ]


def test_watch_ends_after_timeout_seconds_and_sends_bookmarks(cluster: SimCluster,
                                                              monkeypatch: Any) -> None:
    assert cluster.api is not None
    monkeypatch.setattr(cluster.api, "bookmark_interval", 0.2)
    rv = cluster.store.resource_version
    with watch(cluster, f"/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=1"
                        "&allowWatchBookmarks=true") as resp:
        lines = [json.loads(line) for line in resp.read().splitlines()]
        assert lines and all(e["type"] == "BOOKMARK" for e in lines)
        assert lines[0]["object"]["metadata"]["resourceVersion"] == rv


def test_watch_from_an_expired_version_gets_a_410_event(cluster: SimCluster) -> None:
    rv = cluster.store.resource_version
    cluster.expire_watch_history()
    with watch(cluster, f"/api/v1/pods?watch=1&resourceVersion={rv}") as resp:
        assert resp.status == 200
        events = [json.loads(line) for line in resp.read().splitlines()]
        assert len(events) == 1 and events[0]["type"] == "ERROR"
        status = events[0]["object"]
        assert (status["code"], status["reason"]) == (410, "Expired")
        assert status["message"].startswith(f"too old resource version: {rv} (")


def test_restart_apiserver_drops_watches_and_keeps_state(cluster: SimCluster) -> None:
    rv = cluster.store.resource_version
    with watch(cluster, f"/api/v1/pods?watch=1&resourceVersion={rv}") as resp:
        port, ca = cluster.port, cluster.ca_pem
        cluster.restart_apiserver()
        try:
            leftover = resp.read()  # the stream ends: EOF or a reset
        except (http.client.IncompleteRead, ConnectionError):
            leftover = b""
        assert b"ADDED" not in leftover
    assert (cluster.port, cluster.ca_pem) == (port, ca)
    assert len(call(cluster, "GET", "/api/v1/namespaces/shop/pods")[1]["items"]) == 4


def test_plain_http_option() -> None:
    with SimCluster(tls=False) as c:
        assert c.url.startswith("http://")
        config = yaml.safe_load(c.kubeconfig_path.read_text())
        assert "certificate-authority-data" not in config["clusters"][0]["cluster"]
        assert call(c, "GET", "/api/v1/namespaces")[0] == 200
        # kubectl sends no token over plain HTTP, so plain HTTP is open by default.
        assert call(c, "GET", "/api/v1/namespaces", token=False)[0] == 200
    with SimCluster(tls=False, require_token=True) as c:
        assert_status(call(c, "GET", "/api/v1/namespaces", token=False), 401, "Unauthorized")


def test_portforward_route_checks_the_pod_first(cluster: SimCluster) -> None:
    base = "/api/v1/namespaces/shop/pods"
    assert_status(call(cluster, "POST", f"{base}/nope/portforward"), 404, "NotFound")
    cluster.forbid("pods/portforward")
    assert_status(call(cluster, "POST", f"{base}/db-0/portforward"), 403, "Forbidden")


def test_portforward_to_a_pending_pod_is_400() -> None:
    with SimCluster(manifests=pod_manifest("slow"), start_delay=30.0) as c:
        body = assert_status(call(c, "POST", "/api/v1/namespaces/default/pods/slow/portforward"),
                             400, "BadRequest")
        assert "is not running" in body["message"]


def test_official_client_lists_and_recovers_from_410(cluster: SimCluster) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    try:
        v1 = kubernetes.client.CoreV1Api(api_client)
        pods = v1.list_namespaced_pod("shop")
        assert len(pods.items) == 4
        rv = pods.metadata.resource_version
        watch = kubernetes.watch.Watch()
        cluster.expire_watch_history()
        with pytest.raises(kubernetes.client.exceptions.ApiException) as err:
            for _ in watch.stream(v1.list_namespaced_pod, "shop", resource_version=rv,
                                  timeout_seconds=5):
                pass
        assert err.value.status == 410
        # Recovery: relist, then watch from the new version and see a change.
        pods = v1.list_namespaced_pod("shop")
        seen = threading.Event()
        names: list[str] = []
        deleter = threading.Thread(target=cluster.delete_pod, args=("shop", "db-0"),
                                   name="test-delete-pod")
        stream = watch.stream(v1.list_namespaced_pod, "shop",
                              resource_version=pods.metadata.resource_version,
                              timeout_seconds=5)
        deleter.start()
        for event in stream:
            names.append(f'{event["type"]} {event["object"].metadata.name}')
            if event["type"] == "DELETED":
                seen.set()
                watch.stop()
        deleter.join()
        assert seen.is_set() and "DELETED db-0" in names
    finally:
        api_client.close()


def test_no_leaks_after_stop() -> None:
    # The autouse fixture fails this test if the cluster leaves threads or listeners behind.
    with SimCluster(manifests=WEB) as c:
        c.wait_ready("shop")
        conn = connect(c)
        conn.request("GET", "/api/v1/pods?watch=1",
                     headers={"Authorization": f"Bearer {c.token}"})
        assert conn.getresponse().status == 200
    conn.close()


def test_restart_with_downtime_refuses_then_serves_on_the_same_port(cluster: SimCluster) -> None:
    port = cluster.port
    refused = threading.Event()

    def probe() -> None:
        # While the server is down, connecting fails.
        cluster.wait_for(lambda: _refused(port), 2.0, interval=0.01)
        refused.set()

    prober = threading.Thread(target=probe, name="test-probe")
    prober.start()
    cluster.restart_apiserver(downtime=0.5)
    prober.join()
    assert refused.is_set()
    assert cluster.port == port
    assert call(cluster, "GET", "/api/v1/namespaces/shop/pods")[0] == 200


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


def test_endpoint_slice_keeps_its_name_as_pods_come_and_go(cluster: SimCluster) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "later", "namespace": "shop"},
                   "spec": {"selector": {"app": "later"}, "ports": [{"port": 8080}]}})

    def slices() -> list[dict[str, Any]]:
        return cluster.store.list("EndpointSlice", "shop",
                                  label_selector="kubernetes.io/service-name=later")[0]

    empty = cluster.wait_for(slices, 5.0)
    assert len(empty) == 1 and empty[0]["endpoints"] == []
    pod = pod_manifest("later-0")
    pod["metadata"].update(namespace="shop", labels={"app": "later"})
    cluster.apply(pod)
    filled = cluster.wait_for(lambda: [s for s in slices() if s["endpoints"]], 5.0)
    assert filled[0]["metadata"]["name"] == empty[0]["metadata"]["name"]
    assert filled[0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    ep = cluster.store.get("Endpoints", "shop", "later")
    assert ep is not None and ep["subsets"][0]["ports"][0]["port"] == 8080


def test_starts_in_well_under_a_second() -> None:
    import time
    from importlib import resources

    sample = resources.files("kubefwd.sim").joinpath("sample.yaml").read_text()
    started = time.monotonic()
    with SimCluster(manifests=sample) as c:
        elapsed = time.monotonic() - started
        assert c.kubeconfig_path.exists()
    assert elapsed < 1.0, elapsed


def test_delete_collection_by_label(cluster: SimCluster) -> None:
    status, body = call(cluster, "DELETE", "/api/v1/namespaces/shop/pods?labelSelector=app%3Dweb")
    assert status == 200 and body["kind"] == "PodList" and len(body["items"]) == 2
    assert all(p["metadata"]["labels"]["app"] == "web" for p in body["items"])
    assert {p["metadata"]["name"] for p in cluster.pods("shop", "app=db")} == {"db-0", "db-1"}
    cluster.wait_ready("shop")  # the deployment replaced its pods


def test_hand_written_slices_of_a_selector_less_service_are_left_alone(
    cluster: SimCluster,
) -> None:
    """The controllers neither rewrite nor delete a slice written by hand, as in a real
    cluster: a selector-less service's endpoints are its owner's to manage, and a slice
    without an owner reference outlives the service."""
    web = cluster.pods("shop", "app=web")[0]
    hand = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "manual-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "manual"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [web["status"]["podIP"]],
                           "targetRef": {"kind": "Pod", "name": web["metadata"]["name"],
                                         "namespace": "shop"}}]}
    cluster.apply(hand)
    cluster.apply({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "manual", "namespace": "shop"},
                   "spec": {"ports": [{"name": "http", "port": 80}]}})
    cluster.delete_pod("shop", cluster.pods("shop", "app=db")[0]["metadata"]["name"])
    cluster.wait_ready("shop")
    kept = cluster.store.get("EndpointSlice", "shop", "manual-1")
    assert kept is not None and kept["endpoints"] == hand["endpoints"]
    assert cluster.store.list("EndpointSlice", "shop",
                              label_selector="kubernetes.io/service-name=manual")[0] == [kept]
    cluster.delete("Service", "shop", "manual")
    cluster.delete("Service", "shop", "db")
    cluster.wait_for(lambda: not cluster.store.list(
        "EndpointSlice", "shop", label_selector="kubernetes.io/service-name=db")[0], 5.0)
    assert cluster.store.get("EndpointSlice", "shop", "manual-1") is not None
