"""The orchestrator: contexts → informers → registry → forwarders, plus the hosts writer.

``Kubefwd`` wires the pieces together and owns their start and shutdown order; ``run()`` is
``kubefwd svc``; tests and the benchmark can also drive it in-process (``start()``,
``wait_ready()``, ``shutdown()``). What it wires lives elsewhere: the start-up checks in
``startup``, signals in ``signals``, the command threads in ``dispatch``, the live forwards in
``serve.live``, tunnel choice in ``routing``, other instances on the hosts file in ``coexist``.

Shutdown order (each step in its own ``try`` so one failure does not skip the rest): stop the
informers (no new commands), stop the forwarders (listeners close), close the tunnels, stop the
hosts writer (it removes our lines), undo loopback aliases.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kubefwd.app.control import Control, ControlError, Scope
from kubefwd.app.lookup import Lookups
from kubefwd.app.runcmd import (
    Readiness,
    ReadyFileWriter,
    WaitPlan,
    command_env,
    ready_text,
    remove_ready_file,
    run_command,
    write_ready_file,
)
from kubefwd.app.signals import StartupInterrupted, StopSignals, child_pids, end_children
from kubefwd.app.startup import (
    START_LOCK_WAIT,
    StartLock,
    after_synced,
    check_privileges,
    checked_namespaces,
    report_privileged_ports,
    wait_synced,
    warn_unverified_namespaces,
)
from kubefwd.cluster.client import KubeClient, watch_callables
from kubefwd.cluster.informer import Backoff, Informer
from kubefwd.cluster.kubeconfig import ClusterContext, available_contexts, load_contexts
from kubefwd.cluster.target import ApiTarget
from kubefwd.errors import (
    ExitCode,
    HostsFileError,
    KubefwdError,
    NotReadyError,
)
from kubefwd.events.bus import EventBus
from kubefwd.events.http import HttpLog
from kubefwd.events.metrics import MetricsRegistry, MetricsSampler
from kubefwd.events.report import BusLogHandler, Reporter, route_logging, unroute_logging
from kubefwd.events.store import StateStore
from kubefwd.events.types import (
    NamespaceUnwatched,
    NamespaceWatched,
    ReconnectRequested,
    ShutdownComplete,
    ShutdownStarted,
)
from kubefwd.hosts.backup import backup_target
from kubefwd.hosts.owners import Owners
from kubefwd.hosts.writer import HostsWriter
from kubefwd.registry.ipalloc import DEFAULT_BASE, IpAllocator
from kubefwd.registry.registry import (
    ForwardRemove,
    ForwardUpsert,
    HostsSnapshot,
    Registry,
)
from kubefwd.registry.svcpick import NamePattern, ServicePicker
from kubefwd.serve.coexist import Coexistence
from kubefwd.serve.dispatch import Dispatcher, Reaper
from kubefwd.serve.forwarder import ForwardStats
from kubefwd.serve.live import ForwardSet, RetryBinds
from kubefwd.serve.routing import Router
from kubefwd.support.invoker import sudo_user
from kubefwd.support.startuptrace import mark
from kubefwd.support.threads import StoppableThread
from kubefwd.system.fdlimit import Limit, raise_nofile, shortfall
from kubefwd.system.loopback import LoopbackStrategy, loopback_strategy
from kubefwd.tunnel import TunnelPool

log = logging.getLogger("kubefwd.app.program")
# Housekeeping ticks (seconds) between retries of forwards that found no address to listen on.
RETRY_BINDS_EVERY = 5


@dataclass
class SvcOptions:
    """Everything ``kubefwd svc`` was asked to do, validated."""

    kubeconfig: str | None = None
    contexts: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    wait_namespaces: bool = False  # with -n: a namespace not there yet is waited for
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
    # Note HTTP requests seen in the forwarded bytes (on with --tui, --api, -o json: the
    # outputs that show them; off otherwise, since it costs a little per connection).
    detect_http: bool = False
    services: list[NamePattern] = field(default_factory=list)
    exclude: list[NamePattern] = field(default_factory=list)
    allow_shadowing: bool = False
    # Not a flag: $KUBEFWD_HOSTS_WRITE_TIMEOUT, how long start-up retries the first write.
    hosts_write_timeout: float = 30.0
    # ``-- CMD``: run it once the services answer, then stop with its exit status.
    command: list[str] = field(default_factory=list)
    ready_file: Path | None = None  # written once everything answers, removed at exit
    wait_for: list[str] = field(default_factory=list)  # empty: every forwarded service
    no_wait: bool = False  # run CMD / write the ready file right after start-up
    command_as_root: bool = False  # under sudo; otherwise CMD runs as SUDO_USER
    pod_policy: str = "spread"  # which ready pod takes a new connection (see routing)
    # Idle mode (no -n, no -A): nothing is forwarded at start; the API adds namespaces.
    idle: bool = False
    api: bool = False  # serve the REST API (kubefwd.api)
    api_addr: tuple[str, int] | None = None  # None: the default for root or not
    # Not flags: where ~/hosts.original goes (None: the invoking user's home).
    backup_dir: Path | None = None
    make_backup: bool = True


class Kubefwd:
    """One run of ``kubefwd svc``: ``run()`` for the CLI, or ``start()``/``shutdown()``."""

    def __init__(self, options: SvcOptions, *, bus: EventBus | None = None) -> None:
        self.options = options
        # What the run says goes out as events; the outputs (text, JSON, TUI, API) subscribe.
        self.bus = bus if bus is not None else EventBus()
        self.store = StateStore()
        self._detach_store = self.bus.attach(self.store.fold)
        # HTTP requests seen on the forwards, a ring per forward (the TUI, the API).
        self.http = HttpLog()
        self.bus.attach(self.http.fold)
        self.metrics = MetricsRegistry()
        self._sampler = MetricsSampler(self.metrics)
        self.report = Reporter(self.bus, verbose=options.verbose)
        self._log_handler: BusLogHandler | None = None
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self.started_at = 0.0
        # The hosts writers of this run: the writer, the stop signals' emergency removal and
        # the look at other instances' lines all see the same ones.
        self._owners = Owners()
        self._stop_signals = StopSignals(options.hosts_path, self.stop_requested, self._owners)
        self._lock = threading.Lock()
        self._informers: list[Informer] = []
        self._clients: list[KubeClient] = []
        self._context_lock = threading.Lock()  # contexts loaded at run time, one at a time
        self._targets: dict[str, ApiTarget] = {}
        self._groups: dict[tuple[str, str], _WatchGroup] = {}
        self._scopes: dict[tuple[str, str], Scope] = {}
        # Runtime changes (the TUI, the API) go through here.
        self.control = Control(self)
        # Read-only look-ups (the TUI's browser and Logs tab, the API).
        self.lookups = Lookups(self)
        self._registry: Registry | None = None
        self._pool: TunnelPool | None = None
        self._hosts: HostsWriter | None = None
        self._loopback: LoopbackStrategy | None = None
        self._housekeeper: _Housekeeper | None = None
        self._retry_ticks = 0
        self._housekeeping_ticks = 0
        self._fd_limit = Limit(-1, -1, 0)
        self._dispatcher: Dispatcher | None = None
        self._coexist = Coexistence(options.hosts_path, self.report, self._owners)
        self._start_lock = StartLock(options.hosts_path)
        self._reaper: Reaper | None = None
        self._router = Router(self.report, self._targets, policy=options.pod_policy)
        self._live = ForwardSet(report=self.report, coexist=self._coexist, router=self._router,
                                targets=self._targets, ready=self.ready,
                                hold_timeout=options.timeout, metrics=self.metrics,
                                detect_http=options.detect_http)
        self._shut_down = False
        # Set by shutdown() when our lines could not be removed from the hosts file.
        self.hosts_cleanup_failed = False
        self._unverified: list[tuple[str, str]] = []  # (context, namespace) we could not get
        self._picker = ServicePicker(options.services, options.exclude)

    # -- whole-process entry ---------------------------------------------------------------

    def run(self, front: Callable[[], None] | None = None) -> int:
        """Start, serve until a stop signal, shut down; returns the exit code (also published
        as the last event, ``ShutdownComplete``). ``front`` (the TUI) runs in this thread once
        start-up is done, instead of waiting for a signal: when it returns, or a signal asks
        for a stop meanwhile, the ordinary ordered shutdown follows."""
        self._log_handler = route_logging(self.bus, verbose=self.options.verbose)
        self._stop_signals.install()
        code: int = int(ExitCode.ERROR)
        try:
            code = self._run(front)
            return code
        except KubefwdError as exc:
            code = int(exc.exit_code)
            raise
        finally:
            self._stop_signals.finish()
            self.bus.publish(ShutdownComplete(exit_code=code))
            if self._log_handler is not None:
                unroute_logging(self._log_handler)
                self._log_handler = None

    def _run(self, front: Callable[[], None] | None = None) -> int:
        children_before = child_pids()
        try:
            self._stop_signals.starting = True
            self.start()
        except StartupInterrupted:
            self._stop_signals.starting = False
            self.report.info("interrupted before ready: stopping")
            _step("stop helper processes", lambda: end_children(children_before))
            self.shutdown("interrupted")
            return int(ExitCode.HOSTS if self.hosts_cleanup_failed else ExitCode.INTERRUPTED)
        except BaseException:
            self._stop_signals.starting = False
            self.shutdown("error")
            raise
        if self.stop_requested.is_set() and not self.ready.is_set():
            self.shutdown("interrupted")
            return int(ExitCode.INTERRUPTED)
        # Everything built so far (imported modules, the registry, the forwards) lives as
        # long as the process: take it out of the collector's sight, so that a full
        # collection in the middle of a connection scans only what came after. Without
        # this, full collections over the start-up objects put milliseconds into the
        # slowest 1% of new connections (scripts/bench, new-connection p99). Only for the
        # process that runs kubefwd: an embedding program keeps its collector as it is.
        gc.freeze()
        if self.options.command:
            return self._run_command()
        writer = self._start_ready_file_writer()
        if front is not None:
            try:
                front()
            finally:
                self.stop_requested.set()
        else:
            self._stop_signals.wait_for_stop()
        self.report.info("stopping: closing forwards and removing hosts entries")
        if writer is not None:
            _step("stop waiting for readiness", functools.partial(_join, writer))
            _step("remove the ready file", lambda: remove_ready_file(writer.path))
        self.shutdown("signal")
        # The process ends now: what is left of the run lives until then. Out of the
        # collector's sight it spares the interpreter's last collections on the way out a
        # walk over the whole heap (~0.3 s of the shutdown with 2000 services forwarded).
        gc.freeze()
        return int(ExitCode.HOSTS if self.hosts_cleanup_failed else ExitCode.OK)

    # -- -- CMD and --ready-file ---------------------------------------------------------------

    def _wait_plan(self) -> WaitPlan:
        o = self.options
        return WaitPlan(timeout=o.timeout, wait_for=tuple(o.wait_for), no_wait=o.no_wait)

    def _warn_not_ready(self, down: list[str]) -> None:
        self.report.warning("not answering after %gs: %s", self.options.timeout,
                            ", ".join(down))

    def _start_ready_file_writer(self) -> ReadyFileWriter | None:
        path = self.options.ready_file
        if path is None:
            return None
        writer = ReadyFileWriter(Readiness(self.store, self.bus), self._wait_plan(), path,
                                 ready_text(self.options.hosts_path), self._warn_not_ready)
        writer.start()
        return writer

    def _run_command(self) -> int:
        """Wait until the services answer, run the command, stop; its exit status."""
        o = self.options
        plan = self._wait_plan()
        down = Readiness(self.store, self.bus).wait(plan, self.stop_requested,
                                                    time.monotonic() + plan.timeout)
        if self.stop_requested.is_set():
            self.report.info("stopping before the command ran")
            self.shutdown("signal")
            return int(ExitCode.HOSTS if self.hosts_cleanup_failed else ExitCode.INTERRUPTED)
        if down:
            self.shutdown("not ready")
            raise NotReadyError(f"not answering after {o.timeout:g}s (-t/--timeout): "
                                f"{', '.join(down)}; {o.command[0]} was not run")
        code = int(ExitCode.ERROR)
        ready_file = o.ready_file
        user = None if o.command_as_root else sudo_user()
        try:
            if ready_file is not None:
                write_ready_file(ready_file, ready_text(o.hosts_path), owner=user)
            self.report.info("running %s%s", " ".join(o.command),
                             f" as {user.pw_name}" if user is not None else "")
            try:
                code = run_command(o.command, command_env(o.hosts_path), user=user)
            except OSError as exc:
                self.report.error("cannot run %s: %s", o.command[0], exc.strerror or exc)
                code = 127
            self.report.info("%s exited with %d: stopping", o.command[0], code)
        finally:
            if ready_file is not None:
                _step("remove the ready file", lambda: remove_ready_file(ready_file))
            self.shutdown("command ended")
        if self.hosts_cleanup_failed and code == 0:
            return int(ExitCode.HOSTS)
        return code

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Check, connect, list everything, bind every listener, write the hosts file.

        Returns once all of that is done (``ready`` is set) or a stop was requested; raises a
        ``KubefwdError`` for anything the user must fix (call ``shutdown()`` afterwards).
        """
        o = self.options
        self.started_at = time.monotonic()
        mark("start")
        self._fd_limit = raise_nofile()
        if self._fd_limit.raised_from:
            log.debug("open-file limit raised from %d to %d", self._fd_limit.raised_from,
                      self._fd_limit.soft)
        self._sampler.start()
        check_privileges(o.hosts_path)
        contexts = load_contexts(o.kubeconfig, o.contexts)
        mark("kubeconfig loaded")
        namespaces = self._namespaces(contexts)
        mark("namespaces checked")
        if self.stop_requested.is_set():
            return
        # Instances starting at the same time take turns until their names are written, so
        # each one sees the addresses and names of those before it.
        if not self._start_lock.acquire(START_LOCK_WAIT):
            self.report.warning("another kubefwd has been starting on %s for %.0fs; going ahead",
                                o.hosts_path, START_LOCK_WAIT)
        self._coexist.others.refresh(force=True)
        allocator = IpAllocator(reservations=o.reservations, base=o.base_ip or DEFAULT_BASE,
                                taken=self._coexist.others.ip_taken)
        self._live.allocator = allocator
        self._registry = Registry(
            allocator=allocator,
            contexts=[c.name for c in contexts],
            namespaces={c.name: namespaces[c.name] for c in contexts},
            domain=o.domain,
            mappings=o.mappings,
            pick=self._wanted,
        )
        # Commands are applied on one thread of their own: informer threads only queue them,
        # so a slow bind or alias never holds up the watches; stopped forwarders are joined
        # on another, so a slow removal does not hold up the commands behind it.
        self._reaper = Reaper(self.report)
        self._reaper.start()
        self._live.reaper = self._reaper
        self._dispatcher = Dispatcher(self._on_commands)
        self._dispatcher.start()
        self._registry.subscribe(self._dispatcher.put)
        # -a keeps every forwarded pod's tunnel open; otherwise an idle one closes its session
        # (buffers, API connection) and re-opens on the next connection.
        pool_options: dict[str, Any] = {"idle_timeout": 0.0} if o.auto_reconnect else {}
        self._pool = TunnelPool(transport=o.transport, on_dead=self._live.tunnel_died,
                                on_open=self._live.tunnel_opened, **pool_options)
        self._router.pool = self._pool
        self._loopback = loopback_strategy()
        self._live.loopback = self._loopback
        self._hosts = HostsWriter(
            o.hosts_path,
            backup_dir=self._backup_dir(),
            refresh_backup=o.refresh_backup,
            purge_stale=o.purge_stale,
            allow_shadowing=o.allow_shadowing,
            # Nobody resolves our names before the ready line: while thousands of services
            # are listed and bound, write seldom (the flush before ready writes them all).
            min_interval=STARTUP_HOSTS_INTERVAL,
            owners=self._owners,
        )
        self._coexist.hosts = self._hosts
        self._hosts.start()
        if self._coexist.extra:
            self._coexist.publish()
        # Everything is listed at once, but each namespace's services are handed over only
        # after its pods and EndpointSlices: every service then meets its pods in its first
        # batch, so IPs come out in the same order on every run (headless pods next to their
        # service).
        for ctx in contexts:
            scope = namespaces[ctx.name] if not o.all_namespaces else [""]
            self._start_informers(ctx, scope, ("pods", "endpointslices", "services"))
        mark("informers started")
        self._wait_synced()
        mark("everything listed")
        if self.stop_requested.is_set():
            return
        if not self._dispatcher.wait_idle(30.0):
            log.warning("start-up: forwards still being set up after 30s")
        mark("forwards set up")
        self._warn_unverified_namespaces()
        self._warn_unmatched_names()
        if not self._hosts.flush(timeout=o.hosts_write_timeout):
            error = self._hosts.last_error
            raise HostsFileError(
                f"gave up writing the hosts file {o.hosts_path} after "
                f"{o.hosts_write_timeout:g}s" + (f": {error.message}" if error else "")
            )
        mark("hosts file written")
        self._start_lock.release()
        self._hosts.min_interval = HOSTS_INTERVAL  # from now on, changes show up at once
        self._live.announce_all()
        report_privileged_ports(self.report, self._live.privileged_ports)
        self._housekeeper = _Housekeeper(self)
        self._housekeeper.start()
        states = self._live.listening()  # what really listens, not what was attempted
        count = len({f.key[:3] for f in states})
        addresses = len(states)
        self._check_fd_limit(states)
        self._stop_signals.starting = False
        self.report.ready(count, addresses, time.monotonic() - self.started_at,
                          self._hosts.writes)
        mark("ready")
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
            if o.idle:
                result[ctx.name] = []
                continue
            chosen, unverified, missing = checked_namespaces(
                client, ctx, o.namespaces, wait=o.wait_namespaces)
            self._unverified.extend((ctx.name, ns) for ns in unverified)
            for ns in missing:
                self.report.warning("namespace %r does not exist in context %r yet; waiting "
                                    "for it (--wait-namespaces)", ns, ctx.name)
            result[ctx.name] = chosen
        return result

    def _warn_unverified_namespaces(self) -> None:
        if not self._unverified or self._registry is None:
            return
        warn_unverified_namespaces(self.report, self._unverified, self._registry.snapshot(),
                                   multi_context=len(self._targets) > 1)

    def _warn_unmatched_names(self) -> None:
        """One warning naming the --service/--exclude patterns no service matched at
        start-up; services that appear later are still matched as they come."""
        include, exclude = self._picker.unmatched()
        parts = [f"--{flag} {', '.join(map(str, patterns))}"
                 for flag, patterns in (("service", include), ("exclude", exclude)) if patterns]
        if parts:
            self.report.warning("no service matches %s (yet: one created later is picked up)",
                                "; ".join(parts))

    def _start_informers(
        self, ctx: ClusterContext, namespaces: Sequence[str], resources: Sequence[str],
        *, label_selector: str | None = None,
    ) -> list[Informer]:
        """Watch ``resources`` of each namespace ("" = all of them) of ``ctx``; the informers
        of one (context, namespace) form a group stopped together (``_stop_group``)."""
        o = self.options
        assert self._registry is not None
        client = self._client(ctx.name)
        watch_timeout = int(max(1, min(300.0, o.resync_interval)))
        started: list[Informer] = []
        for ns in namespaces:
            first: list[Informer] = []  # this namespace's pods and slices, before its services
            with self._lock:
                group = self._groups.setdefault((ctx.name, ns), _WatchGroup())
                if label_selector is not None:
                    group.label_selector = label_selector
            selector = group.label_selector if group.label_selector is not None \
                else o.label_selector
            if resources and resources[0] == "pods":
                self.bus.publish(NamespaceWatched(context=ctx.name, namespace=ns))
            for resource in resources:
                services = resource == "services"
                stop = threading.Event()  # the informer's own: it interrupts its requests
                list_fn, watch_fn = watch_callables(
                    client, resource, ns,
                    label_selector=selector if services else "",
                    field_selector=o.field_selector if services else "",
                    timeout_seconds=watch_timeout,
                    stop=stop,
                )
                callback = self._registry.callback(ctx.name, ns, resource)
                if services and first:
                    callback = after_synced(callback, first, stop)
                informer = Informer(
                    context=ctx.name,
                    namespace=ns,
                    resource=resource,
                    list_fn=list_fn,
                    watch_fn=watch_fn,
                    callback=callback,
                    interrupt=client.interrupt,
                    backoff=Backoff(initial=min(1.0, o.retry_interval), cap=o.retry_interval),
                    on_error=self._informer_error,
                    on_recovered=self._api_reachable,
                    stop=stop,
                    resync_interval=o.resync_interval,
                )
                with self._lock:
                    group.informers.append(informer)
                    self._informers.append(informer)
                started.append(informer)
                if not services:
                    first.append(informer)
                informer.start()
        return started

    def _client(self, context: str) -> KubeClient:
        return next(c for c in self._clients if c.context.name == context)

    # -- what Control changes at run time ---------------------------------------------------

    def context_names(self) -> list[str]:
        """The contexts loaded: those of the command line, then those added at run time."""
        return [c.context.name for c in self._clients]

    def kubeconfig_contexts(self) -> list[str]:
        """Every context kubefwd could use: the loaded ones first, then the kubeconfig's
        others (the loaded ones alone when the kubeconfig cannot be read now)."""
        loaded = self.context_names()
        try:
            others = available_contexts(self.options.kubeconfig)
        except KubefwdError as exc:
            log.debug("cannot list the kubeconfig's contexts: %s", exc)
            others = []
        return loaded + [name for name in others if name not in loaded]

    def load_context(self, name: str) -> bool:
        """Load kubeconfig context ``name`` (its credentials and a client) so that its
        namespaces can be looked up and watched at run time; False when it was loaded
        already. ConfigError when the kubeconfig has no such context or its credentials
        cannot be loaded."""
        with self._context_lock:
            if name in self.context_names():
                return False
            (ctx,) = load_contexts(self.options.kubeconfig, [name])
            ctx.index = len(self._clients)
            client = KubeClient(ctx)
            self._targets[ctx.name] = ctx.target
            self._clients.append(client)
        log.debug("context %s loaded at run time (%s)", name, ctx.server)
        return True

    def watched(self) -> list[tuple[tuple[str, str], Scope, str]]:
        """((context, namespace), scope, label selector) of every watched namespace."""
        with self._lock:
            return [(key, self._scopes.get(key) or Scope(),
                     g.label_selector if g.label_selector is not None
                     else self.options.label_selector)
                    for key, g in sorted(self._groups.items())]

    def watches_all(self, context: str) -> bool:
        with self._lock:
            return (context, "") in self._groups

    def scope(self, context: str, namespace: str) -> Scope | None:
        """The scope of a watched namespace (None: not watched)."""
        with self._lock:
            if (context, namespace) not in self._groups:
                return None
            return self._scopes.setdefault((context, namespace), Scope())

    def set_scope(self, context: str, namespace: str, scope: Scope) -> None:
        with self._lock:
            self._scopes[(context, namespace)] = scope

    def refresh(self, context: str, namespace: str) -> None:
        """The scope of ``namespace`` changed: the registry decides again."""
        if self._registry is not None:
            self._registry.refresh(context, namespace)

    def watch_namespace(self, context: str, namespace: str, scope: Scope, selector: str,
                        *, wait: float) -> None:
        """Start watching ``namespace`` (it must exist), forwarding what ``scope`` wants."""
        client = self._client(context)
        if client.namespace_status(namespace) == "missing":
            raise ControlError(f"namespace {namespace!r} not found in context {context!r}",
                               "not_found")
        self.set_scope(context, namespace, scope)
        ctx = client.context
        started = self._start_informers(ctx, [namespace], ("pods", "endpointslices"),
                                        label_selector=selector or None)
        started += self._start_informers(ctx, [namespace], ("services",))
        deadline = time.monotonic() + wait
        for informer in started:
            informer.wait_synced(max(0.0, deadline - time.monotonic()))

    def unwatch_namespace(self, context: str, namespace: str) -> bool:
        """Stop watching ``namespace`` and forget its services; False when not watched."""
        if not self._stop_group(context, namespace):
            return False
        with self._lock:
            self._scopes.pop((context, namespace), None)
        if self._registry is not None:
            self._registry.forget_namespace(context, namespace)
        self.bus.publish(NamespaceUnwatched(context=context, namespace=namespace))
        return True

    def relist(self, context: str, namespace: str, *, wait: float) -> bool:
        """List ``namespace`` again from scratch (new informers); False when not watched."""
        with self._lock:
            group = self._groups.get((context, namespace))
            selector = group.label_selector if group is not None else None
        if group is None or not self._stop_group(context, namespace):
            return False
        ctx = self._client(context).context
        started = self._start_informers(ctx, [namespace], ("pods", "endpointslices"),
                                        label_selector=selector)
        started += self._start_informers(ctx, [namespace], ("services",))
        deadline = time.monotonic() + wait
        for informer in started:
            informer.wait_synced(max(0.0, deadline - time.monotonic()))
        return True

    def reconnect(self, key: str) -> bool:
        """Drop the tunnels of forward ``key`` and forget their back-off; False: no such
        forward."""
        state = next((s for s in self._live.states() if str(s.key) == key), None)
        if state is None:
            return False
        self.bus.publish(ReconnectRequested(key=key))
        self._router.reconnect(state)
        return True

    def _wanted(self, context: str, namespace: str, service: str) -> bool:
        """The registry's ``pick``: the command line's --service/--exclude, then what was
        added or removed at run time (called under the registry's lock: reads only)."""
        if self._picker.active and not self._picker.wanted(namespace, service):
            return False
        scope = self._scopes.get((context, namespace)) or self._scopes.get((context, ""))
        return scope is None or scope.wants(service)

    def _stop_group(self, context: str, namespace: str) -> bool:
        """Stop watching one (context, namespace); True when it was watched."""
        with self._lock:
            group = self._groups.pop((context, namespace), None)
            if group is None:
                return False
            self._informers = [i for i in self._informers if i not in group.informers]
        for informer in group.informers:
            informer.stop()
        stuck = [i.name for i in group.informers if not i.stop_and_join(5.0)]
        if stuck:
            log.warning("informers did not stop in time: %s", ", ".join(stuck))
        return True

    def _informer_error(self, informer: Informer, exc: Exception, delay: float) -> None:
        if self.ready.is_set():
            self.report.warning("%s: %s; retrying in %.0fs", informer.name, exc, delay)
        else:
            self.report.debug("%s: %s; retrying in %.0fs", informer.name, exc, delay)

    def _api_reachable(self, informer: Informer) -> None:
        """An informer listed again after failing: its API server is back, so held
        connections to that context's pods are retried now (on the informer's thread; no
        lock of ours is held)."""
        self.report.debug("%s: the API server answers again; retrying held connections",
                          informer.name)
        self._router.api_reachable(informer.context, self._live.states())

    def _wait_synced(self) -> None:
        wait_synced(self._informers, self.stop_requested, self.report,
                    retry_interval=self.options.retry_interval)

    # -- registry commands (on the dispatcher thread, in order) ------------------------------

    def _on_commands(self, commands: list[Any]) -> None:
        for command in commands:
            try:
                if isinstance(command, ForwardUpsert):
                    self._live.upsert(command)
                elif isinstance(command, ForwardRemove):
                    self._live.remove(command.key)
                elif isinstance(command, HostsSnapshot):
                    self._coexist.set_snapshot(command.entries)
                    self._coexist.publish()
                elif isinstance(command, RetryBinds):
                    self._live.retry_unbound()
                    if self._registry is not None:
                        self._registry.retry_exhausted()
            except KubefwdError as exc:
                self.report.warning("%s", exc)

    def _check_fd_limit(self, states: Sequence[Any]) -> None:
        """Say once when the forwards cannot fit in the open-file limit."""
        listeners = sum(len(s.upsert.ports) for s in states)
        problem = shortfall(self._fd_limit, len(states), listeners)
        if problem is not None:
            self.report.warning_once("fdlimit", "%s", problem)

    # -- housekeeping ------------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Once a second: -t warnings, tunnels of vanished pods, -a re-opening, names other
        instances let go of."""
        others_changed = self._coexist.others.refresh()
        if others_changed:
            self._coexist.publish()
        # Addresses may have freed up (another instance stopped, a foreign listener closed):
        # at once when the others' lines changed, else every few seconds.
        self._retry_ticks += 1
        if (others_changed or self._retry_ticks % RETRY_BINDS_EVERY == 0) and \
                self._dispatcher is not None:
            self._dispatcher.put([RetryBinds()])
        if self._registry is not None:
            self._registry.expire()  # StatefulSet pod forwards whose pod did not come back
        now = time.monotonic()
        # Only forwards without a pod can be due a warning: no look at the thousands of
        # others each second.
        self._live.warn_no_pod(self._live.without_pod(), now, self.options.timeout)
        self._housekeeping_ticks += 1
        tidy = self._pool is not None and self._housekeeping_ticks % TIDY_EVERY == 0
        if not (tidy or self.options.auto_reconnect or self._housekeeping_ticks % 10 == 0):
            return
        states = self._live.states()
        if self._housekeeping_ticks % 10 == 0:  # forwards come and go (-A, new services)
            self._check_fd_limit(states)
        if self._pool is None:
            return
        # Tunnels of vanished pods wait out a 30 s grace anyway: looking every few seconds
        # is enough, and with thousands of forwards a look is the bulk of an idle second.
        if tidy:
            wanted = {(s.key.context, s.key.namespace, pod.name)
                      for s in states for pod in s.upsert.pods}
            self._router.close_unused(wanted, now)
        if self.options.auto_reconnect:
            housekeeper = self._housekeeper
            self._router.keep_open(states, housekeeper.stopping if housekeeper else None)

    def stats(self) -> dict[str, Any]:
        """Counters for tests and the benchmark: every forwarder counter summed (accepted,
        spliced, held, dropped, returned)."""
        forwards = self._live.states()
        counters: dict[str, Any] = {
            "forwards": len(forwards),
            "hosts_writes": self._hosts.writes if self._hosts is not None else 0,
            "tunnels": len(self._pool.tunnels()) if self._pool is not None else 0,
        }
        for counter in fields(ForwardStats):
            counters[counter.name] = sum(
                getattr(f.forwarder.stats, counter.name) for f in forwards
            )
        return counters

    def add_host_entry(self, ip: str, names: list[str]) -> None:
        """Write ``names`` for ``ip`` in the hosts file with our forwards' lines (the API's
        own name); removed with them at exit."""
        self._coexist.extra[ip] = list(names)
        self._coexist.publish()

    def loopback(self) -> tuple[str, list[str]]:
        """How loopback addresses are made bindable here (``linux``, ``macos``, ``generic``)
        and the addresses kubefwd added for this run (removed at exit)."""
        strategy = self._loopback
        if strategy is None:
            return loopback_strategy().name, []
        return strategy.name, list(strategy.added)

    def forwards(self) -> dict[str, tuple[str, list[str], list[int]]]:
        """name → (ip, host names, local ports) of every live forward."""
        return self._live.describe()

    # -- shutdown ----------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._stop_signals.wake()

    def shutdown(self, reason: str = "requested") -> None:
        """Stop informers → forwarders → tunnels → hosts lines → loopback; each step isolated,
        so one failure does not skip the rest. Safe to call more than once."""
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
        self.bus.publish(ShutdownStarted(reason=reason))
        self._live.close()
        self.stop_requested.set()
        _step("release the start-up lock", self._start_lock.release)
        _step("stop informers", self._stop_informers)
        _step("stop applying changes", self._stop_dispatcher)
        _step("stop housekeeping", self._stop_housekeeper)
        _step("stop forwarders", self._stop_forwarders)
        _step("close tunnels", self._close_tunnels)
        _step("remove hosts entries", self._stop_hosts)
        _step("remove loopback addresses", self._cleanup_loopback)
        _step("stop sampling metrics", self._sampler.stop)

    def _stop_informers(self) -> None:
        with self._lock:
            informers = list(self._informers)
        for informer in informers:
            informer.stopping.set()
        for client in self._clients:
            client.close()
        stuck = [i.name for i in informers if not i.stop_and_join(5.0)]
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
        self._live.stop_all()
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





def _join(thread: StoppableThread) -> None:
    if not thread.stop_and_join(5.0):
        log.warning("%s did not stop in time", thread.name)
# Housekeeping ticks (seconds) between two looks for tunnels no forward uses any more.
TIDY_EVERY = 5
# Least seconds between two hosts-file writes during start-up, and once ready.
STARTUP_HOSTS_INTERVAL = 2.0
HOSTS_INTERVAL = 0.25


def _step(what: str, fn: Callable[[], None]) -> None:
    """One step of the shutdown: a failure is logged and the next step runs all the same;
    how long it took, and the CPU the whole process spent meanwhile (other threads ending
    count), go to the debug log (-v), to tell where a slow shutdown spends it."""
    began, cpu = time.perf_counter(), time.process_time()
    try:
        fn()
    except Exception as exc:
        log.error("shutdown: %s failed: %s", what, exc)
    finally:
        log.debug("shutdown: %s took %.3f s (CPU %.3f s)", what, time.perf_counter() - began,
                  time.process_time() - cpu)


@dataclass
class _WatchGroup:
    """The informers of one watched (context, namespace), stopped together;
    ``label_selector`` (None: the command line's) picks its services."""

    informers: list[Informer] = field(default_factory=list)
    label_selector: str | None = None


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
