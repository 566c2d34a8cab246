"""The list→watch loop against canned streams, and the Informer thread around it."""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kubefwd.cluster.client import WatchExpired
from kubefwd.cluster.informer import SYNC, Backoff, Informer, InformerEvent, informer_events
from kubefwd.errors import ApiError


class FakeStop:
    """A stop 'Event' whose wait() returns at once and records the delay asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.set_flag = False

    def is_set(self) -> bool:
        return self.set_flag

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0))
        return self.set_flag

    def set(self) -> None:
        self.set_flag = True


def svc(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop", "resourceVersion": rv}}


def ev(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


class Script:
    """Canned list results and watch streams, consumed in order; records the RVs watched."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = list(lists)
        self.watches = list(watches)
        self.watched_from: list[str] = []

    def list_fn(self) -> tuple[list[dict[str, Any]], str]:
        result = self.lists.pop(0)
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[no-any-return]

    def watch_fn(self, rv: str) -> Iterator[dict[str, Any]]:
        self.watched_from.append(rv)
        stream = self.watches.pop(0)
        for item in stream:
            if isinstance(item, Exception):
                raise item
            yield item


def take(gen: Iterator[InformerEvent], n: int) -> list[InformerEvent]:
    return [next(gen) for _ in range(n)]


def test_list_then_watch_yields_sync_and_changes() -> None:
    stop = FakeStop()
    script = Script(
        lists=[([svc("a", "5"), svc("b", "6")], "10")],
        watches=[[ev("ADDED", svc("c", "11")), ev("MODIFIED", svc("a", "12")),
                  ev("DELETED", svc("b", "13"))], [ev("ADDED", svc("d", "14"))]],
    )
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop)
    sync, added, modified, deleted, _ = take(gen, 5)
    assert sync.type == SYNC and [o["metadata"]["name"] for o in sync.objects] == ["a", "b"]
    assert sync.resource_version == "10"
    assert (added.type, added.obj and added.obj["metadata"]["name"]) == ("ADDED", "c")
    assert modified.type == "MODIFIED" and deleted.type == "DELETED"
    stop.set()
    assert list(gen) == []
    # the first watch starts at the list's RV; after a clean end it resumes at the newest
    assert script.watched_from == ["10", "13"]


def test_bookmark_advances_the_resource_version_without_an_event() -> None:
    stop = FakeStop()
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {
        "resourceVersion": "42"}}}
    script = Script(lists=[([], "10")], watches=[[bookmark], [ev("ADDED", svc("x", "43"))]])
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop)
    first, second = take(gen, 2)
    assert first.type == SYNC and second.type == "ADDED"
    assert script.watched_from == ["10", "42"]
    gen.close()


def test_410_event_relists_at_once_and_sync_drops_vanished_objects() -> None:
    stop = FakeStop()
    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                           "message": "too old resource version: 1 (20)"}}
    script = Script(
        lists=[([svc("a", "1"), svc("b", "2")], "2"), ([svc("a", "1")], "30")],
        watches=[[expired], []],
    )
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop)
    first, second = take(gen, 2)
    assert first.type == SYNC and len(first.objects) == 2
    # b was deleted while we could not watch: the new SYNC no longer carries it
    assert second.type == SYNC and [o["metadata"]["name"] for o in second.objects] == ["a"]
    assert stop.waits == []  # no back-off for a plain expiry
    assert script.watched_from == ["2"]
    gen.close()


def test_http_410_raised_by_the_watch_relists_too() -> None:
    stop = FakeStop()
    script = Script(
        lists=[([], "2"), ([svc("n", "31")], "31")],
        watches=[[ApiError("gone", status=410)], []],
    )
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop)
    first, second = take(gen, 2)
    assert (first.type, second.type) == (SYNC, SYNC)
    assert stop.waits == []
    gen.close()


def test_errors_back_off_doubling_to_the_cap_and_reset_after_success() -> None:
    stop = FakeStop()
    down = ApiError("cannot reach the API server")
    script = Script(
        lists=[down, down, down, down, down, ([], "7"), down, ([], "9")],
        watches=[[ev("ADDED", svc("a", "8")), ConnectionResetError("reset")], []],
    )
    errors: list[tuple[str, float]] = []
    gen = informer_events(
        script.list_fn, script.watch_fn, stop=stop, backoff=Backoff(initial=1, cap=8),
        on_error=lambda e, d: errors.append((str(e), d)),
    )
    first, added, again = take(gen, 3)
    assert (first.type, added.type, again.type) == (SYNC, "ADDED", SYNC)
    # five failed lists: 1, 2, 4, 8, 8 (capped); then a watch event proves health → reset
    assert stop.waits == [1, 2, 4, 8, 8, 1, 2]
    assert [d for _, d in errors] == stop.waits
    assert "reset" in errors[5][0]
    gen.close()


def test_repeated_expiry_without_progress_backs_off() -> None:
    stop = FakeStop()
    gone = ApiError("gone", status=410)
    script = Script(lists=[([], "1"), ([], "1"), ([], "1")], watches=[[gone], [gone], []])
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop)
    assert [e.type for e in take(gen, 3)] == [SYNC, SYNC, SYNC]
    assert stop.waits == [1.0]
    gen.close()


def test_stop_ends_the_loop_between_events() -> None:
    stop = FakeStop()
    script = Script(lists=[([], "1")],
                    watches=[[ev("ADDED", svc("a", "2")), ev("ADDED", svc("b", "3"))]])
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop)
    assert next(gen).type == SYNC
    assert next(gen).type == "ADDED"
    stop.set()
    assert list(gen) == []


class BlockingWatch:
    """A watch that blocks until interrupted, like a quiet server."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.woken = threading.Event()

    def watch_fn(self, rv: str) -> Iterator[dict[str, Any]]:
        self.started.set()
        self.woken.wait(10)
        return iter(())

    def interrupt(self, stop: threading.Event) -> None:
        self.woken.set()


def test_informer_thread_feeds_callback_and_stops_promptly() -> None:
    got: list[InformerEvent] = []
    watch = BlockingWatch()
    informer = Informer(
        context="sim", namespace="shop", resource="pods",
        list_fn=lambda: ([svc("a", "1")], "1"), watch_fn=watch.watch_fn,
        callback=got.append, interrupt=watch.interrupt,
    )
    assert informer.name == "informer/sim/shop/pods"
    informer.start()
    try:
        assert informer.wait_synced(5)
        assert watch.started.wait(5)
        assert [e.type for e in got] == [SYNC]
    finally:
        assert informer.stop_and_join(2)
    assert informer.last_error is None


def test_informer_records_errors_and_keeps_going_after_a_callback_failure() -> None:
    calls: list[str] = []
    failures: list[Exception] = []
    watch = BlockingWatch()
    lists: list[Any] = [ApiError("forbidden: cannot list pods", status=403), ([], "3")]

    def list_fn() -> tuple[list[dict[str, Any]], str]:
        item = lists.pop(0)
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    def callback(event: InformerEvent) -> None:
        calls.append(event.type)
        raise RuntimeError("consumer bug")

    informer = Informer(
        context="sim", namespace="shop", resource="services", list_fn=list_fn,
        watch_fn=watch.watch_fn, callback=callback, interrupt=watch.interrupt,
        backoff=Backoff(initial=0.01, cap=0.01),
        on_error=lambda inf, exc, delay: failures.append(exc),
    )
    informer.start()
    try:
        assert informer.wait_synced(5)
        assert watch.started.wait(5)
    finally:
        assert informer.stop_and_join(2)
    assert calls == [SYNC]
    assert len(failures) == 1 and failures[0].status == 403  # type: ignore[attr-defined]
    assert informer.last_error is None


@pytest.mark.parametrize("initial,cap,expected", [(1, 300, [1, 2, 4, 8, 16]), (2, 5, [2, 4, 5])])
def test_backoff_schedule(initial: float, cap: float, expected: list[float]) -> None:
    b = Backoff(initial=initial, cap=cap)
    assert [b.next_delay() for _ in expected] == expected
    b.reset()
    assert b.next_delay() == initial


def test_default_backoff_is_one_second_doubling_to_thirty() -> None:
    b = Backoff()
    assert [b.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next_delay() == 1


def test_a_watch_that_ends_at_once_without_events_backs_off() -> None:
    stop = FakeStop()
    now = [0.0]
    a, b = ev("ADDED", svc("a", "2")), ev("ADDED", svc("b", "3"))
    script = Script(lists=[([], "1")], watches=[[], [], [a], [], [b]])

    def clock() -> float:
        now[0] += 0.01
        return now[0]

    gen = informer_events(script.list_fn, script.watch_fn, stop=stop, clock=clock)
    assert [e.type for e in take(gen, 3)] == [SYNC, "ADDED", "ADDED"]
    # two quick empty watches back off 1, 2; an event resets; the next quick one waits 1 again
    assert stop.waits == [1.0, 2.0, 1.0]
    assert script.watched_from == ["1", "1", "1", "2", "2"]
    gen.close()


def test_resync_interval_relists_after_a_watch_ends() -> None:
    stop = FakeStop()
    now = [0.0]
    script = Script(lists=[([], "1"), ([svc("a", "5")], "5")],
                    watches=[[ev("ADDED", svc("a", "2"))], [ev("ADDED", svc("b", "3"))]])

    def clock() -> float:
        now[0] += 100.0  # every look at the clock is 100 s later
        return now[0]

    gen = informer_events(script.list_fn, script.watch_fn, stop=stop, clock=clock,
                          resync_interval=300)
    types = [e.type for e in take(gen, 3)]
    assert types == [SYNC, "ADDED", "ADDED"]  # the first clean end came too soon
    assert next(gen).type == SYNC  # the second one is past the interval: relist
    assert script.watched_from == ["1", "2"]
    gen.close()


@pytest.mark.parametrize(
    "failure",
    [OSError("connection refused"), http.client.RemoteDisconnected("gone"),
     json.JSONDecodeError("Expecting value", "x", 0), WatchExpired("gone", status=410)],
    ids=lambda e: type(e).__name__,
)
def test_expected_failures_are_retried(failure: Exception) -> None:
    stop = FakeStop()
    script = Script(lists=[failure, ([], "1")], watches=[[]])
    errors: list[Exception] = []
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop,
                          on_error=lambda e, d: errors.append(e))
    assert next(gen).type == SYNC
    assert errors == [failure]
    gen.close()


@pytest.mark.parametrize("where", ["list", "watch"])
def test_a_bug_is_not_retried_but_propagates(where: str) -> None:
    stop = FakeStop()
    bug = TypeError("unsupported operand")
    script = Script(lists=[bug] if where == "list" else [([], "1"), ([], "2")],
                    watches=[[ev("ADDED", svc("a", "2")), bug]])
    errors: list[Exception] = []
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop,
                          on_error=lambda e, d: errors.append(e))
    if where == "watch":
        assert [e.type for e in take(gen, 2)] == [SYNC, "ADDED"]
    with pytest.raises(TypeError):
        next(gen)
    assert errors == [] and stop.waits == []


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_informer_thread_dies_once_on_a_bug_and_says_so() -> None:
    died: list[tuple[Informer, Exception]] = []
    retried: list[Exception] = []

    def list_fn() -> tuple[list[dict[str, Any]], str]:
        raise KeyError("metadata")

    informer = Informer(
        context="sim", namespace="shop", resource="pods", list_fn=list_fn,
        watch_fn=lambda rv: iter(()), callback=lambda e: None,
        backoff=Backoff(initial=0.01, cap=0.01),
        on_error=lambda inf, exc, delay: retried.append(exc),
        on_failure=lambda inf, exc: died.append((inf, exc)),
    )
    handler = _Records()
    logger = logging.getLogger("kubefwd.cluster.informer")
    logger.addHandler(handler)
    try:
        informer.start()
        assert not informer.wait_synced(5)
        informer.join(5)
    finally:
        logger.removeHandler(handler)
    assert not informer.is_alive() and informer.failed.is_set()
    assert isinstance(informer.last_error, KeyError)
    assert died == [(informer, informer.last_error)] and retried == []
    records = [r for r in handler.records if r.exc_info]
    assert len(records) == 1 and "informer/sim/shop/pods" in records[0].getMessage()
    assert informer.stop_and_join(1)


def test_expiries_minutes_apart_relist_quietly_each_time_without_back_off() -> None:
    # A quiet namespace: no event between two expiries (the server compacting its history);
    # each is routine. Only one that comes at once after the relist backs off.
    stop = FakeStop()
    now = [0.0]
    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "old"}}

    class Timed(Script):
        def watch_fn(self, rv: str) -> Iterator[dict[str, Any]]:
            now[0] += 120.0  # the watch ran two minutes, quietly, then expired
            return super().watch_fn(rv)

    script = Timed(lists=[([], "2"), ([], "3"), ([], "4"), ([], "5")],
                   watches=[[expired], [expired], [expired], []])
    errors: list[float] = []
    gen = informer_events(script.list_fn, script.watch_fn, stop=stop, clock=lambda: now[0],
                          on_error=lambda e, d: errors.append(d))
    syncs = take(gen, 4)
    assert [e.type for e in syncs] == [SYNC] * 4
    assert stop.waits == [] and errors == []
    gen.close()
