"""Thread helpers: every long-lived thread is named, stoppable through an Event, and joined."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class StoppableThread(threading.Thread):
    """A daemon thread with a stop Event; subclasses override ``run_loop``.

    ``run_loop`` must return soon after ``self.stopping`` is set; it should wait with
    ``self.stopping.wait(timeout)`` instead of ``time.sleep``. ``on_stop`` is called by
    ``stop()`` to wake anything the loop may be blocked on (close a socket, put a sentinel).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self.run_loop()
        except Exception:  # a thread must never die silently
            log.exception("thread %s failed", self.name)

    def run_loop(self) -> None:
        raise NotImplementedError

    def on_stop(self) -> None:
        """Wake the loop if it is blocked; default: nothing to wake."""

    def stop(self) -> None:
        self.stopping.set()
        self.on_stop()

    def stop_and_join(self, timeout: float = 5.0) -> bool:
        """Stop the thread and wait for it; True when it ended within ``timeout``."""
        self.stop()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        return not self.is_alive()
