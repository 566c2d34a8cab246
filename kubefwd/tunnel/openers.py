"""The threads that dial tunnels: a few, taking turns, as many as the dials need.

Dialing blocks (TCP, TLS, the upgrade, maybe an exec credential plugin), so it cannot run on
a loop. Starting a thread for every dial cost about as much as the rest of opening a tunnel
when thousands open at once (the thread's stack mapped and unmapped, the start handshake,
the join: several context switches each). ``Openers`` runs dials on a few threads: a dial
submitted while they are all busy waits in a queue, and each thread, once its dial is done,
takes the next one. A thread that finds the queue empty waits a little for the next dial
while others are still dialing (a burst: thousands of services at start-up), and ends once
none is, so none lingers once the tunnels are open (and nothing has to stop them at
shutdown). Whoever submits a dial waits for it, if it must, through its own means
(``PodTunnel`` keeps an event per dial).

How many threads dial at once is sized by what the dials wait on. A dial to a nearby API
server is mostly CPU (the TLS handshake, the upgrade), and Python runs one thread's code at
a time: more threads than that only wait for each other (at 32 threads most of a dial's
context switches were waits for the interpreter lock, and each open cost ~20 % more CPU
than at 4). A dial to a far-away server mostly waits on the network, and there every thread
more is a dial more under way. So each dial is timed: wall clock, its thread's CPU
(``time.thread_time``) and the whole process's CPU meanwhile (``time.process_time``: every
thread, the other dials and the forwards' loops too). Its wait is what is left of its wall
time once the process's CPU meanwhile is taken out: time in which kubefwd as a whole was
not running, so waiting on the network or the server, which another thread can overlap.
Time spent waiting for the CPU or the interpreter lock while other threads of kubefwd ran
is not counted, so many threads do not talk themselves into more (timed against the dials
beside it alone, a dial at 2000 services still looked like 30 ms of waiting for 1.5 ms of
CPU: the forwards' loops held the lock). With running averages of both, the number
wanted is ``1 + wait / cpu`` (one thread on the CPU while the others wait), between
``floor`` (two: one dial's network round trips overlap another's handshake) and ``limit``.
A CPU-bound dial keeps two threads; a dial that sleeps on the network grows the pool to the
limit within a few dials. The averages live as long as the pool: the next burst starts at
the size the last one learned.

A thread that finds the number wanted dialing already waits as a spare instead of dialing
(and ends with the burst), so a shrinking number does not churn threads. A dial that hangs
(an unreachable server, until its timeout) tells nothing until it ends: so while the number
wanted are all busy and no dial has begun for ``patience`` seconds, a spare thread (one is
started for that) takes the next queued dial: hung dials hold the others up for at most that
long each, never until their timeout. The end of a burst is logged at debug level with the
size it reached and what a dial cost.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("kubefwd.tunnel")

# Dials running at once, at most. High enough that a few dials hanging on an unreachable
# server until their timeout leave room for the others, and that a far-away cluster's
# start-up is not held up by round trips.
OPENER_LIMIT = 32
# And at least (once the dials are CPU-bound: one dial's round trips overlap another's CPU).
OPENER_FLOOR = 2
# While other dials are under way, a thread with nothing to do waits this long for the next.
LINGER = 1.0
# Every thread busy and no dial begun for this long: a spare thread takes the next dial.
PATIENCE = 0.5
# The weight of the newest dial in the running averages of CPU and wait.
WEIGHT = 0.2


class Openers:
    """Runs submitted functions on a few short-lived threads (``floor`` to ``limit``, as the
    functions' waits need), in order."""

    def __init__(self, limit: int = OPENER_LIMIT, name: str = "dialer",
                 linger: float = LINGER, floor: int = OPENER_FLOOR,
                 patience: float = PATIENCE) -> None:
        if limit < 1:
            raise ValueError("openers need at least one thread")
        self.limit = limit
        self.floor = max(1, min(floor, limit))
        self.name = name
        self.linger = linger
        self.patience = patience
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # lingering threads wait on it
        self._spare_wait = threading.Condition(lock)  # the spare thread waits on it
        self._jobs: deque[Callable[[], None]] = deque()
        self._running = 0  # threads started and not yet ended
        self._busy = 0  # of them, running a job
        self._waiting = 0  # of them, waiting for a job (each re-checks the queue when woken)
        self._spare = 0  # of them, waiting for a turn beyond ``wanted`` (one started at a time)
        self._last_begun = 0.0  # monotonic time the latest job began
        self._cpu = 0.0  # running averages of a job's CPU seconds and of its wait
        self._wait = 0.0
        self._samples = 0
        self.wanted = self.floor  # jobs to run at once, as the averages say
        self.peak = 0  # the most jobs that ran at once
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
            spare = self._running - self._spare >= self.wanted
            if spare:
                if self._spare:
                    return  # a spare one looks again soon
                self._spare += 1
            self._running += 1
        try:
            self._start(spare)
        except RuntimeError:
            with self._cond:
                self._running -= 1
                if spare:
                    self._spare = 0
                if self._running:
                    return  # a running thread takes the job
                self._jobs.remove(job)
            raise

    def _start(self, spare: bool) -> None:
        number = next(self._numbers)
        thread = threading.Thread(target=self._work, args=(spare,),
                                  name=f"{self.name}-{number}", daemon=True)
        thread.start()
        self.started += 1

    @property
    def running(self) -> int:
        """Threads running (or about to end)."""
        return self._running

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return len(self._jobs)

    def _learn(self, cpu: float, wall: float, process_cpu: float) -> None:
        """A job took ``wall`` seconds, ``cpu`` of its thread's and ``process_cpu`` of the
        whole process's meanwhile: update the averages and ``wanted`` (lock held)."""
        wait = max(0.0, wall - max(cpu, process_cpu))
        if self._samples == 0:
            self._cpu, self._wait = cpu, wait
        else:
            self._cpu += WEIGHT * (cpu - self._cpu)
            self._wait += WEIGHT * (wait - self._wait)
        self._samples += 1
        wanted = 1 + self._wait / max(self._cpu, 1e-6)
        self.wanted = max(self.floor, min(self.limit, math.ceil(wanted)))

    def _work(self, spare: bool) -> None:
        cond = self._cond
        with cond:
            while True:
                if self._jobs:
                    if self._busy >= self.wanted and (
                            time.monotonic() - self._last_begun < self.patience):
                        # Enough dials under way, and they progress: not this one's turn.
                        # Wait as a spare rather than end: the burst goes on, and the
                        # number wanted may grow again.
                        if not spare:
                            spare = True
                            self._spare += 1
                        self._spare_wait.wait(self.patience)
                        continue
                    if spare:
                        spare = False
                        self._spare -= 1
                    self._run(self._jobs.popleft())
                    grow = min(len(self._jobs),
                               self.wanted - (self._running - self._spare),
                               self.limit - self._running)
                    if grow > 0:  # the dials turned out to wait: more threads
                        self._running += grow
                        cond.release()
                        try:
                            for _ in range(grow):
                                self._start(False)
                        except RuntimeError:
                            pass  # those already running take the jobs
                        finally:
                            cond.acquire()
                    continue
                if spare:
                    spare = False
                    self._spare -= 1
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
            if spare:
                self._spare -= 1
            self._running -= 1
            if not self._running and self._samples:
                log.debug("tunnel dials done: up to %d at once, %d wanted now (a dial: "
                          "%.1f ms CPU, %.1f ms waiting)", self.peak, self.wanted,
                          self._cpu * 1000, self._wait * 1000)
            if self._waiting:
                cond.notify_all()
            if self._spare and not self._jobs:
                self._spare_wait.notify_all()

    def _run(self, job: Callable[[], None]) -> None:
        """Run ``job`` without the lock (held on entry and on return), and learn from it."""
        self._busy += 1
        self.peak = max(self.peak, self._busy)
        self._last_begun = time.monotonic()
        if not self._jobs and self._spare:
            self._spare_wait.notify_all()  # nothing left for them: they end
        self._cond.release()
        began, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
        try:
            job()
        except Exception:
            log.exception("a tunnel dial failed unexpectedly")
        finally:
            wall, cpu = time.perf_counter() - began, time.thread_time() - cpu
            process = time.process_time() - process
            self._cond.acquire()
            self._learn(cpu, wall, process)
            self._busy -= 1
            if self._spare and self._busy < self.wanted:
                self._spare_wait.notify()


# The process's openers, shared by every tunnel.
OPENERS = Openers()
