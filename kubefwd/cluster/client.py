"""The Kubernetes adapter's list/watch client, and the list and watch callables informers use.

Part of the Kubernetes adapter, together with ``kubeconfig`` (which loads the contexts and is
where ``kubernetes`` is imported); no other product module talks to the API. List and watch
talk HTTP/1.1 with ``http.client`` and hand back raw JSON dicts: deserializing hundreds of
objects into the generated models would cost more than the rest of start-up.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from kubefwd.cluster.kubeconfig import ClusterContext
from kubefwd.cluster.proxy import ProxyError, open_socket
from kubefwd.cluster.target import ApiTarget
from kubefwd.cluster.throttle import GIVE_UP_AFTER, ApiThrottle, is_throttled
from kubefwd.errors import ApiError, ExitCode
from kubefwd.support.sockets import hard_shutdown

__all__ = [
    "KubeClient",
    "NamespaceStatus",
    "WatchExpired",
    "watch_callables",
]

log = logging.getLogger(__name__)

# resource -> API path prefix, for the resources kubefwd reads.
_RESOURCES: dict[str, str] = {
    "services": "/api/v1",
    "pods": "/api/v1",
    "endpoints": "/api/v1",
    "namespaces": "/api/v1",
    "events": "/api/v1",
    "endpointslices": "/apis/discovery.k8s.io/v1",
}


# What ``KubeClient.namespace_status`` can tell of a namespace.
NamespaceStatus = Literal["exists", "missing", "forbidden"]


class WatchExpired(ApiError):
    """The watch's resourceVersion is too old (410 Gone): the caller must list again."""


class _Connection(http.client.HTTPConnection):
    """HTTP or HTTPS to an ApiTarget, with its TLS context and SNI name."""

    def __init__(self, target: ApiTarget, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._target = target
        self.tls_used: ssl.SSLContext | None = None  # the TLS context it was made with

    def connect(self) -> None:
        t = self._target
        if t.proxy is None:
            super().connect()
        else:
            self.sock = open_socket(t.proxy, t.host, t.port, timeout=self.timeout or 30.0)
        if t.scheme == "https":
            ctx = self.tls_used = t.tls_context()
            self.sock = ctx.wrap_socket(self.sock, server_hostname=t.server_hostname or t.host)


def _status_message(body: bytes) -> str:
    try:
        status = json.loads(body)
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    except ValueError:
        pass
    return body.decode("utf-8", "replace").strip()[:200]


_STATUS_WORDS = {401: "unauthorized", 403: "forbidden", 404: "not found"}

# Connections kept open between requests (a list's connection serves the watch that follows
# it, the namespace look-ups share a few): each spares a TCP and TLS handshake on both ends.
_IDLE_MAX = 16
_IDLE_FOR = 30.0  # seconds an idle connection is kept (servers close idle ones, too)

# How a connection kept open and closed by the server meanwhile shows when used again.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
          http.client.RemoteDisconnected, http.client.BadStatusLine, ssl.SSLEOFError,
          ssl.SSLZeroReturnError)


class _Stale(Exception):
    """A kept connection turned out closed before it answered: send again on a new one."""


@dataclass
class _Active:
    """A request in flight that ``interrupt(stop)`` may cut short."""

    stop: threading.Event | None
    sock: socket.socket | None


class KubeClient:
    """List and watch raw objects of one context. Thread-safe: every call has a connection
    of its own while it runs (a watch holds its connection for its whole life); a request
    that read its whole answer leaves its connection to the next one (HTTP keep-alive),
    unless the TLS credentials changed since it was made (an exec plugin's new client
    certificate)."""

    page_size = 500  # items per list request, as kubectl asks

    def __init__(self, context: ClusterContext, *, timeout: float = 30.0) -> None:
        self.context = context
        self.target = context.target
        self._timeout = timeout
        self._lock = threading.Lock()
        self._active: list[_Active] = []
        self._idle: list[tuple[float, _Connection]] = []  # (kept since, connection)
        self._closed = False
        self.throttle = self.target.throttle or ApiThrottle(f"context {context.name}")

    @property
    def url(self) -> str:
        t = self.target
        return f"{t.scheme}://{t.host}:{t.port}{t.base_path}"

    # -- requests

    def _path(self, resource: str, namespace: str, name: str = "") -> str:
        prefix = _RESOURCES.get(resource)
        if prefix is None:
            raise ValueError(f"unsupported resource {resource!r}")
        base = self.target.base_path + prefix
        if resource == "namespaces":
            path = f"{base}/namespaces"
        elif namespace:
            path = f"{base}/namespaces/{urllib.parse.quote(namespace, safe='')}/{resource}"
        else:
            path = f"{base}/{resource}"
        return f"{path}/{urllib.parse.quote(name, safe='')}" if name else path

    def _where(self, resource: str, namespace: str) -> str:
        if resource == "namespaces":
            return resource
        return f"{resource} in namespace {namespace}" if namespace else f"{resource} cluster-wide"

    def _request(
        self,
        path: str,
        timeout: float,
        stop: threading.Event | None,
    ) -> tuple[_Connection, http.client.HTTPResponse, _Active]:
        """Send a GET; the caller must ``_finish`` the returned handle."""
        kept = self._take_idle(timeout)
        if kept is not None:
            try:
                return self._send(kept, path, timeout, stop)
            except _Stale:
                pass
        return self._send(None, path, timeout, stop)

    def _take_idle(self, timeout: float) -> _Connection | None:
        """A connection kept open by an earlier request, if any is fresh enough and made
        with the TLS credentials a new connection would use now."""
        with self._lock:
            if not self._idle:
                return None
        tls = self.target.tls_context() if self.target.scheme == "https" else None
        now = time.monotonic()
        with self._lock:
            while self._idle:
                since, conn = self._idle.pop()
                if now - since < _IDLE_FOR and conn.sock is not None and conn.tls_used is tls:
                    break
                conn.close()
            else:
                return None
        conn.timeout = timeout
        assert conn.sock is not None
        try:
            conn.sock.settimeout(timeout)
        except OSError:
            conn.close()
            return None
        return conn

    def _send(
        self,
        kept: _Connection | None,
        path: str,
        timeout: float,
        stop: threading.Event | None,
    ) -> tuple[_Connection, http.client.HTTPResponse, _Active]:
        """``_request`` on ``kept`` (raising _Stale when the server had closed it) or on a
        new connection."""
        conn = kept if kept is not None else _Connection(self.target, timeout)
        headers = {"Accept": "application/json", "User-Agent": "kubefwd"}
        active = _Active(stop, None)
        try:
            try:
                headers.update(self.target.auth_headers())
                if kept is None:
                    conn.connect()
                active.sock = conn.sock
                with self._lock:
                    self._active.append(active)
                if stop is not None and stop.is_set():
                    raise ConnectionAbortedError("stopped")
                conn.putrequest("GET", path)
                for name, value in [*headers.items(), *self.target.extra_headers]:
                    conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
            except _STALE as e:
                if kept is None or (stop is not None and stop.is_set()):
                    raise  # a failure like any other, told below
                self._finish(conn, active)
                raise _Stale() from e
        except ProxyError as e:
            self._finish(conn, active)
            raise ApiError(
                f"cannot reach the API server at {self.url} (context {self.context.name}): {e}"
            ) from e
        except ssl.SSLError as e:
            self._finish(conn, active)
            raise ApiError(
                f"TLS error talking to the API server at {self.url} "
                f"(context {self.context.name}): {e}"
            ) from e
        except (OSError, http.client.HTTPException) as e:
            self._finish(conn, active)
            raise ApiError(
                f"cannot reach the API server at {self.url} "
                f"(context {self.context.name}): {e or type(e).__name__}"
            ) from e
        return conn, resp, active

    def _polite_request(
        self,
        path: str,
        timeout: float,
        stop: threading.Event | None,
        what: str,
    ) -> tuple[_Connection, http.client.HTTPResponse, _Active] | None:
        """``_request``, waiting out 429s (and 503s with Retry-After) as the server asks,
        shared with every other request to this server; None when ``stop`` was set while
        waiting. Gives up, returning the refusal, after GIVE_UP_AFTER seconds of them."""
        first_refusal: float | None = None
        while True:
            if not self.throttle.wait(stop):
                return None
            conn, resp, active = self._request(path, timeout, stop)
            retry_after = resp.getheader("Retry-After")
            if not is_throttled(resp.status, retry_after):
                self.throttle.accepted()
                return conn, resp, active
            now = time.monotonic()
            first_refusal = now if first_refusal is None else first_refusal
            if now - first_refusal > GIVE_UP_AFTER:
                return conn, resp, active
            try:
                resp.read()
            except (OSError, http.client.HTTPException):
                pass
            self._finish(conn, active)
            self.throttle.refused(resp.status, retry_after, what)

    def _finish(self, conn: _Connection, active: _Active,
                resp: http.client.HTTPResponse | None = None) -> None:
        """Done with a request: its connection is kept for the next one when ``resp`` (its
        answer) was read to the end and the server keeps the connection open; else closed."""
        keep = (resp is not None and resp.isclosed() and not resp.will_close
                and conn.sock is not None)
        with self._lock:
            if active in self._active:
                self._active.remove(active)
            if keep and not self._closed and len(self._idle) < _IDLE_MAX and not (
                    active.stop is not None and active.stop.is_set()):
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()

    def _raise_for(
        self, verb: str, resource: str, namespace: str, status: int, body: bytes
    ) -> None:
        message = _status_message(body)
        what = self._where(resource, namespace)
        if status == 410:
            raise WatchExpired(f"{verb} {what}: {message}", status=410, reason="Expired")
        word = _STATUS_WORDS.get(status, "")
        exit_code = ExitCode.CONFIG if status == 404 else None
        hint = ""
        if status in (401, 403):
            hint = f" (context {self.context.name})"
        # The CLI prints "kubefwd: error: <message>": only a specific word goes in front.
        lead = f"{word}: " if word else ""
        raise ApiError(
            f"{lead}cannot {verb} {what} ({status}): {message}{hint}",
            status=status,
            reason=word or "error",
            exit_code=exit_code,
        )

    def _get_json(
        self,
        verb: str,
        resource: str,
        namespace: str,
        path: str,
        stop: threading.Event | None = None,
    ) -> dict[str, Any]:
        sent = self._polite_request(path, self._timeout, stop,
                                    f"{verb} {self._where(resource, namespace)}")
        if sent is None:
            raise ApiError(f"{verb} {self._where(resource, namespace)}: stopped")
        conn, resp, active = sent
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self._finish(conn, active)
            raise ApiError(
                f"connection to the API server at {self.url} broke while reading "
                f"{self._where(resource, namespace)}: {e or type(e).__name__}"
            ) from e
        except BaseException:
            self._finish(conn, active)
            raise
        self._finish(conn, active, resp)
        if resp.status != 200:
            self._raise_for(verb, resource, namespace, resp.status, body)
        try:
            data = json.loads(body)
        except ValueError as e:
            raise ApiError(f"invalid JSON from {self.url}{path}: {e}") from e
        if not isinstance(data, dict):
            raise ApiError(f"unexpected answer from {self.url}{path}")
        return data

    # -- public API

    def list_namespaces(self) -> list[str]:
        """Names of all namespaces, sorted (for --all-namespaces)."""
        items, _ = self.list("namespaces", "")
        return sorted(str(i["metadata"]["name"]) for i in items)

    def list(
        self,
        resource: str,
        namespace: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        stop: threading.Event | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """All objects of ``resource`` in ``namespace`` ("" = all), and the list's RV.

        With ``stop``, ``interrupt(stop)`` aborts the request (it raises ApiError)."""
        query = {"limit": str(self.page_size)}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = []
        rv = ""
        while True:  # pages of page_size, as kubectl reads big lists
            path = self._path(resource, namespace) + "?" + urllib.parse.urlencode(query)
            data = self._get_json("list", resource, namespace, path, stop)
            items.extend(data.get("items") or [])
            metadata = data.get("metadata") or {}
            rv = str(metadata.get("resourceVersion") or rv)
            token = metadata.get("continue")
            if not token:
                return items, rv
            query["continue"] = str(token)

    def watch(
        self,
        resource: str,
        namespace: str,
        resource_version: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
        stop: threading.Event,
    ) -> Iterator[dict[str, Any]]:
        """Raw watch events (ADDED, MODIFIED, DELETED, BOOKMARK) after ``resource_version``.

        Ends when the server ends the stream (``timeout_seconds``) or when ``stop`` is set
        and ``interrupt(stop)`` is called; raises WatchExpired on 410 and ApiError otherwise.
        """
        query = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if resource_version:
            query["resourceVersion"] = resource_version
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        path = self._path(resource, namespace) + "?" + urllib.parse.urlencode(query)
        if stop.is_set():
            return
        # A dead server must not hang the watch forever: allow a margin past the timeout.
        sent = self._polite_request(path, timeout_seconds + 30, stop,
                                    f"watch {self._where(resource, namespace)}")
        if sent is None:
            return
        conn, resp, active = sent
        try:
            if resp.status != 200:
                body = resp.read()
                self._raise_for("watch", resource, namespace, resp.status, body)
            while not stop.is_set():
                try:
                    line = resp.readline()
                except (OSError, ValueError, http.client.HTTPException) as e:
                    if stop.is_set():
                        return
                    raise ApiError(
                        f"watch of {self._where(resource, namespace)} at {self.url} "
                        f"broke: {e or type(e).__name__}"
                    ) from e
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError as e:
                    raise ApiError(f"invalid watch event from {self.url}: {e}") from e
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    code = int(status.get("code") or 0)
                    raise_body = json.dumps(status).encode()
                    self._raise_for("watch", resource, namespace, code or 500, raise_body)
                yield event
        finally:
            self._finish(conn, active)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        """One object; ApiError (status 404 when it does not exist)."""
        return self._get_json("get", resource, namespace, self._path(resource, namespace, name))

    def pod_log(
        self,
        namespace: str,
        pod: str,
        *,
        container: str | None = None,
        tail_lines: int | None = None,
        since_seconds: int | None = None,
        follow: bool = False,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """The lines of a pod's log (without their line ends); with ``follow`` until the
        stream ends or ``stop`` is set (the request is then cut within 0.2 s)."""
        query: dict[str, str] = {}
        if container:
            query["container"] = container
        if tail_lines is not None:
            query["tailLines"] = str(tail_lines)
        if since_seconds is not None:
            query["sinceSeconds"] = str(since_seconds)
        if follow:
            query["follow"] = "true"
        path = self._path("pods", namespace, pod) + "/log"
        if query:
            path += "?" + urllib.parse.urlencode(query)
        stop = stop if stop is not None else threading.Event()
        what = f"the log of pod {namespace}/{pod}"
        sent = self._polite_request(path, self._timeout, stop, f"get {what}")
        if sent is None:
            return
        conn, resp, active = sent
        done = threading.Event()
        watcher = threading.Thread(target=self._cut_when, args=(stop, done),
                                   name="kubefwd/log-stop", daemon=True)
        try:
            if resp.status != 200:
                body = resp.read()
                self._raise_for("get", "pods", namespace, resp.status, body)
            if conn.sock is not None:
                conn.sock.settimeout(None if follow else self._timeout)
            watcher.start()
            while not stop.is_set():
                try:
                    raw = resp.readline()
                except (OSError, http.client.HTTPException, ValueError):
                    if stop.is_set():
                        return
                    raise ApiError(f"the stream of {what} broke") from None
                if not raw:
                    return
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        finally:
            done.set()
            if watcher.ident is not None:
                watcher.join(5)
            self._finish(conn, active)

    def _cut_when(self, stop: threading.Event, done: threading.Event) -> None:
        while not done.is_set():
            if stop.wait(0.2):
                self.interrupt(stop)
                return

    def interrupt(self, stop: threading.Event) -> None:
        """Cut short the lists and watches started with ``stop`` (set it first): a watch
        returns at once, a list raises ApiError."""
        with self._lock:
            active = [a for a in self._active if a.stop is stop]
        for a in active:
            if a.sock is not None:
                hard_shutdown(a.sock)

    def namespace_status(self, namespace: str) -> NamespaceStatus:
        """Whether ``namespace`` exists: "exists", "missing" (404), or "forbidden" (403: we
        may not get Namespace objects, as users with namespace-scoped rights often may not).
        Any other failure raises ApiError."""
        path = self._path("namespaces", "", namespace)
        try:
            self._get_json("get", "namespaces", "", path)
        except ApiError as e:
            if e.status == 404:
                return "missing"
            if e.status == 403:
                return "forbidden"
            raise
        return "exists"

    def close(self) -> None:
        """Interrupt every request in flight; watches return at once. Connections kept
        open are closed, and none is kept from now on."""
        with self._lock:
            active = list(self._active)
            idle, self._idle = self._idle, []
            self._closed = True
        for _, conn in idle:
            conn.close()
        for a in active:
            if a.stop is not None:
                a.stop.set()
            if a.sock is not None:
                hard_shutdown(a.sock)


def watch_callables(
    client: KubeClient,
    resource: str,
    namespace: str,
    *,
    label_selector: str = "",
    field_selector: str = "",
    timeout_seconds: int = 300,
    stop: threading.Event,
) -> tuple[
    Callable[[], tuple[list[dict[str, Any]], str]],
    Callable[[str], Iterator[dict[str, Any]]],
]:
    """The list and watch callables an informer loop needs, bound to one resource."""

    def list_fn() -> tuple[list[dict[str, Any]], str]:
        return client.list(
            resource,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            stop=stop,
        )

    def watch_fn(rv: str) -> Iterator[dict[str, Any]]:
        return client.watch(
            resource,
            namespace,
            rv,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=timeout_seconds,
            stop=stop,
        )

    return list_fn, watch_fn

