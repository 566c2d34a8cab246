"""Which names the cluster may not put in the hosts file.

Service and namespace names come from the cluster, and a hosts file line wins over DNS: a
service named ``localhost``, or a namespace ``com`` with a service ``github`` (which gives
``github.com``), would take over a name the machine or its user relies on. So two kinds of
name are held back from our lines, each with one warning, while the service stays forwarded
under its other names:

- names of this machine (``localhost``, ``ip6-localhost``, ``broadcasthost``, anything under
  ``.localhost``, …): never written;
- names a foreign line of the hosts file already defines: not written unless
  ``--allow-shadowing``. The foreign lines are read again at each write, so a line the user
  adds later takes its name back from us at the next write.

Pure bookkeeping, no file access: the hosts writer hands in the foreign text it just read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

# Names the usual hosts files (Debian, Red Hat, macOS, Windows) give to this machine.
LOCAL_NAMES = frozenset({
    "localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4",
    "localhost6", "localhost6.localdomain6", "ip6-localhost", "ip6-loopback", "ip6-localnet",
    "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters", "ip6-allhosts", "broadcasthost",
})


def is_local_name(name: str) -> bool:
    """Does ``name`` name this machine? (``localhost`` and kin, or ``*.localhost``, which
    RFC 6761 reserves for loopback.)"""
    clean = name.lower().rstrip(".")
    return clean in LOCAL_NAMES or clean.endswith(".localhost")


def foreign_names(foreign: bytes) -> set[str]:
    """The host names defined by foreign hosts-file text (lowercase): every field after the
    address of each line, up to a comment."""
    names: set[str] = set()
    for line in foreign.splitlines():
        fields = line.split(b"#", 1)[0].split()
        for raw in fields[1:]:
            names.add(raw.decode("ascii", "replace").lower().rstrip("."))
    return names


class NameGuard:
    """Filters our ip → names snapshot against the rules above; warns once per name held
    back for a reason. Thread-safe: only its warned set is shared, under its own lock."""

    def __init__(self, *, allow_shadowing: bool = False) -> None:
        self.allow_shadowing = allow_shadowing
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    def filter(
        self, entries: Mapping[str, Sequence[str]], foreign: bytes
    ) -> dict[str, list[str]]:
        """``entries`` without the names we may not write next to ``foreign``."""
        defined = foreign_names(foreign) if not self.allow_shadowing else set()
        out: dict[str, list[str]] = {}
        held: list[tuple[str, str]] = []
        for ip, names in entries.items():
            kept: list[str] = []
            for name in names:
                if is_local_name(name):
                    held.append((name, "local"))
                elif name.lower() in defined:
                    held.append((name, "foreign"))
                else:
                    kept.append(name)
            if kept:
                out[ip] = kept
        self._warn(held)
        return out

    def _warn(self, held: list[tuple[str, str]]) -> None:
        with self._lock:
            new = [h for h in held if h not in self._warned]
            self._warned.update(new)
        for name, why in new:
            if why == "local":
                log.warning("not writing %s to the hosts file: it names this machine", name)
            else:
                log.warning(
                    "not writing %s to the hosts file: a line kubefwd does not own already "
                    "defines it (--allow-shadowing writes it anyway)", name,
                )
