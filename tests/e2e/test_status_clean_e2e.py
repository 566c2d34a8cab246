"""``kubefwd status`` and ``kubefwd clean`` against live and killed instances sharing one
hosts file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    Kubefwd,
)

pytestmark = pytest.mark.e2e



def kubefwd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubefwd", *args], capture_output=True,
                          text=True, timeout=30, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def lines_of(hosts: Path, pid: int) -> list[bytes]:
    return [line for line in hosts.read_bytes().splitlines(keepends=True)
            if f"# kubefwd pid={pid} ".encode() in line + b" "]


def test_status_shows_two_live_instances_and_clean_removes_only_the_killed_ones_lines(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    shop = run("-n", "shop")
    payments = run("-x", "one", "-n", "payments")
    result = kubefwd("status", "--hosts-path", str(hosts), "-o", "json")
    assert result.returncode == 0, result.stderr
    shown = {i["pid"]: i for i in json.loads(result.stdout)["instances"]}
    assert set(shown) == {shop.proc.pid, payments.proc.pid}
    assert shown[shop.proc.pid]["namespaces"] == ["shop"]
    assert shown[payments.proc.pid]["namespaces"] == ["payments"]
    assert shown[payments.proc.pid]["contexts"] == ["one"]
    assert all(i["alive"] and i["started"] for i in shown.values())
    names = {n for f in shown[shop.proc.pid]["forwards"] for n in f["names"]}
    assert {"web", "cart.shop"} <= names
    text = kubefwd("status", "--hosts-path", str(hosts))
    assert f"pid {shop.proc.pid}: running" in text.stdout
    assert "namespaces: payments" in text.stdout

    # Nothing dead yet: nothing to do, exit 0, not a byte changed.
    before = hosts.read_bytes()
    result = kubefwd("clean", "--hosts-path", str(hosts))
    assert result.returncode == 0 and "nothing to clean" in result.stdout
    assert hosts.read_bytes() == before

    kept = lines_of(hosts, payments.proc.pid)
    assert kept and lines_of(hosts, shop.proc.pid)
    # A live instance purges dead ones' lines itself on its next write: pause it, so that
    # what happens next is clean's doing alone.
    payments.proc.send_signal(signal.SIGSTOP)
    shop.kill()  # SIGKILL: its lines stay behind
    result = kubefwd("status", "--hosts-path", str(hosts), "-o", "json")
    alive = {i["pid"]: i["alive"] for i in json.loads(result.stdout)["instances"]}
    assert alive == {shop.proc.pid: False, payments.proc.pid: True}
    result = kubefwd("clean", "--hosts-path", str(hosts))
    assert result.returncode == 0, result.stderr
    assert f"kubefwd pid {shop.proc.pid}" in result.stdout
    assert not lines_of(hosts, shop.proc.pid)
    assert lines_of(hosts, payments.proc.pid) == kept
    assert hosts.read_bytes().startswith(ORIGINAL_HOSTS)
    # --all without -y and without a terminal leaves a running instance's lines alone.
    result = kubefwd("clean", "--hosts-path", str(hosts), "--all")
    assert result.returncode == 0 and lines_of(hosts, payments.proc.pid) == kept
    payments.proc.send_signal(signal.SIGCONT)
    payments.stop_cleanly()


def test_clean_all_yes_removes_a_running_instances_lines(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    fwd = run("-n", "shop")
    result = kubefwd("clean", "--hosts-path", str(hosts), "--all", "-y")
    assert result.returncode == 0, result.stderr
    assert hosts.read_bytes() == ORIGINAL_HOSTS
    fwd.stop()


def test_status_asks_the_api_of_instances_that_serve_one(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import http_text, wait_for
    from test_svc_e2e import hosts_entries

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # where the key files go
    monkeypatch.delenv("KUBEFWD_API_KEY", raising=False)
    shop = run("-n", "shop", "--api", "--api-addr", "127.0.0.1:0")
    payments = run("-x", "one", "-n", "payments")
    idle = run("--api-addr", "127.0.0.1:0")  # no hosts lines: known by its key file only
    assert http_text(hosts_entries(hosts)["web.shop"], 80).startswith("web-")

    def shown() -> dict[int, dict[str, object]]:
        result = kubefwd("status", "--hosts-path", str(hosts), "-o", "json")
        assert result.returncode == 0, result.stderr
        return {i["pid"]: i for i in json.loads(result.stdout)["instances"]}

    def web_active() -> dict[int, dict[str, object]] | None:
        now = shown()
        api = now[shop.proc.pid]["api"]
        assert isinstance(api, dict) and "services" in api, api
        statuses = {s["key"]: s["status"] for s in api["services"]}
        return now if statuses.get("one/shop/web") == "active" else None

    now = wait_for(web_active, 10, "web active in the API's answer")
    assert set(now) == {shop.proc.pid, payments.proc.pid, idle.proc.pid}
    api = now[shop.proc.pid]["api"]
    assert isinstance(api, dict) and api["url"].startswith("http://127.0.0.1:")
    web = next(s for s in api["services"] if s["key"] == "one/shop/web")
    assert web["ip"] == hosts_entries(hosts)["web.shop"] and 80 in web["ports"]
    assert "web.shop" in web["names"]
    assert {s["key"].split("/")[1] for s in api["services"]} == {"shop"}
    assert now[payments.proc.pid]["api"] is None  # no API: the hosts lines only
    assert now[payments.proc.pid]["forwards"]
    idle_api = now[idle.proc.pid]["api"]
    assert isinstance(idle_api, dict) and idle_api["services"] == [] and "error" not in idle_api
    assert now[idle.proc.pid]["forwards"] == [] and now[idle.proc.pid]["alive"]
    text = kubefwd("status", "--hosts-path", str(hosts)).stdout
    assert f"API {api['url']}: " in text
    line = next(x for x in text.splitlines() if "one/shop/web " in x)
    assert line.split()[0] == "active" and web["ip"] in line
    # An API that stops answering: said in one line, and the hosts lines shown instead.
    shop.proc.send_signal(signal.SIGSTOP)
    try:
        result = kubefwd("status", "--hosts-path", str(hosts), "-o", "json")
        stopped = {i["pid"]: i for i in json.loads(result.stdout)["instances"]}
        assert stopped[shop.proc.pid]["api"]["error"] == "no answer"
        assert stopped[shop.proc.pid]["forwards"]
    finally:
        shop.proc.send_signal(signal.SIGCONT)
