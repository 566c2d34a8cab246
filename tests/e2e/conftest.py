"""Fixtures every end-to-end module shares: a simulated cluster (``cluster``), a hosts file
with foreign lines (``hosts``), this test's own block of loopback addresses (``block``), a
launcher of the real ``kubefwd svc`` process (``run``) — defined beside the tests of
``kubefwd svc`` itself — and ``app``: kubefwd running in this process on namespace shop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_svc_e2e import ORIGINAL_HOSTS, block, cluster, hosts, run  # noqa: F401

from kubefwd.app.program import Kubefwd as App
from kubefwd.app.program import SvcOptions
from kubefwd.sim.cluster import SimCluster


@pytest.fixture
def app(cluster: SimCluster, hosts: Path, tmp_path: Path, block: int) -> Iterator[App]:  # noqa: F811
    """kubefwd started in this process on namespace shop; stopped after the test, which must
    leave the hosts file as it found it."""
    kubefwd = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop"],
                             hosts_path=hosts, backup_dir=tmp_path,
                             base_ip=f"127.1.{block}.1"))
    try:
        kubefwd.start()
        assert kubefwd.wait_ready(0)
        yield kubefwd
    finally:
        kubefwd.shutdown()
    assert hosts.read_bytes() == ORIGINAL_HOSTS
