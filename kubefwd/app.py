"""The orchestrator: contexts → informers → registry → forwarders, plus the hosts writer.

``Kubefwd`` wires the pieces together and owns their start and shutdown order; ``run()`` is
``kubefwd svc`` (its signals are ``signals.StopSignals``); tests and the benchmark can also
drive it in-process (``start()``, ``wait_ready()``, ``shutdown()``).

Shutdown order (each step in its own ``try`` so one failure does not skip the rest): stop the
informers (no new commands), stop the forwarders (listeners close), close the tunnels, stop the
hosts writer (it removes our lines), undo loopback aliases.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubefwd.coexist import Coexistence
from kubefwd.dispatch import Dispatcher, Reaper
from kubefwd.errors import (
    ApiError,
    ExitCode,
    HostsFileError,
    KubefwdError,
)
from kubefwd.forwarder import BindError, Forwarder, ListenPort
from kubefwd.hosts import HostsWriter, backup_target
from kubefwd.informer import Backoff, Informer
from kubefwd.ipalloc import DEFAULT_BASE, IpAllocator
from kubefwd.kube import ClusterContext, KubeClient, load_contexts, watch_callables
from kubefwd.loopback import LoopbackStrategy, loopback_strategy
from kubefwd.output import Output
from kubefwd.registry import (
    ForwardKey,
    ForwardRemove,
    ForwardUpsert,
    HostsSnapshot,
    Registry,
)
from kubefwd.routing import Router
from kubefwd.signals import StartupInterrupted, StopSignals, child_pids, end_children
from kubefwd.startup import (
    START_LOCK_WAIT,
    StartLock,
    check_privileges,
    checked_namespaces,
    report_privileged_ports,
    wait_synced,
    warn_unverified_namespaces,
)
from kubefwd.threads import StoppableThread
from kubefwd.tunnel import ApiTarget, PodTunnel, TunnelPool

log = logging.getLogger("kubefwd.app")

@dataclass
class SvcOptions:
    """Everything ``kubefwd svc`` was asked to do, validated."""

    kubeconfig: str | None = None
    contexts: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    label_selector: str = ""
    field_selector: str = ""
    domain: str = ""
    mappings: dict[int, int] = field(default_factory=dict)
    reservations: dict[str, str] = field(default_factory=dict)
    base_ip: str | None = None
    timeout: float = 300.0
    hosts_path: Path = Path("/etc/hosts")
    refresh_backup: bool = False
    purge_stale: bool = False
    resync_interval: float = 300.0
    retry_interval: float = 10.0
    auto_reconnect: bool = False
    verbose: bool = False
    transport: str = "auto"
    # Not flags: where ~/hosts.original goes (None: the invoking user's home).
    backup_dir: Path | None = None
    make_backup: bool = True


@dataclass
class _Forward:
    """What the app knows of one live forward (a service, or one pod of a headless one)."""

    key: ForwardKey
    forwarder: Forwarder
    upsert: ForwardUpsert  # as last announced by the registry, with the address in use
    registry_ip: str = ""  # the address the registry gave it (differs once it moved)
    announced: bool = False
    no_pod_since: float | None = None
    warned_no_pod: bool = False


class Kubefwd:
    """One run of ``kubefwd svc``: ``run()`` for the CLI, or ``start()``/``shutdown()``."""

    def __init__(self, options: SvcOptions, *, output: Output | None = None) -> None:
        self.options = options
        self.output = output or Output(verbose=options.verbose)
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self.started_at = 0.0
        self._stop_signals = StopSignals(options.hosts_path, self.stop_requested)
        self._lock = threading.Lock()
        self._forwards: dict[str, _Forward] = {}
        self._informers: list[Informer] = []
        self._clients: list[KubeClient] = []
        self._targets: dict[str, ApiTarget] = {}
        self._informer_stop = threading.Event()
        self._registry: Registry | None = None
        self._pool: TunnelPool | None = None
        self._hosts: HostsWriter | None = None
        self._loopback: LoopbackStrategy | None = None
        self._housekeeper: _Housekeeper | None = None
        self._dispatcher: Dispatcher | None = None
        self._allocator: IpAllocator | None = None
        self._coexist = Coexistence(options.hosts_path, self.output)
        self._start_lock = StartLock(options.hosts_path)
        self._reaper: Reaper | None = None
        self._router = Router(self.output, self._targets)
        self._shut_down = False
        self._privileged_ports: dict[int, list[str]] = {}
        # Set by shutdown() when our lines could not be removed from the hosts file.
        self.hosts_cleanup_failed = False
        self._unverified: list[tuple[str, str]] = []  # (context, namespace) we could not get

    # -- whole-process entry ---------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until SIGINT/SIGTERM, shut down; returns the exit code."""
        self.output.install()
        self._stop_signals.install()
        children_before = child_pids()
        try:
            try:
                self._stop_signals.starting = True
                self.start()
            except StartupInterrupted:
                self._stop_signals.starting = False
                self.output.info("interrupted before ready: stopping")
                _step("stop helper processes", lambda: end_children(children_before))
                self.shutdown()
                return int(ExitCode.HOSTS if self.hosts_cleanup_failed else
                           ExitCode.INTERRUPTED)
            except BaseException:
                self._stop_signals.starting = False
                self.shutdown()
                raise
            if self.stop_requested.is_set() and not self.ready.is_set():
                self.shutdown()
                return int(ExitCode.INTERRUPTED)
            self.stop_requested.wait()
            self.output.info("stopping: closing forwards and removing hosts entries")
            self.shutdown()
            return int(ExitCode.HOSTS if self.hosts_cleanup_failed else ExitCode.OK)
        finally:
            self._stop_signals.finish()
            self.output.uninstall()

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Check, connect, list everything, bind every listener, write the hosts file.

        Returns once all of that is done (``ready`` is set) or a stop was requested; raises a
        ``KubefwdError`` for anything the user must fix (call ``shutdown()`` afterwards).
        """
        o = self.options
        self.started_at = time.monotonic()
        check_privileges(o.hosts_path)
        contexts = load_contexts(o.kubeconfig, o.contexts)
        namespaces = self._namespaces(contexts)
        if self.stop_requested.is_set():
            return
        # Instances starting at the same time take turns until their names are written, so
        # each one sees the addresses and names of those before it.
        if not self._start_lock.acquire(START_LOCK_WAIT):
            self.output.warning("another kubefwd has been starting on %s for %.0fs; going ahead",
                                o.hosts_path, START_LOCK_WAIT)
        self._coexist.others.refresh(force=True)
        allocator = IpAllocator(reservations=o.reservations, base=o.base_ip or DEFAULT_BASE,
                                taken=self._coexist.others.ip_taken)
        self._allocator = allocator
        self._registry = Registry(
            allocator=allocator,
            contexts=[c.name for c in contexts],
            namespaces={c.name: namespaces[c.name] for c in contexts},
            domain=o.domain,
            mappings=o.mappings,
        )
        # Commands are applied on one thread of their own: informer threads only queue them,
        # so a slow bind or alias never holds up the watches; stopped forwarders are joined
        # on another, so a slow removal does not hold up the commands behind it.
        self._reaper = Reaper(self.output)
        self._reaper.start()
        self._dispatcher = Dispatcher(self._on_commands)
        self._dispatcher.start()
        self._registry.subscribe(self._dispatcher.put)
        # -a keeps every forwarded pod's tunnel open; otherwise an idle one closes its session
        # (buffers, API connection) and re-opens on the next connection.
        pool_options: dict[str, Any] = {"idle_timeout": 0.0} if o.auto_reconnect else {}
        self._pool = TunnelPool(transport=o.transport, on_dead=self._tunnel_died,
                                **pool_options)
        self._router.pool = self._pool
        self._loopback = loopback_strategy()
        self._hosts = HostsWriter(
            o.hosts_path,
            backup_dir=self._backup_dir(),
            refresh_backup=o.refresh_backup,
            purge_stale=o.purge_stale,
        )
        self._coexist.hosts = self._hosts
        self._hosts.start()
        # Pods first, then services: every service then meets its pods in its first batch, so
        # IPs come out in the same order on every run (headless pods next to their service).
        for resources in (("pods", "endpointslices"), ("services",)):
            for ctx in contexts:
                scope = namespaces[ctx.name] if not o.all_namespaces else [""]
                self._start_informers(ctx, scope, resources)
            self._wait_synced()
        if self.stop_requested.is_set():
            return
        if not self._dispatcher.wait_idle(30.0):
            log.warning("start-up: forwards still being set up after 30s")
        self._warn_unverified_namespaces()
        if not self._hosts.flush(timeout=30.0):
            error = self._hosts.last_error
            raise error or HostsFileError(f"could not write the hosts file {o.hosts_path}")
        self._start_lock.release()
        self._announce_all()
        report_privileged_ports(self.output, self._privileged_ports)
        self._housekeeper = _Housekeeper(self)
        self._housekeeper.start()
        with self._lock:
            count = len({f.key[:3] for f in self._forwards.values()})
            addresses = len(self._forwards)
        self._stop_signals.starting = False
        self.output.ready(count, addresses, time.monotonic() - self.started_at,
                          self._hosts.writes)
        self.ready.set()

    def _backup_dir(self) -> Path | None:
        """Where hosts.original goes: as asked, else only for the system hosts file, into the
        invoking user's home (``backup_target``); None: no backup."""
        o = self.options
        if not o.make_backup:
            return None
        if o.backup_dir is not None:
            return o.backup_dir
        target = backup_target(o.hosts_path)
        return target.parent if target is not None else None

    def _namespaces(self, contexts: Sequence[ClusterContext]) -> dict[str, list[str]]:
        """The namespaces of each context, checked to exist (``-A``: all of them, listed)."""
        o = self.options
        result: dict[str, list[str]] = {}
        for ctx in contexts:
            client = KubeClient(ctx)
            self._clients.append(client)
            self._targets[ctx.name] = ctx.target
            if o.all_namespaces:
                result[ctx.name] = client.list_namespaces()
                continue
            chosen, unverified = checked_namespaces(client, ctx, o.namespaces)
            self._unverified.extend((ctx.name, ns) for ns in unverified)
            result[ctx.name] = chosen
        return result

    def _warn_unverified_namespaces(self) -> None:
        if not self._unverified or self._registry is None:
            return
        warn_unverified_namespaces(self.output, self._unverified, self._registry.snapshot(),
                                   multi_context=len(self._targets) > 1)

    def _start_informers(
        self, ctx: ClusterContext, namespaces: Sequence[str], resources: Sequence[str]
    ) -> None:
        o = self.options
        assert self._registry is not None
        client = next(c for c in self._clients if c.context is ctx)
        watch_timeout = int(max(1, min(300.0, o.resync_interval)))
        for ns in namespaces:
            for resource in resources:
                selectors = resource == "services"
                list_fn, watch_fn = watch_callables(
                    client, resource, ns,
                    label_selector=o.label_selector if selectors else "",
                    field_selector=o.field_selector if selectors else "",
                    timeout_seconds=watch_timeout,
                    stop=self._informer_stop,
                )
                informer = Informer(
                    context=ctx.name,
                    namespace=ns,
                    resource=resource,
                    list_fn=list_fn,
                    watch_fn=_resyncing(watch_fn, o.resync_interval),
                    callback=self._registry.callback(ctx.name, ns, resource),
                    interrupt=functools.partial(self._interrupt_watches, client),
                    backoff=Backoff(initial=min(1.0, o.retry_interval), cap=o.retry_interval),
                    on_error=self._informer_error,
                )
                self._informers.append(informer)
                informer.start()

    def _interrupt_watches(self, client: KubeClient, _stop: threading.Event) -> None:
        client.interrupt(self._informer_stop)

    def _informer_error(self, informer: Informer, exc: Exception, delay: float) -> None:
        if self.ready.is_set():
            self.output.warning("%s: %s; retrying in %.0fs", informer.name, exc, delay)
        else:
            self.output.debug("%s: %s; retrying in %.0fs", informer.name, exc, delay)

    def _wait_synced(self) -> None:
        wait_synced(self._informers, self.stop_requested, self.output,
                    retry_interval=self.options.retry_interval)

    # -- registry commands (on the dispatcher thread, in order) ------------------------------

    def _on_commands(self, commands: list[Any]) -> None:
        for command in commands:
            try:
                if isinstance(command, ForwardUpsert):
                    self._upsert(command)
                elif isinstance(command, ForwardRemove):
                    self._remove(command.key)
                elif isinstance(command, HostsSnapshot):
                    self._coexist.set_snapshot(command.entries)
                    self._coexist.publish()
            except KubefwdError as exc:
                self.output.warning("%s", exc)

    def _move_if_in_use(self, state: _Forward, errors: list[BindError]) -> list[BindError]:
        """Move the forward on when its address is in use (``Coexistence.move_if_in_use``)."""

        def rebind(new_ip: str) -> list[BindError]:
            if self._loopback is not None:
                self._loopback.ensure(new_ip)
            state.upsert = dataclasses.replace(state.upsert, ip=new_ip)
            return state.forwarder.reconfigure(new_ip, self._listen_ports(state.upsert))

        return self._coexist.move_if_in_use(
            state.key, state.registry_ip, state.upsert.ip, errors,
            allocator=self._allocator, rebind=rebind,
        )

    def _listen_ports(self, upsert: ForwardUpsert) -> list[ListenPort]:
        return [ListenPort(p.port, p.local_port, p.name) for p in upsert.ports]

    def _bind_errors(self, name: str, errors: list[BindError]) -> None:
        for error in errors:
            cause = error.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EACCES and \
                    not self.ready.is_set():
                self._privileged_ports.setdefault(error.port, []).append(name)
            else:
                self.output.warning("%s: %s", name, error)

    def _upsert(self, upsert: ForwardUpsert) -> None:
        name = str(upsert.key)
        registry_ip = upsert.ip
        with self._lock:
            if self._shut_down:
                return
            state = self._forwards.get(name)
        moved_to = self._coexist.moved_to(registry_ip)
        if moved_to is not None:
            upsert = dataclasses.replace(upsert, ip=moved_to)
        if state is None:
            if self._loopback is not None:
                self._loopback.ensure(upsert.ip)
            forwarder = Forwarder(
                name, upsert.ip, self._listen_ports(upsert), self._route,
                hold_timeout=self.options.timeout, thread_name=f"forward/{name}",
            )
            errors = forwarder.bind()
            if errors and self._reaper is not None and self._reaper.settle(upsert.ip):
                errors = forwarder.bind()  # a removed forward on this IP had not closed yet
            state = _Forward(upsert.key, forwarder, upsert, registry_ip=registry_ip)
            errors = self._move_if_in_use(state, errors)
            with self._lock:
                self._forwards[name] = state
            forwarder.start()
            self._bind_errors(name, errors)
        else:
            old = state.upsert
            state.upsert = upsert
            state.registry_ip = registry_ip
            if old.ip != upsert.ip or old.ports != upsert.ports:
                if self._loopback is not None and old.ip != upsert.ip:
                    self._loopback.ensure(upsert.ip)
                errors = state.forwarder.reconfigure(upsert.ip, self._listen_ports(upsert))
                self._bind_errors(name, errors)
            state.forwarder.poke()
            if old.pods[:1] != upsert.pods[:1] and upsert.pods and self.ready.is_set():
                self.output.debug("%s now goes to pod %s", name, upsert.pods[0].name)
        if upsert.pods:
            state.no_pod_since = None
            if state.warned_no_pod:
                state.warned_no_pod = False
                self.output.info("%s: pod %s is ready", name, upsert.pods[0].name)
        elif state.no_pod_since is None:
            state.no_pod_since = time.monotonic()
        if self.ready.is_set() and not state.announced:
            self._announce(state)

    def _announce(self, state: _Forward) -> None:
        state.announced = True
        u = state.upsert
        bound = set(state.forwarder.bound_ports())
        ports = [str(p.local_port) for p in u.ports if p.local_port in bound]
        key = u.key
        if not ports:
            self.output.warning("%s: not forwarded: none of its ports could be bound", key)
            return
        pod = f"{key.namespace}/{u.pods[0].name}" if u.pods else None
        if len(self._targets) > 1 and pod:
            pod = f"{key.context}/{pod}"
        names = self._coexist.shown_names(u.names) or [str(key)]
        self.output.forwarded(names, u.ip, ports, pod)

    def _announce_all(self) -> None:
        with self._lock:
            states = sorted(self._forwards.values(),
                            key=lambda s: (ipaddress.IPv4Address(s.upsert.ip), tuple(s.key)))
        for state in states:
            if not state.announced:
                self._announce(state)

    def _remove(self, key: ForwardKey) -> None:
        name = str(key)
        with self._lock:
            state = self._forwards.pop(name, None)
        if state is None:
            return
        self._coexist.forget(state.registry_ip)
        if self._reaper is None:
            state.forwarder.stop_and_join()
            self.output.removed(name, state.upsert.ip)
        else:
            self._reaper.reap(name, state.upsert.ip, state.forwarder)

    # -- the hot path: which tunnel takes a new connection -----------------------------------

    def _route(self, name: str, port: int) -> tuple[PodTunnel, int] | None:
        """Called by a forwarder for each accepted connection (``Router.route``)."""
        return self._router.route(self._forwards.get(name), name, port)

    def _tunnel_died(self, context: str, namespace: str, pod: str) -> None:
        self._router.tunnel_died(context, namespace, pod)
        with self._lock:
            states = list(self._forwards.values())
        for state in states:
            if any(p.name == pod for p in state.upsert.pods) and state.key.context == context:
                state.forwarder.poke()

    # -- housekeeping ------------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Once a second: -t warnings, tunnels of vanished pods, -a re-opening, names other
        instances let go of."""
        if self._coexist.others.refresh():
            self._coexist.publish()
        if self._registry is not None:
            self._registry.expire()  # StatefulSet pod forwards whose pod did not come back
        now = time.monotonic()
        with self._lock:
            states = list(self._forwards.values())
        wanted: set[tuple[str, str, str]] = set()
        for state in states:
            key = state.key
            for pod in state.upsert.pods:
                wanted.add((key.context, key.namespace, pod.name))
            since = state.no_pod_since
            if since is not None and not state.warned_no_pod \
                    and now - since >= self.options.timeout:
                state.warned_no_pod = True
                self.output.warning(
                    "%s: no ready pod after %gs; connections wait up to -t/--timeout for one",
                    key, self.options.timeout,
                )
        if self._pool is None:
            return
        self._router.close_unused(wanted, now)
        if self.options.auto_reconnect:
            housekeeper = self._housekeeper
            self._router.keep_open(states, housekeeper.stopping if housekeeper else None)

    def stats(self) -> dict[str, Any]:
        """Counters for tests and the benchmark."""
        with self._lock:
            forwards = list(self._forwards.values())
        return {
            "forwards": len(forwards),
            "hosts_writes": self._hosts.writes if self._hosts is not None else 0,
            "tunnels": len(self._pool.tunnels()) if self._pool is not None else 0,
            "accepted": sum(f.forwarder.stats.accepted for f in forwards),
            "dropped": sum(f.forwarder.stats.dropped for f in forwards),
        }

    def forwards(self) -> dict[str, tuple[str, list[str], list[int]]]:
        """name → (ip, host names, local ports) of every live forward."""
        with self._lock:
            return {
                name: (s.upsert.ip, list(s.upsert.names), [p.local_port for p in s.upsert.ports])
                for name, s in self._forwards.items()
            }

    # -- shutdown ----------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def request_stop(self) -> None:
        self.stop_requested.set()

    def shutdown(self) -> None:
        """Stop informers → forwarders → tunnels → hosts lines → loopback; each step isolated,
        so one failure does not skip the rest. Safe to call more than once."""
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
        self.stop_requested.set()
        _step("release the start-up lock", self._start_lock.release)
        _step("stop informers", self._stop_informers)
        _step("stop applying changes", self._stop_dispatcher)
        _step("stop housekeeping", self._stop_housekeeper)
        _step("stop forwarders", self._stop_forwarders)
        _step("close tunnels", self._close_tunnels)
        _step("remove hosts entries", self._stop_hosts)
        _step("remove loopback addresses", self._cleanup_loopback)

    def _stop_informers(self) -> None:
        self._informer_stop.set()
        for informer in self._informers:
            informer.stop()
        for client in self._clients:
            client.close()
        stuck = [i.name for i in self._informers if not i.stop_and_join(5.0)]
        if stuck:
            log.warning("informers did not stop in time: %s", ", ".join(stuck))

    def _stop_dispatcher(self) -> None:
        if self._dispatcher is not None and not self._dispatcher.stop_and_join(10.0):
            log.warning("the command dispatcher did not stop in time")

    def _stop_reaper(self) -> None:
        if self._reaper is not None and not self._reaper.stop_and_join(10.0):
            log.warning("removed forwards did not stop in time")

    def _stop_housekeeper(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.stop_and_join()

    def _stop_forwarders(self) -> None:
        with self._lock:
            states = list(self._forwards.values())
            self._forwards.clear()
        for state in states:
            state.forwarder.stop()
        for state in states:
            state.forwarder.stop_and_join()
        self._stop_reaper()

    def _close_tunnels(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def _stop_hosts(self) -> None:
        if self._hosts is None:
            return
        if self._hosts.ident is None:
            return
        if not self._hosts.stop_and_join(self._hosts.cleanup_timeout + 5.0):
            self.hosts_cleanup_failed = True
            raise HostsFileError(f"timed out removing our lines from {self.options.hosts_path}")
        if self._hosts.cleanup_failed:
            self.hosts_cleanup_failed = True
            raise self._hosts.last_error or HostsFileError(
                f"could not remove our lines from {self.options.hosts_path}"
            )

    def _cleanup_loopback(self) -> None:
        if self._loopback is not None:
            for error in self._loopback.cleanup():
                log.warning("%s", error)





def _step(what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:
        log.error("shutdown: %s failed: %s", what, exc)


def _resyncing(
    watch_fn: Callable[[str], Iterable[dict[str, Any]]], every: float
) -> Callable[[str], Iterator[dict[str, Any]]]:
    """Wrap a watch so that, ``every`` seconds after the last list, it ends with an
    "expired" error: the informer lists everything again (the --resync-interval)."""
    listed_at = [time.monotonic()]

    def watch(rv: str) -> Iterator[dict[str, Any]]:
        if time.monotonic() - listed_at[0] >= every:
            listed_at[0] = time.monotonic()
            raise ApiError("periodic resync", status=410, reason="Expired")
        yield from watch_fn(rv)
        if time.monotonic() - listed_at[0] >= every:
            listed_at[0] = time.monotonic()
            raise ApiError("periodic resync", status=410, reason="Expired")

    return watch


class _Housekeeper(StoppableThread):
    def __init__(self, app: Kubefwd) -> None:
        super().__init__("kubefwd/housekeeping")
        self.app = app

    def run_loop(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.app.housekeeping()
            except Exception:
                log.exception("housekeeping failed")
