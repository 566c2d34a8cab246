"""The owners of hosts lines that run in this process, as one object the app owns.

A line's marker names its owner by pid; another process is alive when psutil says so, but
the writers of this process are alive whatever psutil says (an owner pid given by the caller
need not be a real process). ``Owners`` counts those writers per owner pid, and remembers
the owners whose lines were removed for good (the second stop signal), so that a writer of
theirs still running adds nothing more.

Signal safety: ``retire``, ``is_local`` and ``is_retired`` take no lock, so a signal
handler may call them whatever the interrupted thread holds. Each is one operation on a
built-in dict or set, which the interpreter does whole between two bytecodes; only
``enter``/``leave`` (the writer threads, never a handler) take the lock, to keep their
read-modify-write of a count consistent among themselves.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["Owners"]


class Owners:
    """Owner pids of the hosts writers running in this process, and the retired ones."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._retired: set[tuple[int, str]] = set()
        self._lock = threading.Lock()  # enter/leave among themselves; readers go without

    def enter(self, pid: int) -> None:
        """A writer for ``pid`` starts in this process."""
        with self._lock:
            self._counts[pid] = self._counts.get(pid, 0) + 1

    def leave(self, pid: int) -> None:
        """A writer for ``pid`` has ended."""
        with self._lock:
            left = self._counts.get(pid, 1) - 1
            if left > 0:
                self._counts[pid] = left
            else:
                self._counts.pop(pid, None)

    def is_local(self, pid: int) -> bool:
        """Does a writer for ``pid`` run in this process (so ``pid`` counts as alive)?"""
        return pid in self._counts

    def retire(self, pid: int, path: Path | str) -> None:
        """The lines of ``pid`` in ``path`` were removed for good: its writers add no more."""
        self._retired.add((pid, os.path.realpath(path)))

    def is_retired(self, pid: int, path: Path | str) -> bool:
        return (pid, os.path.realpath(path)) in self._retired
