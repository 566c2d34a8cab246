"""The live forwards: one ``Forwarder`` per forward the registry announced, kept in step with it.

Creates, reconfigures and removes forwarders as registry commands arrive (on the dispatcher
thread), announces each once it is bound, tells which ports could not be bound, warns about
forwards left without a ready pod, and answers each accepted connection through the router.
Kept apart from the app, which only wires it up, starts it and stops it.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import ipaddress
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from kubefwd.cluster.target import ApiTarget
from kubefwd.events.metrics import MetricsRegistry
from kubefwd.events.report import Reporter
from kubefwd.events.types import PodChanged, TunnelFailed, TunnelOpened
from kubefwd.registry.ipalloc import IpAllocator
from kubefwd.registry.model import ForwardKey, ForwardUpsert, PodRef, PortMapping
from kubefwd.serve.coexist import Coexistence
from kubefwd.serve.dispatch import Reaper
from kubefwd.serve.forwarder import BindError, Forwarder, ListenPort
from kubefwd.serve.routing import Router
from kubefwd.system.loopback import LoopbackStrategy
from kubefwd.tunnel import PodTunnel

# Stopping every forwarder: each is given this long to end before the next is stopped, and
# once this many did not end in time, the rest are stopped at once.
_STOP_MOMENT = 0.05
_SLOW_STOPS = 8


@dataclass(frozen=True)
class RetryBinds:
    """A command queued with the registry's, now and then and whenever another instance's
    addresses change: bind again what found no address or could not listen."""


@dataclass
class LiveForward:
    """What the app knows of one live forward (a service, or one pod of a headless one)."""

    key: ForwardKey
    forwarder: Forwarder
    upsert: ForwardUpsert  # as last announced by the registry, with the address in use
    registry_ip: str = ""  # the address the registry gave it (differs once it moved)
    announced: bool = False
    no_pod_since: float | None = None
    warned_no_pod: bool = False


class ForwardSet:
    """The forwarders of one run, by forward name; thread-safe. ``loopback``, ``reaper`` and
    ``allocator`` are set once start-up has made them."""

    def __init__(
        self,
        *,
        report: Reporter,
        coexist: Coexistence,
        router: Router,
        targets: Mapping[str, ApiTarget],
        ready: threading.Event,
        hold_timeout: float,
        metrics: MetricsRegistry | None = None,
        detect_http: bool = False,
    ) -> None:
        self.detect_http = detect_http
        self.report = report
        self.metrics = metrics if metrics is not None else MetricsRegistry()
        self.loopback: LoopbackStrategy | None = None
        self.reaper: Reaper | None = None
        self.allocator: IpAllocator | None = None
        # Ports below 1024 that could not be bound during start-up → the forwards wanting them.
        self.privileged_ports: dict[int, list[str]] = {}
        self._coexist = coexist
        self._router = router
        self._targets = targets
        self._ready = ready
        self._hold_timeout = hold_timeout
        self._lock = threading.Lock()
        self._forwards: dict[str, LiveForward] = {}
        self._no_pod: dict[str, LiveForward] = {}  # the live forwards with no ready pod
        self._closed = False

    # -- registry commands (on the dispatcher thread, in order) ------------------------------

    def upsert(self, upsert: ForwardUpsert) -> None:
        name = str(upsert.key)
        registry_ip = upsert.ip
        with self._lock:
            if self._closed:
                return
            state = self._forwards.get(name)
        moved_to = self._coexist.moved_to(registry_ip)
        if moved_to is not None:
            upsert = dataclasses.replace(upsert, ip=moved_to)
        if state is None:
            if self.loopback is not None:
                self.loopback.ensure(upsert.ip)
            forwarder = Forwarder(
                name, upsert.ip, self._listen_ports(upsert), self.route,
                hold_timeout=self._hold_timeout, thread_name=f"forward/{name}",
                bus=self.report.bus, meters=functools.partial(self.metrics.counters, name),
                detect_http=self.detect_http,
            )
            errors = forwarder.bind()
            if errors and self.reaper is not None and self.reaper.settle(upsert.ip):
                errors = forwarder.bind()  # a removed forward on this IP had not closed yet
            state = LiveForward(upsert.key, forwarder, upsert, registry_ip=registry_ip)
            errors = self._move_if_in_use(state, errors)
            self._note_listening(state)
            with self._lock:
                self._forwards[name] = state
            forwarder.start()
            self._bind_errors(name, errors)
        else:
            old = state.upsert
            state.upsert = upsert
            state.registry_ip = registry_ip
            if old.ip != upsert.ip or old.ports != upsert.ports:
                if self.loopback is not None and old.ip != upsert.ip:
                    self.loopback.ensure(upsert.ip)
                errors = state.forwarder.reconfigure(upsert.ip, self._listen_ports(upsert))
                self._bind_errors(name, errors)
                if self._note_listening(state):
                    self._coexist.publish()
            state.forwarder.poke()
            if old.pods[:1] != upsert.pods[:1]:
                pod = upsert.pods[0].name if upsert.pods else None
                self.report.bus.publish(PodChanged(
                    key=name, pod=pod, previous=old.pods[0].name if old.pods else None))
                if pod and self._ready.is_set():
                    self.report.debug("%s now goes to pod %s", name, pod)
        if upsert.pods:
            state.no_pod_since = None
            with self._lock:
                self._no_pod.pop(name, None)
            if state.warned_no_pod:
                state.warned_no_pod = False
                self.report.info("%s: pod %s is ready", name, upsert.pods[0].name)
        elif state.no_pod_since is None:
            state.no_pod_since = time.monotonic()
            with self._lock:
                if self._forwards.get(name) is state:
                    self._no_pod[name] = state
        if self._ready.is_set() and not state.announced:
            self._announce(state)

    def remove(self, key: ForwardKey) -> None:
        name = str(key)
        with self._lock:
            state = self._forwards.pop(name, None)
            self._no_pod.pop(name, None)
        if state is None:
            return
        self._coexist.forget(state.registry_ip)
        self.metrics.forget(name)
        if self.reaper is None:
            state.forwarder.stop_and_join()
            self.report.removed(name, state.upsert.ip)
        else:
            self.reaper.reap(name, state.upsert.ip, state.forwarder)

    def _move_if_in_use(self, state: LiveForward, errors: list[BindError], *,
                        quiet: bool = False) -> list[BindError]:
        """Move the forward on when its address is in use (``Coexistence.move_if_in_use``)."""

        def rebind(new_ip: str) -> list[BindError]:
            if self.loopback is not None:
                self.loopback.ensure(new_ip)
            state.upsert = dataclasses.replace(state.upsert, ip=new_ip)
            return state.forwarder.reconfigure(new_ip, self._listen_ports(state.upsert))

        return self._coexist.move_if_in_use(
            state.key, state.registry_ip, state.upsert.ip, errors,
            allocator=self.allocator, rebind=rebind, quiet=quiet,
        )

    def _note_listening(self, state: LiveForward) -> bool:
        """Tell the hosts side whether the forward listens on any port (a forward without
        ports counts as listening: it has nothing to bind); True when that changed."""
        listening = not state.upsert.ports or bool(state.forwarder.bound_ports())
        return self._coexist.set_listening(state.registry_ip, listening)

    def retry_unbound(self) -> int:
        """Bind again every forward that listens on no port (its address was in use and no
        other was free, say): addresses may have freed up since. Those that listen now get
        their names written and are announced; returns how many. On the dispatcher thread."""
        with self._lock:
            if self._closed:
                return 0
            states = [s for s in self._forwards.values()
                      if s.upsert.ports and not s.forwarder.listens()]
        fixed = 0
        for state in states:
            errors = state.forwarder.reconfigure(state.upsert.ip, self._listen_ports(state.upsert))
            errors = self._move_if_in_use(state, errors, quiet=True)
            if not state.forwarder.bound_ports():
                continue
            fixed += 1
            self._note_listening(state)
            if self._ready.is_set():
                self._announce(state)
        if fixed:
            self._coexist.publish()
        return fixed

    def listening(self) -> list[LiveForward]:
        """The live forwards that listen on at least one port."""
        return [s for s in self.states() if s.forwarder.bound_ports()]

    @staticmethod
    def _listen_ports(upsert: ForwardUpsert) -> list[ListenPort]:
        return [ListenPort(p.port, p.local_port, p.name) for p in upsert.ports]

    def _bind_errors(self, name: str, errors: list[BindError]) -> None:
        for error in errors:
            cause = error.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EACCES and \
                    not self._ready.is_set():
                self.privileged_ports.setdefault(error.port, []).append(name)
            else:
                self.report.warning("%s: %s", name, error)

    # -- announcing --------------------------------------------------------------------------

    def _announce(self, state: LiveForward) -> None:
        state.announced = True
        u = state.upsert
        bound = set(state.forwarder.bound_ports())
        listening = [p for p in u.ports if p.local_port in bound]
        ports = [str(p.local_port) for p in listening]
        key = u.key
        if not ports:
            self.report.not_forwarded(str(key), "not forwarded: none of its ports could be bound")
            return
        pod = u.pods[0].name if u.pods else None
        pod_ports = [_pod_port(p, u.pods[0] if u.pods else None) for p in listening]
        path = f"{key.namespace}/{pod}" if pod else None
        if len(self._targets) > 1 and path:
            path = f"{key.context}/{path}"
        names = self._coexist.shown_names(u.names) or [str(key)]
        self.report.forwarded(str(key), context=key.context, namespace=key.namespace,
                              service=key.service, names=names, ip=u.ip, ports=ports, pod=pod,
                              pod_path=path, pod_ports=pod_ports)

    def announce_all(self) -> None:
        """Announce every forward not announced yet, in address order (at start-up)."""
        with self._lock:
            states = sorted(self._forwards.values(),
                            key=lambda s: (ipaddress.IPv4Address(s.upsert.ip), tuple(s.key)))
        for state in states:
            if not state.announced:
                self._announce(state)

    # -- connections -------------------------------------------------------------------------

    def route(self, name: str, port: int) -> tuple[PodTunnel, int] | None:
        """Called by a forwarder for each accepted connection (``Router.route``)."""
        return self._router.route(self._forwards.get(name), name, port)

    def tunnel_opened(self, context: str, namespace: str, pod: str, transport: str) -> None:
        """A tunnel to ``pod`` opened: the forwards whose pod it is are active (loop thread)."""
        with self._lock:
            states = list(self._forwards.values())
        for state in states:
            if state.key.context == context and state.key.namespace == namespace and \
                    state.upsert.pods[:1] and state.upsert.pods[0].name == pod:
                self.report.bus.publish(TunnelOpened(key=str(state.key), pod=pod,
                                                     transport=transport))

    def tunnel_died(self, context: str, namespace: str, pod: str) -> None:
        """A tunnel to ``pod`` failed: back off from it and let its forwards route again."""
        self._router.tunnel_died(context, namespace, pod)
        with self._lock:
            states = list(self._forwards.values())
        for state in states:
            if any(p.name == pod for p in state.upsert.pods) and state.key.context == context:
                self.report.bus.publish(TunnelFailed(
                    key=str(state.key), pod=pod, message=f"the tunnel to {namespace}/{pod} failed"))
                state.forwarder.poke()

    # -- reading -----------------------------------------------------------------------------

    def states(self) -> list[LiveForward]:
        with self._lock:
            return list(self._forwards.values())

    def describe(self) -> dict[str, tuple[str, list[str], list[int]]]:
        """name → (ip, host names, local ports) of every live forward."""
        with self._lock:
            return {
                name: (s.upsert.ip, list(s.upsert.names), [p.local_port for p in s.upsert.ports])
                for name, s in self._forwards.items()
            }

    def without_pod(self) -> list[LiveForward]:
        """The live forwards that have no ready pod now (for ``warn_no_pod``: the others
        need no look)."""
        with self._lock:
            return list(self._no_pod.values())

    def warn_no_pod(self, states: list[LiveForward], now: float, timeout: float) -> None:
        """Warn, once each, about forwards that have had no ready pod for ``timeout``."""
        for state in states:
            since = state.no_pod_since
            if since is not None and not state.warned_no_pod and now - since >= timeout:
                state.warned_no_pod = True
                self.report.warning(
                    "%s: no ready pod after %gs; connections wait up to -t/--timeout for one",
                    state.key, timeout,
                )

    # -- stopping ----------------------------------------------------------------------------

    def close(self) -> None:
        """No new forwards from now on (shutdown has begun)."""
        with self._lock:
            self._closed = True

    def stop_all(self) -> None:
        """Stop every forwarder and join them all: one after another, each given a moment to
        end before the next is stopped. Woken all at once, thousands of forwarder threads
        fought over the interpreter lock at every socket they closed: at 2000 forwards that
        cost ~1.0-1.3 s of CPU, against ~0.6 s one at a time. One that does not end within
        the moment (its tunnel waits for a dial to give up) is left to end meanwhile and
        joined at the end; once a few are, the rest are stopped at once, as before, so no
        waits add up."""
        with self._lock:
            states = list(self._forwards.values())
            self._forwards.clear()
            self._no_pod.clear()
        slow: list[Forwarder] = []
        for state in states:
            forwarder = state.forwarder
            if len(slow) >= _SLOW_STOPS or not forwarder.stop_and_join(_STOP_MOMENT):
                forwarder.stop()
                slow.append(forwarder)
        for forwarder in slow:
            forwarder.stop_and_join()


def _pod_port(port: PortMapping, pod: PodRef | None) -> str:
    """The pod's port behind ``port``: as resolved for ``pod``, else the service's numeric
    targetPort; "" when neither says (a named targetPort without a pod yet)."""
    if pod is not None and port.port in pod.ports:
        return str(pod.ports[port.port])
    if isinstance(port.target_port, int) and port.target_port:
        return str(port.target_port)
    return ""
