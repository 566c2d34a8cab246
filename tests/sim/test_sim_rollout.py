"""Rolling updates in the simulated cluster: the rollout arithmetic, ``rollout_restart``, and
real kubectl's ``rollout restart`` and ``apply`` of a changed template."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import kubectl, needs_kubectl, workload

from kubefwd.sim.cluster import SimCluster
from kubefwd.sim.rollout import limits, scaled, step

Obj = dict[str, Any]


# -- the arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "replicas", "up", "expected"),
    [("25%", 3, True, 1), ("25%", 3, False, 0), ("25%", 10, True, 3), ("25%", 10, False, 2),
     ("50%", 3, False, 1), (2, 3, True, 2), ("1", 3, False, 1), ("0%", 5, True, 0)],
)
def test_percentages_round_as_kubernetes_does(value: Any, replicas: int, up: bool,
                                              expected: int) -> None:
    assert scaled(value, replicas, round_up=up) == expected


def test_limits_default_to_25_percent_and_never_both_zero() -> None:
    assert limits({"replicas": 3}) == (1, 0)
    assert limits({"replicas": 10}) == (3, 2)
    assert limits({"replicas": 3, "strategy": {"rollingUpdate": {
        "maxSurge": 0, "maxUnavailable": "10%"}}}) == (0, 1)
    assert limits({"replicas": 3, "strategy": {"type": "Recreate"}}) is None


def pod(name: str, ready: bool, created: str = "2026-01-01T00:00:00Z") -> Obj:
    return {"metadata": {"name": name, "creationTimestamp": created}, "ready": ready}


def is_ready(p: Obj) -> bool:
    return bool(p["ready"])


def test_step_surges_one_then_deletes_an_old_pod_only_once_a_new_one_is_ready() -> None:
    spec = {"replicas": 3}
    old = [pod(f"old-{i}", True, f"2026-01-01T00:00:0{i}Z") for i in range(3)]
    first = step(spec, [], old, is_ready)
    assert (first.create, first.delete) == (1, [])
    waiting = step(spec, [pod("new-0", False)], old, is_ready)
    assert (waiting.create, waiting.delete) == (0, [])
    moving = step(spec, [pod("new-0", True)], old, is_ready)
    assert moving.create == 0 and [p["metadata"]["name"] for p in moving.delete] == ["old-0"]
    done = step(spec, [pod(f"new-{i}", True) for i in range(3)], [], is_ready)
    assert (done.create, done.delete) == (0, [])


def test_step_with_max_unavailable_deletes_first_and_unready_old_pods_go_first() -> None:
    spec = {"replicas": 3, "strategy": {"rollingUpdate": {"maxSurge": 0,
                                                          "maxUnavailable": 1}}}
    old = [pod("old-0", True), pod("old-1", True), pod("old-2", False)]
    plan = step(spec, [], old, is_ready)
    assert plan.create == 0 and [p["metadata"]["name"] for p in plan.delete] == ["old-2"]
    plan = step(spec, [], old[:2], is_ready)
    assert plan.create == 1 and plan.delete == []


def test_recreate_deletes_every_old_pod_before_creating() -> None:
    spec = {"replicas": 2, "strategy": {"type": "Recreate"}}
    plan = step(spec, [], [pod("a", True), pod("b", True)], is_ready)
    assert plan.create == 0 and len(plan.delete) == 2
    assert step(spec, [], [], is_ready).create == 2


# -- in the simulated cluster --------------------------------------------------------------


class PodCounts:
    """After every store change: how many of a Deployment's pods exist and are Ready."""

    def __init__(self, cluster: SimCluster, namespace: str, app: str) -> None:
        self.cluster, self.namespace, self.app = cluster, namespace, app
        self.samples: list[tuple[int, int]] = []
        self.seen: set[str] = set()
        self.recording = threading.Event()
        cluster.store.add_listener(self._on_event)

    def _on_event(self, _event_type: str, obj: Obj) -> None:
        if not self.recording.is_set() or obj.get("kind") != "Pod":
            return
        pods = [p for p in self.cluster.store.view("Pod", self.namespace, f"app={self.app}")
                if not p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in pods if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []))
        self.seen.update(p["metadata"]["name"] for p in pods)
        self.samples.append((len(pods), ready))


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    # Pods take a moment to start, so readiness gates each step visibly.
    with SimCluster(manifests=workload("web", "shop", replicas=3), start_delay=0.1) as c:
        c.wait_ready("shop", timeout=15)
        yield c


def names(cluster: SimCluster) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.pods("shop", "app=web")}


def rolled(cluster: SimCluster, before: set[str]) -> bool:
    deploy = cluster.store.get("Deployment", "shop", "web") or {}
    status = deploy.get("status") or {}
    now = names(cluster)
    return (len(now) == 3 and not now & before and status.get("updatedReplicas") == 3
            and status.get("readyReplicas") == 3 and status.get("replicas") == 3)


def test_rollout_restart_replaces_every_pod_one_by_one(cluster: SimCluster) -> None:
    before = names(cluster)
    counts = PodCounts(cluster, "shop", "web")
    counts.recording.set()
    cluster.rollout_restart("shop", "web")
    cluster.wait_for(lambda: rolled(cluster, before), timeout=20)
    counts.recording.clear()
    # replicas 3, maxSurge ceil(0.75) = 1, maxUnavailable floor(0.75) = 0.
    assert min(ready for _, ready in counts.samples) >= 3, counts.samples
    assert max(total for total, _ in counts.samples) <= 4, counts.samples
    assert len(counts.seen - before) == 3  # exactly three new pods, one at a time
    deploy = cluster.store.get("Deployment", "shop", "web")
    assert deploy is not None and deploy["metadata"]["generation"] == 2
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in annotations


def test_max_unavailable_lets_the_ready_count_dip_by_that_much_and_no_more(
    cluster: SimCluster,
) -> None:
    cluster.apply(workload("web", "shop", replicas=3).replace(
        "  replicas: 3\n",
        "  replicas: 3\n  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}\n"))
    before = names(cluster)
    counts = PodCounts(cluster, "shop", "web")
    counts.recording.set()
    cluster.rollout_restart("shop", "web")
    cluster.wait_for(lambda: rolled(cluster, before), timeout=20)
    counts.recording.clear()
    assert min(ready for _, ready in counts.samples) == 2, counts.samples
    assert max(total for total, _ in counts.samples) <= 3, counts.samples


@needs_kubectl
def test_kubectl_rollout_restart_and_a_changed_template_roll_one_by_one(
    cluster: SimCluster, tmp_path: Path
) -> None:
    counts = PodCounts(cluster, "shop", "web")
    counts.recording.set()
    before = names(cluster)
    out = kubectl(cluster, "rollout", "restart", "deployment/web", "-n", "shop").stdout
    assert "deployment.apps/web restarted" in out
    kubectl(cluster, "rollout", "status", "deployment/web", "-n", "shop", "--timeout=30s")
    cluster.wait_for(lambda: rolled(cluster, before), timeout=20)
    # A changed template, applied the way people do it.
    manifest = tmp_path / "web.yaml"
    manifest.write_text(workload("web", "shop", replicas=3).replace(
        "metadata: {labels: {app: web}}", "metadata: {labels: {app: web, release: two}}"))
    restarted = names(cluster)
    kubectl(cluster, "apply", "-f", str(manifest))
    kubectl(cluster, "rollout", "status", "deployment/web", "-n", "shop", "--timeout=30s")
    cluster.wait_for(lambda: rolled(cluster, restarted), timeout=20)
    counts.recording.clear()
    assert all(p["metadata"]["labels"].get("release") == "two"
               for p in cluster.pods("shop", "app=web"))
    assert min(ready for _, ready in counts.samples) >= 3, counts.samples
    assert max(total for total, _ in counts.samples) <= 4, counts.samples
    assert len(counts.seen - before) == 6
