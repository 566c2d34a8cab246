from __future__ import annotations

import logging
import threading
import time

import pytest
from helpers import wait_for

from kubefwd.events.bus import EventBus
from kubefwd.events.types import (
    ConnectionClosed,
    Event,
    LogLine,
    ServiceAdded,
    SubscriberDropped,
    TunnelOpened,
)


def closed(key: str, port: int = 80) -> ConnectionClosed:
    return ConnectionClosed(key=key, port=port)


def test_subscriber_gets_events_in_publish_order() -> None:
    bus = EventBus()
    sub = bus.subscribe("log")
    events = [closed(f"c/ns/svc{i}") for i in range(50)]
    for event in events:
        bus.publish(event)
    got = [sub.get(0) for _ in events]
    assert got == events
    assert sub.get(0) is None
    assert sub.delivered == 50 and sub.dropped == 0


def test_type_filter_passes_only_the_types_asked_for() -> None:
    bus = EventBus()
    tunnels = bus.subscribe("tunnels", types=[TunnelOpened])
    everything = bus.subscribe("all")
    opened = TunnelOpened(key="c/ns/a", pod="a-1", transport="spdy")
    bus.publish(closed("c/ns/a"))
    bus.publish(opened)
    bus.publish(LogLine(level="info", message="hello"))
    assert tunnels.drain() == [opened]
    assert len(everything.drain()) == 3


def test_a_filter_naming_no_event_class_is_refused_at_subscribe() -> None:
    bus = EventBus()
    with pytest.raises(TypeError, match="not an event class"):
        bus.subscribe("bad", types=[str])  # type: ignore[list-item]
    bus.publish(closed("c/ns/a"))


def test_filter_on_the_base_class_passes_every_event() -> None:
    bus = EventBus()
    sub = bus.subscribe("base", types=[Event])
    bus.publish(closed("c/ns/a"))
    assert len(sub.drain()) == 1


def test_a_subscriber_that_never_reads_never_blocks_the_publisher() -> None:
    bus = EventBus()
    stuck = bus.subscribe("stuck", maxsize=10)
    reader = bus.subscribe("reader", maxsize=200_000)
    event = closed("c/ns/a")
    started = time.monotonic()
    for _ in range(100_000):
        bus.publish(event)
    elapsed = time.monotonic() - started
    # ~1 µs a publish on a quiet machine; this bound only catches a publisher that waits.
    assert elapsed < 10, f"100k publishes took {elapsed:.1f}s"
    assert stuck.queued == 10
    assert stuck.dropped == 100_000 - 10
    got = reader.drain()
    # The reader got every event, plus the one notice that "stuck" began dropping.
    assert sum(1 for e in got if e is event) == 100_000
    [notice] = [e for e in got if isinstance(e, SubscriberDropped)]
    assert notice.subscriber == "stuck" and notice.dropped == 1
    assert reader.dropped == 0


def test_one_drop_notice_per_overflow_episode() -> None:
    bus = EventBus()
    slow = bus.subscribe("slow", maxsize=3)
    watcher = bus.subscribe("watcher", types=[SubscriberDropped])
    for _ in range(10):
        bus.publish(closed("c/ns/a"))
    assert [(n.subscriber, n.dropped) for n in watcher.drain()
            if isinstance(n, SubscriberDropped)] == [("slow", 1)]
    # Reading part of the queue is not catching up: still the same episode.
    assert slow.get(0) is not None
    for _ in range(10):
        bus.publish(closed("c/ns/a"))
    assert watcher.drain() == []
    # Emptying the queue ends the episode; the next overflow is told once more.
    slow.drain()
    for _ in range(10):
        bus.publish(closed("c/ns/a"))
    notices = watcher.drain()
    assert len(notices) == 1
    assert isinstance(notices[0], SubscriberDropped)
    assert notices[0].subscriber == "slow" and notices[0].dropped == slow.dropped - 6
    assert slow.dropped == 7 + 9 + 7


def test_the_dropping_subscriber_is_not_sent_its_own_notice() -> None:
    bus = EventBus()
    slow = bus.subscribe("slow", maxsize=1)
    for _ in range(5):
        bus.publish(closed("c/ns/a"))
    slow.drain()
    bus.publish(closed("c/ns/b"))
    assert [type(e) for e in slow.drain()] == [ConnectionClosed]


def test_two_full_subscribers_do_not_storm() -> None:
    bus = EventBus()
    a = bus.subscribe("a", maxsize=1)
    b = bus.subscribe("b", maxsize=1)
    watcher = bus.subscribe("watcher")
    for _ in range(1000):
        bus.publish(closed("c/ns/a"))
    notices = [e for e in watcher.drain() if isinstance(e, SubscriberDropped)]
    assert sorted(n.subscriber for n in notices) == ["a", "b"]
    assert a.dropped >= 999 and b.dropped >= 999


def test_close_wakes_a_blocked_get() -> None:
    bus = EventBus()
    sub = bus.subscribe("ui")
    result: list[Event | None] = []
    entered = threading.Event()

    def consume() -> None:
        entered.set()
        result.append(sub.get(None))

    t = threading.Thread(target=consume, name="test-consumer")
    t.start()
    assert entered.wait(5)
    wait_for(lambda: sub._waiting, 5, "the consumer to block", interval=0.005)
    sub.close()
    t.join(5)
    assert not t.is_alive()
    assert result == [None]
    # A closed subscription is off the bus.
    bus.publish(closed("c/ns/a"))
    assert sub.drain() == []


def test_get_wakes_for_an_event_published_while_it_waits() -> None:
    bus = EventBus()
    sub = bus.subscribe("ui")
    result: list[Event | None] = []
    t = threading.Thread(target=lambda: result.append(sub.get(5)), name="test-consumer")
    t.start()
    wait_for(lambda: sub._waiting, 5, "the consumer to block", interval=0.005)
    event = closed("c/ns/a")
    bus.publish(event)
    t.join(5)
    assert result == [event]


def test_get_times_out_with_none() -> None:
    sub = EventBus().subscribe("ui")
    started = time.monotonic()
    assert sub.get(0.05) is None
    assert time.monotonic() - started >= 0.05


def test_iteration_ends_when_closed_after_reading_what_was_queued() -> None:
    bus = EventBus()
    sub = bus.subscribe("json")
    events = [closed(f"c/ns/{i}") for i in range(3)]
    for event in events:
        bus.publish(event)
    bus.close()
    assert list(sub) == events
    assert sub.closed
    assert bus.subscribe("late").closed


def test_a_listener_that_raises_is_detached_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    calls: list[Event] = []
    sub = bus.subscribe("log")

    def broken(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("fold bug")

    bus.attach(broken)
    good: list[Event] = []
    bus.attach(good.append)
    with caplog.at_level(logging.ERROR, logger="kubefwd.events"):
        bus.publish(closed("c/ns/a"))
        bus.publish(closed("c/ns/b"))
    assert len(calls) == 1
    assert len(good) == 2
    assert len(sub.drain()) == 2
    failures = [r for r in caplog.records if "detached" in r.getMessage()]
    assert len(failures) == 1


def test_detach_stops_a_listener() -> None:
    bus = EventBus()
    seen: list[Event] = []
    detach = bus.attach(seen.append)
    bus.publish(closed("c/ns/a"))
    detach()
    bus.publish(closed("c/ns/b"))
    assert len(seen) == 1


def test_four_publishing_threads_lose_nothing() -> None:
    bus = EventBus()
    sub = bus.subscribe("all", maxsize=100_000)
    per_thread = 10_000
    go = threading.Event()

    def publish(n: int) -> None:
        go.wait(5)
        for i in range(per_thread):
            bus.publish(ServiceAdded(key=f"{n}/{i}", context="c", namespace="ns", service="s"))

    threads = [threading.Thread(target=publish, args=(n,), name=f"test-pub-{n}") for n in range(4)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    got = sub.drain()
    assert sub.dropped == 0
    assert len(got) == 4 * per_thread
    assert len({e.key for e in got if isinstance(e, ServiceAdded)}) == 4 * per_thread
    # Each publisher's own events arrive in its order.
    for n in range(4):
        mine = [int(e.key.split("/")[1]) for e in got
                if isinstance(e, ServiceAdded) and e.key.startswith(f"{n}/")]
        assert mine == list(range(per_thread))


def test_a_consumer_thread_reads_everything_four_publishers_send() -> None:
    bus = EventBus()
    sub = bus.subscribe("all", maxsize=100_000)
    got: list[Event] = []

    def consume() -> None:
        got.extend(sub)

    consumer = threading.Thread(target=consume, name="test-consumer")
    consumer.start()
    def publish() -> None:
        for _ in range(5000):
            bus.publish(closed("c/ns/a"))

    threads = [threading.Thread(target=publish, name=f"test-pub-{n}") for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wait_for(lambda: len(got) == 20_000, 10, "the consumer to read every event",
             interval=0.01)
    bus.close()
    consumer.join(5)
    assert not consumer.is_alive()
    assert sub.delivered == 20_000 and sub.dropped == 0
