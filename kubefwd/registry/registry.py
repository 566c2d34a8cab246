"""The registry: the single source of truth of what is forwarded, and where to.

Informer events go in (``handle``); the registry keeps the services, pods and EndpointSlices of
every (context, namespace), works out which forwards should exist — IP, names, TCP ports, the
ordered ready pods — and hands the differences to its listeners as commands:
``ForwardUpsert``, ``ForwardRemove`` and ``HostsSnapshot``.

Threading: state is guarded by a readers-writer lock. Commands are computed under the write
lock, queued, and delivered after the lock is released, on the thread that called ``handle``;
a small dispatch lock keeps batches in order across informer threads. Listeners may call the
readers (``pick_pod``, ``snapshot``) but must not call ``handle``.

EndpointSlices: a pod's own Ready condition decides; slices are consulted only for pods that
have no Ready condition at all (an endpoint with ``conditions.ready`` not false counts).
A service without a selector takes its pods from its EndpointSlices instead (``slicepods``):
endpoints that point at pods are forwarded, and those that are bare addresses are skipped with
one warning (the port-forward API can only reach pods).

StatefulSet pods of headless services: a pod a StatefulSet owns comes back under the same
name, so its per-pod forward (``pod.svc``) is kept — same key, same IP, same names, no ready
pod — while the pod is terminating (or finished) and, once its object is gone, for
``pod_grace`` seconds more (default 30). A pod of that name that reappears within the grace
period simply takes the forward over; the IP stays reserved meanwhile, so a service created in
the gap cannot take it. When the grace runs out (checked by ``expire()``, which the caller runs
about once a second, and on every event of that context) the forward is removed as usual. The
service's own deletion, or it ceasing to be headless, removes it at once. Pods without a
StatefulSet owner (a Deployment's behind a headless service get new names) go at once.

Headless services that declare no ports: each pod's forward listens on that pod's declared
TCP container ports, and the service's own forward on all of them (each connection going to
the first ready pod that declares its port).

Skipped ports: only TCP is forwarded. Non-TCP service ports (DNS's 53/UDP on every service of
a namespace, say) are summed up in one warning per (context, namespace) — a count and the first
few ``service:port/PROTO`` — the first time that namespace has any; each port, and any later
ones, are logged at debug level (``-v``).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubefwd.cluster.informer import SYNC, InformerEvent
from kubefwd.registry import hostnames, slicepods
from kubefwd.registry.ipalloc import AddressesExhausted, IpAllocator
from kubefwd.registry.model import (
    Command,
    ForwardKey,
    ForwardRemove,
    ForwardUpsert,
    HostsSnapshot,
    Listener,
    PodRef,
    PortMapping,
    RegistrySnapshot,
)
from kubefwd.registry.podindex import LabelIndex
from kubefwd.registry.podselect import (
    age_key,
    container_port_mappings,
    obj_meta,
    obj_name,
    pod_alive,
    pod_ready,
    pod_ref,
    ready_in_slices,
    selector_matches,
)
from kubefwd.support.rwlock import RWLock

log = logging.getLogger(__name__)

SERVICES = "services"
PODS = "pods"
ENDPOINTSLICES = "endpointslices"
RESOURCES = (SERVICES, PODS, ENDPOINTSLICES)

Obj = dict[str, Any]


@dataclass
class _Entry:
    key: ForwardKey
    order: tuple[Any, ...]
    ip: str
    desired_names: list[str]
    ports: list[PortMapping]
    pods: list[PodRef]
    headless: bool
    stateful: bool = False  # a StatefulSet's pod: kept across its restart (see above)


@dataclass
class _Spec:
    names: list[str]
    ports: list[PortMapping]
    pods: list[PodRef]
    headless: bool
    stateful: bool = False


def _owned_by_statefulset(pod: Obj) -> bool:
    refs = obj_meta(pod).get("ownerReferences") or []
    return any(isinstance(r, dict) and r.get("kind") == "StatefulSet" for r in refs)


class Registry:
    """See the module docstring. One instance per run."""

    def __init__(
        self,
        *,
        allocator: IpAllocator,
        contexts: Sequence[str],
        namespaces: Sequence[str] | Mapping[str, Sequence[str]],
        domain: str = "",
        mappings: Mapping[int, int] | None = None,
        pod_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        pick: Callable[[str, str, str], bool] | None = None,
    ) -> None:
        self._allocator = allocator
        # (context, namespace, service) → whether it is wanted at all (--service/--exclude,
        # services added or removed at run time); pure, and never calls back into us.
        self._pick = pick
        self._pod_grace = pod_grace
        self._clock = clock
        # Per-pod forwards of StatefulSet pods whose object is gone: since when (clock).
        self._gone_since: dict[ForwardKey, float] = {}
        self._contexts = list(contexts)
        if isinstance(namespaces, Mapping):
            self._namespaces = {c: list(namespaces.get(c, [])) for c in self._contexts}
        else:
            self._namespaces = {c: list(namespaces) for c in self._contexts}
        self._domain = domain
        self._mappings = dict(mappings or {})
        self._lock = RWLock()
        self._objs: dict[tuple[str, str, str], dict[str, Obj]] = {}
        # The pods of _objs by label, so a selector does not read every pod of its namespace.
        self._pod_index = LabelIndex()
        # Pods the EndpointSlices count as ready, per (context, namespace), worked out once
        # per recompute (the slices do not change during one).
        self._ready_memo: dict[tuple[str, str], set[str]] = {}
        self._entries: dict[ForwardKey, _Entry] = {}
        self._service_keys: dict[tuple[str, str, str], set[ForwardKey]] = {}
        self._claims: dict[str, list[tuple[tuple[Any, ...], ForwardKey]]] = {}
        self._emitted: dict[ForwardKey, ForwardUpsert] = {}
        self._hosts: dict[str, list[str]] = {}
        self._hosts_dirty = False
        self._skipped: dict[ForwardKey, str] = {}
        self._exhausted: set[tuple[str, str, str]] = set()
        self._warned: set[tuple[Any, ...]] = set()
        # Non-TCP ports met in this batch, per (context, namespace), for one summary line.
        self._proto_pending: dict[tuple[str, str], list[str]] = {}
        self._proto_unforwarded: dict[tuple[str, str], list[str]] = {}
        self._proto_summarized: set[tuple[str, str]] = set()
        self._listeners: list[Listener] = []
        self._queue: deque[list[Command]] = deque()
        self._dispatch_lock = threading.Lock()
        self._dispatching = threading.local()

    # -- configuration

    def subscribe(self, fn: Listener) -> None:
        """``fn(commands)`` is called with each non-empty batch, in order, outside the lock."""
        with self._lock.write():
            self._listeners.append(fn)

    def callback(self, context: str, namespace: str, resource: str) -> Callable[
        [InformerEvent], None
    ]:
        """The informer callback for one (context, namespace, resource)."""

        def on_event(event: InformerEvent) -> None:
            self.handle(context, namespace, resource, event)

        return on_event

    def _cluster_index(self, context: str) -> int:
        if context not in self._contexts:
            self._contexts.append(context)
            self._namespaces.setdefault(context, [])
        return self._contexts.index(context)

    def _namespace_index(self, context: str, namespace: str) -> int:
        names = self._namespaces.setdefault(context, [])
        if namespace not in names:
            names.append(namespace)
        return names.index(namespace)

    # -- input

    def handle(self, context: str, namespace: str, resource: str, event: InformerEvent) -> None:
        """Apply one informer event; deliver the resulting commands (on this thread)."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}")
        with self._lock.write():
            dirty = self._apply(context, namespace, resource, event)
            dirty |= self._due(context)
            commands = self._recompute(context, dirty)
            if commands:
                self._queue.append(commands)
        self._drain()

    def refresh(self, context: str, namespace: str) -> None:
        """Decide again for every service of ``namespace`` (what ``pick`` wants changed);
        delivers the commands on this thread."""
        with self._lock.write():
            dirty = {(namespace, s) for s in self._objs.get((context, namespace, SERVICES), {})}
            dirty |= {(n, s) for (c, n, s) in self._service_keys
                      if c == context and n == namespace}
            commands = self._recompute(context, dirty)
            if commands:
                self._queue.append(commands)
        self._drain()

    def forget_namespace(self, context: str, namespace: str) -> None:
        """Drop everything known of ``namespace`` (no longer watched): its forwards go."""
        for resource in RESOURCES:
            self.handle(context, namespace, resource, InformerEvent(SYNC, objects=()))

    def expire(self) -> None:
        """Remove the kept per-pod forwards of StatefulSet pods that did not come back within
        ``pod_grace``; call about once a second. Delivers the commands on this thread."""
        with self._lock.write():
            if not self._gone_since:
                return
            for context in sorted({k.context for k in self._gone_since}):
                dirty = self._due(context)
                if dirty:
                    commands = self._recompute(context, dirty)
                    if commands:
                        self._queue.append(commands)
        self._drain()

    def retry_exhausted(self) -> None:
        """Try again to give an address to the services that found none (another instance
        may have let go of some); call now and then. Delivers the commands on this thread."""
        with self._lock.write():
            if not self._exhausted:
                return
            for context in sorted({c for (c, _, _) in self._exhausted}):
                dirty = {(n, s) for (c, n, s) in self._exhausted if c == context}
                commands = self._recompute(context, dirty)
                if commands:
                    self._queue.append(commands)
        self._drain()

    def _due(self, context: str) -> set[tuple[str, str]]:
        """(namespace, service) of ``context`` with a kept pod forward whose grace ran out."""
        if not self._gone_since:
            return set()
        now = self._clock()
        return {
            (k.namespace, k.service) for k, since in self._gone_since.items()
            if k.context == context and now - since >= self._pod_grace
        }

    def _apply(
        self, context: str, namespace: str, resource: str, event: InformerEvent
    ) -> set[tuple[str, str]]:
        """Store the event's objects; return the (namespace, service) pairs to recompute."""
        dirty: set[tuple[str, str]] = set()
        if event.type == SYNC:
            by_ns: dict[str, dict[str, Obj]] = {}
            if namespace:
                by_ns[namespace] = {}
            else:  # a cluster-wide informer replaces every namespace it covers
                for (c, ns, r) in self._objs:
                    if c == context and r == resource:
                        by_ns[ns] = {}
            for obj in event.objects:
                ns = str(obj_meta(obj).get("namespace") or namespace)
                by_ns.setdefault(ns, {})[obj_name(obj)] = obj
            for ns, objs in by_ns.items():
                self._objs[(context, ns, resource)] = objs
                if resource == PODS:
                    self._pod_index.replace((context, ns), objs)
                self._namespace_index(context, ns)
                services = self._objs.get((context, ns, SERVICES), {})
                dirty.update((ns, s) for s in services)
                if resource == SERVICES:
                    dirty.update(
                        (n, s) for (c, n, s) in self._service_keys if c == context and n == ns
                    )
                    dirty.update(
                        (k.namespace, k.service) for k in self._skipped
                        if k.context == context and k.namespace == ns
                    )
            return dirty
        obj = event.obj or {}
        ns = str(obj_meta(obj).get("namespace") or namespace)
        name = obj_name(obj)
        self._namespace_index(context, ns)
        store = self._objs.setdefault((context, ns, resource), {})
        old = store.get(name)
        if event.type == "DELETED":
            store.pop(name, None)
        else:
            store[name] = obj
        if resource == PODS:
            self._pod_index.update((context, ns), name, old, store.get(name))
        if resource == SERVICES:
            dirty.add((ns, name))
        elif resource == PODS:
            labels = [(o or {}).get("metadata", {}).get("labels") for o in (old, obj)]
            named: dict[str, set[str]] | None = None
            for sname, svc in self._objs.get((context, ns, SERVICES), {}).items():
                selector = (svc.get("spec") or {}).get("selector") or {}
                if selector:
                    if any(selector_matches(selector, lab) for lab in labels):
                        dirty.add((ns, sname))
                    continue
                # No selector: the service's pods are those its EndpointSlices name.
                if named is None:
                    named = self._slice_pod_names(context, ns)
                if name in named.get(sname, ()):
                    dirty.add((ns, sname))
        else:
            for o in (old, obj):
                owner = ((o or {}).get("metadata", {}).get("labels") or {}).get(
                    "kubernetes.io/service-name"
                )
                if owner:
                    dirty.add((ns, str(owner)))
        return dirty

    def _slice_pod_names(self, context: str, namespace: str) -> dict[str, set[str]]:
        """service → names of the pods its EndpointSlices point at."""
        by_service: dict[str, list[Obj]] = {}
        for slc in self._objs.get((context, namespace, ENDPOINTSLICES), {}).values():
            owner = (obj_meta(slc).get("labels") or {}).get(slicepods.SERVICE_NAME_LABEL)
            if owner:
                by_service.setdefault(str(owner), []).append(slc)
        return {s: slicepods.pod_names(namespace, slcs) for s, slcs in by_service.items()}

    # -- computing forwards

    def _warn_once(
        self, key: tuple[Any, ...], message: str, *args: Any, level: int = logging.WARNING
    ) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, message, *args)

    def _slice_ready(self, context: str, namespace: str) -> set[str]:
        ready = self._ready_memo.get((context, namespace))
        if ready is None:
            slices = self._objs.get((context, namespace, ENDPOINTSLICES), {}).values()
            ready = self._ready_memo[(context, namespace)] = ready_in_slices(slices)
        return ready

    def _skip_protocol(self, key: ForwardKey, number: int, proto: str) -> None:
        """Note a non-TCP port (once per port): debug now, summed up by ``_log_proto_skips``."""
        marker = ("proto", key, number, proto)
        if marker in self._warned:
            return
        self._warned.add(marker)
        log.debug("service %s: port %s/%s skipped (only TCP is forwarded)", key, number, proto)
        where = (key.context, key.namespace)
        self._proto_pending.setdefault(where, []).append(f"{key.service}:{number}/{proto}")

    def _log_proto_skips(self) -> None:
        """One line per (context, namespace) for the non-TCP ports of this batch: a warning
        the first time, debug after that."""
        for where, ports in sorted(self._proto_pending.items()):
            unforwarded = self._proto_unforwarded.get(where, [])
            level = logging.DEBUG if where in self._proto_summarized else logging.WARNING
            self._proto_summarized.add(where)
            protos = "/".join(sorted({p.rsplit("/", 1)[1] for p in ports}))
            services = len({p.split(":", 1)[0] for p in ports})
            shown = ", ".join(ports[:4]) + (f", ... ({len(ports) - 4} more; -v lists each)"
                                             if len(ports) > 4 else "")
            tail = ""
            if unforwarded:
                tail = (f"; not forwarded, no TCP port left: {', '.join(unforwarded[:4])}"
                        + (f", ... ({len(unforwarded) - 4} more)" if len(unforwarded) > 4
                           else ""))
            log.log(level, "%s/%s: %d %s port%s of %d service%s skipped, only TCP is "
                    "forwarded: %s%s", where[0], where[1], len(ports), protos,
                    "s" if len(ports) != 1 else "", services, "s" if services != 1 else "",
                    shown, tail)
        self._proto_pending.clear()
        self._proto_unforwarded.clear()

    def _ports(self, key: ForwardKey, svc: Obj) -> list[PortMapping]:
        ports: list[PortMapping] = []
        used: set[int] = set()
        for p in (svc.get("spec") or {}).get("ports") or []:
            proto = str(p.get("protocol") or "TCP").upper()
            number = int(p.get("port") or 0)
            if proto != "TCP":
                self._skip_protocol(key, number, proto)
                continue
            if not number:
                continue
            local = self._mappings.get(number, number)
            if local in used:
                self._warn_once(
                    ("dup", key, local),
                    "service %s: port %s maps to local port %s, already used; skipped",
                    key, number, local,
                )
                continue
            used.add(local)
            target = p.get("targetPort")
            if target in (None, "", 0):
                target = number
            elif isinstance(target, str) and target.isdigit():
                target = int(target)
            ports.append(PortMapping(local, target, "TCP", number, str(p.get("name") or "")))
        return ports

    def _desired(self, context: str, namespace: str, service: str) -> dict[ForwardKey, _Spec]:
        svc = self._objs.get((context, namespace, SERVICES), {}).get(service)
        key = ForwardKey(context, namespace, service)
        self._skipped.pop(key, None)
        if svc is None:
            return {}
        if self._pick is not None and not self._pick(context, namespace, service):
            return {}
        spec = svc.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector and spec.get("type") == "ExternalName":
            why = "an ExternalName service"
            self._skipped[key] = f"skipped: {why}"
            self._warn_once(("nosel", key), "service %s skipped: %s", key, why)
            return {}
        headless = spec.get("clusterIP") == "None"
        # A headless service that declares no ports reaches its pods on theirs (see below).
        portless = headless and not spec.get("ports")
        ports = [] if portless else self._ports(key, svc)
        if not ports and not portless:
            self._skipped[key] = "skipped: no TCP ports"
            declared = spec.get("ports") or []
            only_other = bool(declared) and all(
                str(p.get("protocol") or "TCP").upper() != "TCP" for p in declared
            )
            if only_other and ("noports", key) not in self._warned:
                # Its ports are in the namespace's summary line: name it there, not here.
                self._proto_unforwarded.setdefault((context, namespace), []).append(service)
            self._warn_once(("noports", key), "service %s skipped: no TCP ports", key,
                            level=logging.DEBUG if only_other else logging.WARNING)
            return {}
        ci = self._cluster_index(context)
        ni = self._namespace_index(context, namespace)
        primary, multi, first = ci == 0 and ni == 0, len(self._contexts) > 1, ci == 0
        slice_ready = self._slice_ready(context, namespace)
        if selector:
            known = self._objs.get((context, namespace, PODS), {})
            pods = [known[n] for n in self._pod_index.matching((context, namespace), selector)
                    if n in known]
            pods.sort(key=age_key)
            ready = [p for p in pods if pod_ready(p, slice_ready)]
            refs = [pod_ref(p, ports) for p in ready]
        else:
            found = self._slice_pods(key, ports, slice_ready)
            if found is None:
                return {}
            pods, refs = found
        own_ports: dict[str, list[PortMapping]] = {}
        if portless:
            own_ports = {obj_name(p): container_port_mappings(p, self._mappings) for p in pods}
            union: dict[int, PortMapping] = {}
            for p in pods:  # oldest first: its name for a port wins
                for m in own_ports[obj_name(p)]:
                    union.setdefault(m.local_port, m)
            ports = [union[k] for k in sorted(union)]
            if not ports:
                why = "headless without ports, and its pods declare no TCP container port"
                self._skipped[key] = f"skipped: {why}"
                self._warn_once(("noports", key), "service %s skipped: %s", key, why)
                return {}
            self._warned.discard(("noports", key))
            refs = [PodRef(r.name, r.ip, {m.port: m.port for m in own_ports[r.name]}, r.uid)
                    for r in refs]
        names = hostnames.service_hostnames(
            service, namespace, context, domain=self._domain, primary=primary,
            multi_context=multi, first_context=first,
        )
        result = {key: _Spec(names, ports, refs, headless)}
        if headless:
            ready_names = {r.name: r for r in refs}
            for p in pods:
                stateful = _owned_by_statefulset(p)
                if not pod_alive(p) and not stateful:
                    continue
                pname = obj_name(p)
                pkey = ForwardKey(context, namespace, service, pname)
                pnames = hostnames.pod_hostnames(
                    pname, service, namespace, context, domain=self._domain, primary=primary,
                    multi_context=multi, first_context=first,
                )
                ref = ready_names.get(pname)
                pod_ports = own_ports.get(pname, []) if portless else ports
                result[pkey] = _Spec(pnames, pod_ports, [ref] if ref else [], True, stateful)
            self._keep_gone_stateful_pods(key, ports, result)
        return result

    def _slice_pods(
        self, key: ForwardKey, ports: list[PortMapping], slice_ready: set[str]
    ) -> tuple[list[Obj], list[PodRef]] | None:
        """The pods (oldest first) and ready pods of a service without a selector, from its
        EndpointSlices (see ``slicepods``); None, with the reason noted, when no endpoint is a
        pod."""
        objs = self._objs.get((key.context, key.namespace, ENDPOINTSLICES), {}).values()
        slices = slicepods.slices_of(key.service, objs)
        known = self._objs.get((key.context, key.namespace, PODS), {})
        found = slicepods.slice_backends(key.namespace, slices, known, ports)
        if found.bare:
            shown = ", ".join(found.bare[:4]) + (", ..." if len(found.bare) > 4 else "")
            self._warn_once(
                ("bare", key), "service %s: %d endpoint%s skipped (%s): not pods of its "
                "namespace, and the port-forward API can only reach pods", key,
                len(found.bare), "s" if len(found.bare) != 1 else "", shown)
        if found.unknown:  # gone, or not listed yet: a pod's event brings it in
            log.debug("service %s: its slices name pods not seen: %s", key,
                      ", ".join(found.unknown))
        if not found.pods and not found.unknown:
            why = ("its endpoints are not pods (the port-forward API can only reach pods)"
                   if found.bare else "it has no selector and no EndpointSlice names a pod")
            self._skipped[key] = f"skipped: {why}"
            if not found.bare:
                self._warn_once(("nosel", key), "service %s skipped: %s", key, why)
            return None
        self._warned.discard(("nosel", key))
        pods = sorted((b.pod for b in found.pods), key=age_key)
        by_name = {obj_name(b.pod): b for b in found.pods}
        refs = []
        for p in pods:
            backend = by_name[obj_name(p)]
            if backend.ready and pod_ready(p, slice_ready):
                status = p.get("status") or {}
                refs.append(PodRef(obj_name(p), str(status.get("podIP") or ""),
                                   dict(backend.ports), str(obj_meta(p).get("uid") or "")))
        return pods, refs

    def _keep_gone_stateful_pods(
        self, key: ForwardKey, ports: list[PortMapping], result: dict[ForwardKey, _Spec]
    ) -> None:
        """Add the per-pod forwards of StatefulSet pods that are gone but within their grace
        period to ``result`` (no ready pod); start the clock for newly gone ones."""
        now = self._clock()
        for pkey in self._service_keys.get((key.context, key.namespace, key.service), ()):
            if not pkey.pod:
                continue
            if pkey in result:
                self._gone_since.pop(pkey, None)
                continue
            entry = self._entries.get(pkey)
            if entry is None or not entry.stateful:
                continue
            since = self._gone_since.setdefault(pkey, now)
            if now - since < self._pod_grace:
                result[pkey] = _Spec(list(entry.desired_names), ports, [], True, True)

    def _order(self, key: ForwardKey) -> tuple[Any, ...]:
        ci = self._cluster_index(key.context)
        ni = self._namespace_index(key.context, key.namespace)
        return (ci, ni, key.service, 1 if key.pod else 0, key.pod)

    def _claim(self, entry: _Entry, affected: set[ForwardKey]) -> None:
        for name in entry.desired_names:
            claims = self._claims.setdefault(name, [])
            if claims:
                affected.add(claims[0][1])
            bisect.insort(claims, (entry.order, entry.key))

    def _unclaim(self, entry: _Entry, affected: set[ForwardKey]) -> None:
        for name in entry.desired_names:
            claims = self._claims.get(name, [])
            claims[:] = [c for c in claims if c[1] != entry.key]
            if claims:
                affected.add(claims[0][1])
            else:
                self._claims.pop(name, None)

    def _effective_names(self, entry: _Entry) -> list[str]:
        return [n for n in entry.desired_names if self._claims[n][0][1] == entry.key]

    def _recompute(self, context: str, dirty: set[tuple[str, str]]) -> list[Command]:
        try:
            return self._recompute_dirty(context, dirty)
        finally:
            self._ready_memo.clear()

    def _recompute_dirty(self, context: str, dirty: set[tuple[str, str]]) -> list[Command]:
        affected: set[ForwardKey] = set()
        removed: list[ForwardKey] = []
        released = False
        work = sorted(dirty)
        retried = False
        while work:
            for namespace, service in work:
                skey = (context, namespace, service)
                desired = self._desired(context, namespace, service)
                old_keys = self._service_keys.get(skey, set())
                for k in old_keys - desired.keys():
                    self._gone_since.pop(k, None)
                    entry = self._entries.pop(k)
                    self._unclaim(entry, affected)
                    self._allocator.release(k)
                    removed.append(k)
                    released = True
                    self._hosts_dirty = True
                keys: set[ForwardKey] = set()
                self._exhausted.discard(skey)
                for k, spec in sorted(desired.items()):
                    current = self._entries.get(k)
                    if current is None:
                        added = self._add_entry(k, spec, skey)
                        if added is None:
                            continue
                        self._claim(added, affected)
                        self._hosts_dirty = True
                    else:
                        current.ports, current.pods = spec.ports, spec.pods
                        current.stateful = spec.stateful
                    keys.add(k)
                    affected.add(k)
                if keys:
                    self._service_keys[skey] = keys
                else:
                    self._service_keys.pop(skey, None)
            # Addresses were freed: services that did not fit may fit now (once per batch).
            work = []
            if released and not retried:
                retried = True
                work = sorted((n, s) for (c, n, s) in self._exhausted if c == context)
        self._log_proto_skips()
        return self._commands(removed, affected)

    def _add_entry(
        self, key: ForwardKey, spec: _Spec, skey: tuple[str, str, str]
    ) -> _Entry | None:
        ci = self._cluster_index(key.context)
        ni = self._namespace_index(key.context, key.namespace)
        try:
            ip = self._allocator.allocate(key, ci, ni, spec.names, namespace=key.namespace)
        except AddressesExhausted as e:
            self._exhausted.add(skey)
            self._skipped[key] = f"not forwarded: {e}"
            self._warn_once(
                ("exhausted", key), "service %s not forwarded: %s", key, e, level=logging.ERROR
            )
            return None
        self._warned.discard(("exhausted", key))
        self._skipped.pop(key, None)
        entry = _Entry(key, self._order(key), ip, list(spec.names), spec.ports, spec.pods,
                       spec.headless, spec.stateful)
        self._entries[key] = entry
        return entry

    def _commands(self, removed: list[ForwardKey], affected: set[ForwardKey]) -> list[Command]:
        commands: list[Command] = []
        for k in removed:
            if k in self._emitted and k not in self._entries:
                del self._emitted[k]
                commands.append(ForwardRemove(k))
        present = [self._entries[k] for k in affected if k in self._entries]
        for entry in sorted(present, key=lambda e: e.order):
            k = entry.key
            upsert = ForwardUpsert(
                k, entry.ip, self._effective_names(entry), list(entry.ports), list(entry.pods),
                entry.headless,
            )
            if self._emitted.get(k) != upsert:
                self._emitted[k] = upsert
                commands.append(upsert)
        if self._hosts_dirty:
            self._hosts_dirty = False
            hosts = self._hosts_entries()
            if hosts != self._hosts:
                self._hosts = hosts
                commands.append(HostsSnapshot({ip: list(n) for ip, n in hosts.items()}))
        return commands

    def _hosts_entries(self) -> dict[str, list[str]]:
        hosts: dict[str, list[str]] = {}
        for entry in sorted(self._entries.values(), key=lambda e: e.order):
            names = self._effective_names(entry)
            if names:
                hosts.setdefault(entry.ip, []).extend(names)
        return hosts

    # -- output

    def _drain(self) -> None:
        if getattr(self._dispatching, "active", False):
            return  # a listener called back into us; the outer drain delivers it
        with self._dispatch_lock:
            self._dispatching.active = True
            try:
                while True:
                    with self._lock.read():
                        if not self._queue:
                            return
                        batch = self._queue.popleft()
                        listeners = list(self._listeners)
                    for fn in listeners:
                        try:
                            fn(batch)
                        except Exception:  # one broken listener must not starve the others
                            log.exception("registry listener failed")
            finally:
                self._dispatching.active = False

    # -- readers

    def pick_pod(self, key: ForwardKey, port: int | None = None) -> PodRef | None:
        """The best ready pod for ``key`` (with service ``port`` resolved, if given)."""
        with self._lock.read():
            entry = self._entries.get(key)
            if entry is None:
                return None
            for pod in entry.pods:
                if port is None or port in pod.ports:
                    return pod
            return None

    def get(self, key: ForwardKey) -> ForwardUpsert | None:
        """The forward as last announced to listeners."""
        with self._lock.read():
            return self._emitted.get(key)

    def snapshot(self) -> RegistrySnapshot:
        with self._lock.read():
            forwards = [
                self._emitted[k]
                for k in sorted(self._emitted, key=lambda k: self._entries[k].order)
            ]
            skipped = {str(k): why for k, why in self._skipped.items()}
            return RegistrySnapshot(forwards, skipped, {ip: list(n) for ip, n in
                                                        self._hosts.items()})
