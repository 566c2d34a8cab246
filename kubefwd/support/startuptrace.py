"""Where start-up time goes: with ``KUBEFWD_TRACE_STARTUP=1`` in the environment, each
``mark(what)`` prints one line to stderr with the wall time since the process began (the
interpreter's own start included, where the OS tells it) and the CPU seconds the process has
spent so far (every thread). Off by default, and then a mark costs one attribute test.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["enabled", "mark"]

enabled = bool(os.environ.get("KUBEFWD_TRACE_STARTUP"))


def _process_started() -> float:
    """The process's start on the CLOCK_BOOTTIME scale (Linux), else now."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5), counted after "pid (comm)"
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _now()


def _now() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime(clock)


_origin = _process_started() if enabled else 0.0


def mark(what: str) -> None:
    """One trace line for ``what`` (only when tracing is on)."""
    if not enabled:
        return
    t = os.times()
    sys.stderr.write(f"kubefwd: startup {_now() - _origin:7.3f}s cpu {t.user + t.system:6.3f}s"
                     f"  {what}\n")
    sys.stderr.flush()
