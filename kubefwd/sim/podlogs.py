"""Pod logs of the simulated cluster, readable from a cursor so the API can follow them.

A built-in server writes a line per request (HTTP) or connection (echo) into its container's
``LogBook``; a command container's output goes to a file, read through ``FileLog``. Both
answer ``read(cursor, since)`` with the lines after ``cursor`` (None: from the start; with
``since``, only lines written at or after that wall-clock time) and the new cursor, and
``wait(cursor, timeout)`` until there is more.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

KEEP = 10_000


class LogBook:
    """The last ``KEEP`` lines of a built-in server, with the time each was written."""

    def __init__(self) -> None:
        self._lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=KEEP)
        self._count = 0  # lines ever written: the cursor
        self._cond = threading.Condition()

    def write(self, line: str) -> None:
        with self._cond:
            self._lines.append((time.time(), line))
            self._count += 1
            self._cond.notify_all()

    def read(self, cursor: int | None = None,
             since: float | None = None) -> tuple[list[str], int]:
        with self._cond:
            first = self._count - len(self._lines)
            start = max(0, (cursor if cursor is not None else 0) - first)
            lines = [text for t, text in list(self._lines)[start:]
                     if since is None or t >= since]
            return lines, self._count

    def wait(self, cursor: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count > cursor, timeout)


class FileLog:
    """A command container's output file; lines carry no time, so ``since`` keeps all of
    them when the file changed since then, none otherwise. The cursor is a byte offset at a
    line end."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self, cursor: int | None = None,
             since: float | None = None) -> tuple[list[str], int]:
        offset = cursor or 0
        if self.path is None:
            return [], offset
        try:
            if since is not None and os.stat(self.path).st_mtime < since:
                return [], os.stat(self.path).st_size
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return [], offset
        end = data.rfind(b"\n") + 1  # only whole lines
        text = data[:end].decode("utf-8", "replace")
        return text.splitlines(), offset + end

    def wait(self, cursor: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.path is not None and os.stat(self.path).st_size > cursor:
                    return True
            except OSError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.1, left))
