"""Informers: list, then watch from the list's resourceVersion, forever.

``informer_events`` is the pure loop: it takes a list callable and a watch callable (so tests
feed it canned streams) and yields normalized events. ``Informer`` is the thread that runs it
for one (context, namespace, resource) and hands each event to a callback.

After every (re)list the loop yields one ``SYNC`` event carrying the complete set of objects:
a consumer replaces what it knew of that resource with it, which also drops objects deleted
while the watch was down. Between lists it yields the watch's ADDED, MODIFIED and DELETED
events. BOOKMARKs only advance the resourceVersion. A 410 (expired resourceVersion) relists
at once; any other expected failure (``RETRYABLE``: API errors, network and TLS errors, a
broken HTTP exchange, undecodable JSON) backs off (1 s doubling to a cap, reset once a watch
proves healthy) and relists. Anything else is a bug: it is not retried but ends the loop, and
the ``Informer`` thread records it (``failed``, ``last_error``), logs it once with its
traceback and tells ``on_failure``.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubefwd.errors import ApiError
from kubefwd.support.threads import StoppableThread

log = logging.getLogger(__name__)

ListFn = Callable[[], tuple[list[dict[str, Any]], str]]
WatchFn = Callable[[str], Iterable[dict[str, Any]]]

# What a list or watch may fail with and still be worth retrying (WatchExpired is an ApiError).
RETRYABLE: tuple[type[Exception], ...] = (
    ApiError,
    OSError,
    http.client.HTTPException,
    json.JSONDecodeError,
)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
SYNC = "SYNC"


class Waiter(Protocol):
    """What the loop needs of its stop Event: tests pass a fake whose ``wait`` records."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class InformerEvent:
    """``type`` is ADDED, MODIFIED, DELETED (``obj`` set) or SYNC (``objects`` set)."""

    type: str
    obj: dict[str, Any] | None = None
    objects: tuple[dict[str, Any], ...] = ()
    resource_version: str = ""


@dataclass
class Backoff:
    """Delays between failed attempts: ``initial`` doubling up to ``cap``."""

    initial: float = 1.0
    cap: float = 30.0  # long enough not to hammer a sick API server, short enough to recover
    _next: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        delay = self._next or self.initial
        self._next = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = 0.0


def _status_code(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _is_expired(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status == 410


def informer_events(
    list_fn: ListFn,
    watch_fn: WatchFn,
    *,
    stop: Waiter,
    backoff: Backoff | None = None,
    on_error: Callable[[Exception, float], None] | None = None,
    what: str = "objects",
    clock: Callable[[], float] = time.monotonic,
    min_quiet_watch: float = 1.0,
    resync_interval: float | None = None,
) -> Iterator[InformerEvent]:
    """List→watch→relist loop until ``stop`` is set.

    ``watch_fn(rv)`` returns raw watch events; it may end (a server timeout: watch again from
    the newest RV), raise an ApiError with status 410 / yield an ERROR event with code 410
    (relist), or raise one of ``RETRYABLE`` (back off, relist); anything else propagates to
    the caller. ``on_error(exc, delay)`` is told of
    each failure before waiting ``delay`` seconds on ``stop``. A watch that ends cleanly
    without a single event sooner than ``min_quiet_watch`` seconds also backs off (a proxy
    cutting every watch short must not make us spin). With ``resync_interval``, a watch that
    ends after that many seconds since the last list is followed by a full relist (and SYNC);
    pass a watch timeout no longer than the interval.
    """
    backoff = backoff or Backoff()
    expired_in_a_row = 0
    while not stop.is_set():
        try:
            items, rv = list_fn()
        except RETRYABLE as e:
            if stop.is_set():  # the list was cut short because we are stopping
                return
            delay = backoff.next_delay()
            _report(on_error, e, delay, what)
            stop.wait(delay)
            continue
        if stop.is_set():
            return
        listed_at = clock()
        yield InformerEvent(SYNC, objects=tuple(items), resource_version=rv)
        relist = False
        while not relist and not stop.is_set():
            started = clock()
            seen = False
            try:
                for raw in watch_fn(rv):
                    seen = True
                    if stop.is_set():
                        return
                    kind = raw.get("type")
                    obj = raw.get("object") or {}
                    new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                    if kind == "ERROR":
                        code = _status_code(obj.get("code"))
                        message = str(obj.get("message") or obj)
                        raise ApiError(f"watch error: {message}", status=code or 500)
                    if new_rv:
                        rv = new_rv
                    expired_in_a_row = 0
                    backoff.reset()
                    if kind in (ADDED, MODIFIED, DELETED):
                        yield InformerEvent(kind, obj=obj, resource_version=rv)
                # The server ended the watch (timeoutSeconds): healthy, unless suspiciously soon.
                if seen or clock() - started >= min_quiet_watch:
                    backoff.reset()
                    if resync_interval is not None and clock() - listed_at >= resync_interval:
                        relist = True
                elif not stop.is_set():
                    delay = backoff.next_delay()
                    log.debug("%s: watch ended at once; waiting %.1f s", what, delay)
                    stop.wait(delay)
            except RETRYABLE as e:
                if stop.is_set():
                    return
                relist = True
                # An expiry is routine (the server compacted its history): relist at once,
                # quietly, unless the watch expired at once again (a tight loop otherwise).
                # A watch that ran a while before expiring is a fresh expiry, not a repeat.
                if _is_expired(e) and (expired_in_a_row == 0
                                       or clock() - started >= min_quiet_watch):
                    expired_in_a_row = 1
                    backoff.reset()
                    log.debug("%s: resourceVersion %s expired, listing again", what, rv)
                    continue
                delay = backoff.next_delay()
                _report(on_error, e, delay, what)
                stop.wait(delay)


def _report(
    on_error: Callable[[Exception, float], None] | None, exc: Exception, delay: float, what: str
) -> None:
    if on_error is not None:
        on_error(exc, delay)
    else:
        log.warning("%s: %s; retrying in %.0f s", what, exc, delay)


class Informer(StoppableThread):
    """One thread keeping one (context, namespace, resource) in sync, feeding ``callback``.

    ``stop``, when given, becomes ``self.stopping`` (bind the watch callable to it first).
    ``interrupt`` wakes a blocked watch (the KubeClient's ``interrupt``) so ``stop`` is
    prompt. ``synced`` is set after the first successful list; ``last_error`` holds the most
    recent failure (None once a list succeeds), for start-up checks.

    ``on_recovered(informer)`` is called on this thread once the SYNC of a list that
    succeeded after a failure has been handed to ``callback``: the API server is reachable
    again.

    A failure outside ``RETRYABLE`` (a bug) ends the thread: ``failed`` is set, ``last_error``
    keeps the exception, it is logged once with its traceback, and ``on_failure(informer,
    exc)`` is called on this thread (the app decides what a dead informer means).
    """

    def __init__(
        self,
        *,
        context: str,
        namespace: str,
        resource: str,
        list_fn: ListFn,
        watch_fn: WatchFn,
        callback: Callable[[InformerEvent], None],
        interrupt: Callable[[threading.Event], None] | None = None,
        backoff: Backoff | None = None,
        on_error: Callable[[Informer, Exception, float], None] | None = None,
        stop: threading.Event | None = None,
        resync_interval: float | None = None,
        on_failure: Callable[[Informer, Exception], None] | None = None,
        on_recovered: Callable[[Informer], None] | None = None,
    ) -> None:
        super().__init__(f"informer/{context}/{namespace or '*'}/{resource}")
        if stop is not None:  # the Event the watch callable was bound to
            self.stopping = stop
        self.context = context
        self.namespace = namespace
        self.resource = resource
        self._list_fn = list_fn
        self._watch_fn = watch_fn
        self._callback = callback
        self._interrupt = interrupt
        self._backoff = backoff or Backoff()
        self._on_error = on_error
        self._resync_interval = resync_interval
        self._on_failure = on_failure
        self._on_recovered = on_recovered
        self._recovered = False  # the last list succeeded after a failure
        self.synced = threading.Event()
        self.failed = threading.Event()
        self.last_error: Exception | None = None

    def _listed(self) -> tuple[list[dict[str, Any]], str]:
        result = self._list_fn()
        self._recovered = self.last_error is not None
        self.last_error = None
        return result

    def _error(self, exc: Exception, delay: float) -> None:
        self.last_error = exc
        if self._on_error is not None:
            self._on_error(self, exc, delay)
        else:
            log.warning("%s: %s; retrying in %.0f s", self.name, exc, delay)

    def run(self) -> None:
        try:
            self.run_loop()
        except Exception as exc:  # not a retryable failure: a bug; report it once, end
            self.last_error = exc
            self.failed.set()
            log.error("%s stopped by an unexpected error: %s: %s", self.name,
                      type(exc).__name__, exc, exc_info=True)
            if self._on_failure is not None:
                try:
                    self._on_failure(self, exc)
                except Exception:
                    log.exception("%s: on_failure failed", self.name)

    def run_loop(self) -> None:
        events = informer_events(
            self._listed,
            self._watch_fn,
            stop=self.stopping,
            backoff=self._backoff,
            on_error=self._error,
            what=self.name,
            resync_interval=self._resync_interval,
        )
        for event in events:
            try:
                self._callback(event)
            except Exception:  # a consumer bug must not stop the informer
                log.exception("%s: handling a %s event failed", self.name, event.type)
            if event.type == SYNC:
                self.synced.set()
                if self._recovered:
                    self._recovered = False
                    self._tell_recovered()

    def _tell_recovered(self) -> None:
        if self._on_recovered is None:
            return
        try:
            self._on_recovered(self)
        except Exception:
            log.exception("%s: on_recovered failed", self.name)

    def on_stop(self) -> None:
        if self._interrupt is not None:
            self._interrupt(self.stopping)

    def wait_synced(self, timeout: float) -> bool:
        """True once the first list has been delivered; False on timeout, or at once if the
        thread died (``failed``)."""
        deadline = time.monotonic() + timeout
        while not self.synced.is_set() and not self.failed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.synced.wait(min(left, 0.05))
        return self.synced.is_set()
