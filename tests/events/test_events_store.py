from __future__ import annotations

import dataclasses

import pytest

from kubefwd.events.bus import EventBus
from kubefwd.events.store import ForwardState, StateStore
from kubefwd.events.types import (
    ConnectionClosed,
    ConnectionFailed,
    ConnectionRouted,
    ErrorRaised,
    Event,
    ForwardBound,
    ForwardFailed,
    ForwardUnbound,
    PodChanged,
    Ready,
    ServiceAdded,
    ServiceRemoved,
    ShutdownStarted,
    TunnelClosed,
    TunnelFailed,
    TunnelOpened,
)

KEY = "ctx/shop/web"


def bound(key: str = KEY, pod: str | None = "web-1", t: float = 100.0) -> ForwardBound:
    ctx, ns, svc = key.split("/")[:3]
    return ForwardBound(
        key=key, context=ctx, namespace=ns, service=svc, ip="127.1.27.1",
        names=(svc, f"{svc}.{ns}"), ports=("80", "8080:80"), pod=pod, time=t,
    )


def folded(*events: Event) -> StateStore:
    store = StateStore()
    for event in events:
        store.fold(event)
    return store


def state_of(store: StateStore, key: str = KEY) -> ForwardState:
    state = store.get(key)
    assert state is not None, f"{key} is not in the store"
    return state


def test_bound_with_a_pod_is_active_since_the_event() -> None:
    state = folded(bound(pod="web-1", t=100.0)).get(KEY)
    assert state is not None
    assert (state.status, state.pod, state.connected_since) == ("active", "web-1", 100.0)
    assert state.ip == "127.1.27.1" and state.names == ("web", "web.shop")
    assert state.ports == ("80", "8080:80") and state.reconnects == 0


def test_bound_without_a_pod_is_pending() -> None:
    state = folded(bound(pod=None)).get(KEY)
    assert state is not None
    assert (state.status, state.pod, state.connected_since) == ("pending", None, None)


def test_pod_changed_from_a_pod_counts_a_reconnect() -> None:
    store = folded(
        bound(pod="web-1"),
        PodChanged(key=KEY, pod="web-2", previous="web-1", time=105.0),
    )
    state = store.get(KEY)
    assert state is not None
    assert (state.status, state.pod, state.reconnects) == ("active", "web-2", 1)
    assert state.connected_since == 105.0
    [r] = store.reconnections()
    assert (r.key, r.pod, r.previous, r.time) == (KEY, "web-2", "web-1", 105.0)


def test_pod_changed_from_none_is_active_without_a_reconnect() -> None:
    store = folded(bound(pod=None), PodChanged(key=KEY, pod="web-1", previous=None, time=7.0))
    state = store.get(KEY)
    assert state is not None
    assert (state.status, state.reconnects, state.connected_since) == ("active", 0, 7.0)
    assert store.reconnections() == ()


def test_pod_changed_to_none_is_reconnecting() -> None:
    state = folded(bound(), PodChanged(key=KEY, pod=None, previous="web-1")).get(KEY)
    assert state is not None
    assert (state.status, state.pod, state.connected_since) == ("reconnecting", None, None)


def test_tunnel_failed_is_an_error_and_tunnel_opened_recovers() -> None:
    store = folded(bound(), TunnelFailed(key=KEY, pod="web-1", message="refused", time=110.0))
    state = store.get(KEY)
    assert state is not None
    assert (state.status, state.last_error, state.last_error_time) == ("error", "refused", 110.0)
    assert state.connected_since is None
    store.fold(TunnelOpened(key=KEY, pod="web-1", transport="spdy", time=120.0))
    state = store.get(KEY)
    assert state is not None
    assert (state.status, state.connected_since) == ("active", 120.0)
    # The last error stays visible after recovery.
    assert state.last_error == "refused"


def test_connection_routed_while_not_active_is_connecting() -> None:
    store = folded(bound(pod=None), ConnectionRouted(key=KEY, port=80, pod="web-1"))
    state = store.get(KEY)
    assert state is not None
    assert (state.status, state.pod) == ("connecting", "web-1")
    active = folded(bound(), ConnectionRouted(key=KEY, port=80, pod="web-1"))
    assert state_of(active, KEY).status == "active"


def test_tunnel_closed_and_connection_closed_change_nothing() -> None:
    store = folded(bound())
    version = store.version
    store.fold(TunnelClosed(key=KEY, pod="web-1"))
    store.fold(ConnectionClosed(key=KEY, port=80))
    assert store.version == version
    assert state_of(store, KEY).status == "active"


def test_connection_failed_on_an_active_forward_keeps_it_active() -> None:
    store = folded(bound(), ConnectionFailed(key=KEY, port=80, reason="reset", time=130.0))
    state = store.get(KEY)
    assert state is not None
    assert (state.status, state.last_error, state.last_error_time) == ("active", "reset", 130.0)
    assert [e.message for e in store.errors()] == ["reset"]


def test_connection_failed_while_waiting_for_a_pod_is_an_error() -> None:
    state = folded(
        bound(),
        PodChanged(key=KEY, pod=None, previous="web-1"),
        ConnectionFailed(key=KEY, port=80, reason="no ready pod within 300s"),
    ).get(KEY)
    assert state is not None
    assert (state.status, state.last_error) == ("error", "no ready pod within 300s")


def test_forward_failed_before_binding_enters_as_an_error() -> None:
    store = folded(ForwardFailed(key="ctx/pay/db", message="no address left", time=3.0))
    state = store.get("ctx/pay/db")
    assert state is not None
    assert (state.context, state.namespace, state.service) == ("ctx", "pay", "db")
    assert (state.status, state.ip, state.last_error) == ("error", "", "no address left")
    assert store.errors()[0].key == "ctx/pay/db"


def test_forward_failed_on_a_bound_forward_keeps_its_address() -> None:
    state = folded(bound(), ForwardFailed(key=KEY, message="address in use")).get(KEY)
    assert state is not None
    assert (state.status, state.ip, state.last_error) == ("error", "127.1.27.1", "address in use")


def test_shutdown_started_stops_every_forward() -> None:
    store = folded(bound(), bound("ctx/shop/api", pod=None))
    assert not store.shutting_down
    store.fold(ShutdownStarted(reason="SIGINT"))
    assert store.shutting_down
    assert {s.status for s in store.snapshot()} == {"stopping"}
    # Nothing after that brings a forward back to life.
    store.fold(TunnelOpened(key=KEY, pod="web-1", transport="spdy"))
    store.fold(TunnelFailed(key=KEY, pod="web-1", message="eof"))
    assert state_of(store, KEY).status == "stopping"


def test_forward_unbound_leaves_the_store() -> None:
    store = folded(bound(), bound("ctx/shop/api"), ForwardUnbound(key=KEY, ip="127.1.27.1"))
    assert store.get(KEY) is None
    assert [s.key for s in store.snapshot()] == ["ctx/shop/api"]


def test_service_removed_takes_its_per_pod_forwards_along() -> None:
    store = folded(
        ServiceAdded(key="ctx/shop/db", context="ctx", namespace="shop", service="db"),
        ServiceAdded(key="ctx/shop/dbx", context="ctx", namespace="shop", service="dbx"),
        bound("ctx/shop/db/db-0"),
        bound("ctx/shop/db/db-1"),
        bound("ctx/shop/dbx"),
    )
    assert store.services == 2
    store.fold(ServiceRemoved(key="ctx/shop/db", context="ctx", namespace="shop", service="db"))
    assert [s.key for s in store.snapshot()] == ["ctx/shop/dbx"]
    assert store.services == 1


def test_ready_is_set_once() -> None:
    store = StateStore()
    assert not store.ready
    store.fold(Ready(services=3, addresses=3, seconds=0.5, hosts_writes=1))
    version = store.version
    assert store.ready
    store.fold(Ready(services=3, addresses=3, seconds=0.5, hosts_writes=1))
    assert store.version == version


def test_unknown_forwards_are_ignored() -> None:
    store = folded(
        PodChanged(key=KEY, pod="web-1", previous=None),
        TunnelOpened(key=KEY, pod="web-1", transport="spdy"),
        ConnectionRouted(key=KEY, port=80, pod="web-1"),
    )
    assert store.snapshot() == ()
    assert store.version == 0


def test_snapshot_is_sorted_immutable_and_unchanged_by_later_folds() -> None:
    store = folded(bound("ctx/shop/web"), bound("ctx/pay/db"), bound("ctx/shop/api"))
    snap = store.snapshot()
    assert isinstance(snap, tuple)
    assert [s.key for s in snap] == ["ctx/pay/db", "ctx/shop/api", "ctx/shop/web"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap[0].status = "error"  # type: ignore[misc]
    store.fold(TunnelFailed(key="ctx/pay/db", pod="web-1", message="x"))
    assert snap[0].status == "active"
    assert store.snapshot()[0].status == "error"
    assert store.snapshot() is store.snapshot()  # built once per version


def test_version_grows_on_every_change() -> None:
    store = StateStore()
    versions = [store.version]
    for event in (
        bound(),
        PodChanged(key=KEY, pod=None, previous="web-1"),
        PodChanged(key=KEY, pod="web-2", previous=None),
        TunnelFailed(key=KEY, pod="web-2", message="x"),
        TunnelOpened(key=KEY, pod="web-2", transport="ws"),
        ErrorRaised(message="boom"),
        ShutdownStarted(reason="SIGTERM"),
        ForwardUnbound(key=KEY, ip="127.1.27.1"),
    ):
        store.fold(event)
        versions.append(store.version)
    assert versions == list(range(len(versions)))


def test_error_and_reconnection_rings_are_bounded() -> None:
    store = StateStore(history=5)
    store.fold(bound())
    for i in range(12):
        store.fold(ErrorRaised(message=f"e{i}"))
        store.fold(PodChanged(key=KEY, pod=f"web-{i + 2}", previous=f"web-{i + 1}"))
    assert [e.message for e in store.errors()] == [f"e{i}" for i in range(7, 12)]
    assert [r.pod for r in store.reconnections()] == [f"web-{i + 2}" for i in range(7, 12)]
    assert state_of(store, KEY).reconnects == 12


def test_default_rings_keep_200() -> None:
    store = StateStore()
    for i in range(250):
        store.fold(ErrorRaised(message=f"e{i}"))
    assert len(store.errors()) == 200
    assert store.errors()[0].message == "e50"


def test_counts_by_status() -> None:
    store = folded(
        ServiceAdded(key=KEY, context="ctx", namespace="shop", service="web"),
        bound(),
        bound("ctx/shop/api", pod=None),
        ForwardFailed(key="ctx/shop/db", message="no address"),
    )
    counts = store.counts()
    assert (counts.services, counts.forwards) == (1, 3)
    assert (counts.active, counts.pending, counts.error) == (1, 1, 1)
    assert (store.total, store.active) == (3, 1)


def test_attached_to_a_bus_it_folds_every_publish() -> None:
    bus = EventBus()
    store = StateStore()
    bus.attach(store.fold)
    bus.publish(bound())
    bus.publish(PodChanged(key=KEY, pod="web-2", previous="web-1"))
    assert state_of(store, KEY).pod == "web-2"
