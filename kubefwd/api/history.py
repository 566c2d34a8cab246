"""Bounded rings the API serves: the last events of the bus and kubefwd's own log lines.

Both attach inline to the bus (an append to a bounded deque, O(1), no blocking), so they see
everything published from the moment the API starts, including start-up.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from kubefwd.events.bus import EventBus
from kubefwd.events.types import ErrorRaised, Event, LogLine, WarningRaised, iso_time, to_json

# Ring sizes (documented in the README and the OpenAPI spec).
EVENT_HISTORY = 1000
LOG_HISTORY = 1000

# Busy, per-connection events stay out of the history ring (they are on the SSE stream).
_NOT_KEPT = frozenset({"connection_routed", "connection_closed", "connection_held",
                       "http_request_seen"})


class EventHistory:
    """The last ``size`` events (but per-connection ones) as JSON objects, oldest first."""

    def __init__(self, size: int = EVENT_HISTORY) -> None:
        self._ring: collections.deque[Event] = collections.deque(maxlen=size)

    def fold(self, event: Event) -> None:
        if event.type not in _NOT_KEPT:
            self._ring.append(event)

    def recent(self, limit: int, type_filter: set[str] | None = None) -> list[dict[str, Any]]:
        events = [e for e in list(self._ring) if type_filter is None or e.type in type_filter]
        return [to_json(e) for e in events[-limit:]] if limit > 0 else []


class LogRing:
    """kubefwd's own log lines (``LogLine``, warnings, errors), oldest first; each has a
    sequence number so a stream can resume after the lines it has already sent."""

    def __init__(self, size: int = LOG_HISTORY) -> None:
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._seq = 0
        self._cond = threading.Condition()

    def fold(self, event: Event) -> None:
        if isinstance(event, LogLine):
            level = event.level
        elif isinstance(event, WarningRaised):
            level = "warning"
        elif isinstance(event, ErrorRaised):
            level = "error"
        else:
            return
        with self._cond:
            self._seq += 1
            self._ring.append({"seq": self._seq, "time": iso_time(event.time), "level": level,
                               "message": event.message})
            self._cond.notify_all()

    def recent(self, limit: int, level: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            lines = list(self._ring)
        if level:
            lines = [line for line in lines if line["level"] == level]
        return lines[-limit:] if limit > 0 else []

    def after(self, seq: int, timeout: float) -> list[dict[str, Any]]:
        """The lines after ``seq``, waiting up to ``timeout`` for one."""
        with self._cond:
            if self._seq <= seq:
                self._cond.wait(timeout)
            return [line for line in self._ring if line["seq"] > seq]

    @property
    def last_seq(self) -> int:
        return self._seq


def attach_all(bus: EventBus, *folds: Callable[[Event], None]) -> Callable[[], None]:
    detaches = [bus.attach(fold) for fold in folds]

    def detach() -> None:
        for d in detaches:
            d()

    return detach
