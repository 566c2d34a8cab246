"""The plain log of ``kubefwd svc``: a bus subscriber printing one line per event worth a line.

One line per forwarded service (``names → IP:ports → pod``), warnings for what was skipped,
the ``ready:`` line, whatever the core's modules log; ``-v`` adds their detail and, every
``SUMMARY_EVERY`` seconds that traffic moved, a one-line traffic summary. The stream is
written line by line: tests and scripts wait for lines such as ``ready:`` while the process
runs. When the stream is gone (``| head`` exited, ``>/dev/full``, the terminal was closed),
the forwards are still the job: the log goes quiet, forwarding goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import TextIO

from kubefwd.events.bus import EventBus, Subscription
from kubefwd.events.metrics import MetricsSnapshot
from kubefwd.events.types import (
    ErrorRaised,
    Event,
    ForwardBound,
    ForwardUnbound,
    LogLine,
    Ready,
    SubscriberDropped,
    WarningRaised,
)
from kubefwd.support.threads import StoppableThread

# With -v, a traffic summary at most this often (and only when something moved).
SUMMARY_EVERY = 10.0

_PRINTED = (ForwardBound, ForwardUnbound, Ready, LogLine, WarningRaised, ErrorRaised,
            SubscriberDropped)


def silence(stream: TextIO) -> None:
    """The stream is gone (a closed terminal, ``| head`` exited, a full device): point its
    descriptor at nothing, so that the interpreter's last flush at exit cannot fail noisily."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def arrow_for(stream: TextIO) -> str:
    encoding = (getattr(stream, "encoding", None) or "ascii").lower()
    return " → " if "utf" in encoding else " -> "


def format_event(event: Event, arrow: str = " → ") -> str | None:
    """The log line of ``event`` (without the time), or None when it has none."""
    if isinstance(event, ForwardBound):
        target = event.pod_path or event.pod or "(no ready pod yet)"
        return (f"Forwarding {', '.join(event.names)}{arrow}{event.ip}:{','.join(event.ports)}"
                f"{arrow}{target}")
    if isinstance(event, ForwardUnbound):
        return f"Stopped forwarding {event.key} ({event.ip})"
    if isinstance(event, Ready):
        return (f"ready: {event.services} services forwarded on {event.addresses} addresses in "
                f"{event.seconds:.2f}s (hosts file written {event.hosts_writes} times); "
                "Ctrl-C to stop")
    if isinstance(event, WarningRaised):
        return f"WARNING {event.message}"
    if isinstance(event, ErrorRaised):
        return f"ERROR {event.message}"
    if isinstance(event, LogLine):
        return f"debug {event.message}" if event.level == "debug" else event.message
    if isinstance(event, SubscriberDropped):
        return (f"WARNING output '{event.subscriber}' fell behind and lost {event.dropped} "
                "events")
    return None


def human_bytes(n: float, *, compact: bool = False) -> str:
    """``1.5 MB`` for the log; ``compact``: ``1.5M``, for table columns."""
    units = ("B", "K", "M", "G", "T") if compact else ("B", "KB", "MB", "GB", "TB")
    sep = "" if compact else " "
    for unit in units:
        if abs(n) < 1000 or unit == units[-1]:
            return f"{n:.0f}{sep}{unit}" if unit == "B" else f"{n:.1f}{sep}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def traffic_summary(snap: MetricsSnapshot) -> str:
    active = sum(1 for f in snap.forwards if f.open)
    return (f"traffic: {snap.open} open connections on {active} forwards, {snap.total} in all "
            f"({snap.failed} failed); in {human_bytes(snap.bytes_in)} "
            f"({human_bytes(snap.rate_in)}/s), out {human_bytes(snap.bytes_out)} "
            f"({human_bytes(snap.rate_out)}/s)")


class TextLog(StoppableThread):
    """Prints the events of ``bus`` as log lines on ``stream`` from a thread of its own."""

    def __init__(self, bus: EventBus, stream: TextIO, *, verbose: bool = False,
                 metrics: Callable[[], MetricsSnapshot] | None = None) -> None:
        super().__init__("kubefwd/text-log")
        self.stream = stream
        self.verbose = verbose
        self.arrow = arrow_for(stream)
        self.broken = False
        self._metrics = metrics if verbose else None
        self._summary_at = time.monotonic()
        self._summary_seen: tuple[int, int, int] = (0, 0, 0)
        self._sub: Subscription = bus.subscribe("text log", types=_PRINTED, maxsize=100_000)

    def run_loop(self) -> None:
        # Without a summary to print, nothing wakes this thread but an event.
        wait = 1.0 if self._metrics is not None else None
        while True:
            event = self._sub.get(timeout=wait)
            if event is not None:
                self.write(event)
            elif self._sub.closed:
                return  # closed and emptied: every line is out
            if self._metrics is not None:
                self._maybe_summary()

    def write(self, event: Event) -> None:
        line = format_event(event, self.arrow)
        if line is not None:
            self._print(event.time, line)

    def _maybe_summary(self) -> None:
        assert self._metrics is not None
        now = time.monotonic()
        if now - self._summary_at < SUMMARY_EVERY:
            return
        self._summary_at = now
        snap = self._metrics()
        seen = (snap.bytes_in, snap.bytes_out, snap.total)
        if seen != self._summary_seen:
            self._summary_seen = seen
            self._print(time.time(), traffic_summary(snap))

    def _print(self, when: float, line: str) -> None:
        if self.broken:
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(when))
        try:
            self.stream.write(f"{stamp} {line}\n")
            self.stream.flush()
        except OSError:
            self._give_up()

    def _give_up(self) -> None:
        self.broken = True
        silence(self.stream)

    def on_stop(self) -> None:
        # The thread prints what is still queued, then ends.
        self._sub.close()

    def finish(self, timeout: float = 5.0) -> None:
        """Print everything published so far, then stop."""
        self.stop_and_join(timeout)
