"""``app.lookups`` on the real app against the simulated cluster: raw objects, a pod's log
(tail, since, follow, interrupted by its stop Event), errors; and real ``kubectl logs -f``
against the simulated cluster's followed logs."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import http_text, kubectl_argv, needs_kubectl, wait_for
from test_svc_e2e import (
    hosts_entries,
)

from kubefwd.app.control import ControlError
from kubefwd.app.program import Kubefwd as App
from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e


def web_pod(app: App) -> str:
    pods = app.lookups.pods("shop", selector="app=web")
    assert len(pods) == 1
    return str(pods[0]["metadata"]["name"])


def test_raw_objects(app: App) -> None:
    lk = app.lookups
    assert lk.contexts() == ["one", "two"]  # every context of the kubeconfig, loaded first
    assert {"shop", "payments"} <= {n["metadata"]["name"] for n in lk.namespaces()}
    assert "web" in {s["metadata"]["name"] for s in lk.services("shop", "one")}
    name = web_pod(app)
    assert lk.pod("shop", name)["metadata"]["name"] == name
    slices = lk.endpoints("shop", "web")
    assert slices and all(s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
                          for s in slices)
    assert lk.events("shop") == []
    with pytest.raises(ControlError) as unknown:
        lk.namespaces("nope")
    assert unknown.value.code == "not_found"
    with pytest.raises(ControlError) as missing:
        lk.pod("shop", "no-such-pod")
    assert missing.value.code == "not_found"
    with pytest.raises(ControlError) as bad:
        lk.services("Not_A_Namespace")
    assert bad.value.code == "invalid"


def test_pod_log_tail_since_follow_and_stop(app: App, hosts: Path) -> None:
    ip = hosts_entries(hosts)["web.shop"]
    pod = web_pod(app)
    for i in range(5):
        http_text(ip, 80, f"/?n={i}")
    lines = wait_for(lambda: [x for x in app.lookups.pod_logs("shop", pod, tail_lines=None)
                              if "/?n=" in x] or None, 5, "request lines")
    assert lines == [f"GET /?n={i} HTTP/1.0" for i in range(5)]
    assert list(app.lookups.pod_logs("shop", pod, tail_lines=2)) == [
        "GET /?n=3 HTTP/1.0", "GET /?n=4 HTTP/1.0"]
    time.sleep(1.5)
    http_text(ip, 80, "/?n=late")
    assert list(app.lookups.pod_logs("shop", pod, tail_lines=None, since_seconds=1)) == [
        "GET /?n=late HTTP/1.0"]

    stop = threading.Event()
    got: list[str] = []
    stream = app.lookups.pod_logs("shop", pod, tail_lines=1, follow=True, stop=stop)

    def read() -> None:
        got.extend(stream)

    reader = threading.Thread(target=read, name="log-reader")
    reader.start()
    wait_for(lambda: got == ["GET /?n=late HTTP/1.0"], 5, "the tail")
    http_text(ip, 80, "/?n=followed")
    wait_for(lambda: "GET /?n=followed HTTP/1.0" in got, 5, "the followed line")
    stopped = time.monotonic()
    stop.set()
    reader.join(5)
    assert not reader.is_alive() and time.monotonic() - stopped < 2


@needs_kubectl
def test_kubectl_logs_follow_tail_and_since(cluster: SimCluster) -> None:
    from helpers import kubectl

    pod = kubectl(cluster, "get", "pods", "-n", "shop", "-l", "app=web", "-o",
                  "jsonpath={.items[0].metadata.name}", context="one").stdout.strip()
    proc = subprocess.Popen(kubectl_argv(cluster, "logs", "-f", "--tail=0", "-n", "shop", pod,
                                         context="one"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert proc.stdout is not None
        # A request served by the pod shows up on the followed log.
        sock = cluster.kubelet.connect("shop", pod, 8080)
        with sock:
            sock.sendall(b"GET /?via=kubectl HTTP/1.0\r\n\r\n")
            while sock.recv(65536):
                pass
        line = wait_for(lambda: proc.stdout.readline(), 10, "a followed line")  # type: ignore[union-attr]
        assert line.strip() == "GET /?via=kubectl HTTP/1.0"
    finally:
        proc.terminate()
        proc.wait(10)
    tail = kubectl(cluster, "logs", "--tail=1", "-n", "shop", pod, context="one").stdout
    assert tail == "GET /?via=kubectl HTTP/1.0\n"
    since = kubectl(cluster, "logs", "--since=1h", "-n", "shop", pod, context="one").stdout
    assert "GET /?via=kubectl HTTP/1.0" in since
