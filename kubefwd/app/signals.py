"""Stop signals for one run of ``kubefwd svc``, and the emergency second-signal path.

SIGINT (Ctrl-C), SIGTERM, SIGHUP (the terminal was closed) and SIGQUIT (Ctrl-\\) all mean
"stop": each runs the same orderly shutdown, so no signal a user can send from a terminal
leaves our lines in the hosts file.

The first signal asks for the orderly shutdown (or, during start-up, cuts start-up short); a
second one only removes our hosts lines and leaves at once. Kept apart from the app because
this code runs inside a signal handler, between any two bytecodes of the main thread: what it
touches must be safe there, and the emergency path must not need anything the orderly
shutdown may be holding.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from kubefwd.errors import ExitCode
from kubefwd.hosts.owners import Owners
from kubefwd.hosts.writer import remove_owned_lines

# The signals that ask for the orderly shutdown.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

# A second stop signal sooner than this after the first is taken for the same one.
REPEAT_WINDOW = 1.0


class StartupInterrupted(BaseException):
    """Raised by the signal handler to cut a blocked start-up short (like KeyboardInterrupt,
    not an ``Exception``: nothing on the way may swallow it)."""


class StopSignals:
    """The stop-signal handler of one run: sets ``stop_requested`` on the first signal,
    raises ``StartupInterrupted`` while ``starting``, cleans the hosts file and exits on a
    second one.

    ``owners``: the app's hosts writers (shared with them); the emergency removal retires our
    pid there, so a writer still running adds nothing after it. Its calls take no lock."""

    def __init__(
        self, hosts_path: Path, stop_requested: threading.Event, owners: Owners | None = None
    ) -> None:
        self.hosts_path = hosts_path
        self.owners = Owners() if owners is None else owners
        self.stop_requested = stop_requested
        self.received = 0
        self.starting = False  # run() is inside start(): the first signal interrupts it
        self.finished = False
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        """Take over the stop signals (only possible on the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        # The kernel may deliver a signal to any thread; Python runs the handler only on the
        # main thread, and only once that thread runs again. A main thread asleep in a lock
        # wait would not notice: it sleeps in select() on this socket instead, which the
        # interpreter's C-level handler writes to from whichever thread got the signal.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(),
                                                        warn_on_full_buffer=False)

    def wait_for_stop(self) -> None:
        """Sleep until a stop is requested (a signal, or ``wake`` after ``stop_requested`` was
        set from another thread)."""
        if self._wake_r is None:
            self.stop_requested.wait()
            return
        while not self.stop_requested.is_set():
            select.select([self._wake_r], [], [], None)
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass

    def wake(self) -> None:
        """Wake ``wait_for_stop`` (from any thread)."""
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    def finish(self) -> None:
        """Everything is cleaned up: hand the signals back, or ignore them when we were told
        to stop (a late second Ctrl-C must not kill the process on its way out with a
        misleading status)."""
        self.finished = True
        if self._wake_w is not None:
            with contextlib.suppress(ValueError):  # not on the main thread
                signal.set_wakeup_fd(self._previous_wakeup_fd)
        if self.received:
            for signum in self._previous:
                signal.signal(signum, signal.SIG_IGN)
        else:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.finished:
            return  # everything is cleaned up already; let the process end normally
        now = time.monotonic()
        if self.received == 0:
            self.received = 1
            self._first_at = now
            self.stop_requested.set()
            if self.starting:
                # Start-up may be blocked where no Event reaches (an exec plugin, a server
                # that accepts but never answers, a hosts write being retried): leave it.
                self.starting = False
                raise StartupInterrupted
            return
        if now - self._first_at < REPEAT_WINDOW:
            # One keypress often arrives twice (``timeout -s INT`` signals the process and
            # its group, so does a terminal): not a request to cut the shutdown short.
            return
        self.received += 1
        if self.received > 2:
            return  # the emergency clean-up below is running already (this handler, nested)
        # A second signal: only make sure the hosts file is clean, then leave at once.
        try:
            remove_owned_lines(self.hosts_path, os.getpid(), lock_timeout=2.0,
                               owners=self.owners)
            _say(b"kubefwd: interrupted again: removed our hosts entries, exiting now\n")
        except Exception as exc:  # nothing may keep us from exiting now
            _say(f"kubefwd: could not clean the hosts file: {exc}\n".encode())
        os._exit(int(ExitCode.ERROR))


def _say(message: bytes) -> None:
    """Write to stderr from a signal handler; a closed terminal must not stop the exit."""
    with contextlib.suppress(OSError):
        os.write(2, message)


def child_pids() -> set[int]:
    """The processes this one has started (all generations) and that still run."""
    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def end_children(existing: set[int], grace: float = 2.0) -> None:
    """End the processes we started since ``existing`` was taken (an exec credential plugin
    cut short by Ctrl-C is not waited for by its caller): TERM, then KILL after ``grace``."""
    try:
        children = [p for p in psutil.Process().children(recursive=True)
                    if p.pid not in existing]
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)
