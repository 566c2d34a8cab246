"""Files kubefwd creates when run under ``sudo``: they belong to the invoking user.

Each ``kubefwd svc`` here runs as root in a private mount namespace where ``/etc`` is
read-only, a test file is bound over ``/etc/hosts`` (so it is the system hosts file and gets
its backup) and a copy of ``/etc/passwd`` with one more user is bound over ``/etc/passwd``:
``SUDO_USER`` names that user, whose home is a temporary directory. Nothing of the machine's
own files changes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import needs_root
from test_svc_e2e import ORIGINAL_HOSTS, Kubefwd, block, cluster  # noqa: F401

from kubefwd.sim.cluster import SimCluster

pytestmark = [pytest.mark.e2e, pytest.mark.root]

USER, UID, GID = "kubefwd-sudo-test", 54321, 54321
BASE = ORIGINAL_HOSTS + b"\n"

# Runs as ``sh -c SCRIPT sh HOSTS PASSWD USER UID GID python -m kubefwd ...`` in the new
# mount namespace: /etc read-only, then the test's files bound over two of its files.
NAMESPACE_SCRIPT = (
    'hosts=$1 passwd=$2 user=$3 uid=$4 gid=$5; shift 5; '
    'mount --bind /etc /etc && mount -o remount,bind,ro /etc && '
    'mount --bind "$passwd" /etc/passwd && mount --bind "$hosts" /etc/hosts && '
    'exec env SUDO_USER="$user" SUDO_UID="$uid" SUDO_GID="$gid" "$@"'
)


@pytest.fixture
def user_home(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The invoking user's home (theirs, 0700) and the passwd file that names it."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, UID, GID)
    passwd = tmp_path / "passwd"
    passwd.write_bytes(Path("/etc/passwd").read_bytes().rstrip(b"\n")
                       + f"\n{USER}:x:{UID}:{GID}::{home}:/usr/sbin/nologin\n".encode())
    yield home, passwd


def hosts_and_conf(tmp_path: Path, octet: int) -> tuple[Path, Path]:
    """The file bound over /etc/hosts, and a -z file placing the forwards in 127.1.OCTET."""
    hosts = tmp_path / "etc-hosts"
    hosts.write_bytes(BASE)
    conf = tmp_path / "base.yaml"
    conf.write_text(f"baseUnreservedIP: 127.1.{octet}.1\n")
    return hosts, conf


def sudo_wrapper(hosts: Path, passwd: Path) -> list[str]:
    """Runs what follows as root 'under sudo' by USER, in a mount namespace (see above)."""
    return ["unshare", "--mount", "sh", "-c", NAMESPACE_SCRIPT, "sh", str(hosts), str(passwd),
            USER, str(UID), str(GID)]


def root_owned(home: Path) -> list[str]:
    """Everything under ``home`` (and itself) not owned by the invoking user."""
    found = []
    for entry in [home, *home.rglob("*")]:
        st = entry.lstat()
        if (st.st_uid, st.st_gid) != (UID, GID):
            found.append(f"{entry.relative_to(home.parent)} {st.st_uid}:{st.st_gid}")
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_root("unshare", "mount")
def test_under_sudo_files_in_the_users_home_are_theirs_and_the_backup_stays_clean(
    cluster: SimCluster, user_home: tuple[Path, Path], tmp_path: Path, block: int,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, passwd = user_home
    hosts, conf = hosts_and_conf(tmp_path, block)
    backup = home / "hosts.original"
    # The user's own kubeconfig, in their ~/.kube (kubefwd must leave nothing of root's there).
    kube = home / ".kube"
    kube.mkdir(mode=0o700)
    (kube / "config").write_bytes(cluster.kubeconfig_path.read_bytes())
    for path in (kube, kube / "config"):
        os.chown(path, UID, GID)
    users_cluster = SimpleNamespace(kubeconfig_path=kube / "config")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    started: list[Kubefwd] = []

    def sudo_kubefwd(*args: str) -> Kubefwd:
        wrapper = sudo_wrapper(hosts, passwd)
        # HOME left at the user's, as ``sudo -E`` (and older sudo) does: whatever kubefwd
        # puts under ``~`` lands in their home.
        fwd = Kubefwd(users_cluster, Path("/etc/hosts"),  # type: ignore[arg-type]
                      "-z", str(conf), *args, home=home, wrapper=wrapper)
        started.append(fwd)
        fwd.wait_ready(30)
        return fwd

    try:
        # The first run backs the file up, into the user's home, as theirs.
        first = sudo_kubefwd("-n", "shop", "--api-addr", "127.0.0.1:0")
        assert backup.read_bytes() == BASE
        assert (backup.stat().st_uid, backup.stat().st_gid, mode(backup)) == (UID, GID, 0o644)
        assert b"# kubefwd pid=" in hosts.read_bytes()
        key = home / ".config" / "kubefwd" / f"api-{first.proc.pid}.json"
        assert json.loads(key.read_text())["pid"] == first.proc.pid
        assert mode(key) == 0o600 and mode(key.parent) == 0o700
        assert root_owned(home) == []

        # -b while our lines are in the file: the copy is made again, without them.
        with open(hosts, "ab") as fh:  # an edit of the user's since the first backup
            fh.write(b"10.9.9.9 added-later\n")
        second = sudo_kubefwd("-n", "payments", "-b")
        assert {f"pid={f.proc.pid}".encode() in hosts.read_bytes() for f in (first, second)} \
            == {True}
        assert backup.read_bytes() == BASE + b"10.9.9.9 added-later\n"
        assert (backup.stat().st_uid, mode(backup)) == (UID, 0o644)
        assert second.stop() == 0, second.output

        # -b while the lines of a killed run are still there: neither are in the copy.
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        assert f"pid={first.proc.pid}".encode() in hosts.read_bytes()
        backup.write_bytes(b"stale copy\n")
        third = sudo_kubefwd("-n", "shop", "-b")
        assert backup.read_bytes() == BASE + b"10.9.9.9 added-later\n"
        assert f"pid={first.proc.pid}".encode() not in hosts.read_bytes()
        assert third.stop() == 0, third.output
        assert hosts.read_bytes() == BASE + b"10.9.9.9 added-later\n"
    finally:
        for fwd in started:
            fwd.kill()
            print(f"--- output of {' '.join(fwd.argv)}\n{fwd.output}")
    assert root_owned(home) == []
    assert not list(home.glob(".hosts.original.*")), "a temp file of the backup left behind"


@needs_root("unshare", "mount")
@pytest.mark.parametrize("as_root", [False, True], ids=["as-the-user", "command-as-root"])
def test_under_sudo_the_command_runs_as_the_user_who_ran_sudo(
    cluster: SimCluster, user_home: tuple[Path, Path], tmp_path: Path, block: int,  # noqa: F811
    as_root: bool,
) -> None:
    home, passwd = user_home
    hosts, conf = hosts_and_conf(tmp_path, block)
    # The command, whoever it runs as, writes here (pytest's own folders are root's, 0700).
    shared = Path(tempfile.mkdtemp(prefix="kubefwd-sudo-cmd-"))
    shared.chmod(0o777)
    out, ready = shared / "who", shared / "ready"
    wrapper = sudo_wrapper(hosts, passwd)
    script = f'{{ id -u; id -g; echo "$HOME"; stat -c %u "{ready}"; }} > "{out}"'
    extra = ["--command-as-root"] if as_root else []
    fwd = Kubefwd(cluster, Path("/etc/hosts"), "-z", str(conf), "-n", "shop",  # type: ignore[arg-type]
                  "--ready-file", str(ready), *extra, "--", "sh", "-c", script,
                  home=tmp_path, wrapper=wrapper)
    try:
        assert fwd.proc.wait(60) == 0, fwd.output
        uid, gid, cmd_home, ready_owner = out.read_text().split("\n")[:4]
        ready_left = ready.exists()
    finally:
        fwd.kill()
        shutil.rmtree(shared, ignore_errors=True)
    if as_root:
        assert (uid, gid, ready_owner) == ("0", "0", "0"), fwd.output
    else:
        assert (uid, gid, cmd_home, ready_owner) == (str(UID), str(GID), str(home), str(UID)), \
            fwd.output
        assert f"as {USER}" in fwd.output
    assert not ready_left, "the ready file outlived the run"
    assert hosts.read_bytes() == BASE
