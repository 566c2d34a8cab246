"""Runtime changes through ``Control`` (what the TUI and the REST API call), on the real app
against the simulated cluster: namespaces and services added and removed while running, a
forward reconnected, a namespace listed again; the hosts file and the state store follow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import http_text, manifests, namespace, service, try_http, wait_for, workload
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    hosts_entries,
)

from kubefwd.app.control import ControlError
from kubefwd.app.program import Kubefwd as App
from kubefwd.app.program import SvcOptions
from kubefwd.events.types import ReconnectRequested, TunnelOpened
from kubefwd.sim.cluster import SimCluster


def test_add_and_remove_a_namespace(app: App, hosts: Path) -> None:
    assert "api.payments" not in hosts_entries(hosts)
    watched = app.control.add_namespace("payments")
    assert (watched.context, watched.namespace, watched.services) == ("one", "payments", None)
    ip = wait_for(lambda: hosts_entries(hosts).get("api.payments"), 10, "api.payments written")
    assert http_text(ip, 80).startswith("api-")
    assert any(f.key == "one/payments/api" for f in app.store.snapshot())
    with pytest.raises(ControlError) as again:
        app.control.add_namespace("one/payments")
    assert again.value.code == "conflict"

    app.control.remove_namespace("payments")
    wait_for(lambda: "api.payments" not in hosts_entries(hosts), 10, "api.payments removed")
    wait_for(lambda: all(f.namespace != "payments" for f in app.store.snapshot()), 10,
             "payments forwards leave the store")
    assert "web.shop" in hosts_entries(hosts)  # the other namespace is untouched
    with pytest.raises(ControlError) as gone:
        app.control.remove_namespace("payments")
    assert gone.value.code == "not_found"


def test_add_one_service_then_remove_it(app: App, hosts: Path) -> None:
    app.control.add_service("payments", "api")
    ip = wait_for(lambda: hosts_entries(hosts).get("api.payments"), 10, "api.payments written")
    assert try_http(ip, 80)
    # Only that service of the namespace: echo stays out.
    assert "echo.payments" not in hosts_entries(hosts)
    assert [(w.namespace, w.services) for w in app.control.namespaces()] == [
        ("payments", ("api",)), ("shop", None)]
    app.control.remove_service("payments/api")
    wait_for(lambda: "api.payments" not in hosts_entries(hosts), 10, "api.payments removed")
    assert [w.namespace for w in app.control.namespaces()] == ["shop"]


def test_remove_one_service_of_a_watched_namespace(app: App, hosts: Path) -> None:
    assert "cart.shop" in hosts_entries(hosts)
    app.control.remove_service("one/shop/cart")
    wait_for(lambda: "cart.shop" not in hosts_entries(hosts), 10, "cart.shop removed")
    assert "web.shop" in hosts_entries(hosts)
    app.control.add_service("shop", "cart")
    wait_for(lambda: "cart.shop" in hosts_entries(hosts), 10, "cart.shop back")


def test_reconnect_opens_a_fresh_tunnel(app: App, hosts: Path) -> None:
    ip = hosts_entries(hosts)["web.shop"]
    assert http_text(ip, 80).startswith("web-")
    sub = app.bus.subscribe("test", types=(ReconnectRequested, TunnelOpened))
    try:
        app.control.reconnect("shop/web")
        assert wait_for(lambda: app.store.get("one/shop/web").status == "reconnecting", 5,
                        "reconnecting")
        assert http_text(ip, 80).startswith("web-")
        first = sub.get(5)
        second = sub.get(5)
        seen = [type(first).__name__, type(second).__name__]
        assert seen == ["ReconnectRequested", "TunnelOpened"]
        assert wait_for(lambda: app.store.get("one/shop/web").status == "active", 5, "active")
    finally:
        sub.close()
    with pytest.raises(ControlError):
        app.control.reconnect("shop/nothing")


def test_sync_lists_again_and_keeps_every_forward(app: App, hosts: Path) -> None:
    before = hosts_entries(hosts)
    app.control.sync()
    assert hosts_entries(hosts) == before
    ip = before["web.shop"]
    assert http_text(ip, 80).startswith("web-")


@pytest.mark.parametrize("bad", ["", "Upper", "a/b/c", "x" * 64, "nope/shop"])
def test_bad_namespace_names_are_refused(app: App, bad: str) -> None:
    with pytest.raises(ControlError):
        app.control.add_namespace(bad)


def test_a_namespace_of_another_cluster_not_loaded_at_start_is_forwarded_live(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int,
) -> None:
    # A second cluster, its context in the same kubeconfig but not chosen at start.
    far_manifests = manifests(namespace("warehouse"), workload("stock", "warehouse"),
                              service("stock", "warehouse"))
    with SimCluster(manifests=far_manifests, contexts=("far",)) as far:
        far.wait_ready(timeout=15)
        merged = cluster.kubeconfig()
        far_config = far.kubeconfig()
        far_config["users"][0]["name"] = "far-user"
        far_config["contexts"][0]["context"]["user"] = "far-user"
        for part in ("clusters", "users", "contexts"):
            merged[part] += far_config[part]
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(merged))
        app = App(SvcOptions(kubeconfig=str(kubeconfig), namespaces=["shop"], hosts_path=hosts,
                             backup_dir=tmp_path, base_ip=f"127.1.{block}.1"))
        try:
            app.start()
            assert app.wait_ready(0)
            assert app.control.contexts == ["one"]
            # The browser's list: every context of the kubeconfig, the loaded one first.
            assert app.lookups.contexts() == ["one", "two", "far"]
            assert "warehouse" in [n["metadata"]["name"] for n in app.lookups.namespaces("far")]
            assert [s["metadata"]["name"] for s in app.lookups.services("warehouse", "far")] \
                == ["stock"]

            watched = app.control.add_namespace("warehouse", "far")
            assert (watched.context, watched.namespace) == ("far", "warehouse")
            ip = wait_for(lambda: hosts_entries(hosts).get("stock.warehouse.far"), 15,
                          "stock.warehouse.far written")
            assert http_text(ip, 80).startswith("stock-")  # served by the far cluster's pod
            assert app.store.get("far/warehouse/stock") is not None
            web = hosts_entries(hosts)["web.shop"]
            assert http_text(web, 80).startswith("web-")  # the first cluster goes on

            app.control.remove_namespace("far/warehouse")
            wait_for(lambda: "stock.warehouse.far" not in hosts_entries(hosts), 10,
                     "stock.warehouse.far removed")
            with pytest.raises(ControlError) as unknown:
                app.control.add_namespace("nope/warehouse")
            assert unknown.value.code == "not_found" and "far" in str(unknown.value)
        finally:
            app.shutdown()
    assert hosts.read_bytes() == ORIGINAL_HOSTS
