"""The shared opener threads: bounded, in order, and gone once the queue is empty."""

from __future__ import annotations

import threading
import time

import pytest

from kubefwd.tunnel.openers import Openers


def _wait(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_at_most_limit_threads_run_and_each_takes_the_next_job() -> None:
    openers = Openers(limit=3, name="test-open")
    release = threading.Event()
    lock = threading.Lock()
    busy, peak, order = [0], [0], []

    def job(i: int) -> None:
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        release.wait(5)
        with lock:
            busy[0] -= 1
            order.append(i)

    for i in range(10):
        openers.submit(lambda i=i: job(i))
    assert _wait(lambda: busy[0] == 3)
    assert openers.queued == 7
    release.set()
    assert _wait(lambda: len(order) == 10)
    assert peak[0] == 3
    assert openers.started == 3  # three threads did ten dials
    assert _wait(lambda: openers.running == 0)
    assert sorted(order) == list(range(10))
    assert _wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("test-open")])


def test_a_thread_ends_when_nothing_is_queued_and_a_new_one_starts_later() -> None:
    openers = Openers(limit=2, name="test-idle")
    ran = threading.Event()
    openers.submit(ran.set)
    assert ran.wait(5)
    assert _wait(lambda: openers.running == 0)
    assert _wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("test-idle")])
    again = threading.Event()
    openers.submit(again.set)
    assert again.wait(5)
    assert openers.started == 2


def test_a_job_that_raises_does_not_stop_the_next(caplog: pytest.LogCaptureFixture) -> None:
    openers = Openers(limit=1, name="test-raise")
    gate = threading.Event()
    second = threading.Event()

    def bad() -> None:
        gate.wait(5)
        raise RuntimeError("boom")

    openers.submit(bad)
    openers.submit(second.set)
    gate.set()
    assert second.wait(5)
    assert "failed unexpectedly" in caplog.text
    assert _wait(lambda: openers.running == 0)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Openers(limit=0)


def test_while_others_dial_a_free_thread_waits_for_the_next_job_then_all_end() -> None:
    openers = Openers(limit=4, name="test-linger", linger=5.0)
    gate = threading.Event()
    quick, later = threading.Event(), threading.Event()
    openers.submit(lambda: gate.wait(5))  # a slow dial keeps the burst going
    openers.submit(quick.set)
    assert quick.wait(5)
    assert _wait(lambda: openers._waiting == 1)  # its thread waits rather than ends
    openers.submit(later.set)
    assert later.wait(5)
    assert openers.started == 2  # the waiting thread took it: no third thread
    gate.set()  # the burst ends: every thread ends at once, not after the linger
    assert _wait(lambda: openers.running == 0, 2.0)
    assert _wait(lambda: not [t for t in threading.enumerate()
                              if t.name.startswith("test-linger")], 2.0)
