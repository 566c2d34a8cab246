"""The kubefwd instances a hosts file knows of: their lines, grouped by owner, and removing
the lines of chosen owners (``kubefwd status`` and ``kubefwd clean``).

An instance is the process named in a line's marker (``# kubefwd pid=N t=START``); it is
live when a process with that pid and start time runs (``owner_alive``). Removal goes
through the same locked read-modify-write as every hosts write: foreign lines are kept
byte for byte, and so are the lines of every owner not named.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from kubefwd.errors import HostsFileError
from kubefwd.hosts.fileio import HostsChanged, locked, read_hosts, read_hosts_stamped, write_hosts
from kubefwd.hosts.format import Marker, parse_hosts, render_hosts
from kubefwd.hosts.writer import MERGE_ATTEMPTS, owner_alive


@dataclass
class Instance:
    """One owner of hosts lines: its pid, start time, liveness and ``ip → names``."""

    pid: int
    started: int | None
    alive: bool
    forwards: dict[str, list[str]] = field(default_factory=dict)


def _entry(body: bytes) -> tuple[str, list[str]]:
    fields = body.split(b"#", 1)[0].decode("utf-8", "replace").split()
    return (fields[0], fields[1:]) if fields else ("", [])


def instances(path: Path) -> list[Instance]:
    """Every owner of lines in ``path``, by pid, with its addresses and names."""
    doc = parse_hosts(read_hosts(path))
    found: dict[tuple[int, int | None], Instance] = {}
    for body, marker in doc.owned:
        who = (marker.pid, marker.started)
        inst = found.get(who)
        if inst is None:
            inst = found[who] = Instance(marker.pid, marker.started, owner_alive(
                Marker(marker.pid, marker.started), strict=True))
        ip, names = _entry(body)
        if ip:
            inst.forwards.setdefault(ip, []).extend(n for n in names
                                                    if n not in inst.forwards.get(ip, []))
    return sorted(found.values(), key=lambda i: i.pid)


def remove_owners(path: Path, owners: Collection[tuple[int, int | None]], *,
                  lock_timeout: float = 10.0) -> int:
    """Remove the lines of ``owners`` ((pid, start) pairs) under the hosts lock; returns how
    many lines went. Everything else stays byte for byte."""
    target = Path(os.path.realpath(path))
    wanted = set(owners)
    with locked(target, lock_timeout) as rename_ok:
        for _ in range(MERGE_ATTEMPTS):
            data, stamp = read_hosts_stamped(target)
            doc = parse_hosts(data)
            keep = [body for body, m in doc.owned if (m.pid, m.started) not in wanted]
            gone = len(doc.owned) - len(keep)
            if not gone:
                return 0
            try:
                write_hosts(target, render_hosts(doc, keep), rename_ok=rename_ok,
                            expect=stamp)
                return gone
            except HostsChanged:
                continue
    raise HostsFileError(f"the hosts file {path} kept changing; nothing was removed")
