"""``scripts/soak``: every failed connection is tied to the fault that caused it.

The attribution is pure logic, tested on made-up timelines; a short soak through the real
kubefwd process and the simulated cluster, faults on, must explain every failure it sees.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType

import pytest
from helpers import REPO, locked_block

pytestmark = pytest.mark.e2e

SOAK = REPO / "scripts" / "soak"


def load_soak() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("soak_script", str(SOAK))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # its dataclasses look themselves up there
    try:
        loader.exec_module(module)
    finally:
        del sys.modules[loader.name]
    return module


def test_failures_are_tied_to_a_fault_of_their_service_or_of_every_service() -> None:
    soak = load_soak()
    Fault, Failure = soak.Fault, soak.Failure
    faults = [
        Fault("delete pod", "echo1.soak0", 10.0, 12.0, "echo1-a"),
        Fault("restart API server", None, 30.0, 30.5, "0.5 s down"),
        Fault("rolling restart", "echo2.soak0", 50.0, 58.0),
        Fault("watch 410", None, 70.0, 70.0),
    ]
    failures = [
        Failure("echo1.soak0", 9.0, 11.0, "early EOF", 10),  # pod deleted while it ran
        Failure("echo1.soak0", 15.0, 15.2, "reset", 10),  # 3 s after the pod was gone
        Failure("echo3.soak0", 11.0, 11.5, "reset", 10),  # another service's pod: no
        Failure("echo3.soak0", 29.0, 31.0, "early EOF", 10),  # the API server restart
        Failure("echo2.soak0", 57.0, 57.5, "early EOF", 10),  # inside the rolling restart
        Failure("echo2.soak0", 40.0, 49.0, "reset", 10),  # ended before it began
        Failure("echo1.soak0", 18.0, 19.0, "reset", 10),  # 6 s after: past the window
        Failure("echo2.soak0", 71.0, 72.0, "reset", 10),  # a 410 a second before
    ]
    table, unexplained = soak.explain(failures, faults, 5.0, 0.0)
    assert dict(table) == {("delete pod", "early EOF"): 1, ("delete pod", "reset"): 1,
                           ("restart API server", "early EOF"): 1,
                           ("rolling restart", "early EOF"): 1, ("watch 410", "reset"): 1}
    assert [line.split(":")[0] for line in unexplained] == [
        "echo3.soak0", "echo1.soak0", "echo2.soak0"]
    assert "11.0-11.5 s" in unexplained[0]
    assert "last fault: delete pod echo1.soak0" in unexplained[0]
    assert "40.0-49.0 s" in unexplained[2] and "last fault: restart API server" in unexplained[2]
    # Of several faults near one failure, the one of its own service is named.
    both = [Fault("latency", None, 0.0, 5.0), Fault("delete pod", "echo1.soak0", 4.0, 4.5)]
    near = soak.causes_of(Failure("echo1.soak0", 3.0, 6.0, "reset", 1), both, 5.0)
    assert [f.kind for f in near] == ["delete pod", "latency"]
    # How long after each fault ended connections still failed because of it.
    assert soak.latest_after(failures, faults, 5.0) == {
        "delete pod": 3.0, "restart API server": -1.5, "rolling restart": -1.0,
        "watch 410": 1.0}


def test_a_short_soak_with_faults_explains_every_failure() -> None:
    with locked_block("svc", range(128, 248, 8)) as third, \
            locked_block("soak-pods", range(1, 15)) as pods:
        out = subprocess.run(
            [sys.executable, str(SOAK), "--services", "4", "--namespaces", "2",
             "--clients", "8", "--seconds", "20", "--warmup", "3", "--max-size", "200000",
             "--fault-interval", "1", "--base", f"127.1.{third}.1",
             "--pod-range", f"127.252.{pods * 16}.0/20"],
            capture_output=True, text=True, timeout=240, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    report = out.stdout
    assert "failures by cause" in report, out.stderr[-2000:]
    assert re.search(r"^\s+0  unexplained$", report, re.M), report
    made = re.search(r"faults made: (.*)", report)
    assert made and " x" in made.group(1), report
    assert "hosts file as before: True" in report and "exit code 0" in report, report
    failed = int(re.search(r"failed (\d+)", report).group(1))  # type: ignore[union-attr]
    causes = report.split("failures by cause", 1)[1]
    explained = sum(int(n) for n in re.findall(r"^\s+(\d+)  (?!unexplained)", causes, re.M))
    assert explained == failed, report
    assert out.returncode == 0, report
