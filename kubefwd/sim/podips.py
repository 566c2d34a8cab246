"""Pod IPs for the simulated cluster: one loopback address per pod, from a range.

Owns the choice of address only; the kubelet asks for one when a pod is scheduled and gives
it back when the pod is deleted. Apart from the kubelet because it must reason about other
simulated clusters on the same machine, which nothing else in the pod runtime cares about.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Iterable


class IpPool:
    """Pod IPs from a range, handed out round-robin so a freed IP is not reused at once.

    Several simulated clusters may run on one machine (parallel tests, a demo next to a test
    run), each with its own pool over the same range: every pool starts at a random place and
    skips addresses where one of the pod's ports is already taken.
    """

    def __init__(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr)
        # Skip the .0 and .255 of every /24 to keep the addresses plain.
        self._addresses = [str(a) for a in net if a.packed[-1] not in (0, 255)]
        self._used: set[str] = set()
        self._next = random.randrange(len(self._addresses)) if self._addresses else 0

    def allocate(self, ports: Iterable[int] = ()) -> str:
        ports = list(ports)
        for _ in range(len(self._addresses)):
            ip = self._addresses[self._next]
            self._next = (self._next + 1) % len(self._addresses)
            if ip not in self._used and bindable(ip, ports):
                self._used.add(ip)
                return ip
        raise RuntimeError("the pod IP range is exhausted")

    def release(self, ip: str) -> None:
        self._used.discard(ip)

    @property
    def in_use(self) -> int:
        return len(self._used)


def bindable(ip: str, ports: list[int]) -> bool:
    """Whether nothing else on this machine listens on ``ip`` at any of ``ports``."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return False
    return True
