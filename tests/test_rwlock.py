from __future__ import annotations

import threading

from kubefwd.rwlock import RWLock


def test_readers_share_writer_excludes() -> None:
    lock = RWLock()
    inside = threading.Event()
    release = threading.Event()

    def reader() -> None:
        with lock.read():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=reader, name="test-reader")
    t.start()
    assert inside.wait(5)
    # A second reader gets in while the first holds the lock.
    got_second = threading.Event()

    def second() -> None:
        with lock.read():
            got_second.set()

    t2 = threading.Thread(target=second, name="test-reader-2")
    t2.start()
    assert got_second.wait(5)
    t2.join()
    # A writer has to wait for the first reader.
    wrote = threading.Event()

    def writer() -> None:
        with lock.write():
            wrote.set()

    w = threading.Thread(target=writer, name="test-writer")
    w.start()
    assert not wrote.wait(0.2)
    release.set()
    assert wrote.wait(5)
    t.join()
    w.join()


def test_waiting_writer_blocks_new_readers() -> None:
    lock = RWLock()
    lock.acquire_read()
    writer_in = threading.Event()

    def writer() -> None:
        with lock.write():
            writer_in.set()

    w = threading.Thread(target=writer, name="test-writer")
    w.start()
    # Give the writer time to queue, then check a new reader does not overtake it.
    for _ in range(100):
        if lock._writers_waiting:
            break
        threading.Event().wait(0.01)
    late_reader_in = threading.Event()

    def late_reader() -> None:
        with lock.read():
            late_reader_in.set()

    r = threading.Thread(target=late_reader, name="test-late-reader")
    r.start()
    assert not late_reader_in.wait(0.1)
    lock.release_read()
    assert writer_in.wait(5)
    assert late_reader_in.wait(5)
    w.join()
    r.join()
