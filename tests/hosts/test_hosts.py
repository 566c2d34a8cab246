"""Hosts file: byte-exact parse/render, the writer thread, locking, purges, fallbacks."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import portalocker
import pytest
from helpers import hosts_file, needs_root, python_in_unshare, run_as_nobody, wait_for

from kubefwd.errors import HostsFileError, PrivilegeError
from kubefwd.hosts import writer as hosts_module
from kubefwd.hosts.backup import (
    backup_hosts,
    backup_target,
    default_backup_dir,
    invoking_user,
)
from kubefwd.hosts.fileio import EMPTY_SETTLE, lock_path_for
from kubefwd.hosts.format import (
    MAX_LINE,
    Marker,
    format_entries,
    padding,
    parse_hosts,
    parse_marker,
    render_hosts,
)
from kubefwd.hosts.owners import Owners
from kubefwd.hosts.writer import (
    HostsWriter,
    foreign_entries,
    process_start,
    remove_owned_lines,
    rewrite_lines,
    update_hosts,
)

FOREIGN_SAMPLES = [
    b"",
    b"127.0.0.1 localhost\n",
    b"127.0.0.1 localhost",  # no final newline
    b"127.0.0.1\tlocalhost\r\n::1\tip6-localhost\r\n",  # CRLF
    b"127.0.0.1\tlocalhost\r\n# no newline at end, CRLF file",
    b"# comment\n\n\n  \t 10.0.0.1    odd   spacing\t\n#127.1.27.1 web # kubefwd\n",
    b"\xff\xfe not utf-8 \x00 bytes\nlone\rcarriage\n",
    b"\n",
    b"\r\n",
    b"127.0.0.1 x # kubefwd pid=12 but more text\n# kubefwd pid=12\n",  # look-alikes
]


@contextlib.contextmanager
def local_owners(pids: Iterable[int]) -> Iterator[Owners]:
    """An owners registry counting fake owner pids as alive, as writers of this process are."""
    wanted = list(pids)
    owners = Owners()
    for pid in wanted:
        owners.enter(pid)
    try:
        yield owners
    finally:
        for pid in wanted:
            owners.leave(pid)
        assert not any(owners.is_local(pid) for pid in wanted)


PRIVATE_MOUNTS = ["--mount", "--propagation", "private"]


def _ours(pid: int = 4242, started: int | None = None) -> Marker:
    return Marker(pid, started)


# -- pure parse / render ---------------------------------------------------------------


@pytest.mark.parametrize("foreign", FOREIGN_SAMPLES)
def test_foreign_bytes_survive_add_and_remove(foreign: bytes) -> None:
    with_ours = rewrite_lines(parse_hosts(foreign), _ours(), {"127.1.27.1": ["web", "web.ns"]})
    assert with_ours.startswith(foreign)
    assert b"127.1.27.1\tweb web.ns\t# kubefwd pid=4242" in with_ours
    doc = parse_hosts(with_ours)
    assert doc.foreign == foreign
    assert [m.pid for _, m in doc.owned] == [4242]
    assert rewrite_lines(doc, _ours(), None) == foreign


def test_random_foreign_texts_survive_many_owners() -> None:
    """Seeded fuzz: any foreign text, several owners adding and removing lines in any order."""
    rng = random.Random(1234)
    tokens = [b"127.0.0.1", b" ", b"\t", b"\n", b"\r\n", b"\r", b"#", b"# kubefwd", b"pid=",
              b"12", b"host", b"\xff", b"", b"kubefwd pid=7", b" sep=lf", b"::1"]
    for _ in range(400):
        foreign = b"".join(rng.choice(tokens) for _ in range(rng.randint(0, 30)))
        if any(parse_marker(line) for line in foreign.replace(b"\r", b"").split(b"\n")):
            continue
        data = foreign
        owners = [Marker(2_000_000_100 + k) for k in range(3)]
        with local_owners(o.pid for o in owners) as alive:
            for owner in owners:
                data = rewrite_lines(parse_hosts(data), owner, {"127.1.27.1": [f"n{owner.pid}"]},
                                     owners=alive)
            rng.shuffle(owners)
            for owner in owners:
                assert parse_hosts(data).foreign == foreign
                data = rewrite_lines(parse_hosts(data), owner, None, owners=alive)
        assert data == foreign


def test_crlf_file_gets_crlf_lines() -> None:
    out = rewrite_lines(parse_hosts(b"a b\r\n"), _ours(), {"127.1.27.1": ["web"]})
    assert out == b"a b\r\n127.1.27.1\tweb\t# kubefwd pid=4242\r\n"


def test_added_newline_is_marked_and_removed_again() -> None:
    out = rewrite_lines(parse_hosts(b"a b"), _ours(), {"127.1.27.1": ["web"]})
    assert out == b"a b\n127.1.27.1\tweb\t# kubefwd pid=4242 sep=lf\n"
    assert parse_hosts(out).foreign == b"a b"


def test_foreign_line_appended_after_ours_keeps_its_separator() -> None:
    out = rewrite_lines(parse_hosts(b"a b"), _ours(), {"127.1.27.1": ["web"]})
    edited = out + b"10.0.0.1 added-later\n"
    assert rewrite_lines(parse_hosts(edited), _ours(), None) == b"a b\n10.0.0.1 added-later\n"


@pytest.mark.parametrize("foreign", FOREIGN_SAMPLES)
def test_padding_of_a_cut_in_place_write_is_dropped_by_the_next_parse(foreign: bytes) -> None:
    for data in (foreign, rewrite_lines(parse_hosts(foreign), _ours(), {"127.1.27.1": ["web"]})):
        want = parse_hosts(data)
        for gap in range(1, 120):
            pad = padding(data, len(data) + gap)
            assert len(pad) == gap or (len(pad) > gap and gap < 27), (data, gap, pad)
            assert pad.count(b"\n") == 1 + (bool(data) and not data.endswith(b"\n"))
            got = parse_hosts(data + pad)
            assert (got.foreign, got.owned) == (want.foreign, want.owned), (data, gap)
            # the next write removes it: what it renders is what the unpadded file renders
            assert rewrite_lines(got, _ours(), None) == rewrite_lines(want, _ours(), None)
    # a line that only starts like the padding is foreign
    assert parse_hosts(b"# kubefwd padding, or not\n").foreign == b"# kubefwd padding, or not\n"


@pytest.mark.parametrize(
    "line, pid",
    [
        (b"127.1.27.1\tweb\t# kubefwd pid=12", 12),
        (b"127.1.27.1 web web.ns # kubefwd pid=7 t=1700000000", 7),
        (b"127.1.27.1\tweb\t# kubefwd pid=7 t=1 sep=crlf", 7),
        (b"# kubefwd pid=12", None),
        (b"127.1.27.1 web # kubefwd pid=12 trailing", None),
        (b"127.1.27.1 web # kubefwd", None),
        (b"127.1.27.1 web # Kubefwd pid=12", None),
        (b"#127.1.27.1 web # kubefwd pid=12", None),
    ],
)
def test_marker_detection_is_strict(line: bytes, pid: int | None) -> None:
    marker = parse_marker(line)
    assert (marker.pid if marker else None) == pid


def test_long_name_lists_are_split_and_names_never_repeat() -> None:
    names = [f"service-number-{i}.namespace.svc.cluster.local" for i in range(20)]
    lines = format_entries(
        {"127.1.27.1": names, "127.1.27.2": ["dup", names[0], "bad name", "#x", "ok"]},
        _ours(),
    )
    assert len(lines) > 2
    for line in lines:
        body = line.split(b"\t# kubefwd")[0]
        assert len(body) <= MAX_LINE
    written = [n for line in lines for n in line.split(b"\t")[1].split(b" ")]
    assert len(written) == len(set(written)) == 22
    assert lines[-1].startswith(b"127.1.27.2\tdup ok\t")


def test_render_without_lines_is_foreign() -> None:
    doc = parse_hosts(b"x y")
    assert render_hosts(doc, []) == b"x y"


# -- liveness and purges ---------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_dead_owner_lines_are_purged_live_ones_kept(sleeper: subprocess.Popen[bytes]) -> None:
    live = Marker(sleeper.pid, process_start(sleeper.pid)).render()
    dead = Marker(_dead_pid()).render()
    recycled = Marker(sleeper.pid, 1_000_000_000).render()  # same pid, other start time
    data = (
        b"127.0.0.1 localhost\n"
        + b"127.1.27.9\tlive\t" + live + b"\n"
        + b"127.1.27.8\tdead\t" + dead + b"\n"
        + b"127.1.27.7\trecycled\t" + recycled + b"\n"
    )
    out = rewrite_lines(parse_hosts(data), _ours(), {"127.1.27.1": ["web"]})
    assert b"\tlive\t" in out and b"\tdead\t" not in out and b"\trecycled\t" not in out
    assert out.startswith(b"127.0.0.1 localhost\n") and out.endswith(b"pid=4242\n")


def test_purge_stale_drops_unproven_owners(sleeper: subprocess.Popen[bytes]) -> None:
    proven = Marker(sleeper.pid, process_start(sleeper.pid)).render()
    unproven = Marker(sleeper.pid).render()  # no start time: cannot tell a recycled pid
    data = b"127.1.27.9\tproven\t" + proven + b"\n127.1.27.8\tunproven\t" + unproven + b"\n"
    normal = rewrite_lines(parse_hosts(data), _ours(), None)
    assert b"proven" in normal and b"unproven" in normal
    purged = rewrite_lines(parse_hosts(data), _ours(), None, purge_stale=True)
    assert b"\tproven\t" in purged and b"unproven" not in purged


# -- the writer thread on real files ---------------------------------------------------


def _writer(path: Path, **kw: object) -> HostsWriter:
    """A started writer."""
    writer = HostsWriter(path, **kw)  # type: ignore[arg-type]
    writer.start()
    return writer


@contextlib.contextmanager
def _running(path: Path, **kw: object) -> Iterator[HostsWriter]:
    """A started writer, stopped (and joined) at the end of the block."""
    writer = _writer(path, **kw)
    try:
        yield writer
    finally:
        writer.stop_and_join()


@pytest.mark.parametrize("foreign", FOREIGN_SAMPLES)
def test_start_publish_stop_leaves_file_byte_identical(tmp_path: Path, foreign: bytes) -> None:
    hosts = hosts_file(tmp_path, foreign)
    writer = _writer(hosts, backup_dir=tmp_path)
    writer.publish({"127.1.27.1": ["web", "web.shop"], "127.1.27.2": ["db"]})
    assert writer.flush()
    content = hosts.read_bytes()
    assert content.startswith(foreign) and b"127.1.27.2\tdb\t# kubefwd pid=" in content
    assert writer.stop_and_join()
    assert hosts.read_bytes() == foreign
    assert (tmp_path / "hosts.original").read_bytes() == foreign
    assert writer.writes == 2
    assert writer.last_error is None
    assert not list(tmp_path.glob(".hosts.*"))  # no temp files left


def test_missing_file_is_created_and_emptied(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    writer = _writer(hosts)
    writer.publish({"127.1.27.1": ["web"]})
    assert writer.flush()
    assert hosts.read_bytes().startswith(b"127.1.27.1\tweb\t")
    writer.stop_and_join()
    assert hosts.read_bytes() == b""


def test_bursts_coalesce_into_a_handful_of_writes(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"127.0.0.1 localhost\n")
    with _running(hosts) as writer:
        for i in range(500):
            writer.publish({f"127.1.27.{j % 254 + 1}": [f"s{j}"] for j in range(i + 1)})
        assert writer.flush()
        assert writer.writes <= 5, writer.writes
        assert hosts.read_bytes().count(b"# kubefwd pid=") == 254


def test_unchanged_snapshot_is_not_rewritten(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    with _running(hosts, min_interval=0) as writer:
        for _ in range(3):
            writer.publish({"127.1.27.1": ["web"]})
            assert writer.flush()
        assert writer.writes == 1


def test_two_writers_in_one_process_keep_each_others_lines(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"# mine\n")
    owners = Owners()  # one registry, as the app has: each writer knows the other is alive
    a = _writer(hosts, owner_pid=2_000_000_001, min_interval=0, owners=owners)
    b = _writer(hosts, owner_pid=2_000_000_002, min_interval=0, owners=owners)
    try:
        for i in range(30):
            a.publish({"127.1.27.1": [f"a{i}"]})
            b.publish({"127.2.27.1": [f"b{i}"]})
        assert a.flush() and b.flush()
        text = hosts.read_bytes()
        assert b"\ta29\t" in text and b"\tb29\t" in text
        assert a.stop_and_join()
        text = hosts.read_bytes()
        assert b"\ta29\t" not in text and b"\tb29\t" in text
    finally:
        b.stop_and_join()
    assert hosts.read_bytes() == b"# mine\n"


def test_mode_and_owner_are_kept(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"127.0.0.1 localhost\n")
    os.chmod(hosts, 0o640)
    if os.geteuid() == 0:
        os.chown(hosts, 65534, 65534)
    before = os.stat(hosts)
    writer = _writer(hosts)
    writer.publish({"127.1.27.1": ["web"]})
    assert writer.flush()
    after = os.stat(hosts)
    writer.stop_and_join()
    assert after.st_ino != before.st_ino  # replaced by rename
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode,
        before.st_uid,
        before.st_gid,
    )
    final = os.stat(hosts)
    assert (final.st_mode, final.st_uid) == (before.st_mode, before.st_uid)


def test_extended_attributes_survive_the_rename(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"127.0.0.1 localhost\n")
    attrs = {"user.kubefwd-test": b"kept"}
    if os.geteuid() == 0:  # the SELinux label and trusted attributes need root to set
        attrs["security.selinux"] = b"system_u:object_r:net_conf_t:s0"
        attrs["trusted.kubefwd-test"] = b"also kept"
    try:
        for name, value in attrs.items():
            os.setxattr(hosts, name, value)
    except OSError as e:
        pytest.skip(f"no extended attributes here: {e}")
    ino = hosts.stat().st_ino
    update_hosts(hosts, _ours(), {"127.1.27.1": ["web"]})
    assert hosts.stat().st_ino != ino  # replaced by rename
    assert {name: os.getxattr(hosts, name) for name in attrs} == attrs
    remove_owned_lines(hosts, 4242)
    assert {name: os.getxattr(hosts, name) for name in attrs} == attrs
    assert hosts.read_bytes() == b"127.0.0.1 localhost\n"


def test_an_edit_made_while_we_merge_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program appends a line after our read and before our rename: we merge again."""
    hosts = hosts_file(tmp_path, b"127.0.0.1 localhost\n")
    merge = hosts_module.rewrite_lines
    edits = []

    def merge_then_someone_edits(*args: object, **kw: object) -> bytes:
        out = merge(*args, **kw)  # type: ignore[arg-type]
        if not edits:
            edits.append(subprocess.run(
                ["sh", "-c", 'printf "10.0.0.5 edited-meanwhile\\n" >> "$1"', "sh", str(hosts)],
                check=True,
            ))
        return out

    monkeypatch.setattr(hosts_module, "rewrite_lines", merge_then_someone_edits)
    assert update_hosts(hosts, _ours(), {"127.1.27.1": ["web"]})
    assert len(edits) == 1
    text = hosts.read_bytes()
    assert text.startswith(b"127.0.0.1 localhost\n10.0.0.5 edited-meanwhile\n127.1.27.1\tweb\t")
    monkeypatch.undo()
    remove_owned_lines(hosts, 4242)
    assert hosts.read_bytes() == b"127.0.0.1 localhost\n10.0.0.5 edited-meanwhile\n"


def test_symlinked_hosts_file_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real-hosts"
    real.write_bytes(b"# real\n")
    link = tmp_path / "hosts"
    link.symlink_to(real)
    update_hosts(link, _ours(), {"127.1.27.1": ["web"]})
    assert link.is_symlink() and b"\tweb\t" in real.read_bytes()
    remove_owned_lines(link, 4242)
    assert real.read_bytes() == b"# real\n"


def test_a_file_truncated_by_another_program_is_merged_once_it_is_written(
    tmp_path: Path,
) -> None:
    """A program rewriting the file in place truncates it, then writes: a merge in between
    must wait for its write, not replace the whole file with our lines."""
    hosts = hosts_file(tmp_path, b"127.0.0.1 localhost\n10.0.0.1 db\n")
    edited = b"127.0.0.1 localhost\n10.0.0.1 db\n10.0.0.2 added\n"
    done = threading.Event()
    with open(hosts, "wb") as fh:  # truncated; the program is descheduled before its write
        merge = threading.Thread(
            target=lambda: (update_hosts(hosts, _ours(), {"127.1.27.1": ["web"]}), done.set()),
            name="merge")
        merge.start()
        assert not done.wait(0.05)
        fh.write(edited)
    merge.join(5)
    assert done.is_set()
    assert hosts.read_bytes() == edited + b"127.1.27.1\tweb\t# kubefwd pid=4242\n"


def test_a_file_that_stays_empty_is_written_after_a_moment(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"")
    started = time.monotonic()
    assert update_hosts(hosts, _ours(), {"127.1.27.1": ["web"]})
    assert time.monotonic() - started < EMPTY_SETTLE + 0.5
    assert hosts.read_bytes() == b"127.1.27.1\tweb\t# kubefwd pid=4242\n"


def test_remove_owned_lines_keeps_others(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"x\n")
    update_hosts(hosts, Marker(os.getpid()), {"127.1.27.1": ["mine"]})
    assert remove_owned_lines(hosts, 999_999_999) is False  # nothing of that pid: no write
    assert remove_owned_lines(hosts, os.getpid()) is True
    assert hosts.read_bytes() == b"x\n"


def test_lock_timeout_is_a_hosts_file_error(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"x\n")
    with (
        portalocker.Lock(str(lock_path_for(hosts)), timeout=1),
        pytest.raises(HostsFileError, match="could not lock"),
    ):
        update_hosts(hosts, _ours(), {"127.1.27.1": ["web"]}, lock_timeout=0.1)
    assert hosts.read_bytes() == b"x\n"


def test_writer_retries_after_lock_timeout_and_reports(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"x\n")
    with _running(hosts, lock_timeout=0.05, min_interval=0) as writer:
        with portalocker.Lock(str(lock_path_for(hosts)), timeout=1):
            writer.publish({"127.1.27.1": ["web"]})
            assert writer.flush(timeout=0.3) is False
            assert isinstance(writer.last_error, HostsFileError)
        assert writer.flush(timeout=5)
        assert b"\tweb\t" in hosts.read_bytes()


# -- backups ---------------------------------------------------------------------------


def test_backup_once_then_refresh(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    home = tmp_path / "home"
    home.mkdir()
    hosts.write_bytes(b"v1\n")
    assert backup_hosts(hosts, home) == home / "hosts.original"
    hosts.write_bytes(b"v2\n")
    assert backup_hosts(hosts, home) is None
    assert (home / "hosts.original").read_bytes() == b"v1\n"
    assert backup_hosts(hosts, home, refresh=True) is not None
    assert (home / "hosts.original").read_bytes() == b"v2\n"


@needs_root()  # to act for another user
def test_backup_belongs_to_sudo_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "nobody")
    home, uid, gid = invoking_user()
    assert (home, uid, gid) == (Path("/nonexistent"), 65534, 65534)
    hosts = hosts_file(tmp_path, b"v1\n")
    dest = backup_hosts(hosts, tmp_path)
    assert dest is not None and dest.stat().st_uid == 65534


def test_only_the_system_hosts_file_is_backed_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert backup_target(Path("/etc/hosts")) == tmp_path / "home" / "hosts.original"
    link = tmp_path / "link-to-etc-hosts"
    link.symlink_to("/etc/hosts")
    assert backup_target(link) == tmp_path / "home" / "hosts.original"
    # Any other file is the user's own: one fixed backup name cannot serve several files.
    assert backup_target(hosts_file(tmp_path, b"x\n")) is None
    assert backup_target(tmp_path / "missing") is None


@needs_root()
def test_system_hosts_backup_goes_to_the_sudo_users_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "nobody")
    assert backup_target(Path("/etc/hosts")) == Path("/nonexistent/hosts.original")


def test_backup_holds_no_kubefwd_lines(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    foreign = b"127.0.0.1\tlocalhost\r\n# no final newline"
    other = Marker(sleeper.pid, process_start(sleeper.pid))  # another live instance
    hosts = hosts_file(tmp_path, foreign)
    update_hosts(hosts, other, {"127.1.27.9": ["theirs"]})
    update_hosts(hosts, _ours(os.getpid()), {"127.1.27.1": ["mine"]})
    assert b"theirs" in hosts.read_bytes() and b"mine" in hosts.read_bytes()
    dest = backup_hosts(hosts, tmp_path)
    assert dest is not None and dest.read_bytes() == foreign


def test_invoking_user_without_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert invoking_user() == (Path.home(), os.getuid(), os.getgid())


# -- other processes -------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kubefwd.hosts.writer import HostsWriter
    path, tag, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    w = HostsWriter(path, min_interval=0)
    w.start()
    for i in range(rounds):
        w.publish({f"127.{tag}.27.{k + 1}": [f"{tag}-{i}-{k}"] for k in range(5)})
        if i % 5 == 0:
            w.flush()
    assert w.flush(10)
    print("ready", w.writes, flush=True)
    if sys.stdin.readline().strip() == "stop":
        w.stop_and_join()
        print("stopped", flush=True)
    """
)


def _spawn(hosts: Path, tag: str, rounds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(hosts), tag, str(rounds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "stopped"
    assert proc.wait(timeout=10) == 0


@pytest.mark.e2e
def test_two_processes_never_lose_each_others_lines(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    original = b"127.0.0.1\tlocalhost\r\n# keep me"
    hosts.write_bytes(original)
    one, two = _spawn(hosts, "1", 60), _spawn(hosts, "2", 60)
    try:
        _wait_ready(one)
        _wait_ready(two)
        text = hosts.read_bytes()
        for k in range(5):
            assert f"\t1-59-{k}\t".encode() in text
            assert f"\t2-59-{k}\t".encode() in text
        assert text.count(b"# kubefwd pid=") == 10
        _stop(one)
        text = hosts.read_bytes()
        assert b"\t1-59-0\t" not in text and b"\t2-59-0\t" in text
        _stop(two)
    finally:
        for proc in (one, two):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert hosts.read_bytes() == original


@pytest.mark.e2e
def test_kill_9_then_a_fresh_writer_purges_the_dead_lines(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"# foreign\n")
    proc = _spawn(hosts, "3", 1)
    try:
        _wait_ready(proc)
        assert b"# kubefwd pid=%d " % proc.pid in hosts.read_bytes()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert b"# kubefwd pid=%d " % proc.pid in hosts.read_bytes()  # left behind
    writer = _writer(hosts)
    writer.publish({"127.1.27.1": ["fresh"]})
    assert writer.flush()
    text = hosts.read_bytes()
    assert b"pid=%d " % proc.pid not in text and b"\tfresh\t" in text
    writer.stop_and_join()
    assert hosts.read_bytes() == b"# foreign\n"


_DIES_BEFORE_RENAME = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from kubefwd.hosts.writer import Marker, update_hosts
    def replace(src, dst):
        print("temp file written", flush=True)
        sys.stdin.readline()  # killed here, between the temp file and the rename
    os.replace = replace
    update_hosts(Path(sys.argv[1]), Marker(os.getpid()), {"127.1.27.1": ["web"]})
    """
)


@pytest.mark.e2e
def test_temp_file_orphaned_by_kill_9_is_removed_by_the_next_update(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"# foreign\n")
    unrelated = hosts_file(tmp_path, b"keep\n", ".hosts.notes")
    # a temp file of another hosts file, "hosts.d", whose writer holds another lock
    neighbour = hosts_file(tmp_path, b"busy\n", ".hosts.d.k3x9_2ab.kubefwd-tmp")
    proc = subprocess.Popen([sys.executable, "-c", _DIES_BEFORE_RENAME, str(hosts)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "temp file written\n"
    finally:
        proc.kill()
        proc.wait()
    orphans = set(tmp_path.glob(".hosts.*.kubefwd-tmp")) - {neighbour}
    assert len(orphans) == 1 and hosts.read_bytes() == b"# foreign\n"
    update_hosts(hosts, _ours(), {"127.1.27.2": ["db"]})
    assert list(tmp_path.glob(".hosts.*.kubefwd-tmp")) == [neighbour]
    assert unrelated.read_bytes() == b"keep\n" and lock_path_for(hosts).exists()
    assert remove_owned_lines(hosts, 4242) and hosts.read_bytes() == b"# foreign\n"


@pytest.mark.e2e
def test_foreign_entries_are_those_of_other_live_instances(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"127.0.0.1 localhost\n10.0.0.1 db # a comment\n")
    assert foreign_entries(hosts) == {}
    assert foreign_entries(tmp_path / "missing") == {}
    other = _spawn(hosts, "4", 1)
    try:
        _wait_ready(other)
        with _running(hosts, min_interval=0) as mine:
            long_names = [f"name-{k}-padded-out-to-split-the-line.ns.svc.cluster.local"
                          for k in range(8)]
            mine.publish({"127.1.27.1": ["mine"], "127.1.27.2": long_names})
            assert mine.flush()
            with open(hosts, "ab") as fh:  # left by an instance killed with -9
                fh.write(b"127.1.27.200\tdead\t" + Marker(_dead_pid()).render() + b"\n")
            theirs = foreign_entries(hosts)
            assert theirs == {f"127.4.27.{k + 1}": [f"4-0-{k}"] for k in range(5)}
        _stop(other)
    finally:
        if other.poll() is None:
            other.kill()
        other.wait()
    assert foreign_entries(hosts) == {}


def test_foreign_entries_join_split_lines(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    hosts = hosts_file(tmp_path, b"")
    names = [f"service-number-{i}.namespace.svc.cluster.local" for i in range(20)]
    update_hosts(hosts, Marker(sleeper.pid, process_start(sleeper.pid)), {"127.9.27.1": names})
    assert hosts.read_bytes().count(b"127.9.27.1\t") > 1
    assert foreign_entries(hosts) == {"127.9.27.1": names}


# -- privileges and real-kernel fallbacks (root) ---------------------------------------


@needs_root("setpriv")
def _start_writer_as_nobody(hosts: Path, error: str) -> subprocess.CompletedProcess[str]:
    """Start a HostsWriter on ``hosts`` as nobody; prints the ``error`` it raises, if any."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom kubefwd.hosts.writer import HostsWriter\n"
        f"from kubefwd.errors import {error}\n"
        "try:\n    HostsWriter(Path(sys.argv[1])).start()\n"
        f"except {error} as e:\n    print(type(e).__name__, e)\n"
    )
    return run_as_nobody(code, str(hosts))


def test_unwritable_file_names_the_file_and_the_fix(shared_dir: Path) -> None:
    hosts = hosts_file(shared_dir, b"x\n")
    os.chmod(hosts, 0o644)
    out = _start_writer_as_nobody(hosts, "PrivilegeError")
    assert out.stdout.startswith("PrivilegeError "), out.stderr
    assert f"cannot write the hosts file {hosts}" in out.stdout, out.stderr
    assert "root" in out.stdout
    assert PrivilegeError.exit_code == 5


# Shared by the scripts below that run in a private mount namespace: mount a tiny tmpfs and
# fill it to the last byte.
_TINY_DISK = textwrap.dedent(
    """
    import os, subprocess

    def run(*argv):
        subprocess.run(argv, check=True)

    def tiny_disk(path):
        path.mkdir()
        run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path))

    def fill(path):
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"x" * 512)
        except OSError:
            pass
        os.close(fd)
    """
)

_KERNEL_SCRIPT = _TINY_DISK + textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    from kubefwd.errors import HostsFileError
    from kubefwd.hosts.writer import Marker, update_hosts, remove_owned_lines
    base = Path(sys.argv[1])
    result = {}
    # 1. a bind-mounted hosts file: rename over a mount point fails with EBUSY
    bound = base / "bound"
    bound.mkdir()
    hosts = bound / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\\n")
    run("mount", "--bind", str(hosts), str(hosts))
    ino = os.stat(hosts).st_ino
    update_hosts(hosts, Marker(4242), {"127.1.27.1": ["web"]})
    result["bind_content"] = hosts.read_bytes().decode()
    result["bind_same_inode"] = os.stat(hosts).st_ino == ino
    remove_owned_lines(hosts, 4242)
    result["bind_restored"] = hosts.read_bytes() == b"127.0.0.1 localhost\\n"
    # 2. a full filesystem: the original stays untouched, no temp file left
    full = base / "full"
    tiny_disk(full)
    hosts = full / "hosts"
    original = b"127.0.0.1 localhost\\n" * 20
    hosts.write_bytes(original)
    fill(full)
    big = {f"127.1.27.{i}": [f"service-{i}-{k}.ns.svc.cluster.local" for k in range(20)]
           for i in range(1, 100)}
    for mode in ("rename", "in-place"):
        if mode == "in-place":
            run("mount", "--bind", str(hosts), str(hosts))
        try:
            update_hosts(hosts, Marker(4242), big)
            result[mode] = "written"
        except HostsFileError as e:
            result[mode] = str(e)
        result[mode + "_unchanged"] = hosts.read_bytes() == original
    result["leftovers"] = sorted(p.name for p in full.iterdir())
    print(json.dumps(result))
    """
)


@pytest.mark.root
@needs_root("unshare")
def test_bind_mount_in_place_fallback_and_full_disk(tmp_path: Path) -> None:
    result = python_in_unshare(PRIVATE_MOUNTS, _KERNEL_SCRIPT, str(tmp_path))
    assert result["bind_content"].startswith("127.0.0.1 localhost\n127.1.27.1\tweb\t# kubefwd")
    assert result["bind_same_inode"] and result["bind_restored"]
    assert "no space left" in result["rename"] and result["rename_unchanged"]
    assert "no space left" in result["in-place"] and result["in-place_unchanged"]
    assert result["leftovers"] == ["filler", "hosts", "hosts.kubefwd.lock"]



_READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    from kubefwd.hosts.writer import HostsWriter, Marker, update_hosts
    from kubefwd.system.privileges import needs_root_reasons
    base = Path(sys.argv[1])
    run = lambda *a: subprocess.run(a, check=True)
    AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "--inh-caps=-all", sys.executable, "-c"]
    CHECK = (
        "import sys\\nfrom pathlib import Path\\nfrom kubefwd.hosts.writer import HostsWriter\\n"
        "from kubefwd.system.privileges import needs_root_reasons\\n"
        "print('reasons', needs_root_reasons(Path(sys.argv[1]), []))\\n"
        "try:\\n    HostsWriter(Path(sys.argv[1])).start()\\n"
        "except Exception as e:\\n    print(type(e).__name__, e)\\n"
    )

    def attempt(hosts):
        out = {}
        try:
            HostsWriter(hosts).start()
            out["start"] = "started"
        except Exception as e:
            out["start"] = f"{type(e).__name__} {e}"
        try:
            update_hosts(hosts, Marker(4242), {"127.1.27.1": ["web"]})
            out["update"] = "written"
        except Exception as e:
            out["update"] = f"{type(e).__name__} {e}"
        out["nobody"] = subprocess.run(
            AS_NOBODY + [CHECK, str(hosts)], capture_output=True, text=True, cwd="/",
            env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout
        return out

    result = {}
    for kind in ("read-only", "immutable"):
        mnt = base / kind
        mnt.mkdir()
        run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(mnt))
        hosts = mnt / "hosts"
        hosts.write_bytes(b"127.0.0.1 localhost\\n")
        os.chmod(hosts, 0o666)  # nobody may write it, as far as permissions go
        if kind == "read-only":
            run("mount", "-o", "remount,ro", str(mnt))
        else:
            run("chattr", "+i", str(hosts))
        result[kind] = attempt(hosts)
        result[kind]["unchanged"] = hosts.read_bytes() == b"127.0.0.1 localhost\\n"
        if kind == "immutable":
            run("chattr", "-i", str(hosts))
    print(json.dumps(result))
    """
)


@pytest.mark.root
@needs_root("unshare", "setpriv", "chattr")
def test_read_only_or_immutable_hosts_file_is_a_hosts_error_not_a_call_for_root(
    shared_dir: Path,
) -> None:
    result = python_in_unshare(PRIVATE_MOUNTS, _READ_ONLY_SCRIPT, str(shared_dir))
    for kind, reason in (("read-only", "read-only file system"), ("immutable", "immutable")):
        run = result[kind]
        for attempt in ("start", "update"):
            message = run[attempt]
            assert message.startswith("HostsFileError cannot write the hosts file "), (kind, run)
            assert str(shared_dir / kind / "hosts") in message and reason in message, (kind, run)
            assert "sudo" not in message and "as root" not in message, (kind, run)
        # Not root either: root would not help, so no call for it.
        assert "reasons []" in run["nobody"], (kind, run)
        assert "HostsFileError cannot write the hosts file" in run["nobody"], (kind, run)
        assert reason in run["nobody"] and "sudo" not in run["nobody"], (kind, run)
        assert run["unchanged"], (kind, run)


_DIES_BEFORE_IN_PLACE_WRITE = textwrap.dedent(
    """
    import os, subprocess, sys
    from pathlib import Path
    from kubefwd.hosts.writer import Marker, update_hosts
    hosts = Path(sys.argv[1])
    subprocess.run(["mount", "--bind", str(hosts), str(hosts)], check=True)
    def pwrite(fd, data, offset):
        print("space reserved", flush=True)
        sys.stdin.readline()  # killed here, after the reservation, before any byte is written
    os.pwrite = pwrite
    update_hosts(hosts, Marker(os.getpid()), {"127.1.27.1": ["web", "db"]})
    """
)


@pytest.mark.root
@needs_root("unshare")
def test_kill_9_during_an_in_place_write_leaves_no_junk(tmp_path: Path) -> None:
    original = b"127.0.0.1 localhost\n# bind-mounted, so written in place"
    hosts = hosts_file(tmp_path, original)
    proc = subprocess.Popen(
        ["unshare", *PRIVATE_MOUNTS, sys.executable, "-c", _DIES_BEFORE_IN_PLACE_WRITE,
         str(hosts)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "space reserved\n"
    finally:
        proc.kill()
        proc.wait()
    assert hosts.read_bytes() == original  # not grown by reserved, never written space


_NOBODY_UPDATE = (
    "import os, sys\nfrom pathlib import Path\n"
    "from kubefwd.hosts.writer import Marker, update_hosts\n"
    "update_hosts(Path(sys.argv[1]), Marker(os.getpid()), {'127.1.27.1': ['web']})\n"
    "print(Path(sys.argv[1]).read_text(), end='')\n"
)


@needs_root("setpriv")
@pytest.mark.parametrize("dir_owner", [0, 65534])
def test_user_who_can_write_the_file_keeps_its_owner(shared_dir: Path, dir_owner: int) -> None:
    # Directory not writable (no sidecar, no temp file possible), or writable but the file
    # belongs to root (a rename would hand it to the user): both write in place.
    os.chown(shared_dir, dir_owner, dir_owner)
    hosts = hosts_file(shared_dir, b"# root's file\n")
    os.chmod(hosts, 0o666)
    ino = hosts.stat().st_ino
    out = run_as_nobody(_NOBODY_UPDATE, str(hosts))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# root's file\n127.1.27.1\tweb\t# kubefwd pid=")
    st = hosts.stat()
    assert (st.st_ino, st.st_uid, st.st_mode & 0o777) == (ino, 0, 0o666)
    assert not [p for p in shared_dir.iterdir() if p.name.startswith(".hosts.")]


@needs_root("setpriv")
def test_unreadable_file_is_a_hosts_file_error(shared_dir: Path) -> None:
    hosts = hosts_file(shared_dir, b"secret\n")
    os.chmod(hosts, 0o600)
    out = _start_writer_as_nobody(hosts, "HostsFileError")
    assert out.stdout.startswith(f"HostsFileError cannot read the hosts file {hosts}"), out.stderr


def test_default_backup_goes_to_the_invoking_users_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    hosts = hosts_file(tmp_path, b"original\n")
    _writer(hosts, backup_dir=default_backup_dir()).stop_and_join()
    assert (tmp_path / "home" / "hosts.original").read_bytes() == b"original\n"


def test_after_remove_owned_lines_a_late_write_adds_nothing(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"x\n")
    with _running(hosts, owner_pid=2_000_000_003, min_interval=0) as writer:
        writer.publish({"127.1.27.1": ["web"]})
        assert writer.flush()
        remove_owned_lines(hosts, 2_000_000_003, owners=writer.owners)
        writer.publish({"127.1.27.1": ["web", "late"]})
        assert writer.flush()
        assert hosts.read_bytes() == b"x\n"


def test_a_writer_owner_counts_as_alive_only_through_its_registry(tmp_path: Path) -> None:
    """Fake owner pids are alive for writers sharing one registry, and for nobody else."""
    hosts = hosts_file(tmp_path, b"x\n")
    with _running(hosts, owner_pid=2_000_000_004, min_interval=0) as writer:
        writer.publish({"127.1.27.1": ["web"]})
        assert writer.flush()
        assert writer.owners.is_local(2_000_000_004)
        assert foreign_entries(hosts, owners=writer.owners) == {"127.1.27.1": ["web"]}
        assert foreign_entries(hosts, owners=Owners()) == {}  # another registry: a dead pid
        assert foreign_entries(hosts) == {}
    assert not writer.owners.is_local(2_000_000_004)
    assert hosts.read_bytes() == b"x\n"


def test_the_emergency_removal_takes_no_lock_of_the_registry(tmp_path: Path) -> None:
    """The second-signal path runs in a signal handler, between any two bytecodes of the main
    thread: it must finish while the registry's lock is held (by a writer starting)."""
    hosts = hosts_file(tmp_path, b"x\n")
    owners = Owners()
    with _running(hosts, owner_pid=2_000_000_005, min_interval=0, owners=owners) as writer:
        writer.publish({"127.1.27.1": ["web"]})
        assert writer.flush()
        done = threading.Event()
        remover = threading.Thread(
            target=lambda: (remove_owned_lines(hosts, 2_000_000_005, owners=owners,
                                               lock_timeout=2.0), done.set()),
            name="emergency-removal")
        with owners._lock:
            remover.start()
            finished = done.wait(5.0)
        remover.join(5.0)
        assert finished, "the emergency removal waited for the owners lock"
        assert owners.is_retired(2_000_000_005, hosts)
        assert hosts.read_bytes() == b"x\n"
        writer.publish({"127.1.27.1": ["web", "late"]})  # a retired owner writes no more
        assert writer.flush()
        assert hosts.read_bytes() == b"x\n"


_RESOLVER_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    from kubefwd.hosts.writer import HostsWriter
    fake = Path(sys.argv[1])
    run = lambda *a: subprocess.run(a, check=True)
    # Private mount namespace: /etc read-only here, our temp file bound over /etc/hosts.
    run("mount", "--bind", "/etc", "/etc")
    run("mount", "-o", "remount,bind,ro", "/etc")
    run("mount", "--bind", str(fake), "/etc/hosts")
    if os.stat("/etc/hosts").st_ino != os.stat(fake).st_ino or os.access("/etc", os.W_OK):
        sys.exit("refusing: /etc/hosts is not the bound test file")
    getent = lambda name: subprocess.run(
        ["getent", "hosts", name], capture_output=True, text=True).stdout.split()
    out = {}
    writer = HostsWriter(Path("/etc/hosts"))
    writer.start()
    writer.publish({"127.1.27.1": ["web", "web.shop", "web.shop.svc.cluster.local"]})
    out["flushed"] = writer.flush()
    out["web"] = getent("web.shop")
    out["long"] = getent("web.shop.svc.cluster.local")
    writer.stop_and_join()
    out["after"] = getent("web.shop")
    out["error"] = str(writer.last_error or "")
    print(json.dumps(out))
    """
)


@pytest.mark.root
@needs_root("unshare", "getent")
def test_real_resolver_sees_names_on_a_bind_mounted_etc_hosts(tmp_path: Path) -> None:
    fake = tmp_path / "hosts"
    original = Path("/etc/hosts").read_bytes()
    fake.write_bytes(b"127.0.0.1\tlocalhost\n# container hosts")
    try:
        result = python_in_unshare(PRIVATE_MOUNTS, _RESOLVER_SCRIPT, str(fake))
    finally:
        assert Path("/etc/hosts").read_bytes() == original  # the real file never changes
    assert result["flushed"] and result["error"] == ""
    assert result["web"][:1] == ["127.1.27.1"] and "web.shop" in result["web"]
    assert result["long"][:1] == ["127.1.27.1"]
    assert result["after"] == []
    assert fake.read_bytes() == b"127.0.0.1\tlocalhost\n# container hosts"


# -- clean-up on a full disk -----------------------------------------------------------

_FULL_DISK_SCRIPT = _TINY_DISK + textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from kubefwd.hosts.writer import HostsWriter
    base = Path(sys.argv[1])
    full = base / "full"
    tiny_disk(full)
    hosts = full / "hosts"
    original = b"127.0.0.1 localhost\\n" * 20 + b"# no final newline"
    hosts.write_bytes(original)
    entries = {f"127.1.27.{i}": [f"svc-{i}", f"svc-{i}.ns.svc.cluster.local"]
               for i in range(1, 30)}

    result = {}
    # rename: the normal path; in-place: a bind-mounted file; appended: someone added a line
    # after ours, so the shrunk content is no prefix of the old one.
    for mode in ("rename", "in-place", "appended"):
        if mode == "in-place":
            run("mount", "--bind", str(hosts), str(hosts))
        (full / "filler").unlink(missing_ok=True)
        writer = HostsWriter(hosts, min_interval=0, cleanup_timeout=2.0)
        writer.start()
        writer.publish(entries)
        flushed = writer.flush()
        if mode == "appended":
            with open(hosts, "ab") as fh:
                fh.write(b"10.9.9.9 added-by-someone-else\\n")
        fill(full)
        joined = writer.stop_and_join(10)
        content = hosts.read_bytes()
        expected = original + (b"\\n10.9.9.9 added-by-someone-else\\n"
                               if mode == "appended" else b"")
        result[mode] = {
            "flushed": flushed, "joined": joined, "restored": content == expected,
            "content": content.decode(errors="replace")[-200:],
            "failed": writer.cleanup_failed, "error": str(writer.last_error or ""),
        }
        if mode == "appended":
            hosts.write_bytes(original)
    result["leftovers"] = sorted(p.name for p in full.iterdir())
    print(json.dumps(result))
    """
)


@pytest.mark.root
@needs_root("unshare")
def test_full_disk_at_shutdown_still_removes_our_lines(tmp_path: Path) -> None:
    result = python_in_unshare(PRIVATE_MOUNTS, _FULL_DISK_SCRIPT, str(tmp_path))
    for mode in ("rename", "in-place", "appended"):
        run = result[mode]
        assert run["flushed"] and run["joined"], (mode, run)
        assert run["restored"], (mode, run)
        assert not run["failed"] and run["error"] == "", (mode, run)
    assert result["leftovers"] == ["filler", "hosts", "hosts.kubefwd.lock"]


def test_failed_final_cleanup_is_reported_after_retries(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"x\n")
    writer = _writer(hosts, min_interval=0, lock_timeout=0.05, cleanup_timeout=0.5)
    writer.publish({"127.1.27.1": ["web"]})
    assert writer.flush()
    with portalocker.Lock(str(lock_path_for(hosts)), timeout=1):
        assert writer.stop_and_join(5)
    assert writer.cleanup_failed
    assert isinstance(writer.last_error, HostsFileError)
    assert writer.last_error.exit_code == 6
    assert b"\tweb\t" in hosts.read_bytes()
    remove_owned_lines(hosts, os.getpid())


def test_final_cleanup_retries_until_the_lock_is_free(tmp_path: Path) -> None:
    hosts = hosts_file(tmp_path, b"x\n")
    writer = _writer(hosts, min_interval=0, lock_timeout=0.05, cleanup_timeout=5.0)
    writer.publish({"127.1.27.1": ["web"]})
    assert writer.flush()
    lock = portalocker.Lock(str(lock_path_for(hosts)), timeout=1)
    lock.acquire()
    try:
        writer.stop()
        # The first attempt fails on the held lock; a later one gets through once it is free.
        assert wait_for(lambda: writer.last_error is not None, 5, "a failed first attempt")
    finally:
        lock.release()
    assert writer.stop_and_join(10)
    assert not writer.cleanup_failed and writer.last_error is None
    assert hosts.read_bytes() == b"x\n"


def test_reading_a_fifo_never_blocks_and_is_refused(tmp_path: Path) -> None:
    from kubefwd.hosts.fileio import read_hosts

    fifo = tmp_path / "hosts"
    os.mkfifo(fifo)
    with pytest.raises(HostsFileError, match="not a regular file"):
        read_hosts(fifo)


def test_reading_a_huge_file_is_refused_not_loaded(tmp_path: Path) -> None:
    from kubefwd.hosts.fileio import MAX_HOSTS_BYTES, read_hosts

    huge = tmp_path / "hosts"
    with open(huge, "wb") as fh:
        fh.truncate(MAX_HOSTS_BYTES + 1)  # sparse: no disk used
    with pytest.raises(HostsFileError, match="larger than"):
        read_hosts(huge)


def test_writer_refuses_to_replace_a_special_file(tmp_path: Path) -> None:
    from kubefwd.hosts.fileio import write_hosts

    fifo = tmp_path / "hosts"
    os.mkfifo(fifo)
    with pytest.raises(HostsFileError, match="not a regular file"):
        write_hosts(fifo, b"127.1.27.1 web\n", expect=None)
    assert fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


_GROW_ON_A_FULL_DISK = _TINY_DISK + textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from kubefwd.errors import HostsFileError
    from kubefwd.hosts.fileio import read_hosts_stamped, write_hosts
    base = Path(sys.argv[1])
    full = base / "full"
    tiny_disk(full)
    hosts = full / "hosts"
    original = b"127.0.0.1 localhost\\n" * 2000  # 40,000 bytes: no room for a second copy
    hosts.write_bytes(original)
    # Leave two pages free: enough to grow by a few KiB, not for a copy.
    with open(full / "filler", "wb") as fh:
        fh.write(b"x" * (os.statvfs(full).f_bavail * os.statvfs(full).f_frsize - 8192))
    result = {}
    grown = original + b"127.1.27.1\\tweb web.shop\\t# kubefwd pid=4242\\n" * 100
    _, stamp = read_hosts_stamped(hosts)
    result["grow"] = write_hosts(hosts, grown, expect=stamp)
    result["grown"] = hosts.read_bytes() == grown
    _, stamp = read_hosts_stamped(hosts)
    try:
        write_hosts(hosts, grown + b"# more\\n" * 4000, expect=stamp)
        result["too_big"] = "written"
    except HostsFileError as e:
        result["too_big"] = str(e)
    result["unchanged"] = hosts.read_bytes() == grown
    result["leftovers"] = sorted(p.name for p in full.iterdir())
    print(json.dumps(result))
    """
)


@pytest.mark.root
@needs_root("unshare", "mount")
def test_full_disk_grows_the_file_in_place_when_its_blocks_can_be_reserved(
    tmp_path: Path,
) -> None:
    """No room for a temp copy, but room for the few blocks the file grows by: the blocks are
    reserved, then the content is written in place. Past the free space nothing changes."""
    result = python_in_unshare(PRIVATE_MOUNTS, _GROW_ON_A_FULL_DISK, str(tmp_path))
    assert result["grow"] == "in-place" and result["grown"], result
    assert "no space left" in result["too_big"] and result["unchanged"], result
    assert result["leftovers"] == ["filler", "hosts"]


def test_a_name_another_live_instance_wrote_is_not_written_again() -> None:
    # Two instances that both take over a name the moment its holder stops: the one that
    # writes first keeps it, the other writes the rest of its names only.
    other = Marker(os.getppid(), process_start(os.getppid()))
    theirs = format_entries({"127.1.27.1": ["web", "web.a"]}, other)
    doc = parse_hosts(b"127.0.0.1 localhost\n" + b"".join(line + b"\n" for line in theirs))
    new = rewrite_lines(doc, _ours(), {"127.1.28.1": ["web", "web.b"]})
    ours = [line for line in new.splitlines() if b"pid=4242" in line]
    assert ours == [b"127.1.28.1\tweb.b\t" + _ours().render()]
    assert theirs[0] in new.splitlines()


# -- the format, byte by byte ----------------------------------------------------------------


def test_a_marker_renders_the_newline_it_added_and_parses_back() -> None:
    assert Marker(7, 5, b"\r\n").render() == b"# kubefwd pid=7 t=5 sep=crlf"
    assert Marker(7, None, b"\n").render() == b"# kubefwd pid=7 sep=lf"
    for marker in (Marker(7, 5, b"\r\n"), Marker(7, None, b"\n"), Marker(8, 9)):
        assert parse_marker(b"127.1.27.1\tweb\t" + marker.render()) == marker
    assert parse_marker(b"127.1.27.1\tweb\t# kubefwd pid=8 t=9") == Marker(8, 9, b"")


def test_our_lines_take_the_first_newline_of_the_foreign_text() -> None:
    data = b"127.0.0.1 localhost\n10.0.0.1 a\r\n10.0.0.2 b"
    doc = parse_hosts(data)
    assert doc.newline == b"\n"
    lines = format_entries({"127.1.27.1": ["web"]}, Marker(1))
    assert render_hosts(doc, lines) == data + b"\n127.1.27.1\tweb\t# kubefwd pid=1 sep=lf\n"


def test_host_names_up_to_253_characters_are_written(caplog: pytest.LogCaptureFixture) -> None:
    longest = ".".join(["a" * 63] * 4)[:253]
    with caplog.at_level(logging.WARNING):
        lines = format_entries({"127.1.27.1": [longest, longest + "b", "bad name"]}, Marker(1))
    assert lines == [b"127.1.27.1\t" + longest.encode() + b"\t# kubefwd pid=1"]
    assert [r.getMessage() for r in caplog.records] == [
        f"not writing invalid host name {longest + 'b'!r}",
        "not writing invalid host name 'bad name'"]


def test_a_name_list_is_split_only_past_200_characters() -> None:
    ip = "127.1.27.1"  # ten characters, then a space before each name
    fits = {ip: ["a" * 94, "b" * 94]}  # 10 + 95 + 95 = 200
    assert len(format_entries(fits, Marker(1))) == 1
    over = {ip: ["a" * 94, "b" * 95]}
    assert [line.split(b"\t")[1] for line in format_entries(over, Marker(1))] == [
        b"a" * 94, b"b" * 95]
    three = {ip: ["a" * 60, "b" * 60, "c" * 60, "d" * 60]}  # 10 + 3 * 61 = 193; d goes on
    assert [len(line.split(b"\t")[1].split()) for line in format_entries(three, Marker(1))] == \
        [3, 1]


def test_rendering_drops_the_newline_flags_of_every_line_it_does_not_need() -> None:
    doc = parse_hosts(b"127.0.0.1 localhost\n")
    lines = [b"127.1.27.1\tweb\t# kubefwd pid=1 sep=lf",
             b"127.1.27.2\tdb\t# kubefwd pid=1 sep=crlf"]
    assert render_hosts(doc, lines) == (
        b"127.0.0.1 localhost\n127.1.27.1\tweb\t# kubefwd pid=1\n"
        b"127.1.27.2\tdb\t# kubefwd pid=1\n")
