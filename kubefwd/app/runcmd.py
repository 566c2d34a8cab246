"""``kubefwd svc ... -- CMD``: wait until the services answer, run a command, pass its exit on.

Readiness is read from the state store and the event bus, never from log text: a forward is
up once the store names a pod for it and a TCP connection to each of its ports is routed to
that pod (a ``ConnectionRouted`` on the bus) without a ``TunnelFailed`` or
``ConnectionFailed`` for it, and stays open, during a short settling window. The port-forward
protocol never says "connected", only "failed", so a quiet window is the only proof there is.

The command runs in a process group of its own that becomes the terminal's foreground group
(when there is a terminal), as a shell runs a job: Ctrl-C reaches the command, not kubefwd,
and kubefwd waits for it to end. A stop signal sent to kubefwd itself is passed on to the
command. Its exit status becomes kubefwd's (128+N when a signal N ended it).

``--ready-file`` is written atomically (a temporary file renamed over it) once everything
answers, and removed when kubefwd stops.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kubefwd.events.bus import EventBus
from kubefwd.events.store import ForwardState, StateStore
from kubefwd.events.types import ConnectionFailed, ConnectionRouted, Event, TunnelFailed
from kubefwd.support.sockets import close_quietly
from kubefwd.support.threads import StoppableThread

log = logging.getLogger("kubefwd.app.runcmd")

# How long a probe connection must stay open, routed and unfailed, to count as answered.
PROBE_SETTLE = 0.5
# Seconds between two readiness rounds that found something not up yet.
ROUND_PAUSE = 0.25
# The signals passed on to the command while it runs.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass(frozen=True)
class WaitPlan:
    """What to wait for before the command runs (or the ready file is written).

    ``wait_for``: service names (``NAME``, ``NAMESPACE/NAME`` or globs) to wait for; empty:
    every forwarded service. ``no_wait``: nothing beyond kubefwd's own start-up.
    """

    timeout: float
    wait_for: tuple[str, ...] = ()
    no_wait: bool = False


def wanted_forwards(
    forwards: Sequence[ForwardState], wait_for: Sequence[str]
) -> tuple[list[ForwardState], list[str]]:
    """The forwards to wait for, and the ``wait_for`` patterns no forward matches (yet)."""
    if not wait_for:
        return list(forwards), []
    chosen: dict[str, ForwardState] = {}
    missing: list[str] = []
    for pattern in wait_for:
        hits = [f for f in forwards if _matches(f, pattern)]
        if not hits:
            missing.append(pattern)
        for f in hits:
            chosen[f.key] = f
    return list(chosen.values()), missing


def _matches(forward: ForwardState, pattern: str) -> bool:
    if "/" in pattern:
        return fnmatch.fnmatchcase(f"{forward.namespace}/{forward.service}", pattern)
    return fnmatch.fnmatchcase(forward.service, pattern)


def describe(forward: ForwardState) -> str:
    """A forward as a user names it: ``namespace/service`` (plus the pod part of a per-pod
    forward of a headless service)."""
    parts = forward.key.split("/")
    extra = "/".join(parts[3:])
    name = f"{forward.namespace}/{forward.service}"
    return f"{name} ({extra})" if extra else name


class Readiness:
    """Answers "does every wanted service answer now?" from the store and the bus."""

    def __init__(self, store: StateStore, bus: EventBus, *, settle: float = PROBE_SETTLE) -> None:
        self.store = store
        self.bus = bus
        self.settle = settle

    def not_ready(self, wait_for: Sequence[str], stop: threading.Event) -> list[str]:
        """One round: the services (as ``namespace/name``) not answering now; [] = all up."""
        forwards, missing = wanted_forwards(self.store.snapshot(), wait_for)
        down = [f"{p} (no such service)" for p in missing]
        probe: list[ForwardState] = []
        for f in forwards:
            if f.pod is None or not f.ip or not f.ports:
                down.append(describe(f) + (" (no ready pod)" if f.pod is None else ""))
            else:
                probe.append(f)
        if probe and not stop.is_set():
            failed = self._probe(probe, stop)
            down += [describe(f) for f in probe if f.key in failed]
        return down

    def _probe(self, forwards: Sequence[ForwardState], stop: threading.Event) -> set[str]:
        """Connect to every port of ``forwards`` at once; the keys whose connection was not
        routed, failed on the bus, or was closed within the settling window."""
        sub = self.bus.subscribe("readiness probe",
                                 types=(ConnectionRouted, TunnelFailed, ConnectionFailed))
        socks: dict[socket.socket, str] = {}
        failed: set[str] = set()
        try:
            for f in forwards:
                for port in _local_ports(f.ports):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.settimeout(2.0)
                    try:
                        sock.connect((f.ip, port))
                    except OSError:
                        close_quietly(sock)
                        failed.add(f.key)
                        continue
                    sock.setblocking(False)
                    socks[sock] = f.key
            routed: set[str] = set()
            deadline = time.monotonic() + self.settle
            open_socks = dict(socks)
            while open_socks and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                readable, _, _ = select.select(list(open_socks), [], [], min(left, 0.05))
                for sock in readable:
                    try:
                        data = sock.recv(1)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    key = open_socks.pop(sock)
                    if not data:  # closed or reset: nothing answered
                        failed.add(key)
                _sort_events(sub.drain(), routed, failed)
            _sort_events(sub.drain(), routed, failed)
            failed |= {key for key in socks.values() if key not in routed}
        finally:
            sub.close()
            for sock in socks:
                close_quietly(sock)
        return failed

    def wait(self, plan: WaitPlan, stop: threading.Event,
             deadline: float | None) -> list[str]:
        """Rounds until everything answers ([]), ``deadline`` (what is still down) or a stop
        (what is down when it came)."""
        if plan.no_wait:
            return []
        while True:
            down = self.not_ready(plan.wait_for, stop)
            if not down or stop.is_set():
                return down
            if deadline is not None and time.monotonic() >= deadline:
                return down
            stop.wait(ROUND_PAUSE)


def _sort_events(events: Iterable[Event], routed: set[str], failed: set[str]) -> None:
    for event in events:
        if isinstance(event, ConnectionRouted):
            routed.add(event.key)
        elif isinstance(event, (TunnelFailed, ConnectionFailed)):
            failed.add(event.key)


def _local_ports(ports: Iterable[str]) -> list[int]:
    out: list[int] = []
    for text in ports:
        with contextlib.suppress(ValueError):
            out.append(int(text.split(":")[0]))
    return out


# -- the ready file ------------------------------------------------------------------------


def write_ready_file(path: Path, content: str, owner: pwd.struct_passwd | None = None) -> None:
    """Write ``content`` to ``path`` atomically: a reader sees no file or the whole file.
    With ``owner`` (the user who ran sudo) the file is theirs."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
            if owner is not None:
                os.fchown(out.fileno(), owner.pw_uid, owner.pw_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_ready_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def ready_text(hosts_path: Path) -> str:
    return f"pid={os.getpid()}\nhosts={hosts_path}\n"


class ReadyFileWriter(StoppableThread):
    """Without a command: waits for readiness in the background and writes the ready file,
    warning once (naming what is down) when ``timeout`` passes first and still writing it
    once everything answers."""

    def __init__(self, readiness: Readiness, plan: WaitPlan, path: Path, content: str,
                 warn: Callable[[list[str]], None]) -> None:
        super().__init__("kubefwd/ready-file")
        self.readiness = readiness
        self.plan = plan
        self.path = path
        self.content = content
        self.warn = warn
        self.written = threading.Event()

    def run_loop(self) -> None:
        deadline: float | None = time.monotonic() + self.plan.timeout
        while not self.stopping.is_set():
            down = self.readiness.wait(self.plan, self.stopping, deadline)
            if self.stopping.is_set():
                return
            if not down:
                write_ready_file(self.path, self.content)
                self.written.set()
                return
            if deadline is not None:
                self.warn(down)
                deadline = None


# -- the command ---------------------------------------------------------------------------


def exit_status(returncode: int) -> int:
    """A child's exit as a shell reports it: its code, or 128+N when signal N ended it."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal_fd() -> int | None:
    """Our standard input when it is the controlling terminal of our process group."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None
    try:
        if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except OSError:
        return None
    return None


@contextlib.contextmanager
def _foreground(tty: int | None, pgid: int) -> Any:
    """Make ``pgid`` the terminal's foreground group for the block, then take it back (with
    SIGTTOU ignored: a background group may not otherwise change it)."""
    if tty is None:
        yield
        return
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, pgid)
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGCONT)  # if it read the terminal before it was ours
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, os.getpgrp())
        signal.signal(signal.SIGTTOU, previous)


def as_user(user: pwd.struct_passwd, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Popen arguments that run a command as ``user`` (its uid, gid and groups) and the
    environment it expects: its ``HOME``, ``USER`` and ``LOGNAME``."""
    try:
        groups = os.getgrouplist(user.pw_name, user.pw_gid)
    except OSError:
        groups = [user.pw_gid]
    env = dict(env, HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}, env


def run_command(argv: Sequence[str], env: dict[str, str],
                user: pwd.struct_passwd | None = None) -> int:
    """Run ``argv`` in its own foreground process group, passing on the stop signals sent to
    us, until it ends; its exit status (128+N for signal N). Only on the main thread.

    With ``user`` (under sudo, the one who ran it) the command runs as that user, not root."""
    tty = _terminal_fd()
    extra: dict[str, Any] = (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    )
    if user is not None:
        identity, env = as_user(user, env)
        extra.update(identity)
    proc = subprocess.Popen(list(argv), env=env, **extra)
    previous: dict[signal.Signals, Any] = {}

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signum)

    try:
        for signum in FORWARDED_SIGNALS:
            previous[signum] = signal.signal(signum, forward)
        with _foreground(tty, proc.pid):
            while True:
                try:
                    returncode = proc.wait()
                    break
                except KeyboardInterrupt:  # a handler elsewhere raised it: keep waiting
                    continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return exit_status(returncode)


def command_env(hosts_path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The command's environment: ours plus ``KUBEFWD_READY=1`` and ``KUBEFWD_HOSTS``."""
    env = dict(os.environ if base is None else base)
    env["KUBEFWD_READY"] = "1"
    env["KUBEFWD_HOSTS"] = str(hosts_path)
    return env


def command_not_found(argv: Sequence[str]) -> str | None:
    """Why ``argv[0]`` cannot be run, or None when it looks runnable."""
    import shutil

    name = argv[0]
    if "/" in name:
        if not os.path.exists(name):
            return f"{name}: no such file"
        if not os.access(name, os.X_OK):
            return f"{name}: not executable"
        return None
    if shutil.which(name) is None:
        return f"{name}: command not found"
    return None
