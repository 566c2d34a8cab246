"""Waiting out an API server that asks us to slow down (429, or 503 with Retry-After).

One ``ApiThrottle`` per cluster is shared by everything that talks to it: the informers'
lists and watches, the start-up look-ups and the tunnel dials. When any of them is told
``Retry-After: N``, every request of that cluster waits until N seconds (capped, plus a
little jitter so the waiters do not all come back in the same millisecond) have passed.
The first refusal of a burst is logged as one warning; the burst ends, with a debug line,
at the first request that goes through afterwards.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Statuses that mean "come back later": 429 always, 503 when it says when (Retry-After).
THROTTLE_STATUSES = frozenset({429, 503})
# Longest Retry-After we honour, and the wait when a 429 names none.
MAX_RETRY_AFTER = 60.0
DEFAULT_RETRY_AFTER = 1.0
# A request refused again and again for this long gives up (the caller's error path runs).
GIVE_UP_AFTER = 300.0
# Spread of the waiters' wake-up after a Retry-After, and how often a probe may go.
JITTER = 0.25
PROBE_INTERVAL = 1.0


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now())


def is_throttled(status: int, retry_after: str | None) -> bool:
    """Whether an answer asks to be waited out rather than reported."""
    return status == 429 or (status == 503 and parse_retry_after(retry_after) is not None)


class ApiThrottle:
    """The shared "not before" time of one cluster's API requests."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random,
                 max_wait: float = MAX_RETRY_AFTER) -> None:
        self.name = name
        self._clock = clock
        self._jitter = jitter
        self._max_wait = max_wait
        self._lock = threading.Lock()
        self._not_before = 0.0
        self._in_burst = False
        self._probe_at = 0.0
        self.refusals = 0  # every throttled answer seen, for tests and benchmarks
        self.bursts = 0

    def refused(self, status: int, retry_after: str | None, what: str) -> float:
        """Record a throttled answer to ``what``; returns the seconds to wait from now."""
        seconds = parse_retry_after(retry_after)
        if seconds is None:
            seconds = DEFAULT_RETRY_AFTER
        seconds = min(max(seconds, 0.0), self._max_wait)
        now = self._clock()
        with self._lock:
            self.refusals += 1
            self._not_before = max(self._not_before, now + seconds)
            self._probe_at = 0.0  # after this wait, the first to come probes
            first = not self._in_burst
            if first:
                self._in_burst = True
                self.bursts += 1
        if first:
            log.warning("the API server of %s asks us to slow down (%d on %s); waiting "
                        "%.0f s as it says, and as long as it keeps asking", self.name,
                        status, what, seconds)
        return seconds

    def accepted(self) -> None:
        """A request went through: a burst of refusals, if any, is over."""
        if not self._in_burst:  # the common case: no lock
            return
        with self._lock:
            ended, self._in_burst = self._in_burst, False
        if ended:
            log.debug("the API server of %s accepts requests again", self.name)

    def delay(self) -> float:
        """Seconds a new request must still wait (0 when it may go now): until the last
        Retry-After has passed, plus up to a quarter second of jitter."""
        with self._lock:
            left = self._not_before - self._clock()
        if left <= 0:
            return 0.0
        return left + JITTER * self._jitter()

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Wait until a request may go; False if ``stop`` was set meanwhile.

        Once a Retry-After has passed while a burst is still on, one request at a time (a
        probe, every PROBE_INTERVAL at most) finds out whether the server takes requests
        again; the others go as soon as one is accepted, or wait for the next Retry-After."""
        pause = stop or threading.Event()
        while True:
            with self._lock:
                now = self._clock()
                left = self._not_before - now
                if left <= 0:
                    if not self._in_burst or now >= self._probe_at:
                        if self._in_burst:
                            self._probe_at = now + PROBE_INTERVAL
                        return not (stop is not None and stop.is_set())
                    left = min(self._probe_at - now, 0.05)
                else:
                    left += JITTER * self._jitter()
            if pause.wait(left):
                return False
