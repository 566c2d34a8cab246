"""Server-side printing: ``meta.k8s.io/v1`` Tables, which ``kubectl get`` asks for.

Without them kubectl falls back to NAME and AGE only; with them it shows READY, STATUS,
CLUSTER-IP, PORT(S) and friends, and labels ``--output-watch-events`` rows.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any

from kubefwd.sim.store import Obj

Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell


def wants_table(accept: str) -> bool:
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """Age as kubectl prints it: 42s, 5m3s, 3h, 2d4h, 12d."""
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    seconds = max(0, int((now - created).total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _age(obj: Obj) -> str:
    return human_age(_meta(obj).get("creationTimestamp"))


def _pod_ready(pod: Obj) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_status(pod: Obj) -> str:
    if _meta(pod).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            reason = (state.get(key) or {}).get("reason")
            if reason and reason not in ("ContainerCreating",):
                return str(reason)
    return str(status.get("phase") or "Pending")


def _restarts(pod: Obj) -> int:
    return sum(int(cs.get("restartCount", 0))
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def _ports(svc: Obj) -> str:
    ports = (svc.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _selector(svc: Obj) -> str:
    sel = (svc.get("spec") or {}).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"


def _endpoints(ep: Obj) -> str:
    parts = []
    for subset in ep.get("subsets") or []:
        for address in subset.get("addresses") or []:
            for port in subset.get("ports") or []:
                parts.append(f"{address.get('ip')}:{port.get('port')}")
    if not parts:
        return "<none>"
    if len(parts) > 3:
        return ",".join(parts[:3]) + f" + {len(parts) - 3} more..."
    return ",".join(parts)


def _slice_endpoints(es: Obj) -> str:
    ips = [a for e in es.get("endpoints") or [] for a in e.get("addresses") or []]
    if not ips:
        return "<unset>"
    return ",".join(ips[:3]) + (f" + {len(ips) - 3} more..." if len(ips) > 3 else "")


def _status(obj: Obj, key: str) -> int:
    return int((obj.get("status") or {}).get(key, 0) or 0)


def _replicas(obj: Obj) -> str:
    want = (obj.get("spec") or {}).get("replicas", 1)
    return f"{_status(obj, 'readyReplicas')}/{want}"


def _name(obj: Obj) -> str:
    return str(_meta(obj).get("name", ""))


COLUMNS: dict[str, list[Column]] = {
    "Namespace": [
        ("Name", "string", 0, _name),
        ("Status", "string", 0, lambda o: (o.get("status") or {}).get("phase", "Active")),
        ("Age", "string", 0, _age),
    ],
    "Pod": [
        ("Name", "string", 0, _name),
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, lambda o: str(_restarts(o))),
        ("Age", "string", 0, _age),
        ("IP", "string", 1, lambda o: (o.get("status") or {}).get("podIP") or "<none>"),
        ("Node", "string", 1, lambda o: (o.get("spec") or {}).get("nodeName") or "<none>"),
        ("Nominated Node", "string", 1, lambda o: "<none>"),
        ("Readiness Gates", "string", 1, lambda o: "<none>"),
    ],
    "Service": [
        ("Name", "string", 0, _name),
        ("Type", "string", 0, lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda o: (o.get("spec") or {}).get("clusterIP", "")),
        ("External-IP", "string", 0, lambda o: "<none>"),
        ("Port(s)", "string", 0, _ports),
        ("Age", "string", 0, _age),
        ("Selector", "string", 1, _selector),
    ],
    "Endpoints": [
        ("Name", "string", 0, _name),
        ("Endpoints", "string", 0, _endpoints),
        ("Age", "string", 0, _age),
    ],
    "EndpointSlice": [
        ("Name", "string", 0, _name),
        ("AddressType", "string", 0, lambda o: o.get("addressType", "IPv4")),
        ("Ports", "string", 0, lambda o: ",".join(
            str(p.get("port")) for p in o.get("ports") or []) or "<unset>"),
        ("Endpoints", "string", 0, _slice_endpoints),
        ("Age", "string", 0, _age),
    ],
    "Deployment": [
        ("Name", "string", 0, _name),
        ("Ready", "string", 0, _replicas),
        ("Up-to-date", "integer", 0, lambda o: _status(o, "updatedReplicas")),
        ("Available", "integer", 0, lambda o: _status(o, "availableReplicas")),
        ("Age", "string", 0, _age),
    ],
    "StatefulSet": [
        ("Name", "string", 0, _name),
        ("Ready", "string", 0, _replicas),
        ("Age", "string", 0, _age),
    ],
}


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": _meta(obj)}


def table(kind: str, objs: Iterable[Obj], resource_version: str, *,
          include_object: str = "Metadata") -> Obj:
    columns = COLUMNS[kind]
    rows = []
    for obj in objs:
        row: Obj = {"cells": [cell(obj) for _, _, _, cell in columns]}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {"name": name, "type": typ, "format": "name" if name == "Name" else "",
             "description": "", "priority": priority}
            for name, typ, priority, _ in columns
        ],
        "rows": rows,
    }
