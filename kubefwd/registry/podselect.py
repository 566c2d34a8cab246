"""Which pods back a service, in which order, and on which ports: pure functions.

Selection by label selector, oldest pod first, readiness from the pod's own Ready condition
(EndpointSlices only for pods that have none), and named target ports resolved against each
pod's containers. No state and no locks: the registry calls these under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubefwd.registry.model import PodRef, PortMapping

Obj = dict[str, Any]


def obj_meta(obj: Obj) -> Obj:
    """The object's metadata (empty when missing)."""
    return obj.get("metadata") or {}


def obj_name(obj: Obj) -> str:
    """The object's name ("" when missing)."""
    return str(obj_meta(obj).get("name") or "")


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    """Whether ``labels`` carry every key=value of a service's selector."""
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def age_key(pod: Obj) -> tuple[str, str]:
    """Sort key: oldest pod first, then by name (the order a forward prefers its pods)."""
    return (str(obj_meta(pod).get("creationTimestamp") or ""), obj_name(pod))


def pod_alive(pod: Obj) -> bool:
    """Not being deleted and not finished: a headless service still names it."""
    phase = (pod.get("status") or {}).get("phase")
    return not obj_meta(pod).get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def pod_ready(pod: Obj, slice_ready: set[str]) -> bool:
    """Running and Ready; a pod without a Ready condition counts when its slices say so."""
    if obj_meta(pod).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return obj_name(pod) in slice_ready


def ready_in_slices(slices: Iterable[Obj]) -> set[str]:
    """Names of the pods the EndpointSlices count as ready (``conditions.ready`` not false)."""
    ready: set[str] = set()
    for slc in slices:
        for ep in slc.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("kind", "Pod") != "Pod" or not ref.get("name"):
                continue
            if (ep.get("conditions") or {}).get("ready") is not False:
                ready.add(str(ref["name"]))
    return ready


def pod_ref(pod: Obj, ports: list[PortMapping]) -> PodRef:
    """A ready pod as a forward uses it, with named target ports resolved against its
    containers."""
    resolved: dict[int, int] = {}
    named: dict[str, int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cp in container.get("ports") or []:
            if cp.get("name") and str(cp.get("protocol") or "TCP").upper() == "TCP":
                named.setdefault(str(cp["name"]), int(cp.get("containerPort") or 0))
    for pm in ports:
        if isinstance(pm.target_port, int):
            resolved[pm.port] = pm.target_port
        elif named.get(pm.target_port):
            resolved[pm.port] = named[pm.target_port]
    status = pod.get("status") or {}
    return PodRef(obj_name(pod), str(status.get("podIP") or ""), resolved,
                  str(obj_meta(pod).get("uid") or ""))


def container_port_mappings(pod: Obj, mappings: Mapping[int, int]) -> list[PortMapping]:
    """The TCP container ports a pod declares, as the ports of a headless service that
    declares none: listen on each (or on its ``-m`` mapping), reach the pod on it."""
    out: dict[int, PortMapping] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cp in container.get("ports") or []:
            number = int(cp.get("containerPort") or 0)
            if not number or str(cp.get("protocol") or "TCP").upper() != "TCP":
                continue
            local = mappings.get(number, number)
            if local not in out:
                out[local] = PortMapping(local, number, "TCP", number, str(cp.get("name") or ""))
    return [out[k] for k in sorted(out)]
