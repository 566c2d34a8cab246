"""The state store: every forward's current state, folded from events.

Attach it inline with ``bus.attach(store.fold)``: each fold is a dictionary update under a
small lock, and readers (the TUI, the REST API) take immutable snapshots. ``version`` grows
by one on every fold that changed something, so a reader can tell whether to redraw.

Status rules, one per event (an event naming an unknown forward changes nothing, except
``ForwardFailed``):

- ``ForwardBound``: the forward enters (or is replaced, keeping its reconnect count and last
  error); ``active`` with ``connected_since`` = the event's time when it names a pod,
  ``pending`` without one.
- ``PodChanged`` to a pod: ``active``, ``connected_since`` = the event's time; ``reconnects``
  grows by one and a reconnection is recorded when there was a previous pod. To None:
  ``reconnecting``, no pod, no ``connected_since``.
- ``ConnectionRouted`` while not ``active`` (nor ``stopping``): ``connecting`` to that pod,
  until the tunnel opens.
- ``ReconnectRequested``: ``reconnecting``, no ``connected_since``, until the next
  ``TunnelOpened`` (or ``ConnectionRouted``: ``connecting``).
- ``TunnelOpened``: ``active`` on that pod (``connected_since`` kept if it was already active).
- ``TunnelFailed``: ``error`` with ``last_error``; ``connected_since`` cleared.
- ``TunnelClosed``: no change; idle tunnels are closed while the forward still serves.
- ``ConnectionFailed``: ``last_error`` is set; the status becomes ``error`` only when the
  forward was not ``active`` (a connection given up while pending, reconnecting or
  connecting); one failed connection on a serving forward is not an error of the forward.
- ``ForwardFailed``: ``error`` with ``last_error``; a forward that never bound enters the
  store with no address, its context, namespace and service read from its key.
- ``ShutdownStarted``: every forward ``stopping``; ``shutting_down`` becomes True.
- ``Ready``: ``ready`` becomes True.
- ``ForwardUnbound``: the forward leaves the store. ``ServiceRemoved``: the service's forward
  and its per-pod forwards (keys under ``key/``) leave the store.
- ``ServiceAdded`` / ``ServiceRemoved`` also keep the count of known services.

Every failure (``TunnelFailed``, ``ConnectionFailed``, ``ForwardFailed``, ``ErrorRaised``)
goes into a ring of the last ``history`` errors; every move from one pod to another into a
ring of the last ``history`` reconnections.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

from kubefwd.events.types import (
    ConnectionFailed,
    ConnectionRouted,
    ErrorRaised,
    Event,
    ForwardBound,
    ForwardFailed,
    ForwardUnbound,
    PodChanged,
    Ready,
    ReconnectRequested,
    ServiceAdded,
    ServiceRemoved,
    ShutdownStarted,
    TunnelFailed,
    TunnelOpened,
)

STATUSES = ("pending", "connecting", "active", "error", "reconnecting", "stopping")


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardState:
    """One forward as the store last saw it; ``status`` is one of ``STATUSES``."""

    key: str
    context: str
    namespace: str
    service: str
    ip: str
    names: tuple[str, ...]
    ports: tuple[str, ...]
    pod: str | None
    status: str
    last_error: str | None
    last_error_time: float | None
    connected_since: float | None
    updated: float
    reconnects: int
    pod_ports: tuple[str, ...] = ()  # the pod's port behind each of ``ports`` ("": unknown)


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One failure; ``key`` is None when it concerns no single forward."""

    time: float
    key: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Reconnection:
    """A forward moved from ``previous`` to ``pod``."""

    time: float
    key: str
    pod: str
    previous: str


@dataclass(frozen=True, slots=True)
class Counts:
    """How many services are known and how many forwards are in each status."""

    services: int
    forwards: int
    pending: int
    connecting: int
    active: int
    error: int
    reconnecting: int
    stopping: int


class StateStore:
    """Every forward's state, folded from events (see the module docstring for the rules)."""

    def __init__(self, *, history: int = 200) -> None:
        self._lock = threading.Lock()
        self._forwards: dict[str, ForwardState] = {}
        self._services: set[str] = set()
        self._errors: collections.deque[ErrorRecord] = collections.deque(maxlen=history)
        self._reconnections: collections.deque[Reconnection] = collections.deque(
            maxlen=history
        )
        self._snapshot: tuple[ForwardState, ...] = ()
        self._snapshot_version = 0
        self.version = 0
        self.ready = False
        self.shutting_down = False

    # -- folding ---------------------------------------------------------------------------

    # The events that can change the store; the others (the busiest among them, such as
    # ConnectionClosed) return before taking the lock.
    FOLDED: frozenset[type[Event]] = frozenset({
        ForwardBound, PodChanged, ConnectionRouted, TunnelOpened, TunnelFailed,
        ConnectionFailed, ForwardFailed, ErrorRaised, ForwardUnbound, ServiceAdded,
        ServiceRemoved, ShutdownStarted, Ready, ReconnectRequested,
    })

    def fold(self, event: Event) -> None:
        """Apply ``event``; O(1) except ``ShutdownStarted`` and ``ServiceRemoved``."""
        if type(event) not in self.FOLDED:
            return
        with self._lock:
            if self._apply(event):
                self.version += 1

    def _apply(self, event: Event) -> bool:
        if isinstance(event, ForwardBound):
            old = self._forwards.get(event.key)
            self._forwards[event.key] = ForwardState(
                key=event.key,
                context=event.context,
                namespace=event.namespace,
                service=event.service,
                ip=event.ip,
                names=event.names,
                ports=event.ports,
                pod_ports=event.pod_ports,
                pod=event.pod,
                status="active" if event.pod is not None else "pending",
                last_error=old.last_error if old else None,
                last_error_time=old.last_error_time if old else None,
                connected_since=event.time if event.pod is not None else None,
                updated=event.time,
                reconnects=old.reconnects if old else 0,
            )
            return True
        if isinstance(event, PodChanged):
            state = self._forwards.get(event.key)
            if state is None:
                return False
            if event.pod is None:
                self._put(state, event, pod=None, status="reconnecting", connected_since=None)
                return True
            reconnects = state.reconnects
            if event.previous is not None:
                reconnects += 1
                self._reconnections.append(
                    Reconnection(event.time, event.key, event.pod, event.previous)
                )
            self._put(
                state, event, pod=event.pod, status="active", connected_since=event.time,
                reconnects=reconnects,
            )
            return True
        if isinstance(event, ConnectionRouted):
            state = self._forwards.get(event.key)
            if state is None or state.status in ("active", "stopping", "connecting"):
                return False
            self._put(state, event, pod=event.pod, status="connecting")
            return True
        if isinstance(event, ReconnectRequested):
            state = self._forwards.get(event.key)
            if state is None or state.status == "stopping":
                return False
            self._put(state, event, status="reconnecting", connected_since=None)
            return True
        if isinstance(event, TunnelOpened):
            state = self._forwards.get(event.key)
            if state is None or state.status == "stopping":
                return False
            if state.status == "active" and state.pod == event.pod:
                return False
            self._put(state, event, pod=event.pod, status="active", connected_since=event.time)
            return True
        if isinstance(event, TunnelFailed):
            self._errors.append(ErrorRecord(event.time, event.key, event.message))
            state = self._forwards.get(event.key)
            if state is not None and state.status != "stopping":
                self._put(
                    state, event, status="error", last_error=event.message,
                    last_error_time=event.time, connected_since=None,
                )
            return True
        if isinstance(event, ConnectionFailed):
            self._errors.append(ErrorRecord(event.time, event.key, event.reason))
            state = self._forwards.get(event.key)
            if state is not None:
                status = state.status
                if status not in ("active", "stopping"):
                    status = "error"
                self._put(
                    state, event, status=status, last_error=event.reason,
                    last_error_time=event.time,
                )
            return True
        if isinstance(event, ForwardFailed):
            self._errors.append(ErrorRecord(event.time, event.key, event.message))
            state = self._forwards.get(event.key) or _unbound(event)
            self._put(
                state, event, status="error", last_error=event.message,
                last_error_time=event.time,
            )
            return True
        if isinstance(event, ErrorRaised):
            self._errors.append(ErrorRecord(event.time, event.key, event.message))
            return True
        if isinstance(event, ForwardUnbound):
            return self._forwards.pop(event.key, None) is not None
        if isinstance(event, ServiceAdded):
            if event.key in self._services:
                return False
            self._services.add(event.key)
            return True
        if isinstance(event, ServiceRemoved):
            changed = event.key in self._services
            self._services.discard(event.key)
            prefix = event.key + "/"
            gone = [k for k in self._forwards if k == event.key or k.startswith(prefix)]
            for k in gone:
                del self._forwards[k]
            return changed or bool(gone)
        if isinstance(event, ShutdownStarted):
            changed = not self.shutting_down
            for key, state in self._forwards.items():
                if state.status != "stopping":
                    self._forwards[key] = dataclasses.replace(
                        state, status="stopping", updated=event.time
                    )
                    changed = True
            self.shutting_down = True
            return changed
        if isinstance(event, Ready):
            if self.ready:
                return False
            self.ready = True
            return True
        return False

    def _put(self, state: ForwardState, event: Event, **changes: Any) -> None:
        self._forwards[state.key] = dataclasses.replace(state, updated=event.time, **changes)

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> tuple[ForwardState, ...]:
        """Every forward, sorted by key; immutable, and built once per version."""
        with self._lock:
            if self._snapshot_version != self.version:
                self._snapshot = tuple(
                    self._forwards[k] for k in sorted(self._forwards)
                )
                self._snapshot_version = self.version
            return self._snapshot

    def get(self, key: str) -> ForwardState | None:
        return self._forwards.get(key)

    def counts(self) -> Counts:
        with self._lock:
            n = collections.Counter(s.status for s in self._forwards.values())
            return Counts(
                services=len(self._services),
                forwards=len(self._forwards),
                pending=n["pending"],
                connecting=n["connecting"],
                active=n["active"],
                error=n["error"],
                reconnecting=n["reconnecting"],
                stopping=n["stopping"],
            )

    @property
    def services(self) -> int:
        """How many services are known (added and not removed)."""
        return len(self._services)

    @property
    def total(self) -> int:
        return len(self._forwards)

    @property
    def active(self) -> int:
        return sum(1 for s in tuple(self._forwards.values()) if s.status == "active")

    def errors(self) -> tuple[ErrorRecord, ...]:
        """The last failures, oldest first."""
        with self._lock:
            return tuple(self._errors)

    def reconnections(self) -> tuple[Reconnection, ...]:
        """The last moves from one pod to another, oldest first."""
        with self._lock:
            return tuple(self._reconnections)


def _unbound(event: ForwardFailed) -> ForwardState:
    """The state of a forward that never bound, its names read from its key."""
    parts = event.key.split("/")
    parts += [""] * (3 - len(parts))
    return ForwardState(
        key=event.key,
        context=parts[0],
        namespace=parts[1],
        service=parts[2],
        ip="",
        names=(),
        ports=(),
        pod=None,
        status="error",
        last_error=event.message,
        last_error_time=event.time,
        connected_since=None,
        updated=event.time,
        reconnects=0,
    )
