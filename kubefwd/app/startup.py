"""The checks ``kubefwd svc`` makes once, before it serves anything.

Root where it is needed, namespaces that exist, the lock that makes instances started together
take turns, every informer's first list, and the one-line reports of what start-up could not
do (namespaces it could not verify, ports that need root). Each has its own failure message;
kept apart from the app, which only runs them in order.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kubefwd.cluster.client import KubeClient
from kubefwd.cluster.informer import Informer, InformerEvent
from kubefwd.cluster.kubeconfig import ClusterContext
from kubefwd.errors import ApiError, ConfigError, KubefwdError, PrivilegeError
from kubefwd.events.report import Reporter
from kubefwd.registry.model import RegistrySnapshot
from kubefwd.system.privileges import needs_root_reasons, unprivileged_port_start

# How long an instance waits for another one that is starting on the same hosts file.
START_LOCK_WAIT = 20.0


def check_privileges(hosts_path: Path) -> None:
    """Raise PrivilegeError naming every reason root is needed, if any."""
    reasons = needs_root_reasons(hosts_path, [])
    if reasons:
        raise PrivilegeError("root is needed: " + "; ".join(reasons))


def checked_namespaces(
    client: KubeClient, ctx: ClusterContext, wanted: Sequence[str], *, wait: bool = False
) -> tuple[list[str], list[str], list[str]]:
    """The namespaces to watch in ``ctx`` (``wanted``, else the context's own), each checked
    to exist, those of them we may not look up (403), and those that do not exist yet.

    A missing namespace is a ConfigError (a typo should fail fast) unless ``wait``: then it
    is watched all the same (listing a namespace that does not exist yet answers an empty
    list, and its watch sees its services as they are created)."""
    chosen = list(wanted) or [ctx.namespace]
    unverified: list[str] = []
    missing: list[str] = []
    for ns in chosen:
        status = client.namespace_status(ns)
        if status == "forbidden":  # may not read Namespace objects: the lists will tell
            unverified.append(ns)
        elif status == "missing":
            if not wait:
                raise ConfigError(f"namespace {ns!r} not found in context {ctx.name!r} "
                                  "(pass --wait-namespaces to wait for it to be created)")
            missing.append(ns)
    return chosen, unverified, missing


def warn_unverified_namespaces(
    report: Reporter,
    unverified: Sequence[tuple[str, str]],
    snapshot: RegistrySnapshot,
    *,
    multi_context: bool,
) -> None:
    """A namespace we could not look up (403) and that lists no services is most likely
    a typo: say so instead of forwarding nothing in silence."""
    seen = {(f.key.context, f.key.namespace) for f in snapshot.forwards}
    for skipped in snapshot.skipped:  # "ctx/ns/name"
        ctx, ns, _ = skipped.split("/", 2)
        seen.add((ctx, ns))
    for ctx, ns in unverified:
        if (ctx, ns) not in seen:
            where = f" in context {ctx!r}" if multi_context else ""
            report.warning(
                "could not verify namespace %r exists%s (403) and it has no services; "
                "check its name", ns, where,
            )


def wait_synced(
    informers: Sequence[Informer],
    stop_requested: threading.Event,
    report: Reporter,
    *,
    retry_interval: float,
) -> None:
    """Wait for every informer's first list; a failing one is fatal at start-up."""
    deadline = time.monotonic() + max(30.0, retry_interval * 3)
    while not stop_requested.is_set():
        pending = [i for i in informers if not i.synced.is_set()]
        if not pending:
            return
        for informer in pending:
            error = informer.last_error
            if error is None:
                continue
            if informer.resource == "endpointslices" and isinstance(error, ApiError) \
                    and error.status == 403:
                # Readiness comes from the pods themselves; slices only fill gaps.
                report.warning("%s; continuing without EndpointSlices", error)
                informer.stopping.set()  # it is between lists: no watch to interrupt
                informer.synced.set()
                continue
            if isinstance(error, KubefwdError):
                raise error
            raise ApiError(f"{informer.name}: {error}")
        if time.monotonic() > deadline:
            names = ", ".join(i.name for i in pending)
            raise ApiError(f"timed out listing {names}")
        stop_requested.wait(0.02)


def after_synced(
    callback: Callable[[InformerEvent], None],
    first: Sequence[Informer],
    stop: threading.Event,
) -> Callable[[InformerEvent], None]:
    """``callback``, holding its first event until every informer of ``first`` has delivered
    its first list or failed (dropped when ``stop`` is set meanwhile): an informer started
    together with ``first`` lists at the same time, yet its objects arrive after theirs
    (services after their namespace's pods, so each service meets its pods in its first
    batch)."""
    pending = list(first)

    def gated(event: InformerEvent) -> None:
        while pending and not stop.is_set():
            informer = pending[0]
            if informer.synced.is_set() or informer.failed.is_set():
                pending.pop(0)
                continue
            informer.synced.wait(0.02)
        if not stop.is_set():
            callback(event)

    return gated


def report_privileged_ports(report: Reporter, privileged_ports: dict[int, list[str]]) -> None:
    """One line for every port below 1024 we could not bind during start-up."""
    if not privileged_ports:
        return
    ports = sorted(privileged_ports)
    shown = ", ".join(
        f"{port} ({', '.join(privileged_ports[port][:3])}"
        f"{', ...' if len(privileged_ports[port]) > 3 else ''})" for port in ports
    )
    example = f"{ports[0]}:{ports[0] + 8000}"
    report.warning(
        "not forwarded without root: ports below %d need root or CAP_NET_BIND_SERVICE: "
        "%s; run with sudo, or map them to high ports with -m (e.g. -m %s)",
        unprivileged_port_start(), shown, example,
    )


class StartLock:
    """Taken from address allocation until the first hosts write, by every instance that
    uses the same hosts file (an flock on ``<hosts>.kubefwd.start``): instances started
    together take turns, so none allocates before seeing the lines of the one before."""

    def __init__(self, hosts_path: Path) -> None:
        target = Path(os.path.realpath(hosts_path))
        self.path = target.with_name(target.name + ".kubefwd.start")
        self._fd: int | None = None

    def acquire(self, timeout: float) -> bool:
        """True once held; False when it could not be had in ``timeout`` (or at all)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return True  # cannot create it: nobody else can either, nothing to wait for
        deadline = time.monotonic() + timeout
        pause = threading.Event()  # never set: a timed wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    return False
                pause.wait(0.02)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock
