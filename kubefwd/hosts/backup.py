"""The one-time backup of the system hosts file, owned by the user who ran kubefwd.

Before its first write to the system hosts file kubefwd copies it to ``hosts.original`` in
the invoking user's home (``SUDO_USER``'s under sudo, so the copy is theirs and not root's).
Any other ``--hosts-path`` is the user's own file and gets no backup: one fixed name cannot
stand for several files. The copy holds no kubefwd lines, whoever wrote them. Apart from the
writer because it is about whose home and whose file, not about the hosts format.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from kubefwd.errors import HostsFileError
from kubefwd.hosts.fileio import locked, read_hosts
from kubefwd.hosts.format import parse_hosts
from kubefwd.support.invoker import sudo_user

BACKUP_NAME = "hosts.original"
SYSTEM_HOSTS = Path("/etc/hosts")


def invoking_user() -> tuple[Path, int, int]:
    """Home, uid and gid of the user who ran kubefwd (``SUDO_USER`` under sudo, not root)."""
    pw = sudo_user()
    if pw is not None:
        return Path(pw.pw_dir), pw.pw_uid, pw.pw_gid
    return Path.home(), os.getuid(), os.getgid()


def default_backup_dir() -> Path:
    return invoking_user()[0]


def is_system_hosts(path: Path) -> bool:
    """Is ``path`` the platform's hosts file (through symlinks, or a bind mount of it)?"""
    if os.path.realpath(path) == os.path.realpath(SYSTEM_HOSTS):
        return True
    try:
        return os.path.samefile(path, SYSTEM_HOSTS)
    except OSError:
        return False


def backup_target(hosts_path: Path) -> Path | None:
    """Where the backup of ``hosts_path`` goes: ``~/hosts.original`` of the invoking user for
    the system hosts file, None (no backup) for any other file."""
    if not is_system_hosts(hosts_path):
        return None
    return default_backup_dir() / BACKUP_NAME


def backup_hosts(
    path: Path, backup_dir: Path, *, refresh: bool = False, lock_timeout: float = 10.0
) -> Path | None:
    """Copy the hosts file without any kubefwd lines to ``backup_dir/hosts.original`` once
    (``refresh`` overwrites it); the copy belongs to the invoking user. Returns the backup
    path when it was written."""
    dest = backup_dir / BACKUP_NAME
    if dest.exists() and not refresh:
        return None
    target = Path(os.path.realpath(path))
    with locked(target, lock_timeout, shared=True):
        data = parse_hosts(read_hosts(target)).foreign
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
