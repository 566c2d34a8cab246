"""Registry diffs: informer events in, forward/hosts commands out."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from kubefwd.cluster.informer import InformerEvent
from kubefwd.registry.ipalloc import IpAllocator
from kubefwd.registry.model import (
    Command,
    ForwardKey,
    ForwardRemove,
    ForwardUpsert,
    HostsSnapshot,
    PortMapping,
)
from kubefwd.registry.podselect import (
    age_key,
    container_port_mappings,
    obj_name,
    pod_ref,
    ready_in_slices,
)
from kubefwd.registry.registry import Registry
from kubefwd.registry.slicepods import resolve_ports, slice_backends, slices_of

_counter = iter(range(1, 10_000))


def service(
    name: str,
    ns: str = "shop",
    *,
    selector: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    headless: bool = False,
    kind: str = "ClusterIP",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": kind,
        "ports": ports if ports is not None else [{"name": "http", "port": 80,
                                                   "targetPort": 8080, "protocol": "TCP"}],
        "clusterIP": "None" if headless else "10.0.0.1",
    }
    if selector is None:
        selector = {"app": name}
    if selector:
        spec["selector"] = selector
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def pod(
    name: str,
    ns: str = "shop",
    *,
    app: str = "web",
    ready: bool | None = True,
    phase: str = "Running",
    created: str = "2026-01-01T00:00:00Z",
    deleting: bool = False,
    ip: str = "",
    container_ports: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns,
                            "labels": labels if labels is not None else {"app": app},
                            "creationTimestamp": created, "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    status: dict[str, Any] = {"phase": phase, "podIP": ip or f"127.1.0.{next(_counter) % 250}"}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "ports": container_ports or []}]},
        "status": status,
    }


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Command]] = []

    def __call__(self, batch: list[Command]) -> None:
        self.batches.append(batch)

    def take(self) -> list[Command]:
        out = [c for b in self.batches for c in b]
        self.batches.clear()
        return out


def make(
    contexts: tuple[str, ...] = ("sim",),
    namespaces: tuple[str, ...] = ("shop",),
    **kw: Any,
) -> tuple[Registry, Recorder]:
    reservations = kw.pop("reservations", None)
    reg = Registry(allocator=IpAllocator(reservations=reservations), contexts=contexts,
                   namespaces=namespaces, **kw)
    rec = Recorder()
    reg.subscribe(rec)
    return reg, rec


def sync(reg: Registry, resource: str, objs: list[dict[str, Any]], ctx: str = "sim",
         ns: str = "shop") -> None:
    reg.handle(ctx, ns, resource, InformerEvent("SYNC", objects=tuple(objs)))


def event(reg: Registry, resource: str, kind: str, obj: dict[str, Any],
          ctx: str = "sim", ns: str = "shop") -> None:
    reg.handle(ctx, ns, resource, InformerEvent(kind, obj=obj))


def upserts(cmds: list[Command]) -> dict[str, ForwardUpsert]:
    return {str(c.key): c for c in cmds if isinstance(c, ForwardUpsert)}


def hosts(cmds: list[Command]) -> dict[str, list[str]]:
    snaps = [c for c in cmds if isinstance(c, HostsSnapshot)]
    assert snaps, "expected a hosts snapshot"
    return snaps[-1].entries


WEB = ForwardKey("sim", "shop", "web")


def test_service_with_ready_pods_is_forwarded_with_ip_names_and_ports() -> None:
    reg, rec = make()
    sync(reg, "services", [service("web")])
    sync(reg, "pods", [pod("web-b", created="2026-01-01T00:00:02Z"),
                       pod("web-a", created="2026-01-01T00:00:02Z"),
                       pod("web-old", created="2026-01-01T00:00:01Z")])
    cmds = rec.take()
    up = upserts(cmds)["sim/shop/web"]
    assert up.ip == "127.1.27.1"
    assert up.names == ["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"]
    assert up.ports == [PortMapping(80, 8080, "TCP", 80, "http")]
    # oldest first, then by name
    assert [p.name for p in up.pods] == ["web-old", "web-a", "web-b"]
    assert up.pods[0].ports == {80: 8080}
    assert hosts(cmds) == {"127.1.27.1": up.names}
    picked = reg.pick_pod(WEB)
    assert picked is not None and picked.name == "web-old"
    assert reg.pick_pod(WEB, 80) == picked and reg.pick_pod(WEB, 81) is None


def test_pod_readiness_changes_update_pods_but_keep_the_ip() -> None:
    reg, rec = make()
    sync(reg, "services", [service("web")])
    sync(reg, "pods", [pod("web-1")])
    first = upserts(rec.take())["sim/shop/web"]
    event(reg, "pods", "MODIFIED", pod("web-1", ready=False))
    cmds = rec.take()
    assert upserts(cmds)["sim/shop/web"].pods == []
    assert not any(isinstance(c, HostsSnapshot) for c in cmds)  # names did not change
    assert reg.pick_pod(WEB) is None
    event(reg, "pods", "ADDED", pod("web-2", created="2026-01-02T00:00:00Z", ready=False))
    assert rec.take() == []  # nothing a listener would see changed
    event(reg, "pods", "MODIFIED", pod("web-2", created="2026-01-02T00:00:00Z"))
    up = upserts(rec.take())["sim/shop/web"]
    assert [p.name for p in up.pods] == ["web-2"] and up.ip == first.ip
    event(reg, "pods", "MODIFIED", pod("web-2", deleting=True))
    assert upserts(rec.take())["sim/shop/web"].pods == []
    event(reg, "pods", "DELETED", pod("web-2"))
    event(reg, "pods", "ADDED", pod("web-3", phase="Pending", ready=False))
    assert rec.take() == []
    event(reg, "pods", "MODIFIED", pod("web-3"))
    assert upserts(rec.take())["sim/shop/web"].ip == first.ip


def test_service_deleted_removes_the_forward_and_its_hosts_lines() -> None:
    reg, rec = make()
    sync(reg, "services", [service("web"), service("api")])
    rec.take()
    event(reg, "services", "DELETED", service("web"))
    cmds = rec.take()
    assert ForwardRemove(WEB) in cmds
    assert all("web" not in n for names in hosts(cmds).values() for n in names)
    assert reg.pick_pod(WEB) is None
    assert [str(f.key) for f in reg.snapshot().forwards] == ["sim/shop/api"]


def test_service_update_changes_ports_and_selector() -> None:
    reg, rec = make()
    sync(reg, "services", [service("web")])
    sync(reg, "pods", [pod("web-1"), pod("other-1", app="other")])
    rec.take()
    changed = service("web", selector={"app": "other"},
                      ports=[{"port": 80}, {"port": 443, "targetPort": 8443}])
    event(reg, "services", "MODIFIED", changed)
    up = upserts(rec.take())["sim/shop/web"]
    assert [p.name for p in up.pods] == ["other-1"]
    assert [(m.local_port, m.target_port) for m in up.ports] == [(80, 80), (443, 8443)]
    assert up.pods[0].ports == {80: 80, 443: 8443}


def test_sync_drops_objects_deleted_while_disconnected() -> None:
    reg, rec = make()
    sync(reg, "services", [service("web"), service("api")])
    sync(reg, "pods", [pod("web-1")])
    rec.take()
    sync(reg, "services", [service("api")])  # web vanished during a watch outage
    sync(reg, "pods", [])
    cmds = rec.take()
    assert ForwardRemove(WEB) in cmds
    assert reg.pick_pod(WEB) is None


def test_named_target_port_is_resolved_per_pod() -> None:
    reg, rec = make()
    svc = service("web", ports=[{"name": "http", "port": 80, "targetPort": "web"},
                                {"name": "admin", "port": 9000, "targetPort": "admin"}])
    sync(reg, "services", [svc])
    sync(reg, "pods", [
        pod("web-a", created="2026-01-01T00:00:01Z",
            container_ports=[{"name": "web", "containerPort": 8080}]),
        pod("web-b", created="2026-01-01T00:00:02Z",
            container_ports=[{"name": "web", "containerPort": 9090},
                             {"name": "admin", "containerPort": 9001}]),
    ])
    up = upserts(rec.take())["sim/shop/web"]
    assert up.ports[0].target_port == "web"
    assert up.pods[0].ports == {80: 8080}
    assert up.pods[1].ports == {80: 9090, 9000: 9001}
    a, b = reg.pick_pod(WEB, 80), reg.pick_pod(WEB, 9000)
    assert a is not None and a.name == "web-a" and a.target_port(80) == 8080
    assert b is not None and b.name == "web-b"  # web-a has no "admin" port


def test_udp_ports_are_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    reg, rec = make()
    svc = service("dns", ports=[{"name": "dns", "port": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
    with caplog.at_level(logging.WARNING):
        sync(reg, "services", [svc])
        sync(reg, "services", [svc])
    up = upserts(rec.take())["sim/shop/dns"]
    assert [(m.port, m.protocol) for m in up.ports] == [(53, "TCP")]
    assert sum("53/UDP" in r.getMessage() for r in caplog.records) == 1
    only_udp = service("stats", ports=[{"port": 8125, "protocol": "UDP"}])
    sync(reg, "services", [only_udp])
    assert "sim/shop/stats" not in upserts(rec.take())
    assert "no TCP ports" in reg.snapshot().skipped["sim/shop/stats"]


def test_udp_ports_of_a_namespace_are_one_warning_and_the_detail_is_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make()
    udp = {"name": "dns", "port": 53, "protocol": "UDP"}
    tcp = {"name": "http", "port": 80, "protocol": "TCP"}
    services = [service(f"svc{i:02}", ports=[udp, tcp]) for i in range(25)]
    services += [service("stats", ports=[{"port": 8125, "protocol": "UDP"}])]
    with caplog.at_level(logging.DEBUG, logger="kubefwd"):
        sync(reg, "services", services)
        sync(reg, "services", services)  # a relist: nothing new to say
        event(reg, "services", "ADDED", service("late", ports=[udp, tcp]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    [line] = warnings
    assert line.startswith("sim/shop: 26 UDP ports of 26 services skipped, only TCP is "
                           "forwarded: stats:8125/UDP, svc00:53/UDP, svc01:53/UDP, ")
    assert "(22 more; -v lists each)" in line
    assert line.endswith("; not forwarded, no TCP port left: stats")
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("port 53/UDP skipped" in m for m in debug) == 26  # svc00..svc24 and late
    assert any("late:53/UDP" in m for m in debug)
    assert len(upserts(rec.take())) == 26


def test_services_without_selector_are_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make()
    manual = service("manual", selector={})
    with caplog.at_level(logging.WARNING):
        sync(reg, "services", [manual, service("web")])
        event(reg, "services", "MODIFIED", manual)
    assert set(upserts(rec.take())) == {"sim/shop/web"}
    assert sum("manual" in r.getMessage() for r in caplog.records) == 1
    assert reg.snapshot().skipped == {
        "sim/shop/manual": "skipped: it has no selector and no EndpointSlice names a pod"}
    # once deleted, it is no longer listed as skipped
    sync(reg, "services", [service("web")])
    assert reg.snapshot().skipped == {}


def endpoint_slice(service_name: str, name: str, endpoints: list[dict[str, Any]],
                   ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


def pod_endpoint(pod_name: str, ready: bool = True, ns: str = "shop") -> dict[str, Any]:
    return {"addresses": ["127.1.0.9"], "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": pod_name, "namespace": ns}}


def test_service_without_selector_forwards_the_pods_its_slices_name() -> None:
    reg, rec = make()
    manual = service("manual", selector={}, ports=[
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "admin", "port": 90, "targetPort": "admin"},
        {"name": "raw", "port": 95, "targetPort": 9500}])
    sync(reg, "pods", [
        pod("m-1", app="x", created="2026-01-01T00:00:02Z",
            container_ports=[{"name": "admin", "containerPort": 9191}]),
        pod("m-2", app="x", created="2026-01-01T00:00:01Z", ready=False),
        pod("m-3", app="x")])
    sync(reg, "endpointslices", [
        # The slice's port of the same name wins over the service's targetPort.
        endpoint_slice("manual", "manual-a", [pod_endpoint("m-1"), pod_endpoint("m-2")],
                       [{"name": "http", "port": 7070}]),
        endpoint_slice("other", "other-a", [pod_endpoint("m-3")], [{"port": 1}])])
    sync(reg, "services", [manual])
    up = upserts(rec.take())["sim/shop/manual"]
    assert [p.name for p in up.pods] == ["m-1"]  # m-2 is not ready, m-3 is another's
    assert up.pods[0].ports == {80: 7070, 90: 9191, 95: 9500}
    assert reg.snapshot().skipped == {}
    # The pod becomes ready: its own event updates the service.
    event(reg, "pods", "MODIFIED", pod("m-2", app="x", created="2026-01-01T00:00:01Z"))
    assert [p.name for p in upserts(rec.take())["sim/shop/manual"].pods] == ["m-2", "m-1"]
    # The slice marks m-1 not ready: only m-2 is left.
    event(reg, "endpointslices", "MODIFIED", endpoint_slice(
        "manual", "manual-a", [pod_endpoint("m-1", ready=False), pod_endpoint("m-2")],
        [{"name": "http", "port": 7070}]))
    assert [p.name for p in upserts(rec.take())["sim/shop/manual"].pods] == ["m-2"]
    # The slice goes away: the service is skipped again, its forward removed.
    event(reg, "endpointslices", "DELETED", endpoint_slice("manual", "manual-a", [], []))
    assert ForwardRemove(ForwardKey("sim", "shop", "manual")) in rec.take()


def test_service_without_selector_whose_endpoints_are_addresses_is_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make()
    ext = service("ext", selector={}, ports=[{"port": 5432}])
    mixed = service("mixed", selector={}, ports=[{"port": 80}])
    bare = {"addresses": ["10.9.8.7"], "conditions": {"ready": True}}
    elsewhere = pod_endpoint("m-1", ns="other")
    with caplog.at_level(logging.WARNING):
        sync(reg, "pods", [pod("m-1", app="x")])
        sync(reg, "endpointslices", [
            endpoint_slice("ext", "ext-a", [bare, elsewhere], [{"port": 5432}]),
            endpoint_slice("mixed", "mixed-a", [bare, pod_endpoint("m-1")], [{"port": 8080}])])
        sync(reg, "services", [ext, mixed])
        event(reg, "services", "MODIFIED", ext)
        event(reg, "pods", "MODIFIED", pod("m-1", app="x"))
    ups = upserts(rec.take())
    assert set(ups) == {"sim/shop/mixed"} and ups["sim/shop/mixed"].pods[0].ports == {80: 8080}
    assert reg.snapshot().skipped == {"sim/shop/ext": "skipped: its endpoints are not pods "
                                      "(the port-forward API can only reach pods)"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    ext_lines = [m for m in warnings if "sim/shop/ext" in m]
    assert len(ext_lines) == 1 and "2 endpoints skipped (10.9.8.7, 127.1.0.9)" in ext_lines[0]
    assert "can only reach pods" in ext_lines[0]
    mixed_lines = [m for m in warnings if "sim/shop/mixed" in m]
    assert len(mixed_lines) == 1 and "1 endpoint skipped (10.9.8.7)" in mixed_lines[0]


def test_headless_service_without_ports_forwards_each_pods_container_ports(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make(mappings={9000: 9001})
    sync(reg, "services", [service("db", headless=True, ports=[])])
    with caplog.at_level(logging.WARNING):
        sync(reg, "pods", [pod("db-0", app="db", created="2026-01-01T00:00:01Z")])
    assert upserts(rec.take()) == {}
    assert [r.getMessage() for r in caplog.records] == [
        "service sim/shop/db skipped: headless without ports, and its pods declare no TCP "
        "container port"]
    sync(reg, "pods", [
        pod("db-0", app="db", created="2026-01-01T00:00:01Z", container_ports=[
            {"name": "pg", "containerPort": 5432},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]),
        pod("db-1", app="db", created="2026-01-01T00:00:02Z", container_ports=[
            {"name": "postgres", "containerPort": 5432}, {"containerPort": 9000}])])
    ups = upserts(rec.take())
    svc, zero, one = ups["sim/shop/db"], ups["sim/shop/db-0.db"], ups["sim/shop/db-1.db"]
    assert svc.ports == [PortMapping(5432, 5432, "TCP", 5432, "pg"),
                         PortMapping(9001, 9000, "TCP", 9000, "")]
    assert zero.ports == [PortMapping(5432, 5432, "TCP", 5432, "pg")]
    assert one.ports == [PortMapping(5432, 5432, "TCP", 5432, "postgres"),
                         PortMapping(9001, 9000, "TCP", 9000, "")]
    assert [(p.name, p.ports) for p in svc.pods] == [("db-0", {5432: 5432}),
                                                     ("db-1", {5432: 5432, 9000: 9000})]
    picked = reg.pick_pod(ForwardKey("sim", "shop", "db"), 9000)
    assert picked is not None and picked.name == "db-1"
    assert reg.snapshot().skipped == {}


def test_mappings_change_the_local_port() -> None:
    reg, rec = make(mappings={80: 8080})
    sync(reg, "services", [service("web", ports=[{"port": 80, "targetPort": 8000},
                                                 {"port": 8080}])])
    up = upserts(rec.take())["sim/shop/web"]
    # 80 -> 8080 locally; the service's own 8080 would collide and is skipped
    assert [(m.local_port, m.port, m.target_port) for m in up.ports] == [(8080, 80, 8000)]


def test_headless_service_gets_one_forward_per_pod() -> None:
    reg, rec = make()
    sync(reg, "services", [service("db", headless=True)])
    sync(reg, "pods", [pod("db-0", app="db", created="2026-01-01T00:00:01Z"),
                       pod("db-1", app="db", created="2026-01-01T00:00:02Z", ready=False)])
    cmds = rec.take()
    ups = upserts(cmds)
    assert set(ups) == {"sim/shop/db", "sim/shop/db-0.db", "sim/shop/db-1.db"}
    assert [p.name for p in ups["sim/shop/db"].pods] == ["db-0"]
    assert ups["sim/shop/db-0.db"].names[:2] == ["db-0.db", "db-0.db.shop"]
    assert ups["sim/shop/db-0.db"].pods[0].name == "db-0"
    assert ups["sim/shop/db-1.db"].pods == []  # not ready yet: bound, waiting
    ips = {ups[k].ip for k in ups}
    assert len(ips) == 3
    assert set(hosts(cmds)) == ips
    key0 = ForwardKey("sim", "shop", "db", "db-0")
    ip0 = ups["sim/shop/db-0.db"].ip
    p0 = reg.pick_pod(key0)
    assert p0 is not None and p0.name == "db-0"
    # the pod is deleted: its forward goes; the replacement (same name) comes back
    event(reg, "pods", "DELETED", pod("db-0", app="db"))
    cmds = rec.take()
    assert ForwardRemove(key0) in cmds
    event(reg, "pods", "ADDED", pod("db-0", app="db", created="2026-01-01T00:01:00Z"))
    ups = upserts(rec.take())
    assert ups["sim/shop/db-0.db"].ip == ip0  # the freed address comes back
    assert [p.name for p in ups["sim/shop/db"].pods] == ["db-0"]


def sts_pod(name: str, *, uid: str = "", **kw: Any) -> dict[str, Any]:
    p = pod(name, app="db", **kw)
    p["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                         "name": "db", "controller": True}]
    if uid:
        p["metadata"]["uid"] = uid
    return p


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_statefulset_pod_restart_keeps_its_forward_and_ip() -> None:
    clock = FakeClock()
    reg, rec = make(pod_grace=30.0, clock=clock)
    sync(reg, "services", [service("db", headless=True)])
    sync(reg, "pods", [sts_pod("db-0")])
    key0 = ForwardKey("sim", "shop", "db", "db-0")
    ip0 = upserts(rec.take())["sim/shop/db-0.db"].ip
    # Terminating, then gone: the forward stays, same IP and names, with no pod to go to.
    event(reg, "pods", "MODIFIED", sts_pod("db-0", deleting=True, ready=False))
    event(reg, "pods", "DELETED", sts_pod("db-0", deleting=True, ready=False))
    cmds = rec.take()
    assert not any(isinstance(c, ForwardRemove) for c in cmds)
    held = reg.get(key0)
    assert held is not None and held.ip == ip0 and held.pods == [] and "db-0.db" in held.names
    assert reg.pick_pod(key0) is None
    assert "db-0.db" in reg.snapshot().hosts[ip0]
    # A service created in the gap cannot take the address.
    clock.now += 20
    reg.expire()
    event(reg, "services", "ADDED", service("cache"))
    assert upserts(rec.take())["sim/shop/cache"].ip != ip0
    # The replacement, same name: the same forward picks it up once it is ready.
    event(reg, "pods", "ADDED", sts_pod("db-0", uid="uid-new", ready=False))
    event(reg, "pods", "MODIFIED", sts_pod("db-0", uid="uid-new", ip="127.1.0.77"))
    cmds = rec.take()
    assert not any(isinstance(c, ForwardRemove) for c in cmds)
    up = upserts(cmds)["sim/shop/db-0.db"]
    assert up.ip == ip0 and [(p.name, p.uid, p.ip) for p in up.pods] == [
        ("db-0", "uid-new", "127.1.0.77")]
    # Long after, the grace clock was reset by the pod's return: nothing expires.
    clock.now += 100
    reg.expire()
    assert rec.take() == [] and reg.get(key0) is not None


def test_a_statefulset_pod_that_does_not_come_back_goes_after_the_grace() -> None:
    clock = FakeClock()
    reg, rec = make(pod_grace=30.0, clock=clock)
    sync(reg, "services", [service("db", headless=True)])
    sync(reg, "pods", [sts_pod("db-0"), sts_pod("db-1")])
    key1 = ForwardKey("sim", "shop", "db", "db-1")
    ip1 = upserts(rec.take())["sim/shop/db-1.db"].ip
    event(reg, "pods", "DELETED", sts_pod("db-1"))  # scaled down
    assert not any(isinstance(c, ForwardRemove) for c in rec.take())
    clock.now += 29
    reg.expire()
    assert rec.take() == []
    clock.now += 1
    reg.expire()
    cmds = rec.take()
    assert ForwardRemove(key1) in cmds and ip1 not in hosts(cmds)
    # And a deleted headless service takes its kept pod forwards with it at once.
    event(reg, "pods", "DELETED", sts_pod("db-0"))
    rec.take()
    event(reg, "services", "DELETED", service("db", headless=True))
    removed = {c.key for c in rec.take() if isinstance(c, ForwardRemove)}
    assert ForwardKey("sim", "shop", "db", "db-0") in removed


def test_multi_context_names_never_conflict() -> None:
    reg, rec = make(contexts=("dev", "qa"), namespaces=("shop", "pay"))
    sync(reg, "services", [service("web")], ctx="dev", ns="shop")
    sync(reg, "services", [service("web", ns="pay")], ctx="dev", ns="pay")
    sync(reg, "services", [service("web")], ctx="qa", ns="shop")
    ups = upserts(rec.batches[0] + rec.batches[1] + rec.batches[2])
    assert ups["dev/shop/web"].ip == "127.1.27.1"
    assert ups["dev/pay/web"].ip == "127.1.28.1"
    assert ups["qa/shop/web"].ip == "127.2.27.1"
    assert "web" in ups["dev/shop/web"].names and "web.shop.dev" in ups["dev/shop/web"].names
    assert "web" not in ups["dev/pay/web"].names and "web.pay" in ups["dev/pay/web"].names
    assert ups["qa/shop/web"].names == ["web.shop.qa", "web.shop.svc.qa"]
    all_names = [n for names in hosts(rec.take()).values() for n in names]
    assert len(all_names) == len(set(all_names))


def test_a_name_claimed_twice_goes_to_the_first_and_moves_when_it_leaves() -> None:
    # A headless pod "p" of service "x" wants the name "p.x", which a service called "p.x"
    # also wants: the service sorts first and keeps it; when it leaves, the pod gets it.
    reg, rec = make()
    sync(reg, "services", [service("x", headless=True), service("p.x", selector={"app": "p"})])
    sync(reg, "pods", [pod("p", app="x")])
    svc_key, pod_key = ForwardKey("sim", "shop", "p.x"), ForwardKey("sim", "shop", "x", "p")
    ups = {c.key: c for c in rec.take() if isinstance(c, ForwardUpsert)}
    assert "p.x" in ups[svc_key].names and "p.x" not in ups[pod_key].names
    headless_pod = reg.get(ForwardKey("sim", "shop", "x", "p"))
    assert headless_pod is not None and "p.x" not in headless_pod.names
    event(reg, "services", "DELETED", service("p.x", selector={"app": "p"}))
    cmds = rec.take()
    moved = next(c for c in cmds if isinstance(c, ForwardUpsert) and c.key == pod_key)
    assert "p.x" in moved.names
    assert "p.x" in hosts(cmds)[moved.ip]


def test_reservations_and_exhaustion(caplog: pytest.LogCaptureFixture) -> None:
    reg, rec = make(reservations={"web": "127.1.27.200"})
    sync(reg, "services", [service("web")])
    assert upserts(rec.take())["sim/shop/web"].ip == "127.1.27.200"
    many = [service(f"s{i:03d}") for i in range(260)]
    with caplog.at_level(logging.ERROR):
        sync(reg, "services", [service("web"), *many])
    got = upserts(rec.take())
    assert len(got) == 253  # .1-.254 minus the reservation
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 260 - 253
    assert "no free loopback address" in errors[0].getMessage()
    # one service leaves: a waiting one takes its address
    event(reg, "services", "DELETED", service("s000"))
    cmds = rec.take()
    assert ForwardRemove(ForwardKey("sim", "shop", "s000")) in cmds
    assert [str(c.key) for c in cmds if isinstance(c, ForwardUpsert)] == ["sim/shop/s253"]


def test_endpointslices_decide_only_when_the_pod_has_no_ready_condition() -> None:
    reg, rec = make()
    sync(reg, "services", [service("web")])
    sync(reg, "pods", [pod("web-1", ready=None), pod("web-2", ready=False)])
    assert upserts(rec.take())["sim/shop/web"].pods == []
    slice_ = {
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": [
            {"addresses": ["127.1.0.1"], "conditions": {"ready": True},
             "targetRef": {"kind": "Pod", "name": "web-1"}},
            {"addresses": ["127.1.0.2"], "conditions": {"ready": True},
             "targetRef": {"kind": "Pod", "name": "web-2"}},
        ],
    }
    event(reg, "endpointslices", "ADDED", slice_)
    assert [p.name for p in upserts(rec.take())["sim/shop/web"].pods] == ["web-1"]


def test_commands_are_delivered_outside_the_lock_and_in_order() -> None:
    reg, _ = make(namespaces=("shop", "pay"))
    seen: list[tuple[str, int]] = []

    def listener(batch: list[Command]) -> None:
        # readers work from a listener: the write lock is not held
        for c in batch:
            if isinstance(c, ForwardUpsert):
                reg.pick_pod(c.key)
                seen.append((str(c.key), len(c.pods)))

    reg.subscribe(listener)
    sync(reg, "services", [service("web")])
    barrier = threading.Barrier(4)

    def churn(i: int) -> None:
        barrier.wait()
        for j in range(25):
            ready = j % 2 == 0
            event(reg, "pods", "MODIFIED", pod(f"web-{i}", ready=ready))

    threads = [threading.Thread(target=churn, args=(i,), name=f"churn-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    final = reg.get(WEB)
    assert final is not None
    # the last delivered state is the registry's final state
    assert seen[-1] == ("sim/shop/web", len(final.pods))
    assert len(final.pods) == 4  # every churner ends on ready (j=24)


def test_snapshot_lists_forwards_in_order() -> None:
    reg, _ = make(namespaces=("shop", "pay"))
    sync(reg, "services", [service("b"), service("a")])
    sync(reg, "services", [service("z", ns="pay")], ns="pay")
    snap = reg.snapshot()
    assert [str(f.key) for f in snap.forwards] == ["sim/shop/a", "sim/shop/b", "sim/pay/z"]
    assert snap.hosts["127.1.28.1"][0] == "z.pay"


def test_cluster_wide_informers_bucket_objects_by_namespace() -> None:
    reg, rec = make(namespaces=("a", "b"))
    sync(reg, "pods", [pod("web-1", "a"), pod("web-2", "b")], ns="")
    sync(reg, "services", [service("web", "a"), service("web", "b")], ns="")
    ups = upserts(rec.take())
    assert ups["sim/a/web"].ip == "127.1.27.1" and ups["sim/b/web"].ip == "127.1.28.1"
    assert [p.name for p in ups["sim/b/web"].pods] == ["web-2"]
    event(reg, "pods", "DELETED", pod("web-2", "b"), ns="")
    assert upserts(rec.take())["sim/b/web"].pods == []
    sync(reg, "services", [service("web", "a")], ns="")  # b's service went away meanwhile
    assert ForwardRemove(ForwardKey("sim", "b", "web")) in rec.take()


# -- which pods back a service -------------------------------------------------------------


def test_a_multi_label_selector_needs_every_label_of_a_pod() -> None:
    """``{app: web, track: stable}``: a canary pod sharing ``app: web`` is not a backend,
    even when it is the oldest; neither is a pod with no labels at all."""
    reg, rec = make()
    sync(reg, "services", [service("web", selector={"app": "web", "track": "stable"})])
    sync(reg, "pods", [
        pod("canary", labels={"app": "web", "track": "canary"}, created="2026-01-01T00:00:01Z"),
        pod("other", labels={"app": "api", "track": "stable"}, created="2026-01-01T00:00:02Z"),
        pod("bare", labels={}, created="2026-01-01T00:00:03Z"),
        pod("stable", labels={"app": "web", "track": "stable", "extra": "x"},
            created="2026-01-01T00:00:04Z")])
    assert [p.name for p in upserts(rec.take())["sim/shop/web"].pods] == ["stable"]
    unlabelled = pod("nolabels", created="2026-01-01T00:00:00Z")
    del unlabelled["metadata"]["labels"]
    event(reg, "pods", "ADDED", unlabelled)
    assert upserts(rec.take()) == {}  # nothing changed for the service


def test_a_pending_pod_is_not_ready_even_with_a_ready_condition_or_a_ready_endpoint() -> None:
    reg, rec = make()
    sync(reg, "services", [service("web")])
    sync(reg, "endpointslices", [endpoint_slice("web", "web-a", [pod_endpoint("web-2")], [])])
    sync(reg, "pods", [pod("web-1", phase="Pending"), pod("web-2", phase="Pending", ready=None),
                       pod("web-3", phase="Succeeded")])
    assert upserts(rec.take())["sim/shop/web"].pods == []
    event(reg, "pods", "MODIFIED", pod("web-2", ready=None))  # Running now, no condition
    assert [p.name for p in upserts(rec.take())["sim/shop/web"].pods] == ["web-2"]


def test_a_slice_endpoint_marked_not_ready_does_not_make_a_pod_ready() -> None:
    """A pod without a Ready condition is as ready as its endpoints say: ``ready: false`` is
    not ready, a missing ``ready`` is; endpoints that are not this pod's are not asked."""
    reg, rec = make()
    sync(reg, "services", [service("web")])
    sync(reg, "pods", [pod("web-1", ready=None, created="2026-01-01T00:00:01Z"),
                       pod("web-2", ready=None, created="2026-01-01T00:00:02Z"),
                       pod("web-3", ready=None, created="2026-01-01T00:00:03Z")])
    rec.take()
    no_conditions = {"addresses": ["127.1.0.3"], "targetRef": {"kind": "Pod", "name": "web-3"}}
    event(reg, "endpointslices", "ADDED", endpoint_slice("web", "web-a", [
        pod_endpoint("web-1", ready=False),
        {"addresses": ["127.1.0.8"], "targetRef": {"kind": "Node", "name": "web-2"}},
        no_conditions], []))
    assert [p.name for p in upserts(rec.take())["sim/shop/web"].pods] == ["web-3"]


def test_which_endpoints_count_a_pod_ready() -> None:
    slices = [{"endpoints": [
        {"targetRef": {"name": "no-kind"}},  # a targetRef without kind is a pod's
        {"targetRef": {"kind": "Pod"}},  # no name: nothing to count, the next still counts
        {"conditions": {}, "targetRef": {"kind": "Pod", "name": "empty-conditions"}},
        {"conditions": {"ready": None}, "targetRef": {"kind": "Pod", "name": "unknown"}},
        {"conditions": {"ready": False}, "targetRef": {"kind": "Pod", "name": "not-ready"}},
        {"conditions": {"ready": True}, "targetRef": {"kind": "Service", "name": "svc"}},
    ]}, {}]
    assert ready_in_slices(slices) == {"no-kind", "empty-conditions", "unknown"}


def test_headless_service_names_living_pods_only() -> None:
    """Pending pods get their per-pod name (waiting to be ready); finished and terminating
    ones do not."""
    reg, rec = make()
    sync(reg, "services", [service("db", headless=True)])
    gone = pod("db-5", app="db", ready=None)
    del gone["status"]
    sync(reg, "pods", [pod("db-0", app="db"), pod("db-1", app="db", phase="Pending", ready=None),
                       pod("db-2", app="db", phase="Succeeded", ready=False),
                       pod("db-3", app="db", phase="Failed", ready=False),
                       pod("db-4", app="db", deleting=True), gone])
    assert set(upserts(rec.take())) == {"sim/shop/db", "sim/shop/db-0.db", "sim/shop/db-1.db",
                                        "sim/shop/db-5.db"}


def test_a_pod_ref_resolves_named_tcp_ports_and_keeps_missing_fields_empty() -> None:
    p = pod("web-1", container_ports=[
        {"name": "http", "containerPort": 53, "protocol": "UDP"},
        {"name": "http", "containerPort": 8080},
        {"name": "admin", "containerPort": 9090, "protocol": "tcp"},
        {"name": "metrics"}])
    del p["status"]["podIP"]
    del p["metadata"]["uid"]
    ports = [PortMapping(80, "http", port=80), PortMapping(90, "admin", port=90),
             PortMapping(95, "metrics", port=95), PortMapping(99, 9999, port=99)]
    ref = pod_ref(p, ports)
    assert (ref.name, ref.ip, ref.uid) == ("web-1", "", "")
    assert ref.ports == {80: 8080, 90: 9090, 99: 9999}


def test_container_port_mappings_skip_ports_without_a_number_or_not_tcp() -> None:
    p = pod("db-0", container_ports=[{"name": "none"}, {"containerPort": 53, "protocol": "UDP"},
                                     {"containerPort": 7001}, {"containerPort": 7002,
                                                               "protocol": "tcp"}])
    assert [m.local_port for m in container_port_mappings(p, {})] == [7001, 7002]


def test_pods_are_ordered_oldest_first_then_by_name() -> None:
    a = pod("b", created="2026-01-01T00:00:01Z")
    b = pod("a", created="2026-01-01T00:00:01Z")
    c = pod("c", created="2026-01-01T00:00:00Z")
    unknown = pod("z")
    del unknown["metadata"]["creationTimestamp"]
    assert [obj_name(p) for p in sorted([a, b, unknown, c], key=age_key)] == ["z", "c", "a", "b"]
    assert obj_name({}) == obj_name({"metadata": {"name": None}}) == ""


# -- services without a selector: their EndpointSlices -------------------------------------


def test_slices_of_a_service_are_its_own_in_name_order() -> None:
    b = endpoint_slice("web", "web-b", [], [])
    a = endpoint_slice("web", "web-a", [], [])
    other = endpoint_slice("api", "api-a", [], [])
    assert [s["metadata"]["name"] for s in slices_of("web", [b, other, a])] == ["web-a", "web-b"]


def test_slice_endpoints_that_are_not_pods_of_the_namespace_are_bare() -> None:
    pods = {"m-1": pod("m-1"), "m-2": pod("m-2")}
    endpoints = [
        {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Node", "name": "m-1"}},
        {"addresses": ["10.0.0.2"], "targetRef": "m-1"},
        {},  # no address at all
        {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "gone"}},
        {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "gone"}},
        {"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "later"}},
        {"addresses": ["10.0.0.5"], "targetRef": {"kind": "Pod", "name": "m-1", "namespace": ""}},
        {"addresses": ["10.0.0.6"], "targetRef": {"kind": "Pod", "name": "m-2",
                                                  "namespace": "shop"}},
    ]
    found = slice_backends("shop", [endpoint_slice("x", "x-a", endpoints, [])], pods, [])
    assert found.bare == ["10.0.0.1", "10.0.0.2", "?"]
    assert found.unknown == ["gone", "later"]
    assert [obj_name(b.pod) for b in found.pods] == ["m-1", "m-2"]


def test_a_pod_named_by_two_slices_takes_the_ports_of_both_and_is_ready_if_either_says_so(
) -> None:
    ports = [PortMapping(80, 8080, port=80, name="http"),
             PortMapping(90, 9090, port=90, name="admin")]
    first = endpoint_slice("x", "x-a", [pod_endpoint("m-1", ready=False)],
                           [{"name": "http", "port": 7080}])
    second = endpoint_slice("x", "x-b", [pod_endpoint("m-1")], [{"name": "admin", "port": 7090}])
    found = slice_backends("shop", [first, second], {"m-1": pod("m-1")}, ports)
    (backend,) = found.pods
    assert backend.ports == {80: 7080, 90: 7090}
    assert backend.ready
    found = slice_backends("shop", [second, first], {"m-1": pod("m-1")}, ports)
    assert found.pods[0].ports == {80: 7080, 90: 7090} and found.pods[0].ready
    both_unready = endpoint_slice("x", "x-b", [pod_endpoint("m-1", ready=False)], [])
    found = slice_backends("shop", [first, both_unready], {"m-1": pod("m-1")}, ports)
    assert not found.pods[0].ready


def test_slice_ports_are_matched_by_name_then_a_single_one_then_the_target_port() -> None:
    p = pod("m-1", container_ports=[{"name": "web", "containerPort": 8081, "protocol": "UDP"},
                                    {"name": "web", "containerPort": 8080}])
    one = [PortMapping(80, 8000, port=80, name="http")]
    assert resolve_ports(one, {"other": 7000}, p) == {80: 7000}  # the only one, any name
    assert resolve_ports(one, {"a": 7000, "b": 7001}, p) == {80: 8000}
    two = [PortMapping(80, "web", port=80, name="http"), PortMapping(90, 9000, port=90, name="")]
    assert resolve_ports(two, {"": 7090}, p) == {80: 8080, 90: 7090}
    assert resolve_ports(two, {"x": 7000}, p) == {80: 8080, 90: 9000}
    # Slice ports: TCP only, with a number; the first of a name wins.
    slc = endpoint_slice("x", "x-a", [pod_endpoint("m-1")], [
        {"name": "http", "port": 0}, {"name": "http", "port": 53, "protocol": "UDP"},
        {"name": "http", "port": 7080, "protocol": "tcp"}, {"name": "http", "port": 7081},
        {"port": 7090}])
    found = slice_backends("shop", [slc], {"m-1": p}, two)
    assert found.pods[0].ports == {80: 7080, 90: 7090}


# -- namespaces, contexts, ports, order ----------------------------------------------------


def test_each_context_and_namespace_gets_its_own_range_even_when_learned_late() -> None:
    """127.[1+context].[27+namespace].n: namespaces in the order given per context, then in
    the order they are met (a cluster-wide informer); a context met late comes last."""
    reg, rec = make(contexts=("one", "two"),
                    namespaces={"one": ["shop", "pay"], "two": ["pay"]})
    sync(reg, "services", [service("api", ns="pay")], ctx="one", ns="pay")
    sync(reg, "services", [service("api", ns="pay")], ctx="two", ns="pay")
    sync(reg, "services", [service("web")], ctx="one", ns="shop")
    extra = service("late", ns="extra")
    reg.handle("one", "", "services", InformerEvent("ADDED", obj=extra))
    # A cluster-wide list replaces every namespace of the context, and brings in a new one.
    everything = (service("web"), service("api", ns="pay"), extra, service("x", ns="more"))
    reg.handle("one", "", "services", InformerEvent("SYNC", objects=everything))
    sync(reg, "services", [service("api", ns="pay")], ctx="three", ns="pay")
    ips = {k: u.ip.rsplit(".", 1)[0] for k, u in upserts(rec.take()).items()}
    assert ips == {"one/pay/api": "127.1.28", "two/pay/api": "127.2.27",
                   "one/shop/web": "127.1.27", "one/extra/late": "127.1.29",
                   "one/more/x": "127.1.30", "three/pay/api": "127.3.27"}
    assert [str(f.key) for f in reg.snapshot().forwards] == [
        "one/shop/web", "one/pay/api", "one/extra/late", "one/more/x", "two/pay/api",
        "three/pay/api"]


def test_the_informer_callback_feeds_its_context_namespace_and_resource() -> None:
    reg, rec = make(contexts=("one",), namespaces=("shop",))
    reg.callback("one", "shop", "services")(InformerEvent("SYNC", objects=(service("web"),)))
    reg.callback("one", "shop", "pods")(InformerEvent("ADDED", obj=pod("web-1")))
    assert [p.name for p in upserts(rec.take())["one/shop/web"].pods] == ["web-1"]


def test_service_ports_tcp_only_numbered_mapped_once_with_their_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make(mappings={81: 80, 91: 90})
    web = service("web", ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "none", "port": 0},
        {"name": "http", "port": 80, "targetPort": ""},
        {"name": "dup", "port": 81, "targetPort": 8081},
        {"name": "alt", "port": 8080, "targetPort": "9090"},
        {"port": 82, "targetPort": 0},
        {"name": "named", "port": 83, "targetPort": "web"}])
    api = service("api", ports=[{"name": "a", "port": 90}, {"name": "b", "port": 91}])
    with caplog.at_level(logging.WARNING):
        sync(reg, "services", [web, api])
        event(reg, "services", "MODIFIED", web)
    ups = upserts(rec.take())
    assert ups["sim/shop/web"].ports == [
        PortMapping(80, 80, port=80, name="http"), PortMapping(8080, 9090, port=8080, name="alt"),
        PortMapping(82, 82, port=82), PortMapping(83, "web", port=83, name="named")]
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "already used" in m] == [
        "service sim/shop/api: port 91 maps to local port 90, already used; skipped",
        "service sim/shop/web: port 81 maps to local port 80, already used; skipped"]


def test_non_tcp_ports_are_summed_up_per_namespace_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, _ = make()
    svcs = [service(f"s{i}", ports=[{"name": "dns", "port": 53, "protocol": "UDP"},
                                    {"name": "sctp", "port": 99 + i, "protocol": "SCTP"},
                                    {"name": "web", "port": 80}]) for i in range(3)]
    svcs.append(service("dnsonly", ports=[{"port": 53, "protocol": "UDP"}]))
    svcs += [service(f"u{i}", ports=[{"port": 53, "protocol": "udp"}]) for i in range(5)]
    with caplog.at_level(logging.DEBUG, logger="kubefwd"):
        sync(reg, "services", svcs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "sim/shop: 12 SCTP/UDP ports of 9 services skipped, only TCP is forwarded: "
        "dnsonly:53/UDP, s0:53/UDP, s0:99/SCTP, s1:53/UDP, ... (8 more; -v lists each); "
        "not forwarded, no TCP port left: dnsonly, u0, u1, u2, ... (2 more)"]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "service sim/shop/s0: port 53/UDP skipped (only TCP is forwarded)" in debug
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kubefwd"):
        event(reg, "services", "ADDED", service("one", ports=[{"port": 5, "protocol": "UDP"}]))
        event(reg, "services", "MODIFIED", service("one", ports=[{"port": 5, "protocol": "UDP"}]))
    # The namespace was summed up already: debug now, and each port is noted once.
    assert [(r.levelno, r.getMessage()) for r in caplog.records
            if "only TCP" in r.getMessage()] == [
        (logging.DEBUG, "service sim/shop/one: port 5/UDP skipped (only TCP is forwarded)"),
        (logging.DEBUG, "sim/shop: 1 UDP port of 1 service skipped, only TCP is forwarded: "
                        "one:5/UDP; not forwarded, no TCP port left: one")]


def test_external_name_and_portless_services_are_skipped_with_one_warning_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make()
    ext = service("ext", selector={}, kind="ExternalName")
    ext_sel = service("extsel", kind="ExternalName")  # a selector: kubefwd forwards it
    noports = service("noports", ports=[])
    with caplog.at_level(logging.WARNING):
        sync(reg, "services", [ext, ext_sel, noports])
        sync(reg, "services", [ext, ext_sel, noports])
    assert set(upserts(rec.take())) == {"sim/shop/extsel"}
    assert reg.snapshot().skipped == {"sim/shop/ext": "skipped: an ExternalName service",
                                      "sim/shop/noports": "skipped: no TCP ports"}
    assert [r.getMessage() for r in caplog.records] == [
        "service sim/shop/ext skipped: an ExternalName service",
        "service sim/shop/noports skipped: no TCP ports"]


def test_picked_services_only() -> None:
    reg, rec = make(pick=lambda ctx, ns, name: name != "cache")
    sync(reg, "services", [service("web"), service("cache")])
    assert set(upserts(rec.take())) == {"sim/shop/web"}


def test_a_statefulset_pod_whose_grace_ran_out_goes_with_the_next_event_of_its_context(
) -> None:
    clock = FakeClock()
    reg, rec = make(contexts=("sim", "two"), clock=clock)  # the default grace: 30 s
    sync(reg, "services", [service("db", headless=True)])
    sync(reg, "pods", [sts_pod("db-0")])
    rec.take()
    event(reg, "pods", "DELETED", sts_pod("db-0"))
    rec.take()
    clock.now += 29.5
    event(reg, "pods", "ADDED", pod("other", app="other"))
    assert rec.take() == []
    clock.now += 1
    event(reg, "pods", "ADDED", pod("other", app="other"), ctx="two")  # another context
    assert rec.take() == []
    event(reg, "pods", "ADDED", pod("other2", app="other"))
    assert ForwardRemove(ForwardKey("sim", "shop", "db", "db-0")) in rec.take()


def test_only_statefulset_pods_are_kept_after_they_go() -> None:
    reg, rec = make()
    sync(reg, "services", [service("db", headless=True)])
    owned = pod("db-0", app="db")
    owned["metadata"]["ownerReferences"] = ["not a mapping", {"kind": "ReplicaSet"}]
    sync(reg, "pods", [owned])
    rec.take()
    event(reg, "pods", "DELETED", owned)
    assert ForwardRemove(ForwardKey("sim", "shop", "db", "db-0")) in rec.take()


def test_a_domain_adds_the_bare_names_with_it() -> None:
    reg, rec = make(domain="example.test")
    sync(reg, "services", [service("db", headless=True)])
    sync(reg, "pods", [pod("db-0", app="db")])
    ups = upserts(rec.take())
    assert ups["sim/shop/db"].names[:2] == ["db", "db.example.test"]
    assert ups["sim/shop/db-0.db"].names[:2] == ["db-0.db", "db-0.db.example.test"]


def test_a_selectorless_service_names_its_pods_with_their_address_and_uid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make()
    manual = service("manual", selector={}, ports=[{"name": "http", "port": 80}])
    with caplog.at_level(logging.DEBUG, logger="kubefwd"):
        sync(reg, "endpointslices", [endpoint_slice(
            "manual", "manual-a", [pod_endpoint("m-1"), pod_endpoint("m-2")],
            [{"name": "http", "port": 8080}])])
        sync(reg, "services", [manual])  # no pod listed yet: waits for them
    assert upserts(rec.take())["sim/shop/manual"].pods == []
    assert "service sim/shop/manual: its slices name pods not seen: m-1, m-2" in [
        r.getMessage() for r in caplog.records]
    no_condition = pod("m-2", ready=None, ip="127.1.0.22", created="2026-01-01T00:00:02Z")
    sync(reg, "pods", [pod("m-1", ip="127.1.0.21", created="2026-01-01T00:00:01Z"),
                       no_condition])
    refs = upserts(rec.take())["sim/shop/manual"].pods
    assert [(r.name, r.ip, r.uid, r.ports) for r in refs] == [
        ("m-1", "127.1.0.21", "uid-m-1", {80: 8080}), ("m-2", "127.1.0.22", "uid-m-2", {80: 8080})]
    bare = pod("m-1", created="2026-01-01T00:00:01Z")
    del bare["status"]["podIP"], bare["metadata"]["uid"]
    bare["status"]["phase"] = "Running"
    event(reg, "pods", "MODIFIED", bare)
    refs = upserts(rec.take())["sim/shop/manual"].pods
    assert (refs[0].name, refs[0].ip, refs[0].uid) == ("m-1", "", "")


def test_bare_endpoints_are_named_up_to_four(caplog: pytest.LogCaptureFixture) -> None:
    reg, _ = make()
    ends = [{"addresses": [f"10.0.0.{i}"]} for i in range(1, 7)]
    with caplog.at_level(logging.WARNING):
        sync(reg, "endpointslices", [
            endpoint_slice("four", "four-a", ends[:4], [{"port": 1}]),
            endpoint_slice("five", "five-a", ends[:5], [{"port": 1}])])
        sync(reg, "services", [service(n, selector={}, ports=[{"port": 1}])
                               for n in ("four", "five")])
    tail = "not pods of its namespace, and the port-forward API can only reach pods"
    assert [r.getMessage() for r in caplog.records] == [
        f"service sim/shop/five: 5 endpoints skipped (10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, "
        f"...): {tail}",
        f"service sim/shop/four: 4 endpoints skipped (10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4): "
        f"{tail}"]


def test_a_selectorless_service_without_slices_is_named_each_time_it_loses_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, rec = make()
    why = "it has no selector and no EndpointSlice names a pod"
    with caplog.at_level(logging.WARNING):
        sync(reg, "pods", [pod("m-1")])
        sync(reg, "services", [service("a", selector={}), service("b", selector={})])
        sync(reg, "services", [service("a", selector={}), service("b", selector={})])
        assert [r.getMessage() for r in caplog.records] == [
            f"service sim/shop/a skipped: {why}", f"service sim/shop/b skipped: {why}"]
        assert reg.snapshot().skipped == {"sim/shop/a": f"skipped: {why}",
                                          "sim/shop/b": f"skipped: {why}"}
        caplog.clear()
        slc = endpoint_slice("a", "a-1", [pod_endpoint("m-1")], [{"port": 80}])
        event(reg, "endpointslices", "ADDED", slc)
        assert "sim/shop/a" in upserts(rec.take())
        event(reg, "endpointslices", "DELETED", slc)
    assert [r.getMessage() for r in caplog.records] == [f"service sim/shop/a skipped: {why}"]


def test_a_cluster_wide_list_replaces_only_its_own_context_and_resource() -> None:
    reg, rec = make(contexts=("one", "two"), namespaces={"one": ["shop"], "two": ["zzz"]})
    sync(reg, "services", [service("api", ns="zzz")], ctx="two", ns="zzz")
    sync(reg, "pods", [pod("p", ns="podsonly")], ctx="one", ns="podsonly")
    reg.handle("one", "", "services", InformerEvent("SYNC", objects=(
        service("web"), service("old", ns="gone"))))
    rec.take()
    reg.handle("one", "", "services", InformerEvent("SYNC", objects=(
        service("web"), service("late", ns="extra"))))
    cmds = rec.take()
    assert ForwardRemove(ForwardKey("one", "gone", "old")) in cmds
    assert upserts(cmds)["one/extra/late"].ip.startswith("127.1.30.")  # shop, podsonly, gone
    assert reg.get(ForwardKey("two", "zzz", "api")) is not None
    with pytest.raises(ValueError, match=r"^unknown resource 'secrets'$"):
        reg.handle("one", "shop", "secrets", InformerEvent("SYNC"))


def test_a_statefulset_pod_gone_twice_gets_the_whole_grace_each_time() -> None:
    clock = FakeClock()
    reg, rec = make(pod_grace=30.0, clock=clock)
    sync(reg, "services", [service("db", headless=True)])
    sync(reg, "pods", [sts_pod("db-0")])
    key0 = ForwardKey("sim", "shop", "db", "db-0")
    event(reg, "pods", "DELETED", sts_pod("db-0"))
    held = reg.get(key0)
    assert held is not None and held.headless and held.pods == []
    clock.now += 10
    event(reg, "pods", "ADDED", sts_pod("db-0"))
    clock.now += 15
    event(reg, "pods", "DELETED", sts_pod("db-0"))
    clock.now += 10  # 35 s after the first loss, 10 after the second
    event(reg, "services", "MODIFIED", service("db", headless=True))
    reg.expire()
    rec.take()
    assert reg.get(key0) is not None
    clock.now += 20
    reg.expire()
    assert ForwardRemove(key0) in rec.take()


def test_a_fresh_registry_and_a_context_without_namespaces_of_its_own() -> None:
    reg, rec = make(contexts=("one", "two"), namespaces={"one": ["shop"]})
    snap = reg.snapshot()
    assert (snap.forwards, snap.skipped, snap.hosts) == ([], {}, {})
    sync(reg, "services", [service("web")], ctx="two")
    assert upserts(rec.take())["two/shop/web"].ip == "127.2.27.1"


def test_an_informer_callback_lists_only_its_own_namespace() -> None:
    reg, rec = make(contexts=("one",), namespaces=("shop", "pay"))
    reg.callback("one", "pay", "services")(InformerEvent("SYNC", objects=(
        service("api", ns="pay"),)))
    reg.callback("one", "shop", "services")(InformerEvent("SYNC", objects=(service("web"),)))
    rec.take()
    reg.callback("one", "shop", "services")(InformerEvent("SYNC", objects=()))
    assert ForwardRemove(ForwardKey("one", "shop", "web")) in rec.take()
    assert reg.get(ForwardKey("one", "pay", "api")) is not None


def test_a_pod_event_before_any_slice_is_listed_leaves_a_selectorless_service_alone() -> None:
    reg, rec = make()
    sync(reg, "services", [service("manual", selector={})])
    rec.take()
    event(reg, "pods", "ADDED", pod("m-1"))
    assert upserts(rec.take()) == {}


def test_the_first_slice_to_name_a_port_decides_it() -> None:
    ports = [PortMapping(80, 8080, port=80, name="http"),
             PortMapping(90, 9090, port=90, name="admin")]
    a = endpoint_slice("x", "x-a", [pod_endpoint("m-1")], [{"name": "http", "port": 7080}])
    b = endpoint_slice("x", "x-b", [pod_endpoint("m-1")], [{"name": "admin", "port": 7090}])
    c = endpoint_slice("x", "x-c", [pod_endpoint("m-1")], [{"name": "http", "port": 7081},
                                                          {"name": "admin", "port": 7091}])
    found = slice_backends("shop", [a, b, c], {"m-1": pod("m-1")}, ports)
    assert found.pods[0].ports == {80: 7080, 90: 7090}
    # A port no slice names and the pod cannot resolve is taken from a later slice's only port.
    one = [PortMapping(80, "web", port=80, name="http")]
    empty = endpoint_slice("x", "x-a", [pod_endpoint("m-1")], [])
    single = endpoint_slice("x", "x-b", [pod_endpoint("m-1")], [{"name": "other", "port": 7000}])
    found = slice_backends("shop", [empty, single], {"m-1": pod("m-1")}, one)
    assert found.pods[0].ports == {80: 7000}
    # A named container port without a number resolves nothing.
    numberless = pod("m-1", container_ports=[{"name": "web"}])
    found = slice_backends("shop", [empty], {"m-1": numberless}, one)
    assert found.pods[0].ports == {}
