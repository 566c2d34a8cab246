"""Read-only look-ups for the outputs (the TUI's browser and Logs tab, the REST API).

Raw objects as the API server returns them, through the clients kubefwd holds (one per
loaded context): contexts (every one of the kubeconfig, the loaded ones first), namespaces,
services, pods, one pod, a pod's log (its last lines, optionally followed until a stop Event
is set), events and EndpointSlices. A context of the kubeconfig that is not loaded yet is
loaded on its first look-up. Errors are a ``ControlError`` ("not_found" for an unknown
context or object, "unavailable" before the clients exist, "invalid" for a bad name) or the
client's ``ApiError``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kubefwd.app.control import ControlError
from kubefwd.cluster.client import KubeClient
from kubefwd.errors import ApiError, KubefwdError
from kubefwd.support.dnsnames import is_dns_label

if TYPE_CHECKING:
    from kubefwd.app.program import Kubefwd


class Lookups:
    """Look-ups against the clusters of one run (see the module docstring)."""

    def __init__(self, app: Kubefwd) -> None:
        self._app = app

    def contexts(self) -> list[str]:
        """Every context of the kubeconfig: the loaded ones first, in their order."""
        return self._app.kubeconfig_contexts()

    def namespaces(self, context: str | None = None) -> list[dict[str, Any]]:
        return self._list("namespaces", "", context)

    def services(self, namespace: str, context: str | None = None) -> list[dict[str, Any]]:
        return self._list("services", _name(namespace, "namespace"), context)

    def pods(self, namespace: str, context: str | None = None,
             selector: str = "") -> list[dict[str, Any]]:
        return self._list("pods", _name(namespace, "namespace"), context, selector)

    def pod(self, namespace: str, name: str, context: str | None = None) -> dict[str, Any]:
        client = self._client(context)
        try:
            return client.get("pods", _name(namespace, "namespace"), name)
        except ApiError as exc:
            if exc.status == 404:
                raise ControlError(f"no pod {namespace}/{name} in context "
                                   f"{client.context.name}", "not_found") from None
            raise

    def pod_logs(self, namespace: str, pod: str, *, context: str | None = None,
                 container: str | None = None, tail_lines: int | None = 100,
                 since_seconds: int | None = None, follow: bool = False,
                 stop: threading.Event | None = None) -> Iterator[str]:
        """One line each (without its line end); with ``follow``, until the stream ends or
        ``stop`` is set."""
        if tail_lines is not None and tail_lines < 0:
            raise ControlError("tail_lines must not be negative")
        if since_seconds is not None and since_seconds <= 0:
            raise ControlError("since_seconds must be positive")
        client = self._client(context)
        ns = _name(namespace, "namespace")
        try:
            yield from client.pod_log(ns, pod, container=container, tail_lines=tail_lines,
                                      since_seconds=since_seconds, follow=follow, stop=stop)
        except ApiError as exc:
            if exc.status == 404:
                raise ControlError(f"no pod {ns}/{pod} in context {client.context.name}",
                                   "not_found") from None
            raise

    def events(self, namespace: str, context: str | None = None) -> list[dict[str, Any]]:
        return self._list("events", _name(namespace, "namespace"), context)

    def endpoints(self, namespace: str, service: str,
                  context: str | None = None) -> list[dict[str, Any]]:
        """The EndpointSlices of ``service``."""
        return self._list("endpointslices", _name(namespace, "namespace"), context,
                          f"kubernetes.io/service-name={service}")

    # -- helpers ---------------------------------------------------------------------------

    def _client(self, context: str | None) -> KubeClient:
        names = self._app.context_names()
        if not names:
            raise ControlError("no context is loaded yet", "unavailable")
        name = context or names[0]
        if name not in names:
            load_context(self._app, name)
        return self._app._client(name)

    def _list(self, resource: str, namespace: str, context: str | None,
              selector: str = "") -> list[dict[str, Any]]:
        items, _ = self._client(context).list(resource, namespace, label_selector=selector)
        return items


def load_context(app: Kubefwd, name: str) -> None:
    """Load kubeconfig context ``name`` at run time; ControlError when there is no such
    context (or kubefwd is stopping, or its credentials cannot be loaded)."""
    if app.stop_requested.is_set():
        raise ControlError("kubefwd is stopping", "unavailable")
    if not app.ready.is_set():
        raise ControlError("kubefwd is still starting", "unavailable")
    known = app.kubeconfig_contexts()
    if name not in known:
        raise ControlError(f"unknown context {name!r}; known: {', '.join(known)}",
                           "not_found")
    try:
        app.load_context(name)
    except KubefwdError as exc:
        raise ControlError(f"cannot use context {name!r}: {exc}", "unavailable") from None


def _name(value: str, what: str) -> str:
    if not is_dns_label(value):
        raise ControlError(f"'{value}' is not a {what} name")
    return value
