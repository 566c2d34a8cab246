"""The open-file limit as the user meets it: too low a hard limit is said once, with the
figures, and the services that fit are still forwarded."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import http_text
from test_svc_e2e import Kubefwd, block, cluster, hosts, hosts_entries, run

pytestmark = pytest.mark.e2e

_ = (block, cluster, hosts, run)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_hard_limit_too_low_for_the_services_is_said_once(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    fwd = run("-n", "shop,payments", wrapper=("prlimit", "--nofile=300:300"))
    assert http_text(hosts_entries(hosts)["web"], 80).startswith("web-")
    warnings = [x for x in fwd.lines if "open-file limit" in x]
    assert len(warnings) == 1, fwd.output
    assert "(300, hard limit 300)" in warnings[0] and "ulimit -Hn" in warnings[0]
    fwd.stop_cleanly()


def test_a_generous_limit_says_nothing(run: Callable[..., Kubefwd], hosts: Path) -> None:
    fwd = run("-n", "shop")
    assert http_text(hosts_entries(hosts)["web"], 80).startswith("web-")
    assert "open-file limit" not in fwd.output
    fwd.stop_cleanly()
