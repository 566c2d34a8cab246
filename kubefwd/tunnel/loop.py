"""The event loop that drives tunnels: one selector, timers and a call queue, one thread.

A forwarder's thread runs one ``Loop`` for its listeners and for every tunnel it sends
connections to, so a forwarded service costs one thread however many connections and pods it
has. Everything registered with a loop is touched only by the thread running it; other
threads hand work over with ``call_soon``. A loop nobody runs yet (or any more) runs such work
on the calling thread instead, so a closed forward never strands a caller.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

Handler = Callable[[int], None]


class Closable(Protocol):
    """Something living on a loop that must be torn down when the loop ends."""

    def loop_closed(self) -> None: ...


class Timer:
    """A call scheduled on a loop; ``cancel`` (loop thread only) drops it."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Entry:
    __slots__ = ("events", "handler", "sock")

    def __init__(self, sock: Any, events: int, handler: Handler) -> None:
        self.sock = sock
        self.events = events
        self.handler = handler


class Loop:
    """A selector loop run by one thread at a time (``run_once`` in that thread's loop)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, READ, None)
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._calls: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._owner: int | None = None  # ident of the thread running the loop
        self._owners: set[Closable] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Loop {self.name}>"

    # -- any thread ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def in_loop(self) -> bool:
        """True on the thread running the loop (or, for a loop nobody runs, on any thread)."""
        owner = self._owner
        return owner is None or owner == threading.get_ident()

    def attach(self, owner: Closable) -> bool:
        """Tear ``owner`` down when the loop closes; False when it is closed already."""
        with self._lock:
            if self._closed:
                return False
            self._owners.add(owner)
            return True

    def detach(self, owner: Closable) -> None:
        with self._lock:
            self._owners.discard(owner)

    def call_soon(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the loop thread; False (and nothing done) once the loop is closed.

        On a loop that no thread runs, ``fn`` runs here and now.
        """
        with self._lock:
            if self._closed:
                return False
            if self._owner is not None:
                self._calls.append(fn)
                queued = True
            else:
                queued = False
        if queued:
            if self._owner != threading.get_ident():
                self.wake()
            return True
        fn()
        return True

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed

    # -- the loop thread -------------------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, fn)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def set_events(self, sock: Any, events: int, handler: Handler) -> None:
        """Watch ``sock`` for ``events`` (0: stop watching it) and call ``handler(mask)``."""
        if self._closed:
            return
        try:
            fd = sock.fileno()
        except OSError:
            return
        if fd < 0:
            return
        entry = self._entries.get(fd)
        if entry is not None and entry.sock is not sock:  # a stale entry for a reused fd
            self._drop(fd, entry)
            entry = None
        if not events:
            if entry is not None:
                self._drop(fd, entry)
            return
        if entry is None:
            entry = _Entry(sock, events, handler)
            self._entries[fd] = entry
            self._sel.register(fd, events, entry)
        elif entry.events != events or entry.handler is not handler:
            entry.events = events
            entry.handler = handler
            self._sel.modify(fd, events, entry)

    def forget(self, sock: Any) -> None:
        """Stop watching ``sock``; call before closing it."""
        try:
            fd = sock.fileno()
        except OSError:
            fd = -1
        if fd < 0:  # closed already: find it by identity
            fd = next((f for f, e in self._entries.items() if e.sock is sock), -1)
        entry = self._entries.get(fd)
        if entry is not None and entry.sock is sock:
            self._drop(fd, entry)

    def _drop(self, fd: int, entry: _Entry) -> None:
        del self._entries[fd]
        entry.events = 0
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def bind_thread(self) -> None:
        """The calling thread runs the loop from now on."""
        self._owner = threading.get_ident()

    def expect_thread(self) -> None:
        """A thread about to start will run the loop: queue work for it from now on."""
        if self._owner is None:
            self._owner = -1

    def run_once(self, timeout: float | None) -> None:
        """Wait for events (at most ``timeout`` seconds, or until a timer is due) and handle
        them, then due timers, then calls handed over by other threads."""
        timers = self._timers
        while timers and timers[0][2].cancelled:  # a cancelled timer wakes nobody
            heapq.heappop(timers)
        if self._calls:
            timeout = 0.0
        elif timers:
            due = max(0.0, timers[0][0] - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        for key, mask in self._sel.select(timeout):
            entry: _Entry | None = key.data
            if entry is None:
                self._drain_wake()
                continue
            if self._entries.get(key.fd) is not entry or not mask & entry.events:
                continue  # unregistered or changed by an earlier handler of this round
            try:
                entry.handler(mask & entry.events)
            except Exception:
                log.exception("%s: an event handler failed", self.name)
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if not timer.cancelled:
                    self._run(timer.fn)
        for _ in range(len(self._calls)):
            self._run(self._calls.popleft())

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("%s: a loop call failed", self.name)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """End of the loop (its thread, on the way out): tear down what lives on it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            owners = list(self._owners)
            self._owners.clear()
        while self._calls:  # work handed over before the end still runs
            self._run(self._calls.popleft())
        for owner in owners:
            try:
                owner.loop_closed()
            except Exception:
                log.exception("%s: teardown of %r failed", self.name, owner)
        self._timers.clear()
        self._entries.clear()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        self._owner = None


class LoopThread(threading.Thread):
    """A thread of its own running a loop (a tunnel used without a forwarder, tests, tools).

    ``stop_and_join`` ends it and closes the loop (tearing down what lives on it).
    """

    def __init__(self, loop: Loop, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.loop = loop
        self.stopping = threading.Event()
        loop.expect_thread()  # from now on, work is queued for this thread

    def run(self) -> None:
        self.loop.bind_thread()
        try:
            while not self.stopping.is_set():
                self.loop.run_once(None)
        except Exception:
            log.exception("thread %s failed", self.name)
        finally:
            self.loop.close()

    def stop(self) -> None:
        self.stopping.set()
        self.loop.wake()

    def stop_and_join(self, timeout: float = 10.0) -> bool:
        self.stop()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        return not self.is_alive()
