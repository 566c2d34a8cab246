"""What the core says to whoever listens: typed events instead of printed lines.

The forwarding core (forward set, routing, start-up, the app) reports through a ``Reporter``;
it publishes events on the bus and knows nothing of terminals, JSON or HTTP. Library modules
that log through :mod:`logging` reach the same bus through ``BusLogHandler``, so the text log,
``--output json`` and later the TUI and the API all see one stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from kubefwd.events.bus import EventBus
from kubefwd.events.types import (
    ErrorRaised,
    ForwardBound,
    ForwardFailed,
    ForwardUnbound,
    LogLine,
    Ready,
    WarningRaised,
)

LOGGER_NAME = "kubefwd"


class Reporter:
    """Publishes what happens as events; ``warning_once`` keeps a repeated warning to one."""

    def __init__(self, bus: EventBus, *, verbose: bool = False) -> None:
        self.bus = bus
        self.verbose = verbose
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    # -- forwards ---------------------------------------------------------------------------

    def forwarded(self, key: str, *, context: str, namespace: str, service: str,
                  names: Sequence[str], ip: str, ports: Sequence[str], pod: str | None,
                  pod_path: str | None = None, pod_ports: Sequence[str] = ()) -> None:
        self.bus.publish(ForwardBound(key=key, context=context, namespace=namespace,
                                      service=service, ip=ip, names=tuple(names),
                                      ports=tuple(ports), pod=pod, pod_path=pod_path,
                                      pod_ports=tuple(pod_ports)))

    def removed(self, key: str, ip: str) -> None:
        self.bus.publish(ForwardUnbound(key=key, ip=ip))

    def not_forwarded(self, key: str, message: str) -> None:
        """A forward none of whose ports could be bound."""
        self.bus.publish(ForwardFailed(key=key, message=message))
        self.bus.publish(WarningRaised(message=f"{key}: {message}", key=key))

    def ready(self, services: int, addresses: int, seconds: float, hosts_writes: int) -> None:
        self.bus.publish(Ready(services=services, addresses=addresses, seconds=seconds,
                               hosts_writes=hosts_writes))

    # -- free text ----------------------------------------------------------------------------

    def info(self, message: str, *args: object) -> None:
        self.bus.publish(LogLine(level="info", message=_format(message, args)))

    def debug(self, message: str, *args: object) -> None:
        if self.verbose:
            self.bus.publish(LogLine(level="debug", message=_format(message, args)))

    def warning(self, message: str, *args: object, key: str | None = None) -> None:
        self.bus.publish(WarningRaised(message=_format(message, args), key=key))

    def warning_once(self, once: str, message: str, *args: object) -> None:
        """Warn about ``once`` only the first time (a service with no pod, a skipped port)."""
        with self._lock:
            if once in self._warned:
                return
            self._warned.add(once)
        self.warning(message, *args)

    def error(self, message: str, *args: object) -> None:
        self.bus.publish(ErrorRaised(message=_format(message, args)))


def _format(message: str, args: tuple[object, ...]) -> str:
    return message % args if args else message


class BusLogHandler(logging.Handler):
    """Turns the ``kubefwd`` logger's records into events: modules that log (informers,
    tunnels, the hosts writer) end up on the same stream as everything else."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__(logging.DEBUG)
        self.bus = bus

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.levelno >= logging.ERROR:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # a bad format string must not take a forwarder down
            message = str(record.msg)
        if record.levelno >= logging.ERROR:
            self.bus.publish(ErrorRaised(message=message, time=record.created))
        elif record.levelno >= logging.WARNING:
            self.bus.publish(WarningRaised(message=message, time=record.created))
        else:
            level = "debug" if record.levelno <= logging.DEBUG else "info"
            self.bus.publish(LogLine(level=level, message=message, time=record.created))


def route_logging(bus: EventBus, *, verbose: bool) -> BusLogHandler:
    """Send the ``kubefwd`` logger to ``bus`` (``verbose``: debug too); returns the handler,
    to be passed to ``unroute_logging``."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = BusLogHandler(bus)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return handler


def unroute_logging(handler: BusLogHandler) -> None:
    logging.getLogger(LOGGER_NAME).removeHandler(handler)
