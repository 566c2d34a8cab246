"""What the API answers, as plain JSON values built from the state store, the metrics
registry and the HTTP log: no web framework here, so the MCP bridge, ``kubefwd status`` and
the tests share the same shapes.

A *forward* is one listening address (``CONTEXT/NAMESPACE/SERVICE``, or ``…/POD.SERVICE``
for one pod of a headless service); a *service* groups the forwards of one
``CONTEXT/NAMESPACE/SERVICE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from kubefwd.events.metrics import ForwardMetrics, MetricsSnapshot
from kubefwd.events.store import ErrorRecord, ForwardState, Reconnection
from kubefwd.events.types import iso_time

# Worst first: a service shows the worst status of its forwards.
_SEVERITY = ("error", "reconnecting", "connecting", "pending", "stopping", "active")

# Well-known ports → (URL scheme, environment variable stem) for ready-to-paste strings.
_SCHEMES = {
    5432: ("postgresql", "DATABASE_URL"),
    3306: ("mysql", "DATABASE_URL"),
    27017: ("mongodb", "MONGODB_URL"),
    6379: ("redis", "REDIS_URL"),
    5672: ("amqp", "AMQP_URL"),
    9092: ("kafka", "KAFKA_BROKERS"),
    11211: ("memcached", "MEMCACHED_URL"),
    443: ("https", "URL"),
}


def _time(value: float | None) -> str | None:
    return None if value is None else iso_time(value)


def service_key(forward_key: str) -> str:
    return "/".join(forward_key.split("/")[:3])


def local_ports(state: ForwardState) -> list[int]:
    out = []
    for text in state.ports:
        head = text.split(":", 1)[0]
        if head.isdigit():
            out.append(int(head))
    return out


def forward_json(state: ForwardState, metrics: ForwardMetrics | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": state.key,
        "service_key": service_key(state.key),
        "context": state.context,
        "namespace": state.namespace,
        "service": state.service,
        "ip": state.ip,
        "names": list(state.names),
        "ports": local_ports(state),
        "pod": state.pod,
        "status": state.status,
        "last_error": state.last_error,
        "last_error_time": _time(state.last_error_time),
        "connected_since": _time(state.connected_since),
        "reconnects": state.reconnects,
    }
    if metrics is not None:
        out["bytes_in"] = metrics.bytes_in
        out["bytes_out"] = metrics.bytes_out
        out["connections_open"] = metrics.open
        out["connections_total"] = metrics.total
    return out


def services_json(states: Iterable[ForwardState],
                  metrics: MetricsSnapshot | None = None) -> list[dict[str, Any]]:
    """One entry per service, sorted by key."""
    by_key = {m.key: m for m in metrics.forwards} if metrics is not None else {}
    groups: dict[str, list[ForwardState]] = {}
    for state in states:
        groups.setdefault(service_key(state.key), []).append(state)
    out = []
    for key in sorted(groups):
        forwards = sorted(groups[key], key=lambda s: s.key)
        first = forwards[0]
        status = min((f.status for f in forwards),
                     key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else 0)
        errors = [f for f in forwards if f.last_error]
        last = max(errors, key=lambda f: f.last_error_time or 0.0) if errors else None
        names: list[str] = []
        ports: list[int] = []
        for f in forwards:
            names += [n for n in f.names if n not in names]
            ports += [p for p in local_ports(f) if p not in ports]
        out.append({
            "key": key,
            "context": first.context,
            "namespace": first.namespace,
            "service": first.service,
            "status": status,
            "ip": first.ip,
            "ips": sorted({f.ip for f in forwards if f.ip}),
            "names": names,
            "ports": ports,
            "pods": [f.pod for f in forwards if f.pod],
            "forwards": [f.key for f in forwards],
            "last_error": last.last_error if last else None,
            "last_error_time": _time(last.last_error_time) if last else None,
            "reconnects": sum(f.reconnects for f in forwards),
            "bytes_in": sum(by_key[f.key].bytes_in for f in forwards if f.key in by_key),
            "bytes_out": sum(by_key[f.key].bytes_out for f in forwards if f.key in by_key),
        })
    return out


def matches(item: dict[str, Any], *, namespace: str | None = None, context: str | None = None,
            status: str | None = None, search: str | None = None) -> bool:
    """The list filters of ``GET /services`` and ``GET /forwards``."""
    if namespace and item["namespace"] != namespace:
        return False
    if context and item["context"] != context:
        return False
    if status and item["status"] != status:
        return False
    if search:
        needle = search.lower()
        hay = [item["key"], item.get("ip") or "", *item.get("names", [])]
        if not any(needle in h.lower() for h in hay):
            return False
    return True


def find_key(keys: Sequence[str], wanted: str, contexts: Sequence[str]) -> str | None:
    """``wanted`` as ``NAMESPACE/NAME`` (first context) or ``CONTEXT/NAMESPACE/NAME``."""
    if wanted in keys:
        return wanted
    if contexts:
        qualified = f"{contexts[0]}/{wanted}"
        if qualified in keys:
            return qualified
    return None


def metrics_json(snapshot: MetricsSnapshot) -> dict[str, Any]:
    return {
        "bytes_in": snapshot.bytes_in,
        "bytes_out": snapshot.bytes_out,
        "connections_open": snapshot.open,
        "connections_total": snapshot.total,
        "connections_failed": snapshot.failed,
        "rate_in": round(snapshot.rate_in, 1),
        "rate_out": round(snapshot.rate_out, 1),
        "forwards": len(snapshot.forwards),
    }


def forward_metrics_json(m: ForwardMetrics, *, history: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": m.key,
        "bytes_in": m.bytes_in,
        "bytes_out": m.bytes_out,
        "connections_open": m.open,
        "connections_total": m.total,
        "connections_failed": m.failed,
        "rate_in": round(m.rate_in, 1),
        "rate_out": round(m.rate_out, 1),
        "ports": [{"port": p.port, "bytes_in": p.bytes_in, "bytes_out": p.bytes_out,
                   "connections_open": p.open, "connections_total": p.total,
                   "connections_failed": p.failed} for p in m.ports],
    }
    if history:
        out["history"] = [{"rate_in": round(i, 1), "rate_out": round(o, 1)}
                          for i, o in m.history]
    return out


def error_json(record: ErrorRecord) -> dict[str, Any]:
    return {"time": iso_time(record.time), "key": record.key, "message": record.message}


def reconnection_json(record: Reconnection) -> dict[str, Any]:
    return {"time": iso_time(record.time), "key": record.key, "pod": record.pod,
            "previous": record.previous}


_ENV_NAME = re.compile(r"[^A-Z0-9]+")


def connection_info(service: dict[str, Any]) -> dict[str, Any]:
    """How to reach a service: its address, names, ports, and environment variables to
    paste (``ORDERS_DB_HOST``, ``ORDERS_DB_PORT``, a ``DATABASE_URL``-style URL for
    well-known ports)."""
    host = service["names"][0] if service["names"] else service["ip"]
    stem = _ENV_NAME.sub("_", service["service"].upper()).strip("_")
    env: dict[str, str] = {f"{stem}_HOST": host}
    urls = []
    for i, port in enumerate(service["ports"]):
        suffix = "" if i == 0 else f"_{port}"
        env[f"{stem}_PORT{suffix}"] = str(port)
        scheme, var = _SCHEMES.get(port, ("http", "URL"))
        url = f"{scheme}://{host}:{port}" + ("/" if scheme in ("http", "https") else "")
        urls.append(url)
        env.setdefault(f"{stem}_{var}" if var == "URL" else var, url)
    return {
        "service": service["key"],
        "ip": service["ip"],
        "ips": service["ips"],
        "names": service["names"],
        "ports": service["ports"],
        "status": service["status"],
        "urls": urls,
        "env": env,
    }
