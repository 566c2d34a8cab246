"""The controllers that keep the simulated cluster consistent.

``Controllers.on_event`` runs on the store's dispatcher thread and plays the parts of the
endpoints, endpointslice, deployment, statefulset and garbage-collector controllers, and tells
the kubelet to start and stop pods.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from kubefwd.sim import rollout
from kubefwd.sim.store import (
    Obj,
    StatusError,
    Store,
    now_rfc3339,
    random_suffix,
)
from kubefwd.support.threads import StoppableThread

log = logging.getLogger(__name__)


def _selects(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    """Whether a service's ``selector`` (label: value, all required) matches ``labels``:
    what ``labels_match(selector_from_match_labels(...))`` says, without building
    requirements (every pod event checks every service of its namespace)."""
    if not labels:
        return not selector
    return all(labels.get(key) == value for key, value in selector.items())


class PodRuntime(Protocol):
    def start_pod(self, pod: Obj) -> None: ...

    def stop_pod(self, namespace: str, name: str) -> None: ...


# ---------------------------------------------------------------------------------------------
# Controllers

def _owner(obj: Obj) -> dict[str, Any]:
    refs = obj["metadata"].get("ownerReferences") or []
    return refs[0] if refs else {}


def _template_hash(template: Obj) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:10])


def _ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


class Controllers:
    """Reacts to every store change; all work happens on the store's dispatcher thread."""

    def __init__(self, store: Store, kubelet: PodRuntime,
                 delete: Callable[[str, str, str], Obj]) -> None:
        self.store = store
        self.kubelet = kubelet
        self.delete = delete
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], str] = {}  # (ns, name) -> uid given to the kubelet

    # -- pods on the kubelet ----------------------------------------------------------------

    def start_pod(self, pod: Obj) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        with self._lock:
            if self._running.get(key) == pod["metadata"]["uid"]:
                return
            self._running[key] = pod["metadata"]["uid"]
        self.kubelet.start_pod(pod)

    def stop_pod(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            if self._running.get((namespace, name)) != uid:
                return
            del self._running[(namespace, name)]
        self.kubelet.stop_pod(namespace, name)

    # -- events -----------------------------------------------------------------------------

    def on_event(self, event_type: str, obj: Obj) -> None:
        kind = obj["kind"]
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        try:
            if kind == "Pod":
                if event_type == "ADDED":
                    self.start_pod(obj)
                elif event_type == "DELETED":
                    self.stop_pod(ns, meta["name"], meta["uid"])
                self._sync_services_for_pod(obj)
                owner = _owner(obj)
                if owner.get("kind") == "ReplicaSet":
                    self.sync_deployment(ns, owner["name"].rsplit("-", 1)[0])
                elif owner.get("kind") == "StatefulSet":
                    self.sync_statefulset(ns, owner["name"])
            elif kind == "Service":
                self.sync_endpoints(ns, meta["name"])
            elif kind == "Deployment":
                self.sync_deployment(ns, meta["name"])
            elif kind == "StatefulSet":
                self.sync_statefulset(ns, meta["name"])
        except StatusError as err:
            log.debug("controller: %s %s/%s: %s", kind, ns, meta.get("name"), err.message)

    # -- endpoints --------------------------------------------------------------------------

    def _sync_services_for_pod(self, pod: Obj) -> None:
        ns = pod["metadata"]["namespace"]
        labels = pod["metadata"].get("labels") or {}
        for svc in self.store.view("Service", ns):
            selector = (svc.get("spec") or {}).get("selector")
            if selector and _selects(selector, labels):
                self.sync_endpoints(ns, svc["metadata"]["name"])

    def sync_endpoints(self, ns: str, name: str) -> None:
        svc = self.store.get("Service", ns, name, copy_=False)
        slices = self.store.view("EndpointSlice", ns,
                                 f"kubernetes.io/service-name={name}")
        if svc is None:
            # The garbage collector takes the slices the service owns; slices written by hand
            # (no owner) outlive it, as in a real cluster.
            for obj in slices:
                if any(ref.get("kind") == "Service" and ref.get("name") == name
                       for ref in obj["metadata"].get("ownerReferences") or []):
                    self._delete_quietly("EndpointSlice", ns, obj["metadata"]["name"])
            self._delete_quietly("Endpoints", ns, name)
            return
        selector = (svc.get("spec") or {}).get("selector")
        if not selector:
            return  # endpoints of a selector-less service are the user's to manage
        pods = [p for p in self.store.view("Pod", ns)
                if _selects(selector, p["metadata"].get("labels"))
                and (p.get("status") or {}).get("podIP")
                and not p["metadata"].get("deletionTimestamp")]
        groups: dict[str, tuple[list[Obj], list[tuple[Obj, bool]]]] = {}
        for pod in pods:
            ports = self._resolve_ports(svc, pod)
            key = json.dumps(ports, sort_keys=True)
            groups.setdefault(key, (ports, []))[1].append((pod, _ready(pod)))
        owner_ref = {"apiVersion": "v1", "kind": "Service", "name": name,
                     "uid": svc["metadata"]["uid"], "controller": True,
                     "blockOwnerDeletion": True}
        self._write_endpoints(svc, groups)
        self._write_slices(svc, groups, slices, owner_ref)

    @staticmethod
    def _resolve_ports(svc: Obj, pod: Obj) -> list[Obj]:
        container_ports = {
            p.get("name"): p.get("containerPort")
            for c in (pod.get("spec") or {}).get("containers") or []
            for p in c.get("ports") or [] if p.get("name")
        }
        out = []
        for port in (svc.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str) and not target.isdigit():
                resolved = container_ports.get(target)
                if resolved is None:
                    continue
                target = resolved
            entry = {"port": int(target), "protocol": port.get("protocol", "TCP")}
            if port.get("name"):
                entry["name"] = port["name"]
            out.append(entry)
        return out

    @staticmethod
    def _target_ref(pod: Obj) -> Obj:
        meta = pod["metadata"]
        return {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                "uid": meta["uid"]}

    def _write_endpoints(self, svc: Obj, groups: dict[str, tuple[list[Obj], list[Any]]]) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        subsets = []
        for ports, members in groups.values():
            ready: list[Obj] = []
            not_ready: list[Obj] = []
            for pod, is_ready in sorted(members, key=lambda m: m[0]["metadata"]["name"]):
                address: Obj = {"ip": pod["status"]["podIP"], "nodeName": "sim-node",
                                "targetRef": self._target_ref(pod)}
                hostname = (pod.get("spec") or {}).get("hostname")
                if hostname and (pod.get("spec") or {}).get("subdomain") == name:
                    address["hostname"] = hostname
                (ready if is_ready else not_ready).append(address)
            if not ports:
                continue
            subset: Obj = {"ports": ports}
            if ready:
                subset["addresses"] = ready
            if not_ready:
                subset["notReadyAddresses"] = not_ready
            subsets.append(subset)
        desired: Obj = {"apiVersion": "v1", "kind": "Endpoints",
                        "metadata": {"name": name, "namespace": ns,
                                     "labels": dict(svc["metadata"].get("labels") or {})}}
        if subsets:
            desired["subsets"] = subsets
        self._put(desired)

    def _write_slices(self, svc: Obj, groups: dict[str, tuple[list[Obj], list[Any]]],
                      existing: list[Obj], owner_ref: Obj) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        if not groups:
            groups = {"[]": ([], [])}
        wanted: dict[str, Obj] = {}
        # Slices keep their names while a service has one port set (the usual case), as the
        # real controller updates slices in place instead of replacing them.
        keep = existing[0]["metadata"]["name"] if len(existing) == 1 == len(groups) else None
        for key, (ports, members) in groups.items():
            slice_name = keep or f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:5]}"
            endpoints = []
            for pod, is_ready in sorted(members, key=lambda m: m[0]["metadata"]["name"]):
                endpoint: Obj = {
                    "addresses": [pod["status"]["podIP"]],
                    "conditions": {"ready": is_ready, "serving": is_ready,
                                   "terminating": False},
                    "targetRef": self._target_ref(pod),
                    "nodeName": "sim-node",
                }
                hostname = (pod.get("spec") or {}).get("hostname")
                if hostname and (pod.get("spec") or {}).get("subdomain") == name:
                    endpoint["hostname"] = hostname
                endpoints.append(endpoint)
            labels = dict(svc["metadata"].get("labels") or {})
            labels.update({"kubernetes.io/service-name": name,
                           "endpointslice.kubernetes.io/managed-by":
                               "endpointslice-controller.k8s.io"})
            wanted[slice_name] = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": slice_name, "namespace": ns, "labels": labels,
                             "ownerReferences": [owner_ref]},
                "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
            }
        for obj in existing:
            if obj["metadata"]["name"] not in wanted:
                self._delete_quietly("EndpointSlice", ns, obj["metadata"]["name"])
        for desired in wanted.values():
            self._put(desired)

    def _put(self, desired: Obj) -> None:
        meta = desired["metadata"]
        current = self.store.get(desired["kind"], meta["namespace"], meta["name"], copy_=False)
        if current is None:
            self.store.create(desired)
            return
        merged = copy.deepcopy(current)
        for key in ("subsets", "endpoints", "ports", "addressType"):
            merged.pop(key, None)
        merged.update({k: v for k, v in desired.items() if k != "metadata"})
        merged["metadata"]["labels"] = meta.get("labels", {})
        if "ownerReferences" in meta:
            merged["metadata"]["ownerReferences"] = meta["ownerReferences"]
        merged["metadata"].pop("resourceVersion", None)
        self.store.replace(merged, keep_status=False)

    def _delete_quietly(self, kind: str, ns: str, name: str) -> None:
        try:
            self.store.delete(kind, ns, name)
        except StatusError:
            pass

    # -- workloads --------------------------------------------------------------------------

    def _pod_from_template(self, owner: Obj, name: str, labels: dict[str, str],
                           owner_ref: Obj) -> Obj:
        template = copy.deepcopy((owner.get("spec") or {}).get("template") or {})
        meta = template.get("metadata") or {}
        pod_labels = dict(meta.get("labels") or {})
        pod_labels.update(labels)
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": owner["metadata"]["namespace"],
                         "labels": pod_labels,
                         "annotations": dict(meta.get("annotations") or {}),
                         "ownerReferences": [owner_ref]},
            "spec": template.get("spec") or {},
        }

    def sync_deployment(self, ns: str, name: str) -> None:
        deploy = self.store.get("Deployment", ns, name, copy_=False)
        pods = [p for p in self.store.view("Pod", ns)
                if _owner(p).get("kind") == "ReplicaSet"
                and _owner(p).get("name", "").rsplit("-", 1)[0] == name]
        if deploy is None:
            for pod in pods:
                self._delete_pod(pod)
            return
        spec = deploy.get("spec") or {}
        template_hash = _template_hash(spec.get("template") or {})
        rs_name = f"{name}-{template_hash}"
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        current = [p for p in live if _owner(p).get("name") == rs_name]
        old = [p for p in live if _owner(p).get("name") != rs_name]
        # One move of the rollout (see sim/rollout): each pod created, deleted or turning
        # Ready brings this back here for the next one.
        plan = rollout.step(spec, current, old, _ready)
        gone = {p["metadata"]["name"] for p in plan.delete}
        for pod in plan.delete:
            self._delete_pod(pod)
        current = [p for p in current if p["metadata"]["name"] not in gone]
        old = [p for p in old if p["metadata"]["name"] not in gone]
        replicas = int(spec.get("replicas", 1))
        owner_ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                     "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, deploy["metadata"]["uid"]
                                           + template_hash)),
                     "controller": True, "blockOwnerDeletion": True}
        for _ in range(plan.create):
            for _attempt in range(10):
                pod_name = f"{rs_name}-{random_suffix(5)}"
                if self.store.get("Pod", ns, pod_name, copy_=False) is None:
                    break
            current.append(self.store.create(self._pod_from_template(
                deploy, pod_name, {"pod-template-hash": template_hash}, owner_ref)))
        self._deployment_status(deploy, replicas, current, old)

    def _deployment_status(self, deploy: Obj, replicas: int, current: list[Obj],
                           old: list[Obj]) -> None:
        ready = sum(1 for p in current + old if _ready(p))
        complete = len(current) == replicas and not old and ready >= replicas
        status: Obj = {
            "observedGeneration": deploy["metadata"].get("generation", 1),
            "replicas": len(current) + len(old), "updatedReplicas": len(current),
            "readyReplicas": ready, "availableReplicas": ready,
            "unavailableReplicas": max(0, replicas - ready),
        }
        status = {k: v for k, v in status.items() if v}
        status["conditions"] = [{
            "type": "Available", "status": "True" if ready >= replicas else "False",
            "reason": "MinimumReplicasAvailable" if ready >= replicas
            else "MinimumReplicasUnavailable",
            "message": "Deployment has minimum availability." if ready >= replicas
            else "Deployment does not have minimum availability.",
        }, {
            "type": "Progressing", "status": "True",
            "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
            "message": f'ReplicaSet "{deploy["metadata"]["name"]}" '
            + ("has successfully progressed." if complete else "is progressing."),
        }]
        self._set_status(deploy, status)

    def sync_statefulset(self, ns: str, name: str) -> None:
        sts = self.store.get("StatefulSet", ns, name, copy_=False)
        pods = {p["metadata"]["name"]: p for p in self.store.view("Pod", ns)
                if _owner(p).get("kind") == "StatefulSet" and _owner(p).get("name") == name}
        if sts is None:
            for pod in pods.values():
                self._delete_pod(pod)
            return
        spec = sts.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        revision = f"{name}-{_template_hash(spec.get('template') or {})}"
        owner_ref = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                     "uid": sts["metadata"]["uid"], "controller": True,
                     "blockOwnerDeletion": True}
        for pod_name, pod in pods.items():
            index = pod_name.rsplit("-", 1)[-1]
            labels = pod["metadata"].get("labels") or {}
            if (not index.isdigit() or int(index) >= replicas
                    or labels.get("controller-revision-hash") != revision):
                self._delete_pod(pod)
        ready = 0
        current = 0
        for i in range(replicas):
            pod_name = f"{name}-{i}"
            existing = pods.get(pod_name)
            if existing is not None and (existing["metadata"].get("labels") or {}).get(
                    "controller-revision-hash") == revision:
                current += 1
                ready += _ready(existing)
                continue
            if self.store.get("Pod", ns, pod_name, copy_=False) is not None:
                continue  # the old revision is still on its way out
            new = self._pod_from_template(sts, pod_name, {
                "statefulset.kubernetes.io/pod-name": pod_name,
                "apps.kubernetes.io/pod-index": str(i),
                "controller-revision-hash": revision,
            }, owner_ref)
            new["spec"]["hostname"] = pod_name
            if spec.get("serviceName"):
                new["spec"]["subdomain"] = spec["serviceName"]
            self.store.create(new)
            current += 1
        status = {"observedGeneration": sts["metadata"].get("generation", 1),
                  "replicas": current, "readyReplicas": ready, "currentReplicas": current,
                  "updatedReplicas": current, "availableReplicas": ready,
                  "currentRevision": revision, "updateRevision": revision,
                  "collisionCount": 0}
        self._set_status(sts, {k: v for k, v in status.items() if v or k == "replicas"})

    def _set_status(self, obj: Obj, status: Obj) -> None:
        if obj.get("status") != status:
            meta = obj["metadata"]
            self.store.patch_status(obj["kind"], meta["namespace"], meta["name"], status)

    def _delete_pod(self, pod: Obj) -> None:
        try:
            self.delete("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
        except StatusError:
            pass


def mark_terminating(obj: Obj) -> None:
    obj["metadata"]["deletionTimestamp"] = now_rfc3339()
    obj["metadata"]["deletionGracePeriodSeconds"] = 0


class NamespaceReaper(StoppableThread):
    """Finishes namespace deletions a moment later, as the namespace controller does.

    Meanwhile the namespace is Terminating: its objects can still be read and deleted
    (``kubectl delete -f`` of a file that holds the namespace and its contents works) but
    nothing new can be created in it.
    """

    def __init__(self, finalize: Callable[[str], None], delay: float = 0.3) -> None:
        super().__init__("sim-namespace-reaper")
        self._finalize = finalize
        self._delay = delay
        self._cond = threading.Condition()
        self._due: list[tuple[float, str]] = []

    def schedule(self, namespace: str) -> None:
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + self._delay, namespace))
            self._cond.notify()

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify()

    def run_loop(self) -> None:
        while not self.stopping.is_set():
            with self._cond:
                now = time.monotonic()
                if not self._due or self._due[0][0] > now:
                    timeout = self._due[0][0] - now if self._due else None
                    self._cond.wait(timeout)
                    continue
                _, namespace = heapq.heappop(self._due)
            try:
                self._finalize(namespace)
            except Exception:
                log.exception("finishing the deletion of namespace %s failed", namespace)
