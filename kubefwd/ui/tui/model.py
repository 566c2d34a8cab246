"""What the view shows, derived from the state store and the metrics: pure functions only.

A ``Row`` is one forward as the table shows it; ``build_rows`` joins the store's snapshot
with the metrics snapshot, ``filter_rows`` and ``sort_rows`` narrow and order them (a stable
sort over the key order, so rows that compare equal keep their place), ``columns`` fits the
columns to a width without ever wrapping a line, ``render_row`` lays one row out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubefwd.events.metrics import ForwardMetrics
from kubefwd.events.store import ForwardState
from kubefwd.ui import text

SORTS = ("hostname", "namespace", "status", "rate")
# Worst first when sorting by status.
STATUS_ORDER = {"error": 0, "reconnecting": 1, "connecting": 2, "pending": 3, "active": 4,
                "stopping": 5}
SPARK = " ▁▂▃▄▅▆▇█"
SPARK_WIDTH = 12  # the table's sparkline: its last 12 samples


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    host: str
    names: tuple[str, ...]
    context: str
    namespace: str
    service: str
    ip: str
    ports: tuple[str, ...]
    pod: str
    status: str
    last_error: str | None
    connected_since: float | None
    bytes_in: int = 0
    bytes_out: int = 0
    rate_in: float = 0.0
    rate_out: float = 0.0
    open: int = 0
    history: tuple[tuple[float, float], ...] = ()
    pod_ports: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """``IP:port``, with the pod's port beside a local one it differs from
        (``127.1.27.1:80→8080``)."""
        if not self.ip:
            return "-"
        if not self.ports:
            return self.ip
        return f"{self.ip}:{','.join(port_pairs(self.ports, self.pod_ports))}"

    @property
    def rate(self) -> float:
        return self.rate_in + self.rate_out


def port_pairs(ports: Sequence[str], pod_ports: Sequence[str]) -> list[str]:
    """Each local port, as ``local→pod`` where the pod's port is known and differs."""
    out = []
    for i, port in enumerate(ports):
        pod = pod_ports[i] if i < len(pod_ports) else ""
        out.append(f"{port}→{pod}" if pod and pod != port else port)
    return out


def shortest_name(names: Sequence[str], fallback: str) -> str:
    """The shortest of ``names`` (the first of equal length), else ``fallback``."""
    best = ""
    for name in names:
        if not best or len(name) < len(best):
            best = name
    return best or fallback


def build_rows(states: Iterable[ForwardState],
               metrics: Mapping[str, ForwardMetrics]) -> list[Row]:
    """One row per forward, in the store's order (by key)."""
    rows = []
    for s in states:
        m = metrics.get(s.key)
        rows.append(Row(
            key=s.key,
            host=shortest_name(s.names, s.service or s.key),
            names=s.names,
            context=s.context,
            namespace=s.namespace,
            service=s.service,
            ip=s.ip,
            ports=s.ports,
            pod_ports=s.pod_ports,
            pod=_pod_name(s.pod),
            status=s.status,
            last_error=s.last_error,
            connected_since=s.connected_since,
            bytes_in=m.bytes_in if m else 0,
            bytes_out=m.bytes_out if m else 0,
            rate_in=m.rate_in if m else 0.0,
            rate_out=m.rate_out if m else 0.0,
            open=m.open if m else 0,
            history=m.history if m else (),
        ))
    return rows


def _pod_name(pod: str | None) -> str:
    """``ns/pod`` or ``ctx/ns/pod`` as the store has it → ``pod``."""
    return pod.rpartition("/")[2] if pod else ""


def pod_ref(state_pod: str | None, context: str, namespace: str) -> tuple[str, str, str] | None:
    """(context, namespace, pod) of a forward's pod as the store names it, or None."""
    if not state_pod:
        return None
    parts = state_pod.split("/")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return context, parts[0], parts[1]
    return context, namespace, parts[0]


def matches(row: Row, query: str) -> bool:
    """Whether ``row`` has ``query`` (case-insensitive; words must all match) in its host
    names, service, namespace, context, pod or status."""
    words = query.lower().split()
    if not words:
        return True
    hay = " ".join((row.host, *row.names, row.service, row.namespace, row.context, row.pod,
                    row.status)).lower()
    return all(w in hay for w in words)


def filter_rows(rows: Iterable[Row], query: str) -> list[Row]:
    return [r for r in rows if matches(r, query)]


def sort_rows(rows: Iterable[Row], by: str,
              rates: Mapping[str, tuple[float, float]] | None = None) -> list[Row]:
    """Stable sort by ``by`` (one of ``SORTS``); rate sorts the busiest first, by the rows' own
    rates or, given ``rates`` (key → (in, out)), by those."""
    if by == "hostname":
        return sorted(rows, key=lambda r: r.host)
    if by == "namespace":
        return sorted(rows, key=lambda r: (r.context, r.namespace))
    if by == "status":
        return sorted(rows, key=lambda r: STATUS_ORDER.get(r.status, 9))
    if by == "rate":
        if rates is not None:
            return sorted(rows, key=lambda r: -sum(rates.get(r.key, (0.0, 0.0))))
        return sorted(rows, key=lambda r: -r.rate)
    raise ValueError(f"unknown sort {by!r}")


def next_sort(by: str) -> str:
    return SORTS[(SORTS.index(by) + 1) % len(SORTS)]


# -- numbers -------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    return text.human_bytes(n, compact=True)


def human_rate(n: float) -> str:
    return f"{human_bytes(n)}/s"


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum, padded on the
    left to ``width``."""
    if width <= 0:
        return ""
    tail = list(values)[-width:]
    top = max(tail, default=0.0)
    if top <= 0:
        return " " * (width - len(tail)) + ("▁" * len(tail) if tail else "")
    cells = "".join(SPARK[max(1, min(8, round(v / top * 8)))] if v > 0 else "▁" for v in tail)
    return " " * (width - len(tail)) + cells


def connect_strings(row: Row) -> list[str]:
    """``name:port`` for every name and port of the forward (the address when it has no
    names)."""
    names = row.names or ((row.ip,) if row.ip else ())
    return [f"{name}:{port}" for name in names for port in row.ports]


# -- columns -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    title: str
    width: int
    align: str = "<"


def columns(width: int, *, compact: bool, bandwidth: bool, multi_namespace: bool,
            multi_context: bool, host_width: int = 0, address_width: int = 0) -> list[Column]:
    """The columns that fit ``width`` (each followed by one space); the hostname column takes
    what is left, at least 8 characters. Optional columns go first when the width is short:
    sparkline, then context, then pod, then the totals."""
    addr_w = max(15, min(address_width or 21, 26))
    fixed: list[Column] = [Column("address", "ADDRESS", addr_w)]
    if multi_context and not compact:
        fixed.append(Column("context", "CONTEXT", 10))
    if multi_namespace:
        fixed.append(Column("namespace", "NAMESPACE", 12))
    if not compact:
        fixed.append(Column("pod", "POD", 22))
    fixed.append(Column("status", "STATUS", 12))
    if bandwidth:
        if not compact:
            fixed += [Column("in", "IN", 7, ">"), Column("out", "OUT", 7, ">")]
        fixed += [Column("rate_in", "RATE IN", 9, ">"), Column("rate_out", "RATE OUT", 9, ">")]
        if not compact:
            fixed.append(Column("spark", "LAST 60S", SPARK_WIDTH))
    drop_order = (("spark",), ("context",), ("pod",), ("in", "out"), ("namespace",))
    min_host = 9  # "HOSTNAME" and the sort arrow

    def used(cols: list[Column]) -> int:
        return sum(c.width + 1 for c in cols)

    for names in drop_order:
        if width - used(fixed) >= min_host + 1:
            break
        fixed = [c for c in fixed if c.name not in names]
    host_w = max(min_host, width - used(fixed) - 1)
    if host_width:
        host_w = min(host_w, max(min_host, host_width))
    return [Column("host", "HOSTNAME", host_w), *fixed]


def cell(row: Row, name: str, width: int, now: float | None = None) -> str:
    if name == "host":
        return row.host
    if name == "address":
        return row.address
    if name == "context":
        return row.context
    if name == "namespace":
        return row.namespace
    if name == "pod":
        return row.pod or "-"
    if name == "status":
        return row.status
    if name == "in":
        return human_bytes(row.bytes_in)
    if name == "out":
        return human_bytes(row.bytes_out)
    if name == "rate_in":
        return human_rate(row.rate_in)
    if name == "rate_out":
        return human_rate(row.rate_out)
    if name == "spark":
        return sparkline([a + b for a, b in row.history], width)
    raise ValueError(name)


def fit(text: str, width: int, align: str = "<") -> str:
    """``text`` cut or padded to exactly ``width`` characters (cut with an ellipsis)."""
    if len(text) > width:
        return text[: max(0, width - 1)] + "…" if width > 0 else ""
    return f"{text:{align}{width}}"


def render_row(row: Row, cols: Sequence[Column]) -> list[tuple[str, str]]:
    """(column name, text) of each cell, every one exactly its column's width."""
    return [(c.name, fit(cell(row, c.name, c.width), c.width, c.align)) for c in cols]


def header(cols: Sequence[Column], sort: str) -> str:
    sort_col = {"hostname": "host", "namespace": "namespace", "status": "status",
                "rate": "rate_in"}[sort]
    out = []
    for c in cols:
        title = c.title + ("↓" if c.name == sort_col else "")
        out.append(fit(title, c.width, c.align))
    return " ".join(out)


def age(since: float | None, now: float | None = None) -> str:
    if since is None:
        return "-"
    return human_duration((now if now is not None else time.time()) - since)
