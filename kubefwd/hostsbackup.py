"""The one-time backup of the hosts file, owned by the user who ran kubefwd.

Before its first write kubefwd copies the hosts file to ``hosts.original`` in the invoking
user's home (``SUDO_USER``'s under sudo, so the copy is theirs and not root's). Apart from
the writer because it is about whose home and whose file, not about the hosts format.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import tempfile
from pathlib import Path

from kubefwd.errors import HostsFileError
from kubefwd.hostsio import read_hosts

BACKUP_NAME = "hosts.original"


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
    data = read_hosts(Path(os.path.realpath(path)))
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
