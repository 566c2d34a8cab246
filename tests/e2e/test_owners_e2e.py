"""The registry of this process's hosts writers is one object, the app's: its writer, its
stop signals (the second-signal removal) and its look at other instances all use it, and a
run leaves nothing registered behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_svc_e2e import ORIGINAL_HOSTS, block, cluster, hosts  # noqa: F401

from kubefwd.hosts.writer import foreign_entries
from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e


def test_the_app_owns_one_owners_registry_its_parts_share(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int  # noqa: F811
) -> None:
    from kubefwd.app.program import Kubefwd as App
    from kubefwd.app.program import SvcOptions

    app = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop"],
                         hosts_path=hosts, backup_dir=tmp_path, base_ip=f"127.1.{block}.1"))
    owners = app._owners
    try:
        app.start()
        assert app.wait_ready(0)
        assert app._hosts is not None and app._hosts.owners is owners
        assert app._stop_signals.owners is owners
        assert app._coexist.others.owners is owners
        assert owners.is_local(os.getpid())  # registered while the writer runs
        # Our own lines are never another instance's, with or without the registry.
        assert foreign_entries(hosts, owners=owners) == {}
        assert b"# kubefwd pid=" in hosts.read_bytes()
    finally:
        app.shutdown()
    assert not owners.is_local(os.getpid())
    assert hosts.read_bytes() == ORIGINAL_HOSTS
    other = App(SvcOptions(kubeconfig=str(cluster.kubeconfig_path), namespaces=["shop"],
                           hosts_path=hosts, backup_dir=tmp_path))
    assert other._owners is not owners  # one registry per app, no state shared between runs
