"""Changes asked for while kubefwd runs: the one command path of the TUI and the REST API.

Observers never reach into forwarders, the tunnel pool or the Kubernetes client; they call
``Control``, which turns each request into what the core already does for the informers:
start or stop the watches of a namespace, make the registry decide again which services it
wants, drop a forward's tunnels so the next connection opens a fresh one. Every method is
thread-safe, returns once the change is under way (a namespace's first list is waited for, up
to ``LIST_WAIT`` seconds), and raises a ``ControlError`` with a sentence for the user when
the request cannot be done. What happens is published on the bus like everything else.

Addressing: a namespace is ``NAME`` (in the first context) or ``CONTEXT/NAME``, where the
context may be any of the kubeconfig (one not loaded yet is loaded then); a forward is
its key, ``CONTEXT/NAMESPACE/SERVICE`` (``…/POD.SERVICE`` for one pod of a headless service),
and may be given without the context when it is the first one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kubefwd.errors import KubefwdError
from kubefwd.events.types import LogLine
from kubefwd.support.dnsnames import is_dns_label

if TYPE_CHECKING:
    from kubefwd.app.program import Kubefwd

# How long adding a namespace waits for its first list before returning anyway.
LIST_WAIT = 10.0


class ControlError(KubefwdError):
    """A request that cannot be done; ``code`` says why, for an API to map to a status."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code  # "invalid", "not_found", "conflict", "unavailable"


@dataclass
class Scope:
    """Which services of a watched namespace are forwarded: all but ``excluded`` (``all``),
    or just ``services``."""

    all: bool = True
    services: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)

    def wants(self, service: str) -> bool:
        if self.all:
            return service not in self.excluded
        return service in self.services

    @property
    def empty(self) -> bool:
        return not self.all and not self.services


@dataclass(frozen=True)
class WatchedNamespace:
    context: str
    namespace: str  # "" for every namespace (-A)
    services: tuple[str, ...] | None  # None: every service (but ``excluded``)
    excluded: tuple[str, ...] = ()
    label_selector: str = ""


class Control:
    """Runtime changes to one run of kubefwd (see the module docstring)."""

    def __init__(self, app: Kubefwd) -> None:
        self._app = app
        self._lock = threading.RLock()  # one change at a time; reading needs no lock

    # -- reading -------------------------------------------------------------------------

    @property
    def contexts(self) -> list[str]:
        return self._app.context_names()

    def namespaces(self) -> list[WatchedNamespace]:
        """The watched namespaces, by context then name."""
        result = []
        for (ctx, ns), scope, selector in self._app.watched():
            result.append(WatchedNamespace(
                context=ctx, namespace=ns,
                services=None if scope.all else tuple(sorted(scope.services)),
                excluded=tuple(sorted(scope.excluded)) if scope.all else (),
                label_selector=selector))
        return result

    # -- namespaces ----------------------------------------------------------------------

    def add_namespace(self, namespace: str, context: str | None = None,
                      selector: str = "") -> WatchedNamespace:
        """Forward every service of ``namespace`` (and those created later)."""
        ctx, ns = self._namespace(namespace, context)
        with self._lock:
            self._ready()
            if self._app.watches_all(ctx):
                raise ControlError(f"every namespace of context {ctx!r} is forwarded already "
                                   "(-A)", "conflict")
            scope = self._app.scope(ctx, ns)
            if scope is not None and scope.all:
                raise ControlError(f"namespace {ns!r} of context {ctx!r} is forwarded already",
                                   "conflict")
            if scope is not None:  # some of its services were added one by one: all now
                self._app.set_scope(ctx, ns, Scope())
                self._app.refresh(ctx, ns)
            else:
                self._app.watch_namespace(ctx, ns, Scope(), selector, wait=LIST_WAIT)
            self._say(f"forwarding namespace {ns} of context {ctx}")
            return self._watched(ctx, ns)

    def remove_namespace(self, namespace: str, context: str | None = None) -> None:
        """Stop forwarding ``namespace``: its forwards go, its names leave the hosts file."""
        ctx, ns = self._namespace(namespace, context)
        with self._lock:
            self._ready()
            if not self._app.unwatch_namespace(ctx, ns):
                raise ControlError(f"namespace {ns!r} of context {ctx!r} is not forwarded",
                                   "not_found")
            self._say(f"stopped forwarding namespace {ns} of context {ctx}")

    # -- services ------------------------------------------------------------------------

    def add_service(self, namespace: str, service: str, context: str | None = None) -> None:
        """Forward one service of ``namespace`` (watching the namespace if it is not)."""
        ctx, ns = self._namespace(namespace, context)
        if not service or "/" in service:
            raise ControlError(f"'{service}' is not a service name")
        with self._lock:
            self._ready()
            if self._app.watches_all(ctx):
                everything = self._app.scope(ctx, "") or Scope()
                if everything.wants(service):
                    return
                everything.excluded.discard(service)
                self._app.refresh(ctx, ns)
                return
            scope = self._app.scope(ctx, ns)
            if scope is None:
                self._app.watch_namespace(ctx, ns, Scope(all=False, services={service}), "",
                                          wait=LIST_WAIT)
            elif scope.wants(service):
                return
            else:
                scope.excluded.discard(service)
                scope.services.add(service)
                self._app.refresh(ctx, ns)
            self._say(f"forwarding service {service} of namespace {ns} of context {ctx}")

    def remove_service(self, key: str) -> None:
        """Stop forwarding one service (``[CONTEXT/]NAMESPACE/SERVICE``); a service created
        later with the same name stays unforwarded until it is added again."""
        ctx, ns, service = self._service_key(key)
        with self._lock:
            self._ready()
            watched_ns = "" if self._app.watches_all(ctx) else ns
            scope = self._app.scope(ctx, watched_ns)
            if scope is None or not scope.wants(service):
                raise ControlError(f"service {ns}/{service} of context {ctx} is not forwarded",
                                   "not_found")
            if scope.all:
                scope.excluded.add(service)
            else:
                scope.services.discard(service)
            if scope.empty:
                self._app.unwatch_namespace(ctx, watched_ns)
            else:
                self._app.refresh(ctx, ns)
            self._say(f"stopped forwarding service {service} of namespace {ns} of context {ctx}")

    # -- connections -----------------------------------------------------------------------

    def reconnect(self, key: str) -> None:
        """Drop the forward's tunnels and back-off: its next connection (at once with -a)
        opens a fresh one to its first ready pod."""
        full = self._forward_key(key)
        with self._lock:
            self._ready()
            if not self._app.reconnect(full):
                raise ControlError(f"no forward {key!r}", "not_found")

    def reconnect_errored(self) -> list[str]:
        """``reconnect`` every forward the state store shows in error; returns their keys."""
        keys = [f.key for f in self._app.store.snapshot() if f.status == "error"]
        with self._lock:
            self._ready()
            for key in keys:
                self._app.reconnect(key)
        return keys

    def sync(self, namespace: str | None = None, context: str | None = None) -> None:
        """List again now (every watched namespace, or one): the registry is rebuilt from
        what the API server says."""
        with self._lock:
            self._ready()
            if namespace is None:
                targets = [(c, n) for (c, n), _s, _l in self._app.watched()]
            else:
                targets = [self._namespace(namespace, context)]
            for ctx, ns in targets:
                if not self._app.relist(ctx, ns, wait=LIST_WAIT):
                    raise ControlError(f"namespace {ns!r} of context {ctx!r} is not forwarded",
                                       "not_found")

    # -- helpers -------------------------------------------------------------------------

    def _ready(self) -> None:
        if self._app.stop_requested.is_set():
            raise ControlError("kubefwd is stopping", "unavailable")
        if not self._app.ready.is_set():
            raise ControlError("kubefwd is still starting", "unavailable")

    def _say(self, message: str) -> None:
        self._app.bus.publish(LogLine(level="info", message=message))

    def _watched(self, ctx: str, ns: str) -> WatchedNamespace:
        return next(w for w in self.namespaces() if (w.context, w.namespace) == (ctx, ns))

    def _namespace(self, namespace: str, context: str | None) -> tuple[str, str]:
        """(context, namespace) from ``NAME`` or ``CONTEXT/NAME`` and an optional context."""
        contexts = self.contexts
        if not contexts:
            raise ControlError("no context is loaded yet", "unavailable")
        name = namespace.strip()
        if "/" in name:
            prefix, _, name = name.rpartition("/")
            if context and context != prefix:
                raise ControlError(f"context {context!r} and '{namespace}' disagree")
            context = prefix
        ctx = context or contexts[0]
        if not is_dns_label(name):
            raise ControlError(f"'{name}' is not a namespace name")
        if ctx not in contexts:  # another context of the kubeconfig: loaded now
            from kubefwd.app.lookup import load_context

            load_context(self._app, ctx)
        return ctx, name

    def _service_key(self, key: str) -> tuple[str, str, str]:
        parts = key.strip().split("/")
        if len(parts) == 2:
            parts = [self.contexts[0] if self.contexts else "", *parts]
        if len(parts) != 3 or not all(parts):
            raise ControlError(f"'{key}' is not NAMESPACE/SERVICE or CONTEXT/NAMESPACE/SERVICE")
        ctx, ns = self._namespace(parts[1], parts[0])
        return ctx, ns, parts[2]

    def _forward_key(self, key: str) -> str:
        parts = key.strip().split("/")
        if len(parts) == 2 and self.contexts:
            parts = [self.contexts[0], *parts]
        if len(parts) != 3 or not all(parts):
            raise ControlError(f"'{key}' is not NAMESPACE/SERVICE or CONTEXT/NAMESPACE/SERVICE")
        return "/".join(parts)

