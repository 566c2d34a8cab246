"""Sharing one hosts file and the loopback range with other running kubefwd instances.

Another instance's lines are read (at most once a second) so that allocation skips its
addresses, names it already wrote are held back from ours until it lets go of them, and a
forward whose address turns out to be in use moves to the next free one. Kept apart from the
app: this is the only place that knows other instances exist, and the addresses really used
can differ from the registry's because of it.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kubefwd.errors import KubefwdError
from kubefwd.events.report import Reporter
from kubefwd.hosts.owners import Owners
from kubefwd.hosts.writer import HostsWriter, foreign_entries
from kubefwd.registry.ipalloc import IpAllocator
from kubefwd.registry.model import ForwardKey
from kubefwd.serve.forwarder import BindError

log = logging.getLogger("kubefwd.app.program")  # the app's work, logged under its name

# How many times a forward moves on when the next address is in use too.
MOVE_ATTEMPTS = 5


def _file_state(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class OtherInstances:
    """Addresses and names other running kubefwd processes hold in the hosts file, read at
    most once per ``max_age`` seconds (allocation asks for every candidate address)."""

    def __init__(self, path: Path, max_age: float = 1.0, owners: Owners | None = None) -> None:
        self.path = path
        self.owners = owners
        self.max_age = max_age
        self._lock = threading.Lock()
        self._read_at = -max_age
        self._entries: dict[str, list[str]] = {}
        self._names: dict[str, str] = {}
        # The file as last read (inode, size, mtime, ctime): while it is unchanged and held
        # no other live instance's lines, reading it again cannot tell anything new. Parsing
        # thousands of our own lines every second was most of an idle run's CPU.
        self._seen: tuple[int, int, int, int] | None = None

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read if stale (or ``force``); True when what the others hold changed."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._read_at < self.max_age:
                return False
            self._read_at = now
            quiet = not self._entries
        seen = _file_state(self.path)
        if not force and quiet and seen is not None and seen == self._seen:
            return False
        try:
            entries = foreign_entries(self.path, lock_timeout=1.0, owners=self.owners)
        except (KubefwdError, OSError) as exc:
            log.debug("could not read other instances' lines from %s: %s", self.path, exc)
            return False
        names = {name: ip for ip, names in entries.items() for name in names}
        with self._lock:
            changed = entries != self._entries
            self._entries, self._names = entries, names
            self._seen = seen
        return changed

    def ip_taken(self, ip: str) -> bool:
        self.refresh()
        with self._lock:
            return ip in self._entries

    def holder(self, name: str) -> str | None:
        """The address another instance gave ``name``, if one did."""
        with self._lock:
            return self._names.get(name)


class Coexistence:
    """The hosts entries and addresses this instance really uses, given the others: the
    registry's snapshot at moved addresses, less the names another instance holds."""

    def __init__(self, hosts_path: Path, report: Reporter, owners: Owners | None = None) -> None:
        self.others = OtherInstances(hosts_path, owners=owners)
        self.report = report
        self.hosts: HostsWriter | None = None  # set once the writer exists
        # registry address → the one really used, for forwards that found theirs taken
        self._ip_map: dict[str, str] = {}
        self._ip_lock = threading.Lock()
        self._hosts_lock = threading.Lock()  # one hosts snapshot computed at a time
        self._raw_hosts: dict[str, list[str]] = {}  # the registry's newest snapshot
        self._written_names: set[str] = set()  # names we have published: they stay ours
        # registry addresses of forwards that listen on no port: their names are not written
        self._silent: set[str] = set()
        self._foreign_warned: set[str] = set()
        # Entries of our own besides the forwards' (the API's name), ip → names.
        self.extra: dict[str, list[str]] = {}

    def moved_to(self, registry_ip: str) -> str | None:
        """The address a forward given ``registry_ip`` moved to, if it moved."""
        with self._ip_lock:
            return self._ip_map.get(registry_ip)

    def forget(self, registry_ip: str) -> None:
        """The forward given ``registry_ip`` is gone."""
        with self._ip_lock:
            self._ip_map.pop(registry_ip, None)
            self._silent.discard(registry_ip)

    def set_listening(self, registry_ip: str, listening: bool) -> bool:
        """Does the forward given ``registry_ip`` listen on at least one port? Names are
        written only for addresses we listen on. True when that changed."""
        with self._ip_lock:
            was = registry_ip not in self._silent
            if listening:
                self._silent.discard(registry_ip)
            else:
                self._silent.add(registry_ip)
            return was != listening

    def set_snapshot(self, entries: dict[str, list[str]]) -> None:
        """The registry's newest hosts snapshot (ip → names), at its own addresses."""
        with self._hosts_lock:
            self._raw_hosts = entries

    def publish(self) -> None:
        """Hand the hosts writer the registry's snapshot at the addresses really used, less
        the names another running kubefwd already wrote (those wait until it lets go) and
        those of forwards that listen on no port (they wait until one is bound)."""
        hosts = self.hosts
        if hosts is None:
            return
        with self._hosts_lock:
            with self._ip_lock:
                ip_map = dict(self._ip_map)
                silent = set(self._silent)
            entries: dict[str, list[str]] = {}
            held: list[str] = []
            for ip, names in self._raw_hosts.items():
                if ip in silent:  # nobody listens there: a name would lead nowhere
                    continue
                kept = []
                for name in names:
                    if name not in self._written_names and self.others.holder(name):
                        held.append(name)
                    else:
                        kept.append(name)
                if kept:
                    entries[ip_map.get(ip, ip)] = kept
            for ip, names in self.extra.items():
                entries.setdefault(ip, []).extend(n for n in names if n not in entries[ip])
            self._written_names = {n for names in entries.values() for n in names}
            new = [n for n in held if n not in self._foreign_warned]
            self._foreign_warned.update(new)
            hosts.publish(entries)
        if new:
            shown = ", ".join(new[:6]) + (f" and {len(new) - 6} more" if len(new) > 6 else "")
            self.report.warning(
                "not written to the hosts file, another running kubefwd has them: %s", shown
            )

    def shown_names(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` that are ours to announce (not held back for another)."""
        return [n for n in names if n in self._written_names or not self.others.holder(n)]

    def move_if_in_use(
        self,
        key: ForwardKey,
        registry_ip: str,
        ip: str,
        errors: list[BindError],
        *,
        allocator: IpAllocator | None,
        rebind: Callable[[str], list[BindError]],
        quiet: bool = False,
    ) -> list[BindError]:
        """A port of the forward's address ``ip`` is held by another process (another kubefwd
        that has not written its lines yet, say): move the forward to the next free address
        (``rebind`` binds it there). A reserved address (-r, -z) stays, with the error.
        ``quiet``: a retry, which does not warn again that no address is free."""
        moved = False
        for _ in range(MOVE_ATTEMPTS):
            in_use = [e for e in errors if isinstance(e.__cause__, OSError)
                      and e.__cause__.errno == errno.EADDRINUSE]
            if not in_use or allocator is None or allocator.is_reserved(ip):
                break
            try:
                new_ip = allocator.move(key, namespace=key.namespace)
            except (KubefwdError, KeyError) as exc:
                if not quiet:
                    self.report.warning("%s: %s", key, exc)
                break
            self.report.warning("%s: %s; moving it to %s", key, in_use[0], new_ip)
            with self._ip_lock:
                self._ip_map[registry_ip] = new_ip
            ip = new_ip
            errors = rebind(new_ip)
            moved = True
        if moved:
            self.publish()
        return errors
