"""A simulated Kubernetes cluster that speaks the real wire protocols, for tests and demos.

    from kubefwd.sim import SimCluster

    with SimCluster(manifests=yaml_text, contexts=("sim", "sim2")) as cluster:
        cluster.wait_ready()
        run(["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "get", "pods", "-A"])
        cluster.delete_pod("shop", "db-0")        # comes back under the same name
        cluster.restart_apiserver(downtime=0.5)   # every connection dropped, state kept
        cluster.expire_watch_history()            # open watches end with 410
        cluster.forbid("pods", "list")            # 403 for that verb and resource

Parts: ``store`` (objects, resourceVersions, watch history), ``admission`` and
``controllers`` (defaults, endpoints, deployments, statefulsets), ``apiserver`` (HTTP/1.1 over
TLS, discovery, REST, watch, port-forward hand-over), ``kubelet`` (pods as local servers and
processes), ``portforward`` (the port-forward protocols), ``cluster`` (all of it as one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubefwd.sim.cluster import SimCluster

__all__ = ["SimCluster"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `kubefwd --help` does not load TLS and YAML machinery.
    if name == "SimCluster":
        from kubefwd.sim.cluster import SimCluster

        return SimCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
