"""The hosts file: parse and render it, and the one thread that writes it.

Our lines look like ``127.1.27.1<TAB>web web.shop ...<TAB># kubefwd pid=4242 t=1764139200``
and are recognised only by that trailing marker; every other byte of the file is foreign and
is written back exactly as read (comments, CRLF, odd whitespace, a missing final newline).
The marker names the owning process (pid plus its start time, so a recycled pid does not keep
dead lines alive), which lets several kubefwd processes share one file and lets any of them
purge the lines of one that died.

Writes go through a lock on a sidecar file (``<hosts>.kubefwd.lock``; the hosts file itself is
replaced by rename, so a lock on it would be lost), re-read the file under that lock, and land
by temp file + fsync + rename keeping owner and mode, or by an in-place rewrite where a rename
is impossible (a bind-mounted /etc/hosts in a container).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import portalocker
import psutil

from kubefwd.errors import HostsFileError, KubefwdError, PrivilegeError
from kubefwd.threads import StoppableThread

log = logging.getLogger(__name__)

MARKER_TAG = b"# kubefwd pid="
BACKUP_NAME = "hosts.original"
LOCK_SUFFIX = ".kubefwd.lock"
MAX_LINE = 200  # some resolvers mishandle very long lines; split name lists past this
_MARKER = re.compile(rb"# kubefwd pid=(\d+)(?: t=(\d+))?(?: sep=(lf|crlf))?[ \t]*$")
_LINE = re.compile(rb"^[ \t]*[0-9A-Fa-f.:]+[ \t]+[^#]*" + _MARKER.pattern)
_SEP_FLAG = re.compile(rb" sep=(?:lf|crlf)(?=[ \t]*$)")
_VALID_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_RENAME_IMPOSSIBLE = {errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_LOCK_FLAGS = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING

# Owner pids of the writers running in this process: always alive, whatever psutil says.
_local_owners: dict[int, int] = {}
# Owners whose lines were removed for good (second Ctrl-C): their writers add nothing more.
_retired_owners: set[tuple[int, str]] = set()
_local_owners_lock = threading.Lock()


@dataclass(frozen=True)
class Marker:
    pid: int
    started: int | None = None  # owner's start time (whole seconds since the epoch)
    sep: bytes = b""  # newline we added after foreign text that lacked a final one

    def render(self) -> bytes:
        out = MARKER_TAG + str(self.pid).encode()
        if self.started is not None:
            out += b" t=%d" % self.started
        if self.sep:
            out += b" sep=" + (b"crlf" if self.sep == b"\r\n" else b"lf")
        return out


def parse_marker(line: bytes) -> Marker | None:
    """The marker of one of our lines (without its line ending), or None if it is foreign."""
    if MARKER_TAG not in line or not _LINE.match(line):
        return None
    m = _MARKER.search(line)
    assert m is not None
    sep = {b"lf": b"\n", b"crlf": b"\r\n", None: b""}[m.group(3)]
    return Marker(int(m.group(1)), int(m.group(2)) if m.group(2) else None, sep)


@dataclass
class HostsDoc:
    """A hosts file split into foreign bytes (exact) and kubefwd lines (any owner)."""

    foreign: bytes
    owned: list[tuple[bytes, Marker]]  # line body without ending, its marker
    newline: bytes = b"\n"


def _split_lines(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (body, ending) for each line; only LF ends a line, a CR before it is the ending."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:], b""
            return
        if end > start and data[end - 1 : end] == b"\r":
            yield data[start : end - 1], b"\r\n"
        else:
            yield data[start:end], b"\n"
        start = end + 1


def parse_hosts(data: bytes) -> HostsDoc:
    foreign: list[bytes] = []  # raw lines, ending included
    owned: list[tuple[bytes, Marker]] = []
    synthetic: tuple[int, bytes] | None = None  # (foreign line index, the newline we added)
    newline: bytes | None = None
    for body, ending in _split_lines(data):
        marker = parse_marker(body)
        if marker is None:
            foreign.append(body + ending)
            if newline is None and ending:
                newline = ending
            continue
        if marker.sep and foreign and foreign[-1].endswith(marker.sep):
            synthetic = (len(foreign) - 1, marker.sep)
        owned.append((body, marker))
    # The newline we added after foreign text that had none is ours to take back, but only
    # while that text is still the end of the foreign part.
    if synthetic is not None and synthetic[0] == len(foreign) - 1:
        foreign[-1] = foreign[-1][: -len(synthetic[1])]
    return HostsDoc(b"".join(foreign), owned, newline or b"\n")


def _clean_names(names: Sequence[str], seen: set[str]) -> list[bytes]:
    out: list[bytes] = []
    for name in names:
        if not _VALID_NAME.match(name) or len(name) > 253:
            log.warning("not writing invalid host name %r", name)
            continue
        if name in seen:
            continue
        seen.add(name)
        out.append(name.encode("ascii"))
    return out


def format_entries(entries: Mapping[str, Sequence[str]], marker: Marker) -> list[bytes]:
    """Our lines for a snapshot ip → names: one per IP, split when the name list is long.

    A name already written for an earlier IP is skipped, so no name ever points at two IPs.
    """
    tag = marker.render()
    seen: set[str] = set()
    lines: list[bytes] = []
    for ip, names in entries.items():
        ip_b = ip.encode("ascii")
        chunk: list[bytes] = []
        width = len(ip_b)
        for name in _clean_names(names, seen):
            if chunk and width + 1 + len(name) > MAX_LINE:
                lines.append(ip_b + b"\t" + b" ".join(chunk) + b"\t" + tag)
                chunk, width = [], len(ip_b)
            chunk.append(name)
            width += 1 + len(name)
        if chunk:
            lines.append(ip_b + b"\t" + b" ".join(chunk) + b"\t" + tag)
    return lines


def render_hosts(doc: HostsDoc, lines: Sequence[bytes]) -> bytes:
    """Foreign text, then the kubefwd lines; marks a newline we had to add for them."""
    if not lines:
        return doc.foreign
    out = [doc.foreign]
    first = _SEP_FLAG.sub(b"", lines[0])
    if doc.foreign and not doc.foreign.endswith(b"\n"):
        out.append(doc.newline)
        first += b" sep=" + (b"crlf" if doc.newline == b"\r\n" else b"lf")
    out.append(first + doc.newline)
    out.extend(_SEP_FLAG.sub(b"", line) + doc.newline for line in lines[1:])
    return b"".join(out)


def process_start(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def owner_alive(marker: Marker, *, strict: bool = False) -> bool:
    """Is the process that wrote a line still running? ``strict`` (-p): unless proven."""
    with _local_owners_lock:
        if marker.pid in _local_owners:
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
) -> bytes:
    """The new file content: foreign text, live other owners' lines, then ours."""
    keep: list[bytes] = []
    alive: dict[tuple[int, int | None], bool] = {}
    for body, marker in doc.owned:
        if marker.pid == owner.pid:
            continue
        who = (marker.pid, marker.started)
        if who not in alive:
            alive[who] = owner_alive(marker, strict=purge_stale)
            if not alive[who]:
                log.info("removing hosts lines of kubefwd pid %d (no longer running)", marker.pid)
        if alive[who]:
            keep.append(body)
    ours = format_entries(entries, owner) if entries else []
    return render_hosts(doc, keep + ours)


# -- file I/O ------------------------------------------------------------------------------


def lock_path_for(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[bool]:
    """Hold the cross-process lock for ``path``; yields True when a rename may be tried.

    The lock lives on a sidecar file (read access is enough for flock, so an instance that
    cannot write the sidecar another one created still shares its lock). Where no sidecar
    exists and none can be created, the directory cannot take a rename either, so we lock the
    hosts file itself and the write goes in place (its inode never changes, so that lock
    stays valid).
    """
    sidecar = lock_path_for(path)
    handle: IO[bytes] | None = None
    rename_ok = True
    for mode in ("ab", "rb"):
        try:
            handle = open(sidecar, mode)  # noqa: SIM115 - closed in the finally below
            break
        except OSError:
            continue
    if handle is None:
        rename_ok = False
        try:
            handle = open(path, "rb")  # noqa: SIM115
        except OSError as e:
            raise PrivilegeError(
                f"cannot lock or create the hosts file {path}: {e.strerror} "
                f"(run as root or give this user write permission on {path.parent})"
            ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                portalocker.lock(handle, _LOCK_FLAGS)
                break
            except portalocker.exceptions.LockException:
                if time.monotonic() > deadline:
                    raise HostsFileError(
                        f"could not lock {path} within {timeout:g}s "
                        f"(another kubefwd holds {sidecar if rename_ok else path})"
                    ) from None
                time.sleep(0.005)  # poll with a deadline: flock has no timed wait
        try:
            yield rename_ok
        finally:
            portalocker.unlock(handle)
    finally:
        handle.close()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise HostsFileError(f"cannot read the hosts file {path}: {e.strerror}") from None


def _write_in_place(path: Path, data: bytes) -> None:
    """Rewrite the file's own inode. Space is reserved first so a full disk fails before
    any byte changes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if data and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, len(data))
            except OSError as e:
                if e.errno in _NO_SPACE:
                    raise
                # a filesystem without fallocate: go ahead without the reservation
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory + fsync + rename, keeping owner and mode."""
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".kubefwd-tmp", dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if st is not None:
                mine = os.fstat(fd)
                if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
                    # Cannot keep the owner (not root)? Then a rename would change it:
                    # PermissionError sends the caller to the in-place write instead.
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, st.st_mode & 0o7777)
            else:
                os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_hosts(path: Path, data: bytes, *, rename_ok: bool = True) -> str:
    """Put ``data`` in ``path``; returns "rename" or "in-place". Never leaves it truncated."""
    if rename_ok:
        try:
            _write_atomic(path, data)
            return "rename"
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise HostsFileError(
                    f"no space left to write {path}; the file was left unchanged"
                ) from None
            if e.errno not in _RENAME_IMPOSSIBLE:
                raise HostsFileError(f"cannot write the hosts file {path}: {e}") from None
            log.debug("rename over %s impossible (%s); writing in place", path, e.strerror)
    try:
        _write_in_place(path, data)
    except PermissionError:
        raise PrivilegeError(
            f"cannot write the hosts file {path}: run kubefwd as root (sudo) "
            f"or give this user write permission on {path}"
        ) from None
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise HostsFileError(
                f"no space left to write {path}; the file was left unchanged"
            ) from None
        raise HostsFileError(f"cannot write the hosts file {path}: {e}") from None
    return "in-place"


def update_hosts(
    path: Path,
    owner: Marker,
    entries: Mapping[str, Sequence[str]] | None,
    *,
    purge_stale: bool = False,
    lock_timeout: float = 10.0,
) -> bool:
    """One locked read-modify-write; True when the file changed."""
    target = Path(os.path.realpath(path))
    with _locked(target, lock_timeout) as rename_ok:
        data = _read(target)
        new = rewrite_lines(parse_hosts(data), owner, entries, purge_stale=purge_stale)
        if new == data:
            return False
        write_hosts(target, new, rename_ok=rename_ok)
        return True


def remove_owned_lines(path: Path, owner_pid: int, *, lock_timeout: float = 5.0) -> bool:
    """Remove the lines of ``owner_pid`` (and of dead owners) now, without a thread.

    A writer thread of that owner still running in this process writes no more lines after
    this (shutdown cut short by a second signal must not be undone by a late write).
    """
    with _local_owners_lock:
        _retired_owners.add((owner_pid, os.path.realpath(path)))
    return update_hosts(Path(path), Marker(owner_pid), None, lock_timeout=lock_timeout)


# -- backup --------------------------------------------------------------------------------


def invoking_user() -> tuple[Path, int, int]:
    """Home, uid and gid of the user who ran kubefwd (``SUDO_USER`` under sudo, not root)."""
    sudo_user = os.environ.get("SUDO_USER")
    if os.geteuid() == 0 and sudo_user and sudo_user != "root":
        try:
            pw = pwd.getpwnam(sudo_user)
            return Path(pw.pw_dir), pw.pw_uid, pw.pw_gid
        except KeyError:
            pass
    return Path.home(), os.getuid(), os.getgid()


def default_backup_dir() -> Path:
    return invoking_user()[0]


def backup_hosts(path: Path, backup_dir: Path, *, refresh: bool = False) -> Path | None:
    """Copy the hosts file to ``backup_dir/hosts.original`` once (``refresh`` overwrites it);
    the copy belongs to the invoking user. Returns the backup path when it was written."""
    dest = backup_dir / BACKUP_NAME
    if dest.exists() and not refresh:
        return None
    data = _read(Path(os.path.realpath(path)))
    _, uid, gid = invoking_user()
    fd, tmp = tempfile.mkstemp(prefix=".hosts.original.", dir=backup_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        if os.geteuid() == 0:
            os.chown(tmp, uid, gid)
        os.replace(tmp, dest)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise HostsFileError(f"cannot write the hosts backup {dest}: {e.strerror}") from None
    return dest


# -- the writer thread ---------------------------------------------------------------------


class HostsWriter(StoppableThread):
    """The only code that touches the hosts file while kubefwd runs.

    ``publish`` hands over a full snapshot ip → names; the thread writes only the newest one
    (bursts coalesce), at most once per ``min_interval`` unless someone is waiting in
    ``flush``. ``stop`` removes our lines, then the thread ends.

    ``backup_dir``: copy the file to ``hosts.original`` there before the first write (kubefwd
    passes ``default_backup_dir()``, the invoking user's home, ``SUDO_USER``'s under sudo);
    None: no backup. ``refresh_backup`` overwrites an existing copy.
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
    ) -> None:
        super().__init__(name="hosts-writer")
        self.path = Path(path)
        pid = os.getpid() if owner_pid is None else owner_pid
        self.owner = Marker(pid, process_start(pid))
        self.backup_dir = backup_dir
        self.refresh_backup = refresh_backup
        self.purge_stale = purge_stale
        self.min_interval = min_interval
        self.lock_timeout = lock_timeout
        self.writes = 0
        self.last_error: KubefwdError | None = None
        self._cond = threading.Condition()
        self._pending: dict[str, list[str]] | None = None
        self._published = 0
        self._written = 0
        self._urgent = False
        self._registered = False

    # public API ------------------------------------------------------------------------

    def check_access(self) -> None:
        """Raise PrivilegeError/HostsFileError now if the file cannot be read or written."""
        target = Path(os.path.realpath(self.path))
        if target.exists():
            if not os.access(target, os.R_OK):
                raise HostsFileError(
                    f"cannot read the hosts file {self.path}: permission denied "
                    "(run as root or grant read permission)"
                )
            if not os.access(target, os.W_OK):
                raise PrivilegeError(
                    f"cannot write the hosts file {self.path}: run kubefwd as root (sudo) "
                    f"or give this user write permission on {self.path}"
                )
        elif not os.access(target.parent, os.W_OK):
            raise PrivilegeError(
                f"cannot create the hosts file {self.path}: no write permission on "
                f"{target.parent} (run as root or choose another --hosts-path)"
            )
        _read(target)

    def start(self) -> None:
        """Check access and make the backup in the caller's thread (errors raise here)."""
        self.check_access()
        if self.backup_dir is not None:
            written = backup_hosts(self.path, self.backup_dir, refresh=self.refresh_backup)
            if written:
                log.info("backed up %s to %s", self.path, written)
        with _local_owners_lock:
            _local_owners[self.owner.pid] = _local_owners.get(self.owner.pid, 0) + 1
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

    def _write(self, entries: Mapping[str, Sequence[str]] | None) -> bool:
        with _local_owners_lock:
            if (self.owner.pid, os.path.realpath(self.path)) in _retired_owners:
                entries = None
        try:
            if update_hosts(
                self.path,
                self.owner,
                entries,
                purge_stale=self.purge_stale,
                lock_timeout=self.lock_timeout,
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

    def _final_cleanup(self) -> None:
        try:
            if not self._write(None):
                log.error("could not remove kubefwd lines from %s", self.path)
        finally:
            if self._registered:
                with _local_owners_lock:
                    left = _local_owners.get(self.owner.pid, 1) - 1
                    if left:
                        _local_owners[self.owner.pid] = left
                    else:
                        _local_owners.pop(self.owner.pid, None)
                self._registered = False
            with self._cond:
                self._written = self._published
                self._cond.notify_all()
