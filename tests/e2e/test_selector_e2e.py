"""A service whose selector has several labels is routed only to pods that carry all of them:
two Deployments share ``app: web`` and are told apart by ``track``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import http_text, manifests, namespace, wait_for
from test_svc_e2e import Kubefwd, block, cluster, hosts, hosts_entries, run

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e

_ = (block, cluster, hosts, run)


def track(name: str, track: str, replicas: int) -> str:
    """A Deployment ``name`` in ``edge`` whose pods carry ``app: web`` and ``track``."""
    labels = f"{{app: web, track: {track}}}"
    return (
        f"\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: edge}}\n"
        f"spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {labels}}}\n"
        f"  template:\n    metadata: {{labels: {labels}}}\n    spec:\n"
        f"      containers: [{{name: web, image: sim/http, "
        f"ports: [{{name: http, containerPort: 8080}}]}}]\n"
    )


def web_service(name: str, selector: str) -> str:
    return (f"\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: edge}}\n"
            f"spec:\n  selector: {selector}\n"
            f"  ports: [{{name: http, port: 80, targetPort: http}}]\n")


def test_a_two_label_selector_only_ever_routes_to_pods_with_both_labels(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    # The canary pods come first, so they are the oldest: a selector matched on any one label
    # would prefer them.
    cluster.apply(manifests(namespace("edge"), track("web-canary", "canary", 2)))
    cluster.wait_ready("edge", timeout=15)
    time.sleep(1.1)  # creation timestamps have one-second resolution
    cluster.apply(manifests(
        track("web-stable", "stable", 2),
        web_service("web", "{app: web, track: stable}"),
        web_service("web-any", "{app: web}"),
    ))
    cluster.wait_ready("edge", timeout=15)
    pods = {p["metadata"]["name"]: p["metadata"]["labels"]["track"]
            for p in cluster.pods("edge", "app=web")}
    assert sorted(pods.values()) == ["canary", "canary", "stable", "stable"], pods
    fwd = run("-n", "edge")
    names = hosts_entries(hosts)

    answered = [http_text(names["web"], 80).strip() for _ in range(20)]
    assert {pods.get(a) for a in answered} == {"stable"}, answered
    # The canary pods are there and serve: a service selecting only app=web reaches them.
    assert pods[http_text(names["web-any"], 80).strip()] == "canary"

    # With no stable pod left, a connection is held, not given to a canary pod, and the
    # next stable pod answers it.
    cluster.scale("Deployment", "edge", "web-stable", 0)
    wait_for(lambda: not cluster.pods("edge", "track=stable"), 15, "stable pods gone")
    got: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        # A connection that reached a stable pod just as it went away is closed unanswered:
        # ask again, as a client would; only an answer counts.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                got.append(http_text(names["web"], 80, timeout=30).strip())
                return
            except (OSError, AssertionError) as exc:
                errors.append(exc)
                time.sleep(0.2)

    asker = threading.Thread(target=ask, name="held-client")
    asker.start()
    time.sleep(2.0)
    assert not got, f"answered by {got} with no stable pod"
    cluster.scale("Deployment", "edge", "web-stable", 1)
    asker.join(45)
    assert not asker.is_alive(), errors
    (new,) = [p["metadata"]["name"] for p in cluster.pods("edge", "track=stable")]
    assert got == [new]
    assert pods[http_text(names["web-any"], 80).strip()] == "canary"
    fwd.stop_cleanly()
