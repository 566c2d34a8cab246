"""Why (and whether) this run needs root: named reasons instead of a blanket demand."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from kubefwd.hosts.fileio import write_blocker

_CAP_NET_BIND_SERVICE = 10
_PORT_START_FILE = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def unprivileged_port_start() -> int:
    """Lowest port an unprivileged process may bind."""
    if sys.platform.startswith("linux"):
        try:
            return int(_PORT_START_FILE.read_text().strip())
        except (OSError, ValueError):
            return 1024
    if sys.platform == "darwin":
        return 0  # macOS 10.14+ lets any user bind low ports
    return 1024


def has_net_bind_capability() -> bool:
    """CAP_NET_BIND_SERVICE in this process's effective set (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def hosts_writable(hosts_path: Path) -> bool:
    target = Path(os.path.realpath(hosts_path))
    if target.exists():
        return os.access(target, os.R_OK | os.W_OK)
    return os.access(target.parent, os.W_OK)


def needs_root_reasons(hosts_path: Path, ports: Iterable[int]) -> list[str]:
    """Each thing this run cannot do without root; empty when it can go ahead as is."""
    if os.geteuid() == 0:
        return []
    reasons: list[str] = []
    # A file nobody may change (read-only file system, immutable) is no reason for root:
    # the hosts writer reports it as a hosts-file error instead.
    if not hosts_writable(hosts_path) and write_blocker(hosts_path) is None:
        reasons.append(
            f"the hosts file {hosts_path} is not writable by this user "
            "(run with sudo, or pick a writable --hosts-path)"
        )
    start = unprivileged_port_start()
    low = sorted({p for p in ports if 0 < p < start})
    if low and not has_net_bind_capability():
        shown = ", ".join(str(p) for p in low[:10]) + (", ..." if len(low) > 10 else "")
        reasons.append(
            f"ports below {start} ({shown}) need root or CAP_NET_BIND_SERVICE "
            "(or map them with -m servicePort:localPort)"
        )
    if sys.platform == "darwin":
        reasons.append("loopback aliases (ifconfig lo0 alias) need root on macOS")
    return reasons
