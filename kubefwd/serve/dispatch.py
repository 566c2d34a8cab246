"""The threads that turn registry commands into forwarder changes, off the informer threads.

``Dispatcher`` applies the registry's command batches one at a time, in order, on a thread of
its own, so a slow bind or loopback alias never holds up a watch; ``Reaper`` joins the
forwarders of removed forwards on another, so a slow removal does not hold up the commands
behind it. Apart from the app: both are queues with their own locking and no knowledge of
what a command means.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from kubefwd.events.report import Reporter
from kubefwd.serve.forwarder import Forwarder
from kubefwd.support.threads import StoppableThread

log = logging.getLogger("kubefwd.app.program")  # the app's work, logged under its name


class Dispatcher(StoppableThread):
    """Applies the registry's command batches one at a time, in the order they came."""

    def __init__(self, apply: Callable[[list[Any]], None]) -> None:
        super().__init__("kubefwd/dispatch")
        self._apply = apply
        self._cond = threading.Condition()
        self._batches: deque[list[Any]] = deque()
        self._queued = 0
        self._done = 0

    def put(self, batch: list[Any]) -> None:
        """Called by the registry (in order, under its dispatch lock): queue and return."""
        with self._cond:
            if self.stopping.is_set():
                return
            self._batches.append(batch)
            self._queued += 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every batch queued so far has been applied."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(
                lambda: self._done >= target or self.stopping.is_set(), timeout
            ) and self._done >= target

    def on_stop(self) -> None:
        with self._cond:
            self._batches.clear()  # shutting down: what is left would only be undone
            self._cond.notify_all()

    def run_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._batches) or self.stopping.is_set())
                if self.stopping.is_set():
                    return
                batch = self._batches.popleft()
            try:
                self._apply(batch)
            except Exception:
                log.exception("applying registry commands failed")
            with self._cond:
                self._done += 1
                self._cond.notify_all()


class Reaper(StoppableThread):
    """Joins forwarders of removed forwards off the dispatcher thread, then reports them."""

    def __init__(self, report: Reporter) -> None:
        super().__init__("kubefwd/reaper")
        self._report = report
        self._cond = threading.Condition()
        self._pending: deque[tuple[str, str, Forwarder]] = deque()

    def reap(self, name: str, ip: str, forwarder: Forwarder) -> None:
        forwarder.stop()  # listeners close on its own thread, right away
        with self._cond:
            self._pending.append((name, ip, forwarder))
            self._cond.notify_all()

    def settle(self, ip: str, timeout: float = 5.0) -> bool:
        """Wait for stopping forwarders on ``ip`` to let go of it; True if there were any."""
        with self._cond:
            waiting = [f for _, i, f in self._pending if i == ip]
        for forwarder in waiting:
            forwarder.join(timeout)
        return bool(waiting)

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def run_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self.stopping.is_set())
                if not self._pending:
                    return
                name, ip, forwarder = self._pending[0]
            if not forwarder.stop_and_join(5.0):
                log.warning("%s: its listener thread did not stop in time", name)
            with self._cond:
                self._pending.popleft()
            self._report.removed(name, ip)
