"""Several ``kubefwd svc`` processes on one hosts file when addresses run out: a name is
written only for an address its owner listens on, the ready line counts what listens, and
what could not be bound is bound once addresses free up."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import hosts_file, http_text, manifests, namespace, wait_for, workload
from test_svc_e2e import ORIGINAL_HOSTS, Kubefwd, hosts_owners

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e

SERVICES = 20  # per namespace; each namespace range below has room for 25


def _service(name: str, ns: str) -> str:
    return (f"\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            "spec:\n  selector: {app: app}\n  ports: [{name: http, port: 80, targetPort: http}]\n")


@pytest.fixture
def crowded() -> Iterator[SimCluster]:
    """Three namespaces of SERVICES services each, all served by one pod per namespace."""
    docs: list[str] = []
    for ns in ("n1", "n2", "n3"):
        docs += [namespace(ns), workload("app", ns)]
        docs += [_service(f"s{i:02d}", ns) for i in range(SERVICES)]
    with SimCluster(manifests=manifests(*docs)) as cluster:
        cluster.wait_ready(timeout=30)
        yield cluster


def listening_ips(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


def ready_count(fwd: Kubefwd) -> tuple[int, int]:
    line = fwd.wait_line(r"ready: \d+ services")
    match = re.search(r"ready: (\d+) services forwarded on (\d+) addresses", line)
    assert match, line
    return int(match.group(1)), int(match.group(2))


def assert_names_lead_to_listeners(hosts: Path, running: list[Kubefwd]) -> None:
    """Every name kubefwd wrote is on one address, which its writer listens on."""
    ips, owners = hosts_owners(hosts)
    assert {n: i for n, i in ips.items() if len(i) > 1} == {}
    listening = {str(f.proc.pid): listening_ips(f.proc.pid) for f in running}
    nowhere = {ip: pids for ip, pids in owners.items()
               if any(ip not in listening.get(pid, set()) for pid in pids)}
    assert nowhere == {}, "names written for addresses nobody listens on"


def test_exhausted_addresses_write_only_listening_names_and_are_retried(
    crowded: SimCluster, tmp_path: Path, block: int
) -> None:
    hosts = hosts_file(tmp_path, ORIGINAL_HOSTS)
    # 25 addresses per namespace range (.230-.254); each instance numbers its namespaces in
    # its own order, so the three share the same two ranges: 40 + 40 + 40 services for 50.
    conf = tmp_path / "z.yaml"
    conf.write_text(f"baseUnreservedIP: 127.1.{block}.230\n")
    running: list[Kubefwd] = []
    try:
        for namespaces in ("n1,n2", "n2,n3", "n3,n1"):
            fwd = Kubefwd(crowded, hosts, "-n", namespaces, "-z", str(conf), home=tmp_path)
            running.append(fwd)
            fwd.wait_ready(timeout=60)
        first, second, third = running
        for fwd in running:
            services, addresses = ready_count(fwd)
            assert addresses == len(listening_ips(fwd.proc.pid)), fwd.output
            assert services == addresses
        assert ready_count(first) == (40, 40)
        assert_names_lead_to_listeners(hosts, running)
        # The first lets go of 40 addresses: the others bind what found none before.
        before = {f.proc.pid: len(listening_ips(f.proc.pid)) for f in (second, third)}
        assert first.stop() == 0
        running.remove(first)
        wait_for(lambda: all(len(listening_ips(f.proc.pid)) > before[f.proc.pid]
                             for f in (second, third)), 20, "both others bind more services")
        wait_for(lambda: sum(len(listening_ips(f.proc.pid)) for f in running) == 50, 20,
                 "every address of both ranges in use")
        # The third's n1 services, which found no address before, now have their names
        # (its n3 services duplicate the second's, whose names those stay).
        wait_for(lambda: str(third.proc.pid) in set().union(*hosts_owners(hosts)[1].values()),
                 20, "the third writes the names of what it bound late")
        assert_names_lead_to_listeners(hosts, running)
        for ip in list(hosts_owners(hosts)[1])[::10]:
            assert http_text(ip, 80).startswith("app-")
        for fwd in running:
            assert fwd.stop() == 0
        assert hosts.read_bytes() == ORIGINAL_HOSTS
    finally:
        for fwd in running:
            fwd.kill()
            print(f"--- output of {' '.join(fwd.argv)}\n{fwd.output}")
