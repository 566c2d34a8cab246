"""The real ``kubefwd svc --tui`` and ``kubefwd demo`` in tmux, driven with send-keys and read
with capture-pane, against the simulated cluster."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import http_get, wait_for
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster
from kubefwd.system.privileges import unprivileged_port_start

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]
REPO = Path(__file__).resolve().parents[2]


class Tmux:
    def __init__(self, command: str, cwd: Path) -> None:
        self.socket = f"kubefwd-test-{uuid.uuid4().hex[:8]}"
        self.status_file = cwd / f"{self.socket}.status"
        env = dict(os.environ, PYTHONUNBUFFERED="1", LANG="C.UTF-8", LC_ALL="C.UTF-8")
        env.pop("CI", None)
        self.run("new-session", "-d", "-s", "t", "-x", "110", "-y", "30",
                 f"{command}; echo $? > {self.status_file}; sleep 30", env=env, cwd=cwd)

    def run(self, *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> str:
        return subprocess.run(["tmux", "-u", "-L", self.socket, *args], capture_output=True,
                              text=True, errors="replace", check=True, env=env, cwd=cwd,
                              timeout=20).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)
        time.sleep(0.4)

    def wait(self, text: str, timeout: float = 15.0) -> str:
        return wait_for(lambda: self.screen() if text in self.screen() else None, timeout,
                        f"{text!r} on the screen")

    def exit_status(self, timeout: float = 20.0) -> int:
        wait_for(self.status_file.exists, timeout, "the command to end")
        return int(self.status_file.read_text().strip())

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def tmux_runs(tmp_path: Path) -> Iterator[list[Tmux]]:
    started: list[Tmux] = []
    yield started
    for t in started:
        try:
            print(t.screen())
        except subprocess.CalledProcessError:
            pass
        t.close()


def test_svc_tui_in_tmux(cluster: SimCluster, hosts: Path, tmp_path: Path,
                         block: int, tmux_runs: list[Tmux]) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(f"baseUnreservedIP: 127.1.{block}.1\n")
    cmd = (f"cd {REPO} && {sys.executable} -m kubefwd svc --tui -c {cluster.kubeconfig_path} "
           f"-n shop --hosts-path {hosts} -z {base}")
    t = Tmux(cmd, tmp_path)
    tmux_runs.append(t)
    screen = t.wait("HOSTNAME")
    assert "web" in screen and "cart" in screen and "active" in screen
    ip = hosts_entries(hosts)["web.shop"]
    assert f"{ip}:80→8080" in screen  # the pod's port beside the local one it differs from
    http_get(ip, 80, "/bytes/50000")
    t.wait("50.")  # the IN column counts the bytes (50.xK)
    t.keys("/", "w", "e", "b", "Enter")
    screen = t.screen()
    assert "filter 'web'" in screen and "cart " not in screen
    t.keys("Enter")  # detail of web
    t.wait("connect strings")
    t.keys("Tab")  # HTTP: the request, as the detector saw it go through
    screen = t.wait("/bytes/50000")
    assert "GET" in screen and "200" in screen
    t.keys("Tab")  # Logs
    t.wait("GET /bytes/50000")
    t.keys("Escape")
    time.sleep(0.5)
    # A pod deletion: the row moves to the new pod and is active again (the passing
    # reconnecting state is shorter than a screen poll with -a, so it is not asserted).
    pod = next(p["metadata"]["name"] for p in cluster.store.list("Pod", "shop")[0]
               if p["metadata"]["name"].startswith("web-"))
    assert pod[:20] in t.screen()
    cluster.delete_object("Pod", "shop", pod)
    wait_for(lambda: pod[:20] not in t.screen() and "active" in t.screen(), 30,
             "active on a new pod")
    t.keys("q")
    assert t.exit_status() == 0
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_demo_in_tmux_without_root(tmp_path: Path, tmux_runs: list[Tmux]) -> None:
    """``kubefwd demo`` from a fresh checkout as an unprivileged user: its names go to a
    temporary hosts file, ``curl --resolve`` reaches the frontend, /etc/hosts is untouched."""
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("root, and no unprivileged user 'nobody' to run the demo as")
        if not all(shutil.which(tool) for tool in ("setpriv", "unshare", "mount")):
            pytest.skip("root, and no setpriv, unshare and mount to run the demo as 'nobody'")
        uid, gid = user.pw_uid, user.pw_gid
        # Outside this test's own directory, which only root may enter.
        home = Path(tempfile.mkdtemp(prefix="kubefwd-demo-user-"))
        home.chmod(0o755)
        runner = as_user(uid, gid, home)
    else:
        uid, gid, runner, home = os.getuid(), os.getgid(), [], tmp_path
    try:
        checkout = home / "checkout"
        # A fresh checkout: HEAD, not the working tree's uncommitted state.
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(checkout)],
                       check=True, timeout=120)
        (home / "tmp").mkdir()
        if runner:
            for path in [home, *home.rglob("*")]:
                os.lchown(path, uid, gid)
        env = ["env", f"HOME={home}", f"TMPDIR={home / 'tmp'}", f"PYTHONPATH={checkout}"]
        probe = subprocess.run([*runner, *env, sys.executable, "-c",
                                "import kubefwd.commands.demo, prompt_toolkit, kubernetes"],
                               cwd=checkout, capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"user {uid} cannot run {sys.executable}: "
                        f"{(probe.stderr.strip().splitlines() or ['?'])[-1]}")
        etc_hosts = Path("/etc/hosts").read_bytes()
        cmd = f"cd {checkout} && " + shlex.join(
            [*runner, *env, sys.executable, "-m", "kubefwd", "demo", "--no-churn"])
        t = Tmux(cmd, tmp_path)
        tmux_runs.append(t)
        t.wait("frontend", 60)
        t.wait("active", 30)
        # The demo runs as that user, not as root.
        (demo,) = wait_for(lambda: [p for p in psutil.process_iter(["cmdline", "environ"])
                                    if "demo" in (p.info["cmdline"] or [])
                                    and (p.info["environ"] or {}).get("HOME") == str(home)],
                           10, "the demo process")
        assert demo.uids().real == uid and demo.uids().effective == uid
        # Its names went to a temporary hosts file of its own.
        hosts = wait_for(lambda: next(iter((home / "tmp").glob("kubefwd-demo-*/hosts")), None),
                         20, "the demo's hosts file")
        ip = wait_for(lambda: hosts_entries(hosts).get("frontend"), 20, "frontend written")
        port = 80 if uid == 0 or unprivileged_port_start() <= 80 else 8080
        if port != 80:  # no root: the frontend's 80 is forwarded on 8080
            assert demo_port(demo.pid, ip) == port
        curl = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve",
                               f"frontend:{port}:{ip}", f"http://frontend:{port}/"],
                              capture_output=True, text=True, timeout=30)
        assert curl.returncode == 0, curl.stderr
        assert curl.stdout.startswith("frontend-")
        t.keys("q")
        assert t.exit_status(30) == 0
        assert not hosts.exists()  # the temporary hosts file went with the demo
        assert Path("/etc/hosts").read_bytes() == etc_hosts
    finally:
        if home != tmp_path:
            shutil.rmtree(home, ignore_errors=True)


def as_user(uid: int, gid: int, stage: Path) -> list[str]:
    """A command prefix that runs what follows as ``uid``:``gid`` with no capabilities, in a
    private mount namespace where this Python is reachable by that user: a directory on its
    way that only root may enter (a home such as /root) is covered, in that namespace alone,
    by a tmpfs holding just the Python installation and its environment, bound in."""
    needed = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)})
    script = ["set -e"]
    covered: set[str] = set()
    binds = []
    for i, path in enumerate(needed):
        parts = Path(path).parts
        blocked = next((Path(*parts[:n]) for n in range(2, len(parts) + 1)
                        if not Path(*parts[:n]).stat().st_mode & 0o001), None)
        if blocked is None:
            continue
        staged = stage / f".stage{i}"
        staged.mkdir()
        script.append(f"mount --bind '{path}' '{staged}'")
        covered.add(str(blocked))
        binds.append((staged, path))
    script += [f"mount -t tmpfs -o mode=755 tmpfs '{top}'" for top in sorted(covered)]
    script += [f"mkdir -p '{path}' && mount --bind '{staged}' '{path}'"
               for staged, path in binds]
    script.append(f'exec setpriv --reuid={uid} --regid={gid} --clear-groups '
                  '--inh-caps=-all --bounding-set=-all "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "; ".join(script),
            "sh"]


def demo_port(pid: int, ip: str) -> int:
    """The port the demo listens on at ``ip``."""
    ports = [c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
             if c.status == psutil.CONN_LISTEN and c.laddr.ip == ip]
    assert len(ports) == 1, ports
    return int(ports[0])
