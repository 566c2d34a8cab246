"""Admission: defaults and checks applied under the store lock on every create and update.

Like the API server's admission plugins and defaulting: cluster IPs for Services (immutable
once set), container port protocols, workload selectors that must match their templates, and
no new objects in a namespace that is being deleted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from kubefwd.sim.store import (
    Obj,
    StatusError,
    Store,
    invalid,
    labels_match,
    selector_from_match_labels,
)

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")


class Admission:
    """Defaults and checks applied under the store lock, like admission plugins."""

    def __init__(self, store_ref: Callable[[], Store]) -> None:
        self._store = store_ref
        self._next_ip = 10  # 10.96.0.1 is the kubernetes service in real clusters

    def __call__(self, obj: Obj, old: Obj | None) -> None:
        kind = obj["kind"]
        meta = obj["metadata"]
        store = self._store()
        if kind != "Namespace" and old is None:
            ns = store.get("Namespace", "", meta.get("namespace", ""), copy_=False)
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                raise StatusError(
                    403, "Forbidden",
                    f'{kind.lower()}s "{meta["name"]}" is forbidden: unable to create new content'
                    f' in namespace {meta["namespace"]} because it is being terminated',
                )
        if kind == "Namespace":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            if old is None:
                obj["status"] = {"phase": "Active"}
        elif kind == "Service":
            self._service(obj, old)
        elif kind == "Pod":
            self._pod(obj, old)
        elif kind in ("Deployment", "StatefulSet"):
            self._workload(obj)

    def _service(self, obj: Obj, old: Obj | None) -> None:
        spec = obj.setdefault("spec", {})
        name = obj["metadata"]["name"]
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        ports = spec.get("ports") or []
        if not isinstance(ports, list):
            raise invalid("Service", name, "spec.ports", ports, "must be a list")
        for i, port in enumerate(ports):
            if not isinstance(port, dict) or not isinstance(port.get("port"), int):
                raise invalid("Service", name, f"spec.ports[{i}].port", port, "must be a number")
            if not 1 <= port["port"] <= 65535:
                raise invalid("Service", name, f"spec.ports[{i}].port", port["port"],
                              "must be between 1 and 65535, inclusive")
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])
            if len(ports) > 1 and not port.get("name"):
                raise invalid("Service", name, f"spec.ports[{i}].name", "",
                              "Required value")
        old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
        want = spec.get("clusterIP")
        if old_ip:
            if want and want != old_ip:
                raise invalid("Service", name, "spec.clusterIPs[0]", want,
                              "may not change once set")
            spec["clusterIP"] = old_ip
        elif want in (None, ""):
            spec["clusterIP"] = self._allocate_ip()
        spec["clusterIPs"] = [spec["clusterIP"]]
        if spec["clusterIP"] != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        obj.setdefault("status", {"loadBalancer": {}})

    def _allocate_ip(self) -> str:
        store = self._store()
        used = {(s.get("spec") or {}).get("clusterIP") for s in store.view("Service")}
        while True:
            ip = str(SERVICE_CIDR.network_address + self._next_ip)
            self._next_ip += 1
            if ip not in used:
                return ip

    def _pod(self, obj: Obj, old: Obj | None) -> None:
        spec = obj.setdefault("spec", {})
        name = obj["metadata"]["name"]
        containers = spec.get("containers")
        if not isinstance(containers, list) or not containers:
            raise invalid("Pod", name, "spec.containers", containers or "", "Required value")
        for c in containers:
            if not isinstance(c, dict) or not c.get("name"):
                raise invalid("Pod", name, "spec.containers[0].name", "", "Required value")
            for p in c.get("ports") or []:
                p.setdefault("protocol", "TCP")
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("nodeName", "sim-node")
        if old is None:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}

    def _workload(self, obj: Obj) -> None:
        spec = obj.setdefault("spec", {})
        name = obj["metadata"]["name"]
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        if obj["kind"] == "Deployment":
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": "25%", "maxUnavailable": "25%"}})
        else:
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                               "rollingUpdate": {"partition": 0}})
        selector = (spec.get("selector") or {}).get("matchLabels")
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not isinstance(selector, dict) or not selector:
            raise invalid(obj["kind"], name, "spec.selector", spec.get("selector") or "",
                          "empty selector is invalid for deployment")
        if not labels_match(selector_from_match_labels(selector), template_labels):
            raise invalid(obj["kind"], name, "spec.template.metadata.labels", template_labels,
                          "`selector` does not match template `labels`")
        obj.setdefault("status", {})
