"""The shared opener threads: bounded, sized by what dials wait on, in order, and gone once
the queue is empty."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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


def _spin(seconds: float) -> None:
    """A dial that is all CPU: Python code for ``seconds`` of this thread's CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _clients(openers: Openers, dial: Callable[[], None], clients: int, each: int) -> None:
    """``clients`` threads, each submitting ``each`` dials one after another and waiting for
    each (as forwards do when connections come in)."""

    def client() -> None:
        for _ in range(each):
            done = threading.Event()

            def job(done: threading.Event = done) -> None:
                dial()
                done.set()

            openers.submit(job)
            assert done.wait(20)

    threads = [threading.Thread(target=client, name=f"test-client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_cpu_bound_dials_keep_few_threads() -> None:
    # Dials that only compute gain nothing from more threads: they only wait for each other.
    openers = Openers(limit=16, name="test-cpu", patience=5.0)
    _clients(openers, lambda: _spin(0.002), clients=16, each=15)
    # 2 on an idle machine; where other processes hold the cores (tests in parallel), the
    # time this one is not running looks like waiting and adds a few threads. Never the 16
    # the clients would keep busy (the sizing itself is checked on exact figures below).
    assert openers.floor <= openers.wanted <= openers.limit // 2
    assert openers.peak < openers.limit
    assert _wait(lambda: openers.running == 0)


def test_dials_that_wait_on_the_network_grow_the_threads_to_the_limit() -> None:
    openers = Openers(limit=8, name="test-sleep")
    _clients(openers, lambda: time.sleep(0.02), clients=16, each=8)  # far-away round trips
    assert openers.wanted == 8
    assert openers.peak == 8
    assert _wait(lambda: openers.running == 0)


def test_the_size_follows_what_dials_wait_on_not_how_many_wait_for_the_cpu() -> None:
    openers = Openers(limit=32, name="test-learn")
    # 5 ms of CPU in 20 ms while the process ran all along (other dials, the forwards'
    # loops): waiting for the CPU or the lock, which more threads would not shorten.
    for _ in range(20):
        openers._learn(cpu=0.005, wall=0.020, process_cpu=0.020)
    assert openers.wanted == 2
    # 5 ms of CPU and 45 ms with nothing of the process running: the network. Ten threads
    # keep the CPU busy.
    for _ in range(40):
        openers._learn(cpu=0.005, wall=0.050, process_cpu=0.005)
    assert openers.wanted == 10
    for _ in range(40):  # a far-away server: capped
        openers._learn(cpu=0.001, wall=0.200, process_cpu=0.001)
    assert openers.wanted == 32


def test_hung_dials_do_not_hold_up_the_next_ones() -> None:
    # Two dials hang (an unreachable server) with every wanted thread on them: a spare
    # thread takes the next dial once nothing began for ``patience`` seconds.
    openers = Openers(limit=8, name="test-hung", patience=0.2)
    gate = threading.Event()
    quick = threading.Event()
    openers.submit(lambda: gate.wait(10))
    openers.submit(lambda: gate.wait(10))
    openers.submit(quick.set)
    began = time.monotonic()
    assert quick.wait(5)
    assert time.monotonic() - began < 3.0  # not the hung dials' 10 s
    assert not gate.is_set()
    gate.set()
    assert _wait(lambda: openers.running == 0)
    assert _wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("test-hung")])
