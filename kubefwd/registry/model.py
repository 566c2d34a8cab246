"""Forwards as the registry announces them: keys, ports, ready pods, and the commands.

The registry's vocabulary, shared with its listeners (the app, the forwarders, the hosts
writer): a ``ForwardKey`` names a forward; ``ForwardUpsert``, ``ForwardRemove`` and
``HostsSnapshot`` are the commands it emits. Plain frozen values, apart from the registry so a
listener can be read (and tested) without the registry's state and locking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple


class ForwardKey(NamedTuple):
    """One forward: a service, or (headless services) one of its pods."""

    context: str
    namespace: str
    service: str
    pod: str = ""

    @property
    def name(self) -> str:
        return f"{self.pod}.{self.service}" if self.pod else self.service

    def __str__(self) -> str:
        return f"{self.context}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PortMapping:
    """A TCP port of a forward: listen on ``local_port``; the service port is ``port``;
    ``target_port`` is the service's targetPort (a number or a container port name)."""

    local_port: int
    target_port: int | str
    protocol: str = "TCP"
    port: int = 0
    name: str = ""


@dataclass(frozen=True)
class PodRef:
    """A ready pod behind a forward; ``ports`` maps service port → the pod's port (named
    target ports resolved against this pod's containers; absent when it has no such port)."""

    name: str
    ip: str
    ports: dict[int, int] = field(default_factory=dict, hash=False)
    uid: str = ""

    def target_port(self, port: int) -> int | None:
        return self.ports.get(port)


@dataclass(frozen=True)
class ForwardUpsert:
    """Create or update a forward. ``pods`` are the ready candidates, best first."""

    key: ForwardKey
    ip: str
    names: list[str]
    ports: list[PortMapping]
    pods: list[PodRef]
    headless: bool = False


@dataclass(frozen=True)
class ForwardRemove:
    key: ForwardKey


@dataclass(frozen=True)
class HostsSnapshot:
    """Every hosts entry we want, ip → names (the full set, not a difference)."""

    entries: dict[str, list[str]]


Command = ForwardUpsert | ForwardRemove | HostsSnapshot
Listener = Callable[[list[Command]], None]


@dataclass
class RegistrySnapshot:
    forwards: list[ForwardUpsert]
    skipped: dict[str, str]  # "ctx/ns/name" → why it is not forwarded
    hosts: dict[str, list[str]]
