from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from helpers import wait_for

from kubefwd.support.rwlock import RWLock


def enter_in_thread(
    side: Callable[[], AbstractContextManager[object]], name: str,
    hold: threading.Event | None = None,
) -> tuple[threading.Thread, threading.Event]:
    """Start a thread that takes ``side()`` (lock.read or lock.write), sets the returned event
    once inside and, with ``hold``, stays inside until it is set."""
    inside = threading.Event()

    def run() -> None:
        with side():
            inside.set()
            if hold is not None:
                hold.wait(5)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread, inside


def test_readers_share_writer_excludes() -> None:
    lock = RWLock()
    release = threading.Event()
    t, inside = enter_in_thread(lock.read, "test-reader", hold=release)
    assert inside.wait(5)
    # A second reader gets in while the first holds the lock.
    t2, got_second = enter_in_thread(lock.read, "test-reader-2")
    assert got_second.wait(5)
    t2.join()
    # A writer has to wait for the first reader.
    w, wrote = enter_in_thread(lock.write, "test-writer")
    assert not wrote.wait(0.2)
    release.set()
    assert wrote.wait(5)
    t.join()
    w.join()


def test_waiting_writer_blocks_new_readers() -> None:
    lock = RWLock()
    lock.acquire_read()
    w, writer_in = enter_in_thread(lock.write, "test-writer")
    # Wait for the writer to queue, then check a new reader does not overtake it.
    wait_for(lambda: lock._writers_waiting, 5, "the writer to queue", interval=0.01)
    r, late_reader_in = enter_in_thread(lock.read, "test-late-reader")
    assert not late_reader_in.wait(0.1)
    lock.release_read()
    assert writer_in.wait(5)
    assert late_reader_in.wait(5)
    w.join()
    r.join()
