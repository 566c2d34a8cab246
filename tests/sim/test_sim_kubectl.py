"""Real kubectl against the simulated cluster: get, apply, re-apply, delete, watch; and the
``kubefwd sim`` command in the foreground."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    http_get,
    kubectl,
    kubectl_argv,
    kubectl_port_forward,
    needs_kubectl,
    needs_kubectl_at_least,
    wait_for,
    web_and_headless_db,
)

from kubefwd.sim import SimCluster

pytestmark = [pytest.mark.e2e, needs_kubectl]

APP = web_and_headless_db("demo", web="hello", db="store", db_port=6379)


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    with SimCluster(manifests=APP, contexts=("sim", "sim2")) as c:
        c.wait_ready("demo")
        yield c


def test_get_every_kind(cluster: SimCluster) -> None:
    out = kubectl(cluster, "get", "ns,svc,pods,deploy,sts,ep", "-n", "demo").stdout
    for name in ("namespace/demo", "service/hello", "service/store", "pod/store-0",
                 "pod/store-1", "deployment.apps/hello", "statefulset.apps/store",
                 "endpoints/hello", "pod/hello-"):
        assert name in out, out
    wide = kubectl(cluster, "get", "pods", "-n", "demo", "-o", "wide").stdout
    assert "Running" in wide and "1/1" in wide
    # The second context names the same server.
    names = kubectl(cluster, "get", "pods", "-n", "demo", "-o", "name",
                    context="sim2").stdout.split()
    assert "pod/store-0" in names and len(names) == 3


def test_get_single_objects_and_jsonpath(cluster: SimCluster) -> None:
    ip = kubectl(cluster, "get", "svc", "hello", "-n", "demo",
                 "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ip.startswith("10.9")
    missing = kubectl(cluster, "get", "pod", "nope", "-n", "demo", check=False)
    assert missing.returncode != 0 and 'pods "nope" not found' in missing.stderr


def test_apply_create_unchanged_and_configured(tmp_path: Path) -> None:
    with SimCluster() as cluster:
        manifest = tmp_path / "app.yaml"
        manifest.write_text(APP)
        out = kubectl(cluster, "apply", "-f", str(manifest)).stdout
        assert "deployment.apps/hello created" in out and "service/hello created" in out
        out = kubectl(cluster, "apply", "-f", str(manifest)).stdout
        assert "deployment.apps/hello unchanged" in out and "service/hello unchanged" in out
        manifest.write_text(APP.replace("replicas: 1", "replicas: 3")
                            .replace("port: 80,", "port: 8080,"))
        out = kubectl(cluster, "apply", "-f", str(manifest)).stdout
        assert "deployment.apps/hello configured" in out and "service/hello configured" in out
        cluster.wait_for(lambda: len(cluster.pods("demo", "app=hello")) == 3, 5.0)
        svc = cluster.store.get("Service", "demo", "hello")
        assert svc is not None and [p["port"] for p in svc["spec"]["ports"]] == [8080]
        annotations = svc["metadata"]["annotations"]
        assert "kubectl.kubernetes.io/last-applied-configuration" in annotations
        # Deleting the file's objects, the namespace first: it terminates while kubectl
        # deletes the rest, then takes whatever is left along.
        out = kubectl(cluster, "delete", "-f", str(manifest)).stdout
        assert 'namespace "demo" deleted' in out and 'service "hello" deleted' in out
        cluster.wait_for(lambda: cluster.store.get("Namespace", "", "demo") is None, 5.0)
        assert cluster.pods("demo") == []


@needs_kubectl_at_least(25, "strict field validation on apply")
def test_apply_rejects_bad_manifests(tmp_path: Path) -> None:
    with SimCluster() as cluster:
        bad = tmp_path / "bad.yaml"
        bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\n"
                       "spec: {containers: [{name: c, image: x}]}\n")
        result = kubectl(cluster, "apply", "-f", str(bad), check=False)
        assert result.returncode != 0 and "is invalid" in result.stderr
        # kubectl asks for strict field validation: a misspelt field is an error.
        bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: typo}\n"
                       "spce: {ports: [{port: 80}]}\n")
        result = kubectl(cluster, "apply", "-f", str(bad), check=False)
        assert result.returncode != 0 and 'unknown field "spce"' in result.stderr
        assert kubectl(cluster, "get", "pods").returncode == 0


def _watch_events(proc: subprocess.Popen[str], until: Any, timeout: float) -> list[Any]:
    """Decode the JSON objects kubectl prints until ``until(events)`` or the deadline."""
    assert proc.stdout is not None
    decoder = json.JSONDecoder()
    buf = ""
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not until(events) and time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            if not chunk:
                break
            buf += chunk
            while True:
                buf = buf.lstrip()
                try:
                    obj, end = decoder.raw_decode(buf)
                except ValueError:
                    break
                events.append(obj)
                buf = buf[end:]
    return events


def test_delete_pod_seen_by_get_pods_watch(cluster: SimCluster) -> None:
    cmd = kubectl_argv(cluster, "get", "pods", "-n", "demo", "-l", "app=hello", "-w",
                       "--output-watch-events", "-o", "json")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        initial = _watch_events(proc, lambda ev: len(ev) >= 1, 20.0)
        assert initial and initial[0]["type"] == "ADDED"
        old = initial[0]["object"]["metadata"]["name"]
        deleted = kubectl(cluster, "delete", "pod", "-n", "demo", old).stdout
        assert f'pod "{old}" deleted' in deleted

        def saw_replacement(events: list[Any]) -> bool:
            gone = any(e["type"] == "DELETED" and e["object"]["metadata"]["name"] == old
                       for e in events)
            new_running = any(e["object"]["metadata"]["name"] != old
                              and e["object"].get("status", {}).get("phase") == "Running"
                              for e in events)
            return gone and new_running

        events = _watch_events(proc, saw_replacement, 20.0)
        assert saw_replacement(events), [(e["type"], e["object"]["metadata"]["name"])
                                          for e in events]
        terminating = [e for e in events if e["object"]["metadata"]["name"] == old
                       and e["type"] == "MODIFIED"]
        assert terminating and terminating[0]["object"]["metadata"].get("deletionTimestamp")
    finally:
        proc.kill()
        proc.communicate()


def test_statefulset_pod_comes_back_under_the_same_name(cluster: SimCluster) -> None:
    pod = cluster.store.get("Pod", "demo", "store-0")
    assert pod is not None
    uid = pod["metadata"]["uid"]
    kubectl(cluster, "delete", "pod", "store-0", "-n", "demo")
    cluster.wait_for(lambda: (cluster.store.get("Pod", "demo", "store-0") or {}).get(
        "metadata", {}).get("uid") not in (None, uid), 5.0)
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/store-0", "-n", "demo",
            "--timeout=10s")
    kubectl(cluster, "rollout", "status", "sts/store", "-n", "demo", "--timeout=10s")
    kubectl(cluster, "wait", "--for=condition=Available", "deploy/hello", "-n", "demo",
            "--timeout=10s")


def _start_sim(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kubefwd", "sim", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_file(path: Path, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    def written() -> bool:
        assert proc.poll() is None, proc.communicate()
        return path.exists()

    wait_for(written, timeout, f"{path} to be written", interval=0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sim_command_serves_the_sample_until_a_signal(tmp_path: Path,
                                                       sig: signal.Signals) -> None:
    kubeconfig = tmp_path / "kc"
    proc = _start_sim("--kubeconfig-out", str(kubeconfig), "--context", "a",
                      "--context", "b")
    try:
        _wait_file(kubeconfig, proc)
        for context in ("a", "b"):
            out = kubectl(kubeconfig, "get", "svc", "-A", "-o", "name", check=False,
                          context=context)
            assert "service/web" in out.stdout and "service/db" in out.stdout, out.stderr
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert str(kubeconfig) in out and "kubectl" in out


def test_sim_command_loads_given_manifests_over_plain_http(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(APP)
    kubeconfig = tmp_path / "kc"
    proc = _start_sim("--kubeconfig-out", str(kubeconfig), "-f", str(manifest),
                      "--plain-http")
    try:
        _wait_file(kubeconfig, proc)
        assert "server: http://127.0.0.1:" in kubeconfig.read_text()
        out = kubectl(kubeconfig, "get", "sts", "-n", "demo", "-o", "name", check=False)
        assert out.stdout.split() == ["statefulset.apps/store"], out.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_sim_command_rejects_a_bad_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("kind: Widget\napiVersion: v1\nmetadata: {name: w}\n")
    proc = _start_sim("--kubeconfig-out", str(tmp_path / "kc"), "-f", str(manifest))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "kubefwd: error:" in err
    assert not (tmp_path / "kc").exists()


def test_scale_logs_and_rollout_restart(cluster: SimCluster) -> None:
    talker = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "talker", "namespace": "demo"},
              "spec": {"containers": [{"name": "t", "image": "busybox", "command": [
                  "sh", "-c", "echo hello-from-pod; exec sleep 30"]}]}}
    cluster.apply(talker)
    kubectl(cluster, "scale", "deploy/hello", "-n", "demo", "--replicas=2")
    cluster.wait_for(lambda: len(cluster.pods("demo", "app=hello")) == 2, 5.0)
    cluster.wait_ready("demo")
    cluster.wait_for(lambda: "hello-from-pod" in kubectl(cluster, "logs", "talker", "-n",
                                                         "demo").stdout, 5.0)
    before = {p["metadata"]["name"] for p in cluster.pods("demo", "app=hello")}
    kubectl(cluster, "rollout", "restart", "deploy/hello", "-n", "demo")
    kubectl(cluster, "rollout", "status", "deploy/hello", "-n", "demo", "--timeout=10s")
    after = {p["metadata"]["name"] for p in cluster.pods("demo", "app=hello")}
    assert len(after) == 2 and not before & after


@needs_kubectl_at_least(27, "server dry runs without OpenAPI v2 dry-run markers")
def test_server_side_apply_and_server_dry_runs(tmp_path: Path) -> None:
    with SimCluster() as cluster:
        manifest = tmp_path / "app.yaml"
        manifest.write_text(APP)
        out = kubectl(cluster, "apply", "--dry-run=server", "-f", str(manifest)).stdout
        assert "created (server dry run)" in out
        assert cluster.store.get("Namespace", "", "demo") is None
        out = kubectl(cluster, "apply", "--server-side", "-f", str(manifest)).stdout
        assert "deployment.apps/hello serverside-applied" in out
        manifest.write_text(APP.replace("replicas: 1", "replicas: 2"))
        kubectl(cluster, "apply", "--server-side", "-f", str(manifest))
        deploy = cluster.store.get("Deployment", "demo", "hello")
        assert deploy is not None and deploy["spec"]["replicas"] == 2
        out = kubectl(cluster, "delete", "--dry-run=server", "deploy/hello", "-n", "demo").stdout
        assert "(server dry run)" in out
        assert cluster.store.get("Deployment", "demo", "hello") is not None


@pytest.mark.parametrize("version", ["v1.27.3", "v1.33.1"])
def test_apply_works_with_old_and_new_kubectl(tmp_path: Path, version: str) -> None:
    # The kubectl dispatcher picks its binary by the server's version: 1.27/1.28 read the
    # protobuf OpenAPI v2 document, newer ones the v3 documents.
    with SimCluster(version=version) as cluster:
        assert version in kubectl(cluster, "version").stdout
        manifest = tmp_path / "app.yaml"
        manifest.write_text(APP)
        assert "created" in kubectl(cluster, "apply", "-f", str(manifest)).stdout
        manifest.write_text(APP.replace("replicas: 1", "replicas: 2"))
        out = kubectl(cluster, "apply", "-f", str(manifest)).stdout
        assert "deployment.apps/hello configured" in out
        cluster.wait_for(lambda: len(cluster.pods("demo", "app=hello")) == 2, 5.0)


def test_sim_command_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = _start_sim("--kubeconfig-out", str(tmp_path / "kc"), "--port", str(port))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 7  # ExitCode.NETWORK
    assert f"cannot serve on port {port}" in err


@needs_kubectl_at_least(27, "port-forward exiting when its connection is lost")
def test_restart_apiserver_drops_a_kubectl_port_forward(cluster: SimCluster) -> None:
    with kubectl_port_forward(cluster, "svc/hello", 80, namespace="demo") as (port, proc):
        assert b"hello-" in http_get("127.0.0.1", port)[1]
        cluster.restart_apiserver()
        proc.wait(timeout=10)  # kubectl notices the lost connection and exits
        assert proc.returncode != 0
