"""Runtime changes through ``Control`` (what the TUI and the REST API call), on the real app
against the simulated cluster: namespaces and services added and removed while running, a
forward reconnected, a namespace listed again; the hosts file and the state store follow."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import http_text, try_http, wait_for
from test_svc_e2e import (
    hosts_entries,
)

from kubefwd.app.control import ControlError
from kubefwd.app.program import Kubefwd as App
from kubefwd.events.types import ReconnectRequested, TunnelOpened


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


@pytest.mark.parametrize("bad", ["", "Upper", "a/b/c", "x" * 64, "two/shop"])
def test_bad_namespace_names_are_refused(app: App, bad: str) -> None:
    with pytest.raises(ControlError):
        app.control.add_namespace(bad)
