"""Which pods back a service without a selector, read from its EndpointSlices: pure functions.

Nothing chooses the pods of a selector-less service: its EndpointSlices (label
``kubernetes.io/service-name``) are written by hand or by another controller, and say where
its traffic goes. An endpoint whose ``targetRef`` is a Pod of the service's namespace is
forwarded like a selector service's pod. An endpoint that is only an address (a database
outside the cluster, a node, a pod of another namespace) cannot be: the port-forward API
reaches pods and nothing else, so those are reported, never forwarded.

Ports: the slice's ports carry the numbers to dial and the names of the service ports they
serve, so a service port takes the slice port of the same name (the only one when both have a
single port); failing that its targetPort, a number or a name resolved against the pod's
container ports, as for selector services.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubefwd.registry.model import PortMapping

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass
class SliceBackend:
    """A pod a slice names: its object, service port → pod port, and the slice's readiness;
    ``named`` are the service ports some slice gave a port of their name."""

    pod: Obj
    ports: dict[int, int]
    ready: bool
    named: set[int] = field(default_factory=set)


@dataclass
class SliceBackends:
    """What a selector-less service's slices name: pods (in slice order, once each), the
    addresses of endpoints that are not pods of the namespace, and pod names not (yet) seen."""

    pods: list[SliceBackend] = field(default_factory=list)
    bare: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def slices_of(service: str, slices: Iterable[Obj]) -> list[Obj]:
    """The EndpointSlices of ``service`` (by their service-name label), in name order."""
    own = [s for s in slices
           if ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) == service]
    return sorted(own, key=lambda s: str((s.get("metadata") or {}).get("name") or ""))


def pod_names(namespace: str, slices: Iterable[Obj]) -> set[str]:
    """Names of the pods of ``namespace`` that the endpoints of ``slices`` point at."""
    names: set[str] = set()
    for slc in slices:
        for ep in slc.get("endpoints") or []:
            name = _pod_target(ep, namespace)
            if name:
                names.add(name)
    return names


def _pod_target(endpoint: Obj, namespace: str) -> str:
    """The pod an endpoint points at, when it is a Pod of ``namespace``; else ""."""
    ref = endpoint.get("targetRef") or {}
    if not isinstance(ref, dict) or ref.get("kind") != "Pod" or not ref.get("name"):
        return ""
    if ref.get("namespace") not in (None, "", namespace):
        return ""
    return str(ref["name"])


def _slice_ports(slc: Obj) -> dict[str, int]:
    """TCP ports of a slice, name ("" when unnamed) → port number."""
    out: dict[str, int] = {}
    for p in slc.get("ports") or []:
        if str(p.get("protocol") or "TCP").upper() != "TCP" or not p.get("port"):
            continue
        out.setdefault(str(p.get("name") or ""), int(p["port"]))
    return out


def _container_ports(pod: Obj) -> dict[str, int]:
    named: dict[str, int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cp in container.get("ports") or []:
            if cp.get("name") and str(cp.get("protocol") or "TCP").upper() == "TCP":
                named.setdefault(str(cp["name"]), int(cp.get("containerPort") or 0))
    return named


def resolve_ports(ports: list[PortMapping], slice_ports: Mapping[str, int],
                  pod: Obj) -> dict[int, int]:
    """Service port → the pod's port, by the rules in the module docstring."""
    resolved: dict[int, int] = {}
    named = _container_ports(pod)
    single = len(ports) == 1 and len(slice_ports) == 1
    for pm in ports:
        if pm.name in slice_ports:
            resolved[pm.port] = slice_ports[pm.name]
        elif single:
            resolved[pm.port] = next(iter(slice_ports.values()))
        elif isinstance(pm.target_port, int):
            resolved[pm.port] = pm.target_port
        elif named.get(pm.target_port):
            resolved[pm.port] = named[pm.target_port]
    return resolved


def slice_backends(namespace: str, slices: Iterable[Obj], pods: Mapping[str, Obj],
                   ports: list[PortMapping]) -> SliceBackends:
    """The pods ``slices`` (one service's) name, with their ports and readiness; endpoints
    that are bare addresses; pods named but not in ``pods``."""
    out = SliceBackends()
    seen: dict[str, SliceBackend] = {}
    for slc in slices:
        slice_ports = _slice_ports(slc)
        for ep in slc.get("endpoints") or []:
            name = _pod_target(ep, namespace)
            if not name:
                addresses = ep.get("addresses") or []
                out.bare.append(str(addresses[0]) if addresses else "?")
                continue
            pod = pods.get(name)
            if pod is None:
                if name not in out.unknown:
                    out.unknown.append(name)
                continue
            ready = (ep.get("conditions") or {}).get("ready") is not False
            resolved = resolve_ports(ports, slice_ports, pod)
            named = {pm.port for pm in ports if pm.name in slice_ports}
            backend = seen.get(name)
            if backend is None:
                backend = seen[name] = SliceBackend(pod, resolved, ready, named)
                out.pods.append(backend)
            else:  # named by two slices (one per port set): take the ports of both, a
                # port a slice names beating one guessed from the service's targetPort
                for port, target in resolved.items():
                    if port in named and port not in backend.named:
                        backend.ports[port] = target
                    else:
                        backend.ports.setdefault(port, target)
                backend.named |= named
                backend.ready = backend.ready or ready
    return out
