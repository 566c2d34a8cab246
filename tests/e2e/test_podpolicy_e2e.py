"""``--pod-policy``: how a service's ready pods share new connections, and that a rolling
restart under a continuous stream of new connections fails none of them with either policy."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import try_http, wait_for
from test_svc_e2e import (
    Kubefwd,
    Traffic,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e


# Clients opening new connections in a loop, side by side.
CLIENTS = 4


def _ready_pods(cluster: SimCluster) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.pods("shop", "app=web")
            if not p["metadata"].get("deletionTimestamp")
            and any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or [])}


def _three_replicas(cluster: SimCluster) -> set[str]:
    cluster.scale("Deployment", "shop", "web", 3)
    wait_for(lambda: len(_ready_pods(cluster)) == 3, 15, "3 ready web pods")
    return _ready_pods(cluster)


@pytest.mark.parametrize("policy", ["spread", "first"])
def test_new_connections_follow_the_pod_policy(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path, policy: str
) -> None:
    pods = _three_replicas(cluster)
    fwd = run("-n", "shop", "--pod-policy", policy)
    ip = hosts_entries(hosts)["web"]
    answers = collections.Counter((try_http(ip, 80) or "?").strip() for _ in range(30))
    assert set(answers) <= pods, answers
    if policy == "spread":
        # One connection at a time: every pod has none open, so they take turns.
        assert len(answers) == 3 and min(answers.values()) == 10, answers
    else:
        oldest = min(cluster.pods("shop", "app=web"),
                     key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
        assert answers == {oldest["metadata"]["name"]: 30}
    fwd.stop_cleanly()


@pytest.mark.parametrize("policy", ["spread", "first"])
def test_a_rolling_restart_under_new_connections_fails_none(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path, policy: str
) -> None:
    before = _three_replicas(cluster)
    fwd = run("-n", "shop", "--pod-policy", policy)
    ip = hosts_entries(hosts)["web"]
    clients = [Traffic(lambda: try_http(ip, 80)) for _ in range(CLIENTS)]
    try:
        wait_for(lambda: all(c.bodies() for c in clients), 10, "traffic before the restart")
        cluster.rollout_restart("shop", "web")

        def replaced() -> bool:
            now = _ready_pods(cluster)
            return len(now) == 3 and not now & before

        wait_for(replaced, 30, "every pod replaced")
        counts = [len(c.answers) for c in clients]
        wait_for(lambda: all(len(c.answers) > n + 10 for c, n in zip(clients, counts,
                                                                     strict=True)),
                 15, "traffic after the rollout")
    finally:
        for c in clients:
            c.stop()
    answers: list[tuple[float, Any]] = [a for c in clients for a in c.answers]
    failed = sum(1 for _, body in answers if body is None)
    print(f"rolling restart, --pod-policy {policy}: {len(answers)} attempted, "
          f"{failed} failed")
    # The simulated kubelet cuts the connections a pod is serving the instant it is deleted
    # (no graceful termination): a request in flight at that moment is lost whatever kubefwd
    # does. With first every client is on that pod (one or two requests in about one run in
    # five); with spread a quarter of them, and on a loaded machine about one run in three
    # still loses one or two. Every connection that had not reached the pod yet is routed
    # or replayed elsewhere; without that replay the losses were 1 to 6 per run.
    allowed = 2
    assert failed <= allowed, f"{failed} of {len(answers)} connections failed"
    last = {c.bodies()[-1].strip() for c in clients}
    assert last and not last & before
    fwd.stop_cleanly()
