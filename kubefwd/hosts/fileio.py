"""Safe writes to the hosts file: a cross-process lock, and writes that never truncate it.

Writes go through a lock on a sidecar file (``<hosts>.kubefwd.lock``; the hosts file itself is
replaced by rename, so a lock on it would be lost) and land by temp file + fsync + rename
keeping owner and mode, or by an in-place rewrite where a rename is impossible (a
bind-mounted /etc/hosts in a container) or where a full disk has no room for a second copy
but the content fits in the file's own blocks (removing our lines at shutdown) or in blocks
reserved before the first byte changes. An in-place write is one write() call over the
whole changed part: a shorter content is first padded to the old length with a comment line
the next write removes (``format.padding``), so a crash before the truncate leaves the new
content and that line, never the old tail. Knows nothing else of what the bytes mean.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import portalocker

from kubefwd.errors import HostsFileError, KubefwdError, PrivilegeError
from kubefwd.hosts.format import padding

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".kubefwd.lock"
TEMP_SUFFIX = ".kubefwd-tmp"
_RENAME_IMPOSSIBLE = {errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP}
_LOCK_FLAGS = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
_SHARED_FLAGS = portalocker.LockFlags.SHARED | portalocker.LockFlags.NON_BLOCKING


# Linux inode flags (chattr): FS_IOC_GETFLAGS is _IOR('f', 1, long); the kernel fills an int.
_FS_IOC_GETFLAGS = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20


_FALLOC_FL_KEEP_SIZE = 1


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    """Linux fallocate(2), which, unlike os.posix_fallocate, takes a mode."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", fn)


_fallocate = _load_fallocate()


def _inode_flags(path: Path) -> tuple[bool, bool]:
    """(immutable, append-only) for ``path``; (False, False) where that cannot be told."""
    if sys.platform.startswith("linux"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False, False
        try:
            buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))
        except OSError:
            return False, False
        finally:
            os.close(fd)
        flags = struct.unpack_from("i", buf)[0]
        return bool(flags & _FS_IMMUTABLE_FL), bool(flags & _FS_APPEND_FL)
    try:
        st_flags = getattr(os.stat(path), "st_flags", 0)  # BSD/macOS chflags
    except OSError:
        return False, False
    immutable = stat.UF_IMMUTABLE | stat.SF_IMMUTABLE
    append = stat.UF_APPEND | stat.SF_APPEND
    return bool(st_flags & immutable), bool(st_flags & append)


def write_blocker(path: Path) -> str | None:
    """What keeps everyone, root included, from changing ``path`` (or creating it): a
    read-only file system or an immutable/append-only flag. None when permissions are the
    only question."""
    target = Path(os.path.realpath(path))
    probe = target if target.exists() else target.parent
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        return None
    immutable, append = _inode_flags(probe)
    whose = "" if probe == target else f"its folder {probe} is "
    if immutable:
        return f"{whose}immutable (chattr +i / chflags schg)"
    if append:
        return f"{whose}append-only (chattr +a)"
    return None


def cannot_write(path: Path) -> KubefwdError:
    """The error for a hosts file this process may not change. Sudo is suggested only when
    it would help: not to root, and not when nobody may change the file."""
    blocker = write_blocker(path)
    if blocker is not None:
        return HostsFileError(f"cannot write the hosts file {path}: {blocker}")
    if os.geteuid() == 0:
        return HostsFileError(
            f"cannot write the hosts file {path}: permission denied, even to root"
        )
    return PrivilegeError(
        f"cannot write the hosts file {path}: run kubefwd as root (sudo) "
        f"or give this user write permission on {path}"
    )


def lock_path_for(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


@contextlib.contextmanager
def locked(path: Path, timeout: float, *, shared: bool = False) -> Iterator[bool]:
    """Hold the cross-process lock for ``path``; yields True when a rename may be tried.
    ``shared``: a reader's lock, held by many at once but never alongside a writer.

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
            blocker = write_blocker(path)
            if blocker is not None or os.geteuid() == 0:
                raise HostsFileError(
                    f"cannot lock or create the hosts file {path}: {blocker or e.strerror}"
                ) from None
            raise PrivilegeError(
                f"cannot lock or create the hosts file {path}: {e.strerror} "
                f"(run as root or give this user write permission on {path.parent})"
            ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                portalocker.lock(handle, _SHARED_FLAGS if shared else _LOCK_FLAGS)
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


def remove_orphaned_temps(path: Path) -> list[str]:
    """Delete temp files of ``path`` left by a writer killed before its rename.

    Call only while holding the sidecar lock: temp files are made only under it, so any
    found then belongs to a writer that is gone. (The sidecar itself stays: deleting a lock
    file races with whoever is about to lock it.)
    """
    # mkstemp's random part is 8 of [a-z0-9_]: a temp file of "hosts.d" is not one of "hosts"
    ours = re.compile(re.escape(f".{path.name}.") + "[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
    removed: list[str] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if ours.fullmatch(name):
            try:
                os.unlink(path.parent / name)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.debug("cannot remove the leftover %s: %s", name, e.strerror)
                continue
            removed.append(name)
    if removed:
        log.info("removed leftover temp files next to %s: %s", path, ", ".join(removed))
    return removed


# What tells that a file changed between our read and our write: which file it is, its size
# and its modification and change times. None: there was no file.
Stamp = tuple[int, int, int, int, int]


class HostsChanged(Exception):
    """The hosts file changed after we read it; nothing was written."""


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stamp_of(path: Path) -> Stamp | None:
    try:
        return _stamp(os.stat(path))
    except FileNotFoundError:
        return None


# A hosts file larger than this is not one (``/dev/zero`` behind a symlink, a runaway file).
MAX_HOSTS_BYTES = 64 << 20


def _open_regular(path: Path) -> int:
    """Open ``path`` for reading without blocking (a FIFO would), and only when it is a
    regular file: whatever it names may have changed since the command line was checked."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HostsFileError(f"the hosts file {path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_hosts_stamped(path: Path) -> tuple[bytes, Stamp | None]:
    """The file's bytes and the stamp of exactly what was read."""
    try:
        fd = _open_regular(path)
    except FileNotFoundError:
        return b"", None
    except OSError as e:
        raise HostsFileError(f"cannot read the hosts file {path}: {e.strerror}") from None
    try:
        stamp = _stamp(os.fstat(fd))
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_HOSTS_BYTES:
                raise HostsFileError(
                    f"the hosts file {path} is larger than {MAX_HOSTS_BYTES >> 20} MiB; "
                    "refusing to read it")
            chunks.append(chunk)
        return b"".join(chunks), stamp
    except OSError as e:
        raise HostsFileError(f"cannot read the hosts file {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def read_hosts(path: Path) -> bytes:
    return read_hosts_stamped(path)[0]


# How long a hosts file that reads empty just after a change is given to be written: a
# program rewriting it in place (``open(path, "w")``, then write) leaves it empty between
# the two, and a merge of that empty read would replace the whole file with our lines.
EMPTY_SETTLE = 0.25


def read_hosts_settled(path: Path) -> tuple[bytes, Stamp | None]:
    """``read_hosts_stamped``, but a file that is empty and changed less than EMPTY_SETTLE
    seconds ago is read again (every 10 ms) until it has content or has stayed empty that
    long: another program truncated it and is about to write it."""
    data, stamp = read_hosts_stamped(path)
    deadline = time.monotonic() + EMPTY_SETTLE
    pause = threading.Event()  # never set: a timed wait that is not a sleep
    while (not data and stamp is not None and time.monotonic() < deadline
           and time.time() - stamp[4] / 1e9 < EMPTY_SETTLE):
        pause.wait(0.01)
        data, stamp = read_hosts_stamped(path)
    return data, stamp


def _refuse_special(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise HostsFileError(f"the hosts file {path} is not a regular file; not writing it")


def _write_in_place(
    path: Path, data: bytes, expect: Stamp | None, *, must_reserve: bool = False
) -> None:
    """Rewrite the file's own inode without ever leaving it truncated. ``must_reserve``:
    grow it only when the blocks can be reserved first (a disk known to be full)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        st = os.fstat(fd)
        _refuse_special(st, path)
        if (expect is None and st.st_size) or (expect is not None and _stamp(st) != expect):
            raise HostsChanged(path)
        size = st.st_size
        if len(data) <= size:
            _shrink_in_place(fd, data)
        else:
            _grow_in_place(fd, data, must_reserve=must_reserve)
        os.fsync(fd)
    finally:
        os.close(fd)


def _reserve(fd: int, size: int, *, required: bool = False) -> None:
    """Reserve the blocks for ``size`` bytes without changing the file's size, so a full
    disk fails before any byte changes and a crash before the write leaves no trailing NULs
    (posix_fallocate would grow the file). Linux only; elsewhere nothing is reserved, unless
    ``required``: then no reservation is ENOSPC, and nothing is written."""
    if _fallocate is None:
        if required:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        if err in _NO_SPACE or required:
            raise OSError(errno.ENOSPC if required else err, os.strerror(errno.ENOSPC))
        # a filesystem without fallocate: go ahead without the reservation


def _grow_in_place(fd: int, data: bytes, *, must_reserve: bool = False) -> None:
    """Reserve the blocks, then write from the first difference in one call (a crash leaves
    the old content or the new, nothing in between but what one write() call can tear)."""
    _reserve(fd, len(data), required=must_reserve)
    start = _common_prefix(_pread_all(fd, len(data)), data)  # the foreign part stays put
    _pwrite_all(fd, memoryview(data)[start:], start)
    os.ftruncate(fd, len(data))


def _shrink_in_place(fd: int, data: bytes) -> None:
    """Content no larger than the file fits in blocks it already has: this works on a full
    disk. Only the bytes from the first difference on are written, so when the new content
    is a prefix of the old (our lines come last) the truncate alone does it, atomically.

    Otherwise the content is padded to the file's length with a comment line of ours and
    written in one call before the truncate: killed in between, the file holds the new
    content plus that line (which the next write removes), never a tail of the old one."""
    size = os.fstat(fd).st_size
    current = _pread_all(fd, size)
    if current[: len(data)] == data:
        os.ftruncate(fd, len(data))
        return
    full = data
    if len(data) < size:
        pad = padding(data, size)
        # Too small a gap for the shortest padding line: it takes a few bytes more, almost
        # always in the file's last block; where even those cannot be reserved (a full disk)
        # the content goes unpadded, as before.
        try:
            if len(data) + len(pad) > size:
                _reserve(fd, len(data) + len(pad), required=True)
            full = data + pad
        except OSError as e:
            if e.errno not in _NO_SPACE:
                raise
    start = _common_prefix(current, full)
    _pwrite_all(fd, memoryview(full)[start:], start)
    if len(full) != len(data):
        os.fdatasync(fd)  # the padded content reaches the disk before the file shrinks
    os.ftruncate(fd, len(data))


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _pread_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_atomic(path: Path, data: bytes, expect: Stamp | None) -> None:
    """Temp file in the same directory + fsync + rename, keeping owner, mode and extended
    attributes (the SELinux label, ACLs). Raises HostsChanged, leaving the file alone, when
    it no longer matches ``expect`` just before the rename."""
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        _refuse_special(st, path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if st is not None:
                mine = os.fstat(fd)
                if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
                    # Cannot keep the owner (not root)? Then a rename would change it:
                    # PermissionError sends the caller to the in-place write instead.
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, st.st_mode & 0o7777)
                _copy_xattrs(path, fd)
            else:
                os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        # Another program may have edited the file since we read it (our lock binds only
        # kubefwd): then the caller merges again instead of dropping that edit.
        if stamp_of(path) != expect:
            raise HostsChanged(path)
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


def _copy_xattrs(src: Path, fd: int) -> None:
    """Give the temp file ``src``'s extended attributes. Where one cannot be set (not root,
    say) the PermissionError sends the caller to the in-place write, which keeps them all."""
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(src)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return
        raise
    for name in names:
        try:
            os.setxattr(fd, name, os.getxattr(src, name))
        except OSError as e:
            if e.errno not in _NO_XATTRS and e.errno != errno.ENODATA:
                raise


def write_hosts(
    path: Path, data: bytes, *, rename_ok: bool = True, expect: Stamp | None
) -> str:
    """Put ``data`` in ``path``; returns "rename" or "in-place". Never leaves it truncated.

    ``expect``: the stamp of the content ``data`` was made from (``read_hosts_stamped``);
    raises HostsChanged, writing nothing, when the file no longer matches it.
    """
    no_space = False
    if rename_ok:
        try:
            _write_atomic(path, data, expect)
            return "rename"
        except OSError as e:
            if e.errno in _NO_SPACE:
                # No room for a second copy. A shrunk content (our lines removed) fits in the
                # blocks the file already has; a grown one is written in place only once the
                # blocks it needs are reserved (the file's own, or the few more it needs), so
                # a full disk fails before any byte changes.
                no_space = True
                log.debug("no space for a new copy of %s; writing it in place", path)
            elif e.errno not in _RENAME_IMPOSSIBLE:
                raise HostsFileError(f"cannot write the hosts file {path}: {e}") from None
            else:
                log.debug("rename over %s impossible (%s); writing in place", path, e.strerror)
    try:
        _write_in_place(path, data, expect, must_reserve=no_space)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise HostsFileError(
                f"no space left to write {path}; the file was left unchanged"
            ) from None
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            raise cannot_write(path) from None
        raise HostsFileError(f"cannot write the hosts file {path}: {e.strerror}") from None
    return "in-place"
