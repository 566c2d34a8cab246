"""Shared fixtures: every test fails if it leaks a thread or a listening socket."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest


def _listening() -> set[tuple[str, int]]:
    me = psutil.Process(os.getpid())
    return {
        (c.laddr.ip, c.laddr.port)
        for c in me.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr
    }


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a thread running or a socket listening."""
    threads_before = _threads()
    listening_before = _listening()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked_threads = _threads() - threads_before
        leaked_sockets = _listening() - listening_before
        if not leaked_threads and not leaked_sockets:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if leaked_threads:
        problems.append("threads: " + ", ".join(sorted(t.name for t in leaked_threads)))
    if leaked_sockets:
        problems.append("listening sockets: " + ", ".join(f"{h}:{p}" for h, p in leaked_sockets))
    pytest.fail("leaked " + "; ".join(problems))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="kubefwd-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)
