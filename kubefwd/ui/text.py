"""Plain log output of ``kubefwd svc``: one line per forwarded service, warnings, ``-v`` detail.

Everything goes through the ``kubefwd`` logger, so library modules that log (informers,
tunnels, the hosts writer) end up on the same stream in the same format. The stream is
line-buffered: tests and scripts wait for lines such as ``ready:`` while the process runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

LOGGER_NAME = "kubefwd"


def _arrow(stream: TextIO) -> str:
    encoding = (getattr(stream, "encoding", None) or "ascii").lower()
    return " → " if "utf" in encoding else " -> "


class _Formatter(logging.Formatter):
    """``HH:MM:SS`` then a level tag for anything but plain information."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"{stamp} ERROR {message}"
        if record.levelno >= logging.WARNING:
            return f"{stamp} WARNING {message}"
        if record.levelno <= logging.DEBUG:
            return f"{stamp} debug {message}"
        return f"{stamp} {message}"


class _QuietStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that goes quiet once its stream is gone.

    When stdout is closed or full (``| head`` exited, ``>/dev/full``, the terminal was
    closed), the forwards are still the job: we keep forwarding and stop writing the log,
    instead of printing a traceback for every line (or dying on EPIPE, which would take the
    user's connections down only because whoever read the log stopped reading).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            self.stream.write(self.format(record) + self.terminator)
            self.flush()
        except OSError:
            self._give_up()
        except Exception:
            self.handleError(record)

    def _give_up(self) -> None:
        self.broken = True
        # The interpreter flushes stdout once more at exit: point the stream at nothing so
        # that last flush cannot fail noisily either.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)


class Output:
    """The user-facing log: what is forwarded where, what was skipped and why."""

    def __init__(self, *, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        self.arrow = _arrow(self.stream)
        self.log = logging.getLogger(LOGGER_NAME)
        self._handler: logging.Handler | None = None
        self._warned: set[str] = set()

    def install(self) -> None:
        """Route the ``kubefwd`` logger to our stream (``-v``: debug too)."""
        if self._handler is not None:
            return
        handler = _QuietStreamHandler(self.stream)
        handler.setFormatter(_Formatter())
        self.log.addHandler(handler)
        self.log.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        self.log.propagate = False
        self._handler = handler

    def uninstall(self) -> None:
        if self._handler is not None:
            self.log.removeHandler(self._handler)
            self._handler = None

    # -- the lines users read -----------------------------------------------------------

    def forwarded(
        self, names: Sequence[str], ip: str, ports: Sequence[str], pod: str | None
    ) -> None:
        """``web, web.shop, … → 127.1.27.1:80,443 → shop/web-0``; no pod yet: ``(waiting)``."""
        a = self.arrow
        target = pod if pod else "(no ready pod yet)"
        self.log.info("Forwarding %s%s%s:%s%s%s", ", ".join(names), a, ip, ",".join(ports), a,
                      target)

    def removed(self, key: str, ip: str) -> None:
        self.log.info("Stopped forwarding %s (%s)", key, ip)

    def ready(self, services: int, endpoints: int, seconds: float, hosts_writes: int) -> None:
        self.log.info(
            "ready: %d services forwarded on %d addresses in %.2fs (hosts file written %d "
            "times); Ctrl-C to stop",
            services, endpoints, seconds, hosts_writes,
        )

    def info(self, message: str, *args: object) -> None:
        self.log.info(message, *args)

    def debug(self, message: str, *args: object) -> None:
        self.log.debug(message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log.warning(message, *args)

    def warning_once(self, key: str, message: str, *args: object) -> None:
        """Warn about ``key`` only the first time (a service with no pod, a skipped port)."""
        if key in self._warned:
            return
        self._warned.add(key)
        self.log.warning(message, *args)

    def error(self, message: str, *args: object) -> None:
        self.log.error(message, *args)
