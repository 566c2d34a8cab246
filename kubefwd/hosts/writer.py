"""The hosts file while kubefwd runs: whose lines stay, and the one thread that writes it.

The marker on each of our lines names the owning process (pid plus its start time, so a
recycled pid does not keep dead lines alive), which lets several kubefwd processes share one
file and lets any of them purge the lines of one that died. Every update is one locked
read-modify-write. The format is in ``hostsformat``, the locking and writing in ``hostsio``,
the backup in ``hostsbackup``, the writers running in this process in ``owners`` (an object
the app owns and hands to the writer, the stop signals and every liveness check); this module
decides whose lines stay and runs the writer thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from kubefwd.errors import HostsFileError, KubefwdError, PrivilegeError
from kubefwd.hosts.backup import backup_hosts
from kubefwd.hosts.fileio import (
    HostsChanged,
    cannot_write,
    locked,
    read_hosts,
    read_hosts_settled,
    remove_orphaned_temps,
    write_blocker,
    write_hosts,
)
from kubefwd.hosts.format import (
    HostsDoc,
    Marker,
    format_entries,
    line_names,
    parse_hosts,
    render_hosts,
)
from kubefwd.hosts.owners import Owners
from kubefwd.hosts.shadowing import NameGuard
from kubefwd.support.threads import StoppableThread

__all__ = [
    "HostsWriter",
    "Owners",
    "foreign_entries",
    "owner_alive",
    "process_start",
    "remove_owned_lines",
    "rewrite_lines",
    "update_hosts",
]

log = logging.getLogger(__name__)

# Merges started again when another program keeps editing the file under us.
MERGE_ATTEMPTS = 5


def process_start(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def owner_alive(marker: Marker, *, strict: bool = False, owners: Owners | None = None) -> bool:
    """Is the process that wrote a line still running? ``strict`` (-p): unless proven.
    A writer of this process registered in ``owners`` always is."""
    if owners is not None and owners.is_local(marker.pid):
        return True
    try:
        proc = psutil.Process(marker.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = int(proc.create_time())
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, OSError):
        return not strict
    if marker.started is None:
        return not strict
    return abs(started - marker.started) <= 1


def rewrite_lines(
    doc: HostsDoc,
    owner: Marker,
    entries: Mapping[str, Sequence[str]] | None,
    *,
    purge_stale: bool = False,
    guard: NameGuard | None = None,
    owners: Owners | None = None,
) -> bytes:
    """The new file content: foreign text, live other owners' lines, then ours (without the
    names ``guard`` holds back next to this foreign text, a default guard without one, and
    less the names those other owners' lines already have)."""
    keep: list[bytes] = []
    alive: dict[tuple[int, int | None], bool] = {}
    for body, marker in doc.owned:
        if marker.pid == owner.pid:
            continue
        who = (marker.pid, marker.started)
        if who not in alive:
            alive[who] = owner_alive(marker, strict=purge_stale, owners=owners)
            if not alive[who]:
                log.info("removing hosts lines of kubefwd pid %d (no longer running)", marker.pid)
        if alive[who]:
            keep.append(body)
    if entries:
        entries = (guard or NameGuard()).filter(entries, doc.foreign)
    # Names another live instance has written stay its own: of two instances that both
    # take over a name the moment its holder stops, the first to write it keeps it.
    taken = {name for body in keep for name in line_names(body)}
    ours = format_entries(entries, owner, taken=taken) if entries else []
    return render_hosts(doc, keep + ours)


def update_hosts(
    path: Path,
    owner: Marker,
    entries: Mapping[str, Sequence[str]] | None,
    *,
    purge_stale: bool = False,
    lock_timeout: float = 10.0,
    guard: NameGuard | None = None,
    owners: Owners | None = None,
) -> bool:
    """One locked read-modify-write; True when the file changed.

    Our lock binds only kubefwd processes: when another program edits the file between our
    read and our write, the write is dropped and the merge starts again from its edit.
    """
    target = Path(os.path.realpath(path))
    with locked(target, lock_timeout) as rename_ok:
        if rename_ok:  # the sidecar lock: the one every temp file is made under
            remove_orphaned_temps(target)
        for _ in range(MERGE_ATTEMPTS):
            data, stamp = read_hosts_settled(target)
            new = rewrite_lines(parse_hosts(data), owner, entries, purge_stale=purge_stale,
                                guard=guard, owners=owners)
            if new == data:
                return False
            try:
                write_hosts(target, new, rename_ok=rename_ok, expect=stamp)
                return True
            except HostsChanged:
                log.debug("%s changed while kubefwd merged its lines; merging again", target)
    raise HostsFileError(
        f"the hosts file {path} kept changing while kubefwd merged its lines; not written"
    )


def remove_owned_lines(
    path: Path, owner_pid: int, *, lock_timeout: float = 5.0, owners: Owners | None = None
) -> bool:
    """Remove the lines of ``owner_pid`` (and of dead owners) now, without a thread.

    A writer thread of that owner registered in ``owners`` writes no more lines after this
    (shutdown cut short by a second signal must not be undone by a late write). Takes no
    in-process lock (only the hosts file lock, with ``lock_timeout``): a signal handler may
    call it.
    """
    if owners is not None:
        owners.retire(owner_pid, path)
    return update_hosts(Path(path), Marker(owner_pid), None, lock_timeout=lock_timeout,
                        owners=owners)


def foreign_entries(
    path: Path,
    *,
    owner_pid: int | None = None,
    lock_timeout: float = 10.0,
    owners: Owners | None = None,
) -> dict[str, list[str]]:
    """IP → names of the lines other running kubefwd processes own in the hosts file.

    A new instance keeps clear of these IPs and names so two of them never hand out the same
    address. Lines of ``owner_pid`` (this process by default) and of dead owners are left
    out. Read under the shared lock, so no half-done update is seen.
    """
    me = os.getpid() if owner_pid is None else owner_pid
    target = Path(os.path.realpath(path))
    if not target.exists():
        return {}
    with locked(target, lock_timeout, shared=True):
        doc = parse_hosts(read_hosts(target))
    out: dict[str, list[str]] = {}
    alive: dict[tuple[int, int | None], bool] = {}
    for body, marker in doc.owned:
        if marker.pid == me:
            continue
        who = (marker.pid, marker.started)
        if who not in alive:
            alive[who] = owner_alive(marker, owners=owners)
        if not alive[who]:
            continue
        fields = body.split(b"#", 1)[0].split()
        if len(fields) < 2:
            continue
        names = out.setdefault(fields[0].decode("ascii", "replace"), [])
        names.extend(n.decode("ascii", "replace") for n in fields[1:])
    return out


# -- the writer thread ---------------------------------------------------------------------


class HostsWriter(StoppableThread):
    """The only code that touches the hosts file while kubefwd runs.

    ``publish`` hands over a full snapshot ip → names; the thread writes only the newest one
    (bursts coalesce), at most once per ``min_interval`` unless someone is waiting in
    ``flush``. ``stop`` removes our lines, then the thread ends.

    After ``stop_and_join``, ``cleanup_failed`` tells whether our lines are still in the file
    (``last_error`` says why); the final removal is retried for up to ``cleanup_timeout``.

    ``backup_dir``: copy the file, without kubefwd lines, to ``hosts.original`` there before
    the first write (kubefwd passes the folder of ``backup_target(path)``: the invoking user's
    home, ``SUDO_USER``'s under sudo, and only for the system hosts file); None: no backup.
    ``refresh_backup`` overwrites an existing copy. ``allow_shadowing``: write names that a
    foreign line already defines (names of this machine never are; see ``shadowing``).
    ``owners``: the writers of this process (the app's, shared with its stop signals); the
    writer registers its owner pid there while it runs. None: a registry of its own.
    """

    def __init__(
        self,
        path: Path,
        *,
        owner_pid: int | None = None,
        backup_dir: Path | None = None,
        refresh_backup: bool = False,
        purge_stale: bool = False,
        min_interval: float = 0.25,
        lock_timeout: float = 10.0,
        cleanup_timeout: float = 8.0,
        allow_shadowing: bool = False,
        owners: Owners | None = None,
    ) -> None:
        super().__init__(name="hosts-writer")
        self.owners = Owners() if owners is None else owners
        self.guard = NameGuard(allow_shadowing=allow_shadowing)
        self.path = Path(path)
        pid = os.getpid() if owner_pid is None else owner_pid
        self.owner = Marker(pid, process_start(pid))
        self.backup_dir = backup_dir
        self.refresh_backup = refresh_backup
        self.purge_stale = purge_stale
        self.min_interval = min_interval
        self.lock_timeout = lock_timeout
        self.cleanup_timeout = cleanup_timeout
        self.writes = 0
        self.last_error: KubefwdError | None = None
        # Set when the thread has ended without removing our lines (after retries);
        # ``last_error`` then says why. The caller turns it into exit code 6 (HOSTS).
        self.cleanup_failed = False
        self._cond = threading.Condition()
        self._pending: dict[str, list[str]] | None = None
        self._published = 0
        self._written = 0
        self._urgent = False
        self._registered = False

    # public API ------------------------------------------------------------------------

    def check_access(self) -> None:
        """Raise PrivilegeError/HostsFileError now if the file cannot be read or written.

        Root is suggested only where it would help: not to root itself, and not for a file
        nobody may change (read-only file system, immutable) — that is a HostsFileError.
        """
        target = Path(os.path.realpath(self.path))
        if target.exists():
            if not os.access(target, os.R_OK):
                hint = "" if os.geteuid() == 0 else " (run as root or grant read permission)"
                raise HostsFileError(
                    f"cannot read the hosts file {self.path}: permission denied{hint}"
                )
            if not os.access(target, os.W_OK):
                raise cannot_write(self.path)
        elif not os.access(target.parent, os.W_OK):
            if write_blocker(target) is not None or os.geteuid() == 0:
                raise cannot_write(self.path)
            raise PrivilegeError(
                f"cannot create the hosts file {self.path}: no write permission on "
                f"{target.parent} (run as root or choose another --hosts-path)"
            )
        read_hosts(target)

    def start(self) -> None:
        """Check access and make the backup in the caller's thread (errors raise here)."""
        self.check_access()
        if self.backup_dir is not None:
            written = backup_hosts(
                self.path,
                self.backup_dir,
                refresh=self.refresh_backup,
                lock_timeout=self.lock_timeout,
            )
            if written:
                log.info("backed up %s to %s", self.path, written)
        self.owners.enter(self.owner.pid)
        self._registered = True
        super().start()

    def publish(self, entries: Mapping[str, Sequence[str]]) -> None:
        snapshot = {ip: list(names) for ip, names in entries.items()}
        with self._cond:
            if self.stopping.is_set():
                return
            self._pending = snapshot
            self._published += 1
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the newest published snapshot is on disk; False on timeout/failure."""
        with self._cond:
            target = self._published
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: self._written >= target or not self.is_alive(), timeout
            ) and self._written >= target

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # the thread ------------------------------------------------------------------------

    def run_loop(self) -> None:
        last_write = 0.0
        failures = 0
        try:
            while not self.stopping.is_set():
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._pending is not None or self.stopping.is_set()
                    )
                    if self.stopping.is_set():
                        break
                    # Rate limit: bursts (hundreds of services at start-up) become a handful
                    # of writes. A flush() or stop() cuts the wait short.
                    due = last_write + self.min_interval
                    self._cond.wait_for(
                        lambda: self._urgent or self.stopping.is_set(),
                        max(0.0, due - time.monotonic()),
                    )
                    snapshot, seq = self._pending, self._published
                    self._pending = None
                    self._urgent = False
                if snapshot is None:
                    continue
                if self._write(snapshot):
                    failures = 0
                    last_write = time.monotonic()
                    with self._cond:
                        self._written = max(self._written, seq)
                        self._cond.notify_all()
                else:
                    failures += 1
                    with self._cond:
                        if self._pending is None:
                            self._pending = snapshot
                    self.stopping.wait(min(0.2 * 2**failures, 5.0))
        finally:
            self._final_cleanup()

    def _write(
        self, entries: Mapping[str, Sequence[str]] | None, lock_timeout: float | None = None
    ) -> bool:
        if self.owners.is_retired(self.owner.pid, self.path):
            entries = None
        try:
            if update_hosts(
                self.path,
                self.owner,
                entries,
                purge_stale=self.purge_stale,
                lock_timeout=self.lock_timeout if lock_timeout is None else lock_timeout,
                guard=self.guard,
                owners=self.owners,
            ):
                self.writes += 1
            self.last_error = None
            return True
        except KubefwdError as e:
            self.last_error = e
            log.error("%s", e)
        except OSError as e:
            self.last_error = HostsFileError(f"cannot update the hosts file {self.path}: {e}")
            log.error("%s", self.last_error)
        return False

    def _remove_ours(self) -> bool:
        """Remove our lines, retrying a few times (a lock held a moment too long, a disk
        that frees up) within ``cleanup_timeout``."""
        deadline = time.monotonic() + self.cleanup_timeout
        pause = threading.Event()  # never set: a timed wait that is not a sleep
        delay = 0.05
        while True:
            left = deadline - time.monotonic()
            if self._write(None, lock_timeout=max(0.05, min(self.lock_timeout, left))):
                return True
            if time.monotonic() + delay > deadline:
                return False
            pause.wait(delay)
            delay = min(delay * 2, 1.0)

    def _final_cleanup(self) -> None:
        try:
            if not self._remove_ours():
                self.cleanup_failed = True
                log.error(
                    "could not remove kubefwd lines from %s: %s", self.path, self.last_error
                )
        finally:
            if self._registered:
                self.owners.leave(self.owner.pid)
                self._registered = False
            with self._cond:
                self._written = self._published
                self._cond.notify_all()
