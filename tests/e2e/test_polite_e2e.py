"""A polite API client against the simulated cluster: Retry-After storms are waited out
with one log line, big lists are paged, and requests are counted by the sim."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import http_text, try_http, wait_for
from test_svc_e2e import (
    Kubefwd,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e



@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_storm_is_waited_out_with_one_line(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path, status: int
) -> None:
    fwd = run("-n", "shop,payments")
    entries = hosts_entries(hosts)
    before = dict(entries)
    assert http_text(entries["web"], 80).startswith("web-")
    lines_before = len(fwd.lines)
    cluster.reset_request_counts()
    cluster.throttle(status=status, retry_after=1, seconds=5)
    # Every watch and tunnel is cut: everything must ask again, into the storm.
    cluster.restart_apiserver()
    answers: list[str | None] = []
    client = threading.Thread(target=lambda: answers.append(
        http_text(entries["web"], 80, timeout=30)), name="test-storm-client")
    client.start()  # a new connection needs a new tunnel: its dial is refused too
    time.sleep(5.5)
    client.join(30)
    assert answers and str(answers[0]).startswith("web-")
    # Recovered: every forward still answers, names unchanged.
    wait_for(lambda: try_http(entries["api.payments"], 80), 10, "payments/api")
    assert hosts_entries(hosts) == before
    time.sleep(1.5)  # the watches are back
    refused = cluster.request_count(refused=True)
    made = cluster.request_count()
    assert refused >= 6, cluster.refused
    assert made < 2 * refused, (made, refused, dict(cluster.requests))
    new = fwd.lines[lines_before:]
    slow = [x for x in new if "asks us to slow down" in x]
    assert len(slow) == 1, "\n".join(new)
    # Besides the tunnel the restart cut, no other warning: no storm of them.
    others = [x for x in new if "WARNING" in x and x not in slow and "died" not in x]
    assert not others, "\n".join(new)
    fwd.stop_cleanly()
