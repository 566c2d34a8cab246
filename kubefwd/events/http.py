"""HTTP exchanges seen on the forwards: a ring per forward, folded inline from
``HttpRequestSeen`` events (``bus.attach(log.fold)``), read by the TUI and the API."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

from kubefwd.events.types import Event, HttpRequestSeen

# Exchanges kept per forward.
PER_FORWARD = 100


@dataclass(frozen=True)
class HttpExchange:
    time: float
    key: str
    port: int
    method: str
    path: str
    status: int | None
    latency_ms: float | None
    size: int | None


class HttpLog:
    """The last ``size`` exchanges of each forward; attach ``fold`` inline to the bus."""

    def __init__(self, size: int = PER_FORWARD) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._rings: dict[str, collections.deque[HttpExchange]] = {}

    def fold(self, event: Event) -> None:
        if type(event) is not HttpRequestSeen:
            return
        assert isinstance(event, HttpRequestSeen)
        exchange = HttpExchange(event.time, event.key, event.port, event.method, event.path,
                                event.status, event.latency_ms, event.size)
        with self._lock:
            ring = self._rings.get(event.key)
            if ring is None:
                ring = self._rings[event.key] = collections.deque(maxlen=self._size)
            ring.append(exchange)

    def recent(self, key: str, limit: int = 100) -> list[HttpExchange]:
        """The last ``limit`` exchanges of forward ``key``, newest last."""
        if limit <= 0:
            return []
        with self._lock:
            ring = self._rings.get(key)
            items = list(ring) if ring is not None else []
        return items[-limit:]

    def forget(self, key: str) -> None:
        with self._lock:
            self._rings.pop(key, None)
