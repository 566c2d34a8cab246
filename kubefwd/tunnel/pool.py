"""``TunnelPool``: the tunnels of a run, one per (context, namespace, pod, loop).

Each forwarder's loop drives its own tunnels, so two forwards to one pod (two ports of a
headless service, say) each have theirs: a tunnel is never shared between threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from kubefwd.cluster.target import ApiTarget
from kubefwd.errors import TunnelError
from kubefwd.support.transports import TRANSPORTS
from kubefwd.tunnel.loop import Loop
from kubefwd.tunnel.pod import IDLE_TIMEOUT, PING_INTERVAL, PodTunnel

_Key = tuple[str, str, str, int]


class TunnelPool:
    """The live tunnel to each pod, per loop; a dead one is replaced on the next ``get``.

    One that is retiring (still carrying connections) is kept until they end. The transport
    that worked for a context is tried first by later tunnels of that context (no refused
    upgrade per pod).
    """

    def __init__(self, *, transport: str = "auto", ping_interval: float = PING_INTERVAL,
                 idle_timeout: float = IDLE_TIMEOUT,
                 on_dead: Callable[[str, str, str], None] | None = None,
                 on_open: Callable[[str, str, str, str], None] | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        self.transport = transport
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.on_dead = on_dead
        # Told (context, namespace, pod, transport) each time a tunnel opens (loop thread).
        self.on_open = on_open
        self._lock = threading.Lock()
        self._tunnels: dict[_Key, PodTunnel] = {}
        self._retired: list[tuple[_Key, PodTunnel]] = []
        self._learned: dict[str, str] = {}
        self._closed = False

    def get(self, target: ApiTarget, context: str, namespace: str, pod: str, *,
            loop: Loop | None = None) -> PodTunnel:
        """The live tunnel to this pod on ``loop`` (created, not yet opened, when there is
        none). Without a loop the tunnel runs one of its own."""
        key = (context, namespace, pod, id(loop) if loop is not None else 0)
        finished: list[PodTunnel] = []
        with self._lock:
            if self._closed:
                raise TunnelError("tunnel pool is closed")
            tunnel = self._tunnels.get(key)
            if tunnel is not None and tunnel.alive and tunnel.target == target \
                    and tunnel.loop is (loop or tunnel.loop):
                return tunnel
            if tunnel is not None:
                if tunnel.alive:  # the API target changed (new endpoint or credentials)
                    tunnel.retire("replaced", report=False)
                if tunnel.retiring:
                    self._retired.append((key, tunnel))
                else:
                    finished.append(tunnel)
            finished += self._prune()
            tunnel = PodTunnel(target, namespace, pod, transport=self.transport,
                               ping_interval=self.ping_interval,
                               idle_timeout=self.idle_timeout,
                               prefer=self._learned.get(context, ""),
                               on_dead=functools.partial(self._tunnel_died, key[:3]),
                               loop=loop)
            tunnel.on_open = functools.partial(self._learn, context)
            self._tunnels[key] = tunnel
        for old in finished:
            old.close()
        return tunnel

    def load(self, context: str, namespace: str, pod: str, loop: Loop | None) -> int:
        """How many connections the live tunnel to this pod on ``loop`` carries or holds
        while it opens (0 when there is none); read on ``loop``'s thread for an exact
        count."""
        tunnel = self._tunnels.get((context, namespace, pod, id(loop) if loop else 0))
        if tunnel is None or not tunnel.alive:
            return 0
        return tunnel.load

    def _prune(self) -> list[PodTunnel]:
        """Retired tunnels whose last connection ended, and tunnels whose loop ended
        (called with the lock held)."""
        done = [t for _k, t in self._retired if not t.retiring]
        self._retired = [(k, t) for k, t in self._retired if t.retiring]
        closed = [key for key, tunnel in self._tunnels.items() if tunnel.state == "closed"]
        for key in closed:
            del self._tunnels[key]
        return done

    def _tunnel_died(self, key: tuple[str, str, str], _tunnel: PodTunnel) -> None:
        if self.on_dead is not None:
            self.on_dead(*key)

    def _learn(self, context: str, tunnel: PodTunnel) -> None:
        self._learned[context] = tunnel.transport_name
        if self.on_open is not None:
            self.on_open(context, tunnel.namespace, tunnel.pod, tunnel.transport_name)

    def drop(self, context: str, namespace: str, pod: str) -> None:
        """The pod is gone: close its tunnels (on every loop) and every connection on them."""
        pod_key = (context, namespace, pod)
        with self._lock:
            tunnels = [t for k, t in self._retired if k[:3] == pod_key]
            self._retired = [(k, t) for k, t in self._retired if k[:3] != pod_key]
            for key in [k for k in self._tunnels if k[:3] == pod_key]:
                tunnels.append(self._tunnels.pop(key))
        for tunnel in tunnels:
            tunnel.close()

    def tunnels(self) -> list[PodTunnel]:
        """The current tunnels (retired ones that finished are released on the way)."""
        with self._lock:
            finished = self._prune()
            current = list(self._tunnels.values())
        for tunnel in finished:
            tunnel.close()
        return current

    def close(self) -> None:
        with self._lock:
            self._closed = True
            tunnels = list(self._tunnels.values()) + [t for _k, t in self._retired]
            self._tunnels.clear()
            self._retired.clear()
        for tunnel in tunnels:
            tunnel.close()
