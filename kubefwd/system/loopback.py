"""Making a loopback IP bindable, per operating system, with undo.

Linux routes all of 127.0.0.0/8 to ``lo``, so usually nothing is needed; we test with a real
bind and add an address (``ip addr add IP/8 dev lo``) only where that fails. macOS answers
only 127.0.0.1 until ``ifconfig lo0 alias IP`` adds more. Each strategy remembers what it
added and removes exactly that in ``cleanup``, one step at a time so a failure does not skip
the rest.
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from kubefwd.errors import NetworkError

log = logging.getLogger(__name__)


def bindable(ip: str) -> bool:
    """True when a TCP socket can bind ``ip`` (port 0: nothing listens, nothing lingers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, 0))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return False
            raise NetworkError(f"cannot test binding {ip}: {e.strerror}") from None
    return True


def _run(argv: Sequence[str]) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"'{' '.join(argv)}' failed: {e}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        hint = " (needs root)" if "permitted" in " ".join(detail).lower() else ""
        raise NetworkError(
            f"'{' '.join(argv)}' failed{hint}: {detail[-1] if detail else done.returncode}"
        )


class LoopbackStrategy:
    """Base: makes IPs bindable, remembers what it added, undoes it."""

    name = "generic"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        self.added: list[str] = []

    @staticmethod
    def is_supported() -> bool:
        return True

    def add_command(self, ip: str) -> list[str] | None:
        return None

    def remove_command(self, ip: str) -> list[str] | None:
        return None

    def ensure(self, ip: str) -> None:
        """Make ``ip`` bindable; raises NetworkError naming the IP and the failed step."""
        with self._lock:
            if ip in self._ready:
                return
            if not bindable(ip):
                command = self.add_command(ip)
                if command is None:
                    raise NetworkError(f"{ip} is not a local address and cannot be added here")
                _run(command)
                self.added.append(ip)
                log.debug("added loopback address %s", ip)
                if not bindable(ip):
                    raise NetworkError(f"{ip} is still not bindable after '{' '.join(command)}'")
            self._ready.add(ip)

    def cleanup(self) -> list[str]:
        """Remove every address we added; returns the errors (each step runs regardless)."""
        errors: list[str] = []
        with self._lock:
            added, self.added = self.added, []
            self._ready.clear()
        for ip in reversed(added):
            command = self.remove_command(ip)
            if command is None:
                continue
            try:
                _run(command)
            except NetworkError as e:
                log.warning("%s", e)
                errors.append(str(e))
        return errors


class LinuxLoopback(LoopbackStrategy):
    name = "linux"

    @staticmethod
    def is_supported() -> bool:
        return sys.platform.startswith("linux")

    def add_command(self, ip: str) -> list[str]:
        return ["ip", "addr", "add", f"{ip}/8", "dev", "lo"]

    def remove_command(self, ip: str) -> list[str]:
        return ["ip", "addr", "del", f"{ip}/8", "dev", "lo"]


class MacLoopback(LoopbackStrategy):
    name = "macos"

    @staticmethod
    def is_supported() -> bool:
        return sys.platform == "darwin"

    def add_command(self, ip: str) -> list[str]:
        return ["ifconfig", "lo0", "alias", ip, "up"]

    def remove_command(self, ip: str) -> list[str]:
        return ["ifconfig", "lo0", "-alias", ip]


STRATEGIES: tuple[type[LoopbackStrategy], ...] = (LinuxLoopback, MacLoopback)


def loopback_strategy() -> LoopbackStrategy:
    """The strategy for this OS; the generic one only tests binds."""
    for strategy in STRATEGIES:
        if strategy.is_supported():
            return strategy()
    return LoopbackStrategy()
