"""``--wait-namespaces``: a namespace named with -n that does not exist yet is waited for,
forwarded as soon as its services appear, and unforwarded when it is deleted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import http_text, service, wait_for, workload
from test_svc_e2e import (
    Kubefwd,
    _run_to_end,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e



def test_a_namespace_created_later_is_forwarded_and_its_deletion_unforwards_it(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    fwd = run("-n", "shop,preview", "--wait-namespaces")
    waiting = [x for x in fwd.lines if "namespace 'preview' does not exist" in x]
    assert len(waiting) == 1 and "WARNING" in waiting[0], fwd.output
    assert "web.shop" in hosts_entries(hosts)
    cluster.apply(workload("site", "preview"))  # creates the namespace too
    cluster.wait_ready("preview", timeout=15)
    cluster.apply(service("site", "preview"))
    created = time.monotonic()
    wait_for(lambda: "site.preview" in hosts_entries(hosts), 5, "site.preview in hosts")
    appeared = time.monotonic() - created
    print(f"forwarded {appeared:.3f} s after the service appeared")
    assert appeared < 1.0, appeared
    assert http_text(hosts_entries(hosts)["site.preview"], 80).startswith("site-")
    # The shop namespace kept its names and the second namespace got its own third octet.
    assert hosts_entries(hosts)["web.shop"].split(".")[2] != \
        hosts_entries(hosts)["site.preview"].split(".")[2]
    cluster.delete("Namespace", "", "preview")
    deleted = time.monotonic()
    wait_for(lambda: not [n for n in hosts_entries(hosts) if n.endswith(".preview")], 5,
             "preview names gone")
    gone = time.monotonic() - deleted
    print(f"names removed {gone:.3f} s after the namespace was deleted")
    assert gone < 1.0, gone
    assert "web.shop" in hosts_entries(hosts)
    assert len([x for x in fwd.lines if "does not exist" in x]) == 1
    fwd.stop_cleanly()


def test_wait_namespaces_needs_namespaces(cluster: SimCluster, hosts: Path,
                                          tmp_path: Path) -> None:
    result = _run_to_end(["-c", str(cluster.kubeconfig_path), "--hosts-path", str(hosts),
                          "-A", "--wait-namespaces"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--wait-namespaces needs -n" in result.stderr
