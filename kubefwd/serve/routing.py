"""Which pod's tunnel takes each new connection, and which tunnels stay open.

The hot path (``Router.route``, called by a forwarder for every accepted connection), the
per-pod back-off that keeps connections off a pod whose tunnel just failed (forgotten when
the API server answers again after an outage), closing tunnels
that no forward uses any more, and with -a re-opening the ones forwards do use. Kept apart
from the app: it is the only code that asks the tunnel pool for tunnels, and it needs nothing
of start-up or shutdown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from kubefwd.cluster.target import ApiTarget
from kubefwd.errors import KubefwdError
from kubefwd.events.report import Reporter
from kubefwd.events.types import ConnectionRouted
from kubefwd.registry.model import ForwardKey, ForwardUpsert
from kubefwd.serve.forwarder import Forwarder, PodBackoff
from kubefwd.tunnel import PodTunnel, TunnelPool

# How a new connection picks among a forward's ready pods: ``spread`` sends it to the pod
# with the fewest open connections (ties in turn), ``first`` to the oldest ready pod.
POD_POLICIES = ("spread", "first")

# Tunnels of pods that no forward uses any more are closed after this long.
UNUSED_TUNNEL_GRACE = 30.0

PodKey = tuple[str, str, str]  # (context, namespace, pod)


class RoutedForward(Protocol):
    """What routing reads of a live forward."""

    @property
    def key(self) -> ForwardKey: ...

    @property
    def upsert(self) -> ForwardUpsert: ...  # as last announced, with the address in use

    @property
    def forwarder(self) -> Forwarder: ...


class Router:
    """Picks a tunnel per connection and keeps the tunnel pool tidy; ``pool`` is set once
    the pool exists, ``targets`` (context → API target) is read as the app fills it."""

    def __init__(self, report: Reporter, targets: Mapping[str, ApiTarget], *,
                 policy: str = "spread") -> None:
        if policy not in POD_POLICIES:
            raise ValueError(f"unknown pod policy {policy!r}")
        self.report = report
        self.policy = policy
        self._turn: dict[str, int] = {}  # forward → next tie-break turn (spread)
        self.pool: TunnelPool | None = None
        self._targets = targets
        self._backoff = PodBackoff()
        self._pod_last_used: dict[PodKey, float] = {}
        self._tunnel_bytes: dict[PodKey, int] = {}

    def route(
        self, state: RoutedForward | None, name: str, port: int
    ) -> tuple[PodTunnel, int] | None:
        """For a connection accepted on ``port`` of forward ``name``: a ready pod that is
        not backing off and has the port (the oldest with ``first``; with ``spread`` the one
        whose tunnel on this forward carries the fewest connections, ties taking turns);
        ``None`` holds the connection."""
        pool = self.pool
        if state is None or pool is None:
            return None
        key = state.key
        target = self._targets.get(key.context)
        if target is None:
            return None
        usable: list[tuple[str, int]] = []
        for pod in state.upsert.pods:
            target_port = pod.target_port(port)
            if target_port is None:
                self.report.warning_once(
                    f"noport/{name}/{pod.name}/{port}",
                    "%s: pod %s has no container port for service port %s; skipped",
                    name, pod.name, port,
                )
                continue
            if not self._backoff.usable((key.context, key.namespace, pod.name)):
                continue
            usable.append((pod.name, target_port))
            if self.policy == "first":
                break
        if len(usable) > 1:
            loop = state.forwarder.loop
            loads = [pool.load(key.context, key.namespace, pod, loop) for pod, _ in usable]
            least = min(loads)
            tied = [u for u, load in zip(usable, loads, strict=True) if load == least]
            turn = self._turn.get(name, 0)
            self._turn[name] = turn + 1
            usable = [tied[turn % len(tied)]]
        for pod_name, target_port in usable:
            pod_key = (key.context, key.namespace, pod_name)
            try:
                tunnel = pool.get(target, key.context, key.namespace, pod_name,
                                  loop=state.forwarder.loop)
            except KubefwdError:
                return None
            if tunnel.transport_name:
                self._backoff.succeeded(pod_key)  # it opened: the pod answers again
            self._pod_last_used[pod_key] = time.monotonic()
            self.report.bus.publish(ConnectionRouted(key=name, port=port, pod=pod_name))
            return tunnel, target_port
        return None

    def tunnel_died(self, context: str, namespace: str, pod: str) -> None:
        """The pod's tunnel failed: avoid the pod for its back-off."""
        delay = self._backoff.failed((context, namespace, pod))
        self.report.debug("tunnel to %s/%s failed; avoiding that pod for %.0fs",
                          namespace, pod, delay)

    def reconnect(self, state: RoutedForward) -> None:
        """Asked for by the user: drop the forward's tunnels (their connections end) and
        their back-off, so its next connection opens a fresh tunnel to its first ready pod."""
        key = state.key
        pool = self.pool
        for pod in state.upsert.pods:
            pod_key = (key.context, key.namespace, pod.name)
            self._backoff.forget(pod_key)
            if pool is not None:
                pool.drop(*pod_key)
        state.forwarder.poke()

    def api_reachable(self, context: str, states: Sequence[RoutedForward]) -> None:
        """The API server of ``context`` answers again (after an outage): its pods' tunnels
        failed only because it was down, so forget their back-off and let the forwards retry
        the connections they hold now rather than when the back-off would have run out."""
        for state in states:
            if state.key.context != context:
                continue
            for pod in state.upsert.pods:
                self._backoff.forget((context, state.key.namespace, pod.name))
            state.forwarder.poke()

    def close_unused(self, wanted: set[PodKey], now: float) -> None:
        """Close the tunnels of pods not in ``wanted`` that carried nothing for a while."""
        pool = self.pool
        if pool is None:
            return
        contexts: dict[int, str] = {}  # target → its (first) context: a look-up a tunnel
        for context, target in self._targets.items():
            contexts.setdefault(id(target), context)
        tunnel_bytes, last_used = self._tunnel_bytes, self._pod_last_used
        for tunnel in pool.tunnels():
            pod_key = (contexts.get(id(tunnel.target), ""), tunnel.namespace, tunnel.pod)
            # Traffic counts as use: a long-lived connection to a pod that went unready is
            # not cut just because new connections go elsewhere.
            moved = tunnel.bytes_in + tunnel.bytes_out
            if tunnel_bytes.get(pod_key) != moved:
                tunnel_bytes[pod_key] = moved
                last_used[pod_key] = now
            if pod_key not in wanted:
                last = self._pod_last_used.get(pod_key, 0.0)
                if now - last > UNUSED_TUNNEL_GRACE:
                    self._tunnel_bytes.pop(pod_key, None)
                    pool.drop(*pod_key)
                    self._pod_last_used.pop(pod_key, None)
                    self._backoff.forget(pod_key)

    def keep_open(
        self, states: Sequence[RoutedForward], stopping: threading.Event | None
    ) -> None:
        """-a: open the tunnel of each forward's first pod now, not on its next connection;
        returns early once ``stopping`` is set."""
        pool = self.pool
        assert pool is not None
        for state in states:
            key = state.key
            target = self._targets.get(key.context)
            for pod in state.upsert.pods[:1]:
                pod_key = (key.context, key.namespace, pod.name)
                if target is None or not self._backoff.usable(pod_key):
                    continue
                tunnel = pool.get(target, key.context, key.namespace, pod.name,
                                  loop=state.forwarder.loop)
                if tunnel.transport_name and tunnel.alive:
                    continue
                try:
                    tunnel.open(timeout=5.0)
                    self._backoff.succeeded(pod_key)
                except KubefwdError as exc:
                    delay = self._backoff.failed(pod_key)
                    self.report.warning("%s: %s; retrying in %.0fs", key, exc, delay)
                if stopping is not None and stopping.is_set():
                    return
