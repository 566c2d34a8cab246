"""ApiThrottle: Retry-After parsing, the cap, one warning per burst, one probe at a time."""

from __future__ import annotations

import logging
import threading

import pytest

from kubefwd.cluster.throttle import ApiThrottle, is_throttled, parse_retry_after


def test_retry_after_values() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after(date, now=lambda: 1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after(date, now=lambda: 1445412500.0) == 0.0
    assert is_throttled(429, None) and is_throttled(503, "2")
    assert not is_throttled(503, None) and not is_throttled(500, "2")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_waits_are_capped_shared_and_logged_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    t = ApiThrottle("context c", clock=clock, jitter=lambda: 0.0, max_wait=60)
    assert t.delay() == 0.0
    with caplog.at_level(logging.WARNING):
        assert t.refused(429, "3600", "list pods") == 60.0  # capped
        assert t.refused(429, None, "watch pods") == 1.0  # no header: a second
        assert t.refused(503, "2", "list services") == 2.0
    assert t.delay() == 60.0  # the longest wait wins, for every request
    warnings = [r for r in caplog.records if "slow down" in r.getMessage()]
    assert len(warnings) == 1 and "context c" in warnings[0].getMessage()
    clock.now += 61
    t.accepted()
    with caplog.at_level(logging.WARNING):
        t.refused(429, "1", "list pods")  # a new burst: a new line
    assert len([r for r in caplog.records if "slow down" in r.getMessage()]) == 2
    assert t.bursts == 2 and t.refusals == 4


def test_after_the_wait_one_probe_goes_first() -> None:
    clock = Clock()
    t = ApiThrottle("c", clock=clock, jitter=lambda: 0.0)
    t.refused(429, "1", "list pods")
    clock.now += 1.5
    assert t.wait() is True  # the probe
    stop = threading.Event()
    waiter = threading.Thread(target=lambda: results.append(t.wait(stop)), name="test-waiter")
    results: list[bool] = []
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # held back while the probe is out
    t.accepted()  # the probe went through: everyone goes
    waiter.join(2)
    assert results == [True]
    stop.set()
