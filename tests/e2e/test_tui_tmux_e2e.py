"""The real ``kubefwd svc --tui`` and ``kubefwd demo`` in tmux, driven with send-keys and read
with capture-pane, against the simulated cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import http_get, http_text, wait_for
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

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
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(checkout)],
                   check=True, timeout=120)
    # The working tree's uncommitted state is not what a fresh checkout has: use HEAD.
    demo_hosts = tmp_path / "demo-hosts"
    demo_hosts.write_bytes(ORIGINAL_HOSTS)
    cmd = (f"cd {checkout} && env HOME={tmp_path} PYTHONPATH={checkout} "
           f"{sys.executable} -m kubefwd demo --no-churn --hosts-path {demo_hosts}")
    t = Tmux(cmd, tmp_path)
    tmux_runs.append(t)
    t.wait("frontend", 60)
    t.wait("active", 30)
    ip = wait_for(lambda: hosts_entries(demo_hosts).get("frontend"), 20, "frontend written")
    assert http_text(ip, 80).startswith("frontend-")
    t.keys("q")
    assert t.exit_status(30) == 0
    assert demo_hosts.read_bytes() == ORIGINAL_HOSTS
