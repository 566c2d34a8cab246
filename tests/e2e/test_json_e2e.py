"""``--output json`` against the simulated cluster: one JSON event per line, as documented in
``kubefwd.events.types``, with no credential in any of them."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import http_text, wait_for
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    Kubefwd,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster


def events(fwd: Kubefwd) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(fwd.lines)]


def test_json_output_is_one_event_per_line_and_follows_the_run(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path,
) -> None:
    fwd = run("-n", "shop", "-o", "json", ready=False)
    fwd.wait_line(r'"type":"ready"', timeout=20)
    seen = events(fwd)  # every line parses
    assert all(isinstance(e["type"], str) and e["time"].endswith("Z") for e in seen)
    bound = {e["key"]: e for e in seen if e["type"] == "forward_bound"}
    assert {"one/shop/web", "one/shop/cart", "one/shop/db", "one/shop/db-0.db",
            "one/shop/db-1.db"} <= set(bound)
    web = bound["one/shop/web"]
    assert web["ip"] == hosts_entries(hosts)["web.shop"] and "web.shop" in web["names"]
    assert web["ports"] == ["80"] and web["pod"].startswith("web-")
    assert web["pod_path"] == "shop/" + web["pod"]
    # The pod's port behind each local one: web's 80 is the pod's named port http, 8080.
    assert web["pod_ports"] == ["8080"]
    assert bound["one/shop/cart"]["pod_ports"] == ["8080", "9090"]
    assert [e["type"] for e in seen].count("ready") == 1
    assert not any(e["type"] in ("log_line", "warning_raised") and "Forwarding" in e["message"]
                   for e in seen)  # the text log's lines are not mixed in

    # A pod deleted: the forward moves to the replacement, and the next connection goes there.
    (old,) = cluster.pods("shop", "app=web")
    cluster.delete_pod("shop", old["metadata"]["name"])
    changed = fwd.wait_line(r'"type":"pod_changed".*"key":"one/shop/web","pod":"web-',
                            timeout=20)
    new_pod = json.loads(changed)["pod"]
    assert new_pod and new_pod != old["metadata"]["name"]
    start = len(fwd.lines)
    assert wait_for(lambda: http_text(web["ip"], 80), 10, "web answers").startswith(new_pod)
    routed = json.loads(fwd.wait_line(r'"type":"connection_routed".*"one/shop/web"',
                                      start=start))
    assert routed["pod"] == new_pod and routed["port"] == 80

    assert fwd.stop(signal.SIGINT) == 0
    seen = events(fwd)
    kinds = [e["type"] for e in seen]
    assert "shutdown_started" in kinds and kinds[-1] == "shutdown_complete"
    assert seen[-1]["exit_code"] == 0
    assert hosts.read_bytes() == ORIGINAL_HOSTS
    token = cluster.token or ""
    assert token and all(token not in line for line in fwd.lines)


def test_json_output_with_verbose_carries_the_debug_lines(
    run: Callable[..., Kubefwd],
) -> None:
    fwd = run("-n", "shop", "-o", "json", "-v", ready=False)
    fwd.wait_line(r'"type":"ready"', timeout=20)
    web = next(e for e in events(fwd) if e.get("key") == "one/shop/web")
    assert http_text(web["ip"], 80).startswith("web-")  # a tunnel opens: debug lines
    fwd.wait_line(r'"level":"debug"', timeout=10)
    levels = {e.get("level") for e in events(fwd) if e["type"] == "log_line"}
    assert "debug" in levels
    fwd.stop_cleanly()
