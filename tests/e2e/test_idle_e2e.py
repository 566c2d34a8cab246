
"""Idle cuts: the simulated cluster closes API connections that carried no data for N
seconds, as load balancers and kubelets with an idle timeout do. kubefwd's keepalive pings
keep its tunnels (and the local connections on them) from ever looking idle, and a tunnel
cut while it carried nothing is replaced before the next connection needs it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import http_text, wait_for
from test_svc_e2e import (
    Kubefwd,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster
from kubefwd.tunnel.pod import PING_INTERVAL

pytestmark = pytest.mark.e2e


def portforwards(cluster: SimCluster) -> int:
    return cluster.request_count(resource="pods/portforward")


@pytest.mark.parametrize("transport", ["auto", "ws"])
def test_idle_cut_longer_than_the_keepalive_cuts_nothing(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path, transport: str
) -> None:
    """A local connection left quiet for longer than the load balancer's idle timeout is
    still carried, on its tunnel's session (auto) or its own WebSocket (ws): a session that
    carries a connection is kept alive by pings. (One that carries nothing is not pinged,
    so thousands of idle tunnels wake nothing; a cut one is reopened: see below.)"""
    after = PING_INTERVAL + 3
    cluster.api.bookmark_interval = 2.0  # type: ignore[union-attr]  # quiet watches: not ours
    fwd = run("-n", "shop", "--transport", transport)
    entries = hosts_entries(hosts)
    cluster.cut_idle_connections(after)
    with socket.create_connection((entries["db-0.db"], 5432), timeout=10) as held:
        held.sendall(b"hello")
        assert held.recv(64) == b"hello"
        dials = portforwards(cluster)
        time.sleep(after + 2)  # the held connection is silent all along
        held.sendall(b"still here")
        assert held.recv(64) == b"still here"
    assert cluster.idle_cuts == 0
    if transport == "auto":  # the sessions were kept, not replaced
        assert portforwards(cluster) == dials
    assert http_text(entries["web"], 80).startswith("web-")
    assert "WARNING" not in fwd.output, fwd.output
    fwd.stop_cleanly()


def test_tunnel_cut_while_idle_is_replaced_before_the_next_connection(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    """A load balancer cutting faster than the keepalive: the idle tunnel's session is
    opened again at once, not blamed on the pod, so the next connection finds it open."""
    cluster.api.bookmark_interval = 1.0  # type: ignore[union-attr]
    fwd = run("-n", "shop")
    entries = hosts_entries(hosts)
    assert http_text(entries["web"], 80).startswith("web-")
    dials = portforwards(cluster)
    cluster.cut_idle_connections(2.5)
    # Cut, then dialed again with no local connection asking for it.
    wait_for(lambda: cluster.idle_cuts >= 1 and portforwards(cluster) > dials, 10,
             "the tunnel's session cut and replaced")
    cluster.cut_idle_connections(None)
    redialed = portforwards(cluster)
    time.sleep(0.5)  # the replacement is open
    started = time.monotonic()
    assert http_text(entries["web"], 80).startswith("web-")
    assert time.monotonic() - started < 1.0
    assert portforwards(cluster) == redialed  # served by the replacement: no new dial
    # Not a failure of the pod: no tunnel died, nothing backs off.
    assert "died" not in fwd.output and "backing off" not in fwd.output, fwd.output
    fwd.stop_cleanly()
