"""The threads that dial tunnels: a few, taking turns, instead of one started per dial.

Dialing blocks (TCP, TLS, the upgrade, maybe an exec credential plugin), so it cannot run on
a loop. Starting a thread for every dial cost about as much as the rest of opening a tunnel
when thousands open at once (the thread's stack mapped and unmapped, the start handshake,
the join: several context switches each). ``Openers`` runs dials on at most ``limit``
threads: a dial submitted while that many are busy waits in a queue, and each thread, once
its dial is done, takes the next one. A thread that finds the queue empty waits a little for
the next dial while others are still dialing (a burst: thousands of services at start-up),
and ends once none is, so none lingers once the tunnels are open (and nothing has to stop
them at shutdown). Whoever
submits a dial waits for it, if it must, through its own means (``PodTunnel`` keeps an
event per dial).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("kubefwd.tunnel")

# Dials running at once. Above the number a busy start-up keeps going (the CPU is the
# limit there, not the count), and high enough that a few dials hanging on an unreachable
# server until their timeout leave room for the others.
OPENER_LIMIT = 32
# While other dials are under way, a thread with nothing to do waits this long for the next.
LINGER = 1.0


class Openers:
    """Runs submitted functions on at most ``limit`` short-lived threads, in order."""

    def __init__(self, limit: int = OPENER_LIMIT, name: str = "dialer",
                 linger: float = LINGER) -> None:
        if limit < 1:
            raise ValueError("openers need at least one thread")
        self.limit = limit
        self.name = name
        self.linger = linger
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[Callable[[], None]] = deque()
        self._running = 0  # threads started and not yet ended
        self._busy = 0  # of them, running a job
        self._waiting = 0  # of them, waiting for a job (each re-checks the queue when woken)
        self._numbers = itertools.count(1)
        self.started = 0  # threads started so far (how many a run needed)

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on an opener thread, now or once one is free. ``job`` must not raise
        (what it raises is logged). RuntimeError when no thread can be started at all."""
        with self._cond:
            self._jobs.append(job)
            if self._waiting:
                self._cond.notify()
            if len(self._jobs) <= self._waiting or self._running >= self.limit:
                return  # a thread that waits, or one that finishes, takes it
            self._running += 1
            number = next(self._numbers)
        thread = threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            with self._cond:
                self._running -= 1
                if self._running:
                    return  # a running thread takes the job
                self._jobs.remove(job)
            raise
        self.started += 1

    @property
    def running(self) -> int:
        """Threads running (or about to end)."""
        return self._running

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return len(self._jobs)

    def _work(self) -> None:
        cond = self._cond
        with cond:
            while True:
                if self._jobs:
                    job = self._jobs.popleft()
                    self._busy += 1
                    cond.release()
                    try:
                        job()
                    except Exception:
                        log.exception("a tunnel dial failed unexpectedly")
                    finally:
                        cond.acquire()
                        self._busy -= 1
                    continue
                if not self._busy:
                    # Nothing queued and nothing under way: the burst is over. End, and let
                    # the threads waiting for more end too.
                    break
                # Others still dial: more opens are likely to follow (a start-up, many
                # clients at once); wait a little for one rather than end and be started
                # again.
                self._waiting += 1
                woken = cond.wait(self.linger)
                self._waiting -= 1
                if not woken and not self._jobs:
                    break
            self._running -= 1
            if self._waiting:
                cond.notify_all()


# The process's openers, shared by every tunnel.
OPENERS = Openers()
