"""Fan-out of events to subscribers with bounded queues and to inline listeners.

Publishers are the forwarders' selector loops, the informers and the hosts writer: a publish
must never block them and never raise into them. So ``publish`` reads a copy-on-write tuple
of subscriptions and one of listeners (no lock on that path), appends to each subscriber's
own bounded queue, and when a queue is full drops the new event and counts it instead of
waiting. Subscribing, closing and attaching take a lock and replace the tuples.

Each subscription has one consumer thread (``get``, ``drain`` or iteration); any number of
threads may publish. With several publishers racing on the last free place, a queue can hold
at most one extra event per racing publisher beyond ``maxsize``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator

from kubefwd.events.types import Event, SubscriberDropped

log = logging.getLogger("kubefwd.events")

Listener = Callable[[Event], None]


class Subscription:
    """One subscriber's bounded queue of events.

    ``dropped`` counts the events lost because the queue was full, ``delivered`` those taken
    out by ``get``, ``drain`` or iteration. An overflow episode starts with the first drop
    (the bus then tells the other subscribers, once) and ends when the consumer has emptied
    the queue.
    """

    def __init__(
        self,
        bus: EventBus,
        name: str,
        *,
        maxsize: int,
        types: Collection[type[Event]] | None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("a subscription needs room for at least one event")
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self.delivered = 0
        self._bus = bus
        self._types = None if types is None else tuple(types)
        for cls in self._types or ():
            if not (isinstance(cls, type) and issubclass(cls, Event)):
                raise TypeError(f"{cls!r} is not an event class")
        self._accepts: dict[type[Event], bool] = {}
        self._items: collections.deque[Event] = collections.deque()
        self._wakeup = threading.Event()
        self._waiting = False
        self._closed = False
        self._overflowing = False
        self._drop_lock = threading.Lock()

    # -- publisher side (any thread) -------------------------------------------------------

    def _wants(self, cls: type[Event]) -> bool:
        if self._types is None:
            return True
        try:
            return self._accepts[cls]
        except KeyError:
            wanted = issubclass(cls, self._types)
            self._accepts[cls] = wanted
            return wanted

    def _offer(self, event: Event) -> bool:
        """Queue ``event``; False when it was dropped and this drop starts an overflow
        episode (the caller then tells the other subscribers)."""
        if len(self._items) < self.maxsize:
            self._items.append(event)
            # Appended before reading the flag; ``get`` sets the flag before re-checking the
            # queue: one of the two always sees the other.
            if self._waiting:
                self._wakeup.set()
            return True
        with self._drop_lock:
            self.dropped += 1
            if self._overflowing:
                return True
            self._overflowing = True
            return False

    # -- consumer side (one thread) --------------------------------------------------------

    def _taken(self, count: int) -> None:
        self.delivered += count
        if self._overflowing and not self._items:
            with self._drop_lock:
                self._overflowing = False

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (for ever with None); None on
        timeout, or once the subscription is closed and its queue is empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                event = self._items.popleft()
            except IndexError:
                pass
            else:
                self._taken(1)
                return event
            if self._closed:
                return None
            self._wakeup.clear()
            self._waiting = True
            try:
                if self._items or self._closed:
                    continue
                if deadline is None:
                    self._wakeup.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._wakeup.wait(remaining):
                        if self._items:
                            continue
                        return None
            finally:
                self._waiting = False

    def drain(self) -> list[Event]:
        """Every queued event, without waiting."""
        out: list[Event] = []
        while True:
            try:
                out.append(self._items.popleft())
            except IndexError:
                break
        if out:
            self._taken(len(out))
        return out

    def __iter__(self) -> Iterator[Event]:
        """Events as they come, until the subscription is closed and emptied."""
        while True:
            event = self.get(None)
            if event is None:
                return
            yield event

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """How many events wait in the queue."""
        return len(self._items)

    def close(self) -> None:
        """Unsubscribe and wake a blocked ``get``; events already queued can still be read."""
        self._bus._remove(self)
        self._closed = True
        self._wakeup.set()

    def __repr__(self) -> str:
        return (
            f"Subscription({self.name!r}, queued={len(self._items)}, "
            f"delivered={self.delivered}, dropped={self.dropped})"
        )


class EventBus:
    """Fans events out to subscriptions (bounded queues) and inline listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: tuple[Subscription, ...] = ()
        self._listeners: tuple[Listener, ...] = ()
        self._closed = False

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every listener and subscriber; never blocks, never raises."""
        self._publish(event, None)

    def _publish(self, event: Event, skip: Subscription | None) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                self._listener_failed(listener)
        cls = type(event)
        overflowed: list[Subscription] | None = None
        for sub in self._subscriptions:
            if sub is skip or not sub._wants(cls):
                continue
            if not sub._offer(event):
                if overflowed is None:
                    overflowed = []
                overflowed.append(sub)
        if overflowed:
            for sub in overflowed:
                self._publish(SubscriberDropped(subscriber=sub.name, dropped=sub.dropped), sub)

    def _listener_failed(self, listener: Listener) -> None:
        with self._lock:
            if listener not in self._listeners:
                return  # another publisher already detached it
            self._listeners = tuple(x for x in self._listeners if x is not listener)
        log.exception("event listener %r failed and was detached", listener)

    def subscribe(
        self,
        name: str,
        *,
        maxsize: int = 10000,
        types: Collection[type[Event]] | None = None,
    ) -> Subscription:
        """A new subscription named ``name`` (shown when it drops events) that receives the
        events of ``types`` (and their subclasses), or every event with None."""
        sub = Subscription(self, name, maxsize=maxsize, types=types)
        with self._lock:
            if not self._closed:
                self._subscriptions = (*self._subscriptions, sub)
                return sub
        sub._closed = True
        return sub

    def attach(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` inside every ``publish``; returns the function that detaches it.

        A listener runs on the publisher's thread, so it must be quick and never block: an
        O(1) fold such as the state store's. One that raises is logged and detached.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def detach() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return detach

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(x for x in self._subscriptions if x is not sub)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscriptions

    def close(self) -> None:
        """Close every subscription; later subscriptions start closed. Listeners stay."""
        with self._lock:
            self._closed = True
            subs = self._subscriptions
        for sub in subs:
            sub.close()
