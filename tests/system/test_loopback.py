"""Loopback strategies (real binds, real `ip addr` in a private network namespace) and the
named reasons for needing root."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import needs_root, python_in_unshare, run_as_nobody

from kubefwd.errors import NetworkError
from kubefwd.system.loopback import (
    LinuxLoopback,
    LoopbackStrategy,
    MacLoopback,
    bindable,
    loopback_strategy,
)
from kubefwd.system.privileges import (
    has_net_bind_capability,
    needs_root_reasons,
    unprivileged_port_start,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@linux_only
def test_strategy_for_this_os() -> None:
    strategy = loopback_strategy()
    assert isinstance(strategy, LinuxLoopback) and strategy.is_supported()
    assert not MacLoopback.is_supported()


def test_commands_per_os() -> None:
    assert LinuxLoopback().add_command("127.1.27.5") == [
        "ip", "addr", "add", "127.1.27.5/8", "dev", "lo"
    ]
    mac = MacLoopback()
    assert mac.add_command("127.1.27.5") == ["ifconfig", "lo0", "alias", "127.1.27.5", "up"]
    assert mac.remove_command("127.1.27.5") == ["ifconfig", "lo0", "-alias", "127.1.27.5"]


@linux_only
def test_linux_loopback_needs_nothing_when_bind_works() -> None:
    strategy = LinuxLoopback()
    assert bindable("127.1.27.200")
    strategy.ensure("127.1.27.200")
    strategy.ensure("127.1.27.200")
    assert strategy.added == []
    assert strategy.cleanup() == []


def test_unaddable_ip_is_a_network_error() -> None:
    with pytest.raises(NetworkError, match=r"192\.0\.2\.1 is not a local address"):
        LoopbackStrategy().ensure("192.0.2.1")


class _Failing(LoopbackStrategy):
    """A strategy whose commands are real programs that fail (or not) on demand."""

    def add_command(self, ip: str) -> list[str]:
        return ["false"]

    def remove_command(self, ip: str) -> list[str]:
        return ["false"] if ip.endswith(".1") else ["true"]


def test_failing_add_command_names_the_step() -> None:
    with pytest.raises(NetworkError, match="'false' failed"):
        _Failing().ensure("192.0.2.7")


def test_cleanup_runs_every_step_despite_failures() -> None:
    strategy = _Failing()
    strategy.added = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    errors = strategy.cleanup()
    assert len(errors) == 1 and "'false' failed" in errors[0]
    assert strategy.added == []


_NETNS_SCRIPT = textwrap.dedent(
    """
    import json, subprocess
    from kubefwd.system.loopback import LinuxLoopback, bindable
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"], check=True)
    ip = "127.1.27.9"
    out = {"before": bindable(ip)}
    strategy = LinuxLoopback()
    strategy.ensure(ip)
    strategy.ensure(ip)
    out["after"] = bindable(ip)
    out["added"] = list(strategy.added)
    out["errors"] = strategy.cleanup()
    out["cleaned"] = bindable(ip)
    print(json.dumps(out))
    """
)


@pytest.mark.root
@linux_only
@needs_root("unshare", "ip")
def test_linux_adds_and_removes_an_address_only_when_needed() -> None:
    # A private network namespace whose lo has lost 127.0.0.1/8: binds fail for real.
    result = python_in_unshare(["--net"], _NETNS_SCRIPT, timeout=30)
    assert result == {
        "before": False, "after": True, "added": ["127.1.27.9"], "errors": [], "cleaned": False
    }


# -- privileges ------------------------------------------------------------------------


@needs_root()
def test_root_needs_nothing_more(tmp_path: Path) -> None:
    assert needs_root_reasons(tmp_path / "hosts", [22, 80]) == []


@linux_only
def test_port_start_and_capability_are_read() -> None:
    start = unprivileged_port_start()
    assert 0 <= start <= 65536
    assert has_net_bind_capability() in (True, False)


@needs_root("setpriv")
def test_reasons_name_the_file_and_the_ports(shared_dir: Path) -> None:
    hosts = shared_dir / "hosts"
    hosts.write_text("x\n")
    writable = shared_dir / "mine"
    writable.mkdir()
    os.chown(writable, 65534, 65534)
    code = (
        "import json, sys\nfrom pathlib import Path\n"
        "from kubefwd.system.privileges import needs_root_reasons, unprivileged_port_start\n"
        "print(json.dumps([needs_root_reasons(Path(sys.argv[1]), [80, 443, 8080]),\n"
        "    needs_root_reasons(Path(sys.argv[2]), [8080]), unprivileged_port_start()]))\n"
    )
    out = run_as_nobody(code, str(hosts), str(writable / "hosts"))
    assert out.returncode == 0, out.stderr
    reasons, none, start = json.loads(out.stdout)
    assert f"the hosts file {hosts} is not writable" in reasons[0]
    if start > 443:
        assert "ports below" in reasons[1] and "80, 443" in reasons[1]
        assert "8080" not in reasons[1]
    assert none == []
