"""Typed, immutable events: what the core says happened, for every observer alike.

Every event is a frozen dataclass with keyword-only fields and a ``time`` (wall clock,
seconds since the epoch) taken when it is built. Its class variable ``type`` names it in
snake_case; that name is the ``"type"`` of its JSON form and never changes once released.

JSON schema (``to_json``), one object per event::

    {"type": "forward_bound", "time": "2024-05-01T12:00:00.123Z", <every field by name>}

``time`` is ISO-8601 UTC with milliseconds and a ``Z``; tuples become lists; the other values
are strings, integers, floats, booleans or null. Fields are only ever added, never renamed or
removed. The ``key`` of a forward is ``context/namespace/service`` for a service and
``context/namespace/service/pod`` for one pod of a headless service. No event ever carries a
credential (token, certificate, password, kubeconfig user): only names, addresses, ports and
messages meant for the person running kubefwd.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event; not published itself."""

    type: ClassVar[str]
    time: float = field(default_factory=time.time)


# -- services ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceAdded(Event):
    """A service of a watched namespace appeared (or was listed at start-up)."""

    type: ClassVar[str] = "service_added"
    key: str
    context: str
    namespace: str
    service: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceUpdated(Event):
    """A service changed (ports, selector, type)."""

    type: ClassVar[str] = "service_updated"
    key: str
    context: str
    namespace: str
    service: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRemoved(Event):
    """A service was deleted; its forwards (one per pod when headless) go with it."""

    type: ClassVar[str] = "service_removed"
    key: str
    context: str
    namespace: str
    service: str


# -- forwards ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardBound(Event):
    """A forward listens on its address; ``pod`` is the pod it routes to, if any yet (its
    name, as in every event; ``pod_path`` is how the log shows it: ``namespace/pod``, with
    the context in front when several are forwarded)."""

    type: ClassVar[str] = "forward_bound"
    key: str
    context: str
    namespace: str
    service: str
    ip: str
    names: tuple[str, ...]
    ports: tuple[str, ...]  # display strings such as "80" or "8080:80"
    pod: str | None
    pod_path: str | None = None
    # The pod's port behind each of ``ports`` ("" where not known yet).
    pod_ports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardUnbound(Event):
    """A forward stopped listening and released its address."""

    type: ClassVar[str] = "forward_unbound"
    key: str
    ip: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardFailed(Event):
    """A forward could not be bound at all (no address left, address in use, ...)."""

    type: ClassVar[str] = "forward_failed"
    key: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PodChanged(Event):
    """The pod a forward routes to changed; ``pod`` is None while none is ready."""

    type: ClassVar[str] = "pod_changed"
    key: str
    pod: str | None
    previous: str | None


# -- tunnels -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelOpened(Event):
    """A port-forward tunnel to a pod is open; ``transport`` names the protocol it speaks."""

    type: ClassVar[str] = "tunnel_opened"
    key: str
    pod: str
    transport: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelFailed(Event):
    """A tunnel to a pod could not be opened, or broke."""

    type: ClassVar[str] = "tunnel_failed"
    key: str
    pod: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelClosed(Event):
    """A tunnel was closed on purpose (unused, pod gone, shutdown)."""

    type: ClassVar[str] = "tunnel_closed"
    key: str
    pod: str


# -- connections ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionHeld(Event):
    """A local connection was accepted and waits for a ready pod."""

    type: ClassVar[str] = "connection_held"
    key: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRouted(Event):
    """A local connection was given a stream to ``pod``."""

    type: ClassVar[str] = "connection_routed"
    key: str
    port: int
    pod: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionFailed(Event):
    """A local connection was given up (no pod in time, the stream was refused, ...)."""

    type: ClassVar[str] = "connection_failed"
    key: str
    port: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """A local connection ended."""

    type: ClassVar[str] = "connection_closed"
    key: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectRequested(Event):
    """Someone asked (the TUI, the API) for the forward's tunnels to be opened afresh."""

    type: ClassVar[str] = "reconnect_requested"
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceWatched(Event):
    """A namespace is watched from now on (start-up, or added while running)."""

    type: ClassVar[str] = "namespace_watched"
    context: str
    namespace: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceUnwatched(Event):
    """A namespace is no longer watched; its forwards go."""

    type: ClassVar[str] = "namespace_unwatched"
    context: str
    namespace: str


# -- hosts file, lifecycle, log ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HostsWritten(Event):
    """The hosts file was written with ``lines`` lines of ours; ``how`` is the way it was
    written (such as "rename" or "in-place")."""

    type: ClassVar[str] = "hosts_written"
    path: str
    lines: int
    how: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready(Event):
    """Everything known at start-up is bound and in the hosts file."""

    type: ClassVar[str] = "ready"
    services: int
    addresses: int
    seconds: float
    hosts_writes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine(Event):
    """A line of the log; ``level`` is one of ``LOG_LEVELS``."""

    type: ClassVar[str] = "log_line"
    level: str
    message: str

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise ValueError(f"log level {self.level!r} is not one of {', '.join(LOG_LEVELS)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class WarningRaised(Event):
    """Something was skipped or degraded; ``key`` names the forward it concerns, if one."""

    type: ClassVar[str] = "warning_raised"
    message: str
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRaised(Event):
    """Something failed; ``key`` names the forward it concerns, if one."""

    type: ClassVar[str] = "error_raised"
    message: str
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownStarted(Event):
    """Shutdown began; ``reason`` says why (a signal's name, a fatal error)."""

    type: ClassVar[str] = "shutdown_started"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownComplete(Event):
    """Shutdown finished; the process exits with ``exit_code``."""

    type: ClassVar[str] = "shutdown_complete"
    exit_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberDropped(Event):
    """A subscriber's queue was full and it began losing events; ``dropped`` is how many it
    has lost so far."""

    type: ClassVar[str] = "subscriber_dropped"
    subscriber: str
    dropped: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequestSeen(Event):
    """An HTTP/1.x request (and its response, once seen) went through a forward's port;
    ``status``, ``latency_ms`` and ``size`` are None when no response was seen."""

    type: ClassVar[str] = "http_request_seen"
    key: str
    port: int
    method: str
    path: str
    status: int | None
    latency_ms: float | None
    size: int | None


EVENT_TYPES: tuple[type[Event], ...] = (
    ServiceAdded,
    ServiceUpdated,
    ServiceRemoved,
    ForwardBound,
    ForwardUnbound,
    ForwardFailed,
    PodChanged,
    TunnelOpened,
    TunnelFailed,
    TunnelClosed,
    ConnectionHeld,
    ConnectionRouted,
    ConnectionFailed,
    ConnectionClosed,
    ReconnectRequested,
    NamespaceWatched,
    NamespaceUnwatched,
    HostsWritten,
    Ready,
    LogLine,
    WarningRaised,
    ErrorRaised,
    ShutdownStarted,
    ShutdownComplete,
    SubscriberDropped,
    HttpRequestSeen,
)


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO-8601 UTC with milliseconds and a ``Z``."""
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: object) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def to_json(event: Event) -> dict[str, Any]:
    """The JSON object of ``event`` (see the module docstring for the schema)."""
    out: dict[str, Any] = {"type": event.type, "time": iso_time(event.time)}
    for f in dataclasses.fields(event):
        if f.name != "time":
            out[f.name] = _plain(getattr(event, f.name))
    return out
