"""``SimCluster``: the store, controllers, kubelet and API server, started and stopped as one.

    with SimCluster(manifests=[...], contexts=("sim", "sim2")) as cluster:
        subprocess.run(["kubectl", "--kubeconfig", cluster.kubeconfig_path, "get", "pods"])

The kubeconfig is written (temp file + rename) only once the server accepts connections, so a
script can wait for the file to appear. Fault-injection helpers drop connections, expire the
watch history, answer 403s, slow port-forwards down, and kill, un-ready or delete pods;
``rollout_restart`` replaces a Deployment's pods one by one, as ``kubectl rollout restart``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kubefwd.sim import tls as tlsgen
from kubefwd.sim.admission import Admission
from kubefwd.sim.apiserver import ApiServer
from kubefwd.sim.controllers import Controllers, NamespaceReaper, mark_terminating
from kubefwd.sim.manifests import parse_documents
from kubefwd.sim.store import BY_KIND, Obj, StatusError, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Manifests = str | Path | Obj | Iterable[Any] | None
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# Deleting these is refused, as a real API server does.
_PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
# Namespaced kinds in the order a namespace deletion removes them (owners before pods).
_CASCADE_ORDER = ("Deployment", "StatefulSet", "Service", "Pod", "Endpoints", "EndpointSlice")


class KubeconfigWriteError(OSError):
    """The kubeconfig file could not be written (as opposed to the server not starting)."""


class SimCluster:
    """A simulated Kubernetes cluster served over real sockets."""

    def __init__(
        self,
        *,
        manifests: Manifests = None,
        contexts: Iterable[str] = ("sim",),
        port: int = 0,
        tls: bool = True,
        start_delay: float = 0.0,
        host: str = "127.0.0.1",
        kubeconfig_path: str | Path | None = None,
        version: str = "v1.31.0",
        pod_ip_range: str | None = None,
        require_token: bool | None = None,
        path_prefix: str = "",
        tls_hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    ) -> None:
        self.contexts = list(contexts) or ["sim"]
        self._manifests = manifests
        self._port = port
        self._tls = tls
        self._start_delay = start_delay
        self._host = host
        self._version = version
        self._pod_ip_range = pod_ip_range or random_pod_range()
        # kubectl sends no credentials to a plain-HTTP server, so by default plain HTTP is
        # open (like the API server's old insecure port); a wrong token is still refused.
        self._require_token = tls if require_token is None else require_token
        self._path_prefix = path_prefix
        self._tls_hosts = tls_hosts  # the names and addresses the serving certificate has
        self._own_dir: str | None = None
        self._kubeconfig_arg = kubeconfig_path
        # Where the kubeconfig goes; without kubeconfig_path, a private temporary directory
        # made by start() and removed by stop().
        self.kubeconfig_path = Path(kubeconfig_path) if kubeconfig_path is not None else Path()
        self.token = secrets.token_urlsafe(24)
        self.credentials: tlsgen.Credentials | None = None
        self._forbidden: set[tuple[str, str | None]] = set()
        self._pf_latency = 0.0
        self._lock = threading.Lock()
        # API requests served or refused, by (verb, resource); see admit_request.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.refused: collections.Counter[tuple[str, str]] = collections.Counter()
        self._throttle: tuple[int, int, float, int | None] | None = None
        # Who the requests acted as: (user, groups, impersonated by or ""), counted.
        self.identities: collections.Counter[tuple[str, tuple[str, ...], str]] = \
            collections.Counter()
        self._no_impersonating: set[tuple[str, str]] = set()  # ("users"/"groups", name)
        self.store = Store(admit=Admission(lambda: self.store))
        self.kubelet: Any = None
        self.controllers: Controllers | None = None
        self.api: ApiServer | None = None
        self._reaper: NamespaceReaper | None = None

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SimCluster:
        try:
            if self._kubeconfig_arg is None:
                self._own_dir = tempfile.mkdtemp(prefix="kubefwd-sim-")
                self.kubeconfig_path = Path(self._own_dir) / "kubeconfig"
            for name in SYSTEM_NAMESPACES:
                self.store.create({"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": name}})
            self.kubelet = _make_kubelet(self._on_pod_status, self._start_delay,
                                         self._pod_ip_range)
            self.controllers = Controllers(self.store, self.kubelet, self.delete_object)
            self._reaper = NamespaceReaper(self._finalize_namespace)
            self._reaper.start()
            self.store.add_listener(self.controllers.on_event)
            if self._manifests is not None:
                self.apply(self._manifests)
            context = None
            if self._tls:
                self.credentials = tlsgen.generate(self._tls_hosts)
                context = self.credentials.server_context()
            self.api = ApiServer(self, token=self.token, host=self._host, port=self._port,
                                 ssl_context=context, version=self._version,
                                 require_token=self._require_token,
                                 path_prefix=self._path_prefix)
            self.api.start()
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        if self._reaper is not None:
            self._reaper.stop_and_join()
        self.store.close()
        if self.kubelet is not None:
            self.kubelet.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    @property
    def url(self) -> str:
        assert self.api is not None, "the cluster is not started"
        return self.api.url

    @property
    def port(self) -> int:
        assert self.api is not None, "the cluster is not started"
        return self.api.port

    @property
    def ca_pem(self) -> bytes | None:
        return self.credentials.ca_pem if self.credentials else None

    def issue_client_cert(self, user: str, groups: Iterable[str] = (), *,
                          expires_in: float = 3600.0) -> tuple[bytes, bytes]:
        """A client certificate and key (PEM) this cluster's CA signs for ``user`` in
        ``groups`` (CN and O, as Kubernetes reads them), valid ``expires_in`` seconds: the
        API server takes it instead of a token while it is valid."""
        assert self.credentials is not None, "client certificates need TLS"
        return self.credentials.issue_client(user, tuple(groups), expires_in=expires_in)

    def add_token(self, user: str, groups: Iterable[str] = ()) -> str:
        """A new bearer token the API server takes as ``user`` in ``groups``."""
        assert self.api is not None, "the cluster is not started"
        token = secrets.token_urlsafe(24)
        self.api.tokens[token] = (user, (*groups, "system:authenticated"))
        return token

    def refuse_impersonation(self, *, user: str | None = None,
                             group: str | None = None) -> None:
        """Answer 403 to requests impersonating ``user`` or ``group`` (as RBAC without the
        ``impersonate`` verb does); anyone else may be impersonated."""
        with self._lock:
            if user is not None:
                self._no_impersonating.add(("users", user))
            if group is not None:
                self._no_impersonating.add(("groups", group))

    def impersonation_refused(self, requester: str, user: str,
                              groups: tuple[str, ...]) -> tuple[str, str] | None:
        """What the API server asks: (kind, name) of the first identity ``requester`` may
        not impersonate, or None."""
        with self._lock:
            if ("users", user) in self._no_impersonating:
                return "users", user
            for group in groups:
                if ("groups", group) in self._no_impersonating:
                    return "groups", group
        return None

    def record_identity(self, user: str, groups: tuple[str, ...], impersonator: str) -> None:
        with self._lock:
            self.identities[(user, groups, impersonator)] += 1

    def users_seen(self) -> set[str]:
        """Users that requests acted as (after impersonation)."""
        with self._lock:
            return {user for user, _groups, _by in self.identities}

    def cut_idle_connections(self, after: float | None) -> None:
        """Close API connections (watches, port-forwards included) idle for ``after``
        seconds, as a load balancer with an idle timeout does; None turns it off."""
        assert self.api is not None
        self.api.cut_idle(after)

    @property
    def idle_cuts(self) -> int:
        """Connections the idle cut closed so far."""
        return self.api.idle_cuts if self.api is not None else 0

    def kubeconfig(self) -> Obj:
        import base64

        cluster: Obj = {"server": self.url}
        if self.credentials is not None:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.credentials.ca_pem).decode("ascii")
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": ctx, "cluster": dict(cluster)} for ctx in self.contexts],
            "users": [{"name": "sim-user", "user": {"token": self.token}}],
            "contexts": [{"name": ctx, "context": {"cluster": ctx, "user": "sim-user",
                                                   "namespace": "default"}}
                         for ctx in self.contexts],
            "current-context": self.contexts[0],
        }

    def _write_kubeconfig(self) -> None:
        path = self.kubeconfig_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".kubeconfig-", dir=path.parent)
        except OSError as e:
            raise KubeconfigWriteError(e.errno, e.strerror, str(path)) from e
        try:
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(self.kubeconfig(), f, sort_keys=False)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise KubeconfigWriteError(e.errno, e.strerror, str(path)) from e
            raise

    # -- what the API server needs ----------------------------------------------------------

    def _on_pod_status(self, namespace: str, name: str, status: Obj) -> None:
        pod = self.store.get("Pod", namespace, name)
        if pod is None:
            return
        merged = dict(pod.get("status") or {})
        merged.update(status)
        self.store.patch_status("Pod", namespace, name, merged)

    def delete_object(self, kind: str, namespace: str, name: str) -> Obj:
        """Delete like the API server: pods terminate first, namespaces take their contents."""
        if kind == "Pod":
            pod = self.store.update("Pod", namespace, name, mark_terminating)
            if pod is None:
                raise StatusError(404, "NotFound", f'pods "{name}" not found',
                                  details={"name": name, "kind": "pods"})
            if self.controllers is not None:
                self.controllers.stop_pod(namespace, name, pod["metadata"]["uid"])
            return self.store.delete("Pod", namespace, name)
        if kind == "Namespace":
            if name in _PROTECTED_NAMESPACES:
                raise StatusError(403, "Forbidden", f'namespaces "{name}" is forbidden: this '
                                  "namespace may not be deleted",
                                  details={"name": name, "kind": "namespaces"})

            def terminating(obj: Obj) -> None:
                mark_terminating(obj)
                obj["status"] = {"phase": "Terminating"}

            current = self.store.get("Namespace", "", name, copy_=False)
            if current is None:
                raise StatusError(404, "NotFound", f'namespaces "{name}" not found',
                                  details={"name": name, "kind": "namespaces"})
            if current["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(current)
            ns = self.store.update("Namespace", "", name, terminating)
            if self._reaper is None:
                self._finalize_namespace(name)
            else:
                self._reaper.schedule(name)
            return ns or copy.deepcopy(current)
        return self.store.delete(kind, namespace, name)

    def _finalize_namespace(self, name: str) -> None:
        """Delete what is left in a Terminating namespace, then the namespace itself."""
        for cascade_kind in _CASCADE_ORDER:
            for obj in self.store.view(cascade_kind, name):
                with contextlib.suppress(StatusError):
                    self.delete_object(cascade_kind, name, obj["metadata"]["name"])
        with contextlib.suppress(StatusError):
            self.store.delete("Namespace", "", name)

    def pod_connector(self, namespace: str, name: str) -> Callable[[int], socket.socket]:
        kubelet = self.kubelet

        def connect(port: int) -> socket.socket:
            sock: socket.socket = kubelet.connect(namespace, name, port)
            return sock

        return connect

    def pod_log_source(self, namespace: str, name: str, container: str | None) -> Any:
        """The log of a container, readable from a cursor (see ``podlogs``), or None."""
        source = getattr(self.kubelet, "log_source", None)
        return source(namespace, name, container) if source is not None else None

    def pod_logs(self, namespace: str, name: str, container: str | None) -> str:
        logs = getattr(self.kubelet, "logs", None)
        return str(logs(namespace, name, container)) if logs is not None else ""

    def is_forbidden(self, resource: str, verb: str) -> bool:
        with self._lock:
            return (resource, None) in self._forbidden or (resource, verb) in self._forbidden

    @property
    def port_forward_delay(self) -> float:
        return self._pf_latency

    # -- helpers for tests and demos ----------------------------------------------------------

    def apply(self, manifests: Manifests) -> list[Obj]:
        """Create or update objects from YAML text, a file path, a dict or a list of dicts.

        Namespaces the objects name are created when missing (a convenience for tests).
        """
        objs = _load(manifests)
        result = []
        for obj in objs:
            info = BY_KIND.get(obj.get("kind", ""))
            if info is None:
                raise StatusError(404, "NotFound", f"no kind {obj.get('kind')!r} is served here")
            meta = obj.setdefault("metadata", {})
            if info.namespaced:
                ns = meta.setdefault("namespace", "default")
                if self.store.get("Namespace", "", ns) is None:
                    self.store.create({"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": ns}})
            else:
                ns = ""
            current = self.store.get(info.kind, ns, meta.get("name", ""))
            if current is None:
                result.append(self.store.create(obj))
            else:
                obj = dict(obj)
                obj["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
                result.append(self.store.replace(obj))
        return result

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> Obj | None:
        """Set ``spec.replicas`` of a Deployment or StatefulSet."""

        def set_replicas(obj: Obj) -> None:
            obj.setdefault("spec", {})["replicas"] = replicas

        return self.store.update(kind, namespace, name, set_replicas)

    def rollout_restart(self, namespace: str, name: str) -> Obj:
        """What ``kubectl rollout restart deployment/NAME`` does: stamp the pod template's
        ``kubectl.kubernetes.io/restartedAt`` annotation, so the controller replaces every pod
        (one by one, as the Deployment's strategy allows). Returns the updated Deployment."""
        for _attempt in range(10):
            deploy = self.store.get("Deployment", namespace, name)
            if deploy is None:
                raise StatusError(404, "NotFound",
                                  f'deployments.apps "{name}" not found',
                                  details={"name": name, "group": "apps",
                                           "kind": "deployments"})
            template = deploy.setdefault("spec", {}).setdefault("template", {})
            annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
            # Sub-second, unlike kubectl's: two restarts within a second both take effect.
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ")
            annotations["kubectl.kubernetes.io/restartedAt"] = stamp
            try:
                return self.store.replace(deploy)  # keeps its status, like a PATCH
            except StatusError as err:
                if err.code != 409:
                    raise
        raise StatusError(409, "Conflict", f'deployments.apps "{name}" kept changing')

    def delete(self, kind: str, namespace: str, name: str) -> Obj:
        return self.delete_object(kind, namespace, name)

    def delete_pod(self, namespace: str, name: str) -> Obj:
        return self.delete_object("Pod", namespace, name)

    def kill_pod(self, namespace: str, name: str) -> None:
        self.kubelet.kill_pod(namespace, name)

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> None:
        self.kubelet.set_ready(namespace, name, ready)

    def restart_apiserver(self, downtime: float = 0.0) -> None:
        """Drop every connection (API calls, watches, port-forwards); state, port, CA stay.

        With ``downtime`` the port refuses connections for that long first (blocks meanwhile).
        """
        assert self.api is not None
        self.api.restart(downtime)

    def expire_watch_history(self) -> None:
        """Open watches end with 410 and no known resourceVersion can be resumed from."""
        self.store.expire_watch_history()

    def forbid(self, resource: str, verb: str | None = None) -> None:
        """Answer 403 to ``verb`` (every verb when None) on ``resource`` (e.g. "pods")."""
        with self._lock:
            self._forbidden.add((resource, verb))

    def allow(self, resource: str, verb: str | None = None) -> None:
        """Undo ``forbid`` for the same arguments."""
        with self._lock:
            self._forbidden.discard((resource, verb))

    def throttle(self, *, status: int = 429, retry_after: int = 1,
                 seconds: float | None = None, requests: int | None = None) -> None:
        """Refuse every API request on a resource (lists, watches, gets, port-forwards) with
        ``status`` (429 or 503) and ``Retry-After: retry_after``, for ``seconds`` from now or
        for the next ``requests`` requests (whichever ends first; neither: until
        ``stop_throttling``)."""
        until = time.monotonic() + seconds if seconds is not None else float("inf")
        with self._lock:
            self._throttle = (status, retry_after, until, requests)

    def stop_throttling(self) -> None:
        with self._lock:
            self._throttle = None

    def admit_request(self, verb: str, resource: str) -> tuple[int, int] | None:
        """Count one API request; (status, retry-after) when the throttle refuses it."""
        key = (verb, resource)
        with self._lock:
            self.requests[key] += 1
            if self._throttle is None:
                return None
            status, retry_after, until, left = self._throttle
            if time.monotonic() >= until or left == 0:
                self._throttle = None
                return None
            if left is not None:
                self._throttle = (status, retry_after, until, left - 1)
            self.refused[key] += 1
            return status, retry_after

    def request_count(self, verb: str | None = None, resource: str | None = None, *,
                      refused: bool = False) -> int:
        """Requests (or, with ``refused``, refused requests) matching verb and resource."""
        with self._lock:
            counts = self.refused if refused else self.requests
            return sum(n for (v, r), n in counts.items()
                       if (verb is None or v == verb) and (resource is None or r == resource))

    def reset_request_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.refused.clear()
            self.identities.clear()

    def port_forward_latency(self, seconds: float) -> None:
        """Add ``seconds`` of delay to port-forward traffic (new port-forwards)."""
        self._pf_latency = seconds

    def pods(self, namespace: str | None = None, label_selector: str = "") -> list[Obj]:
        return self.store.list("Pod", namespace, label_selector=label_selector)[0]

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0,
                 interval: float = 0.02) -> T:
        """Poll ``predicate`` until it returns something truthy; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        wake = threading.Event()
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            wake.wait(interval)

    def wait_ready(self, namespace: str | None = None, timeout: float = 10.0) -> list[Obj]:
        """Wait until every pod (of ``namespace``) is Running and Ready and workloads are full."""

        def ready() -> list[Obj] | None:
            pods = self.store.view("Pod", namespace)
            for pod in pods:
                status = pod.get("status") or {}
                if status.get("phase") != "Running" or not any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or []
                ):
                    return None
            for kind in ("Deployment", "StatefulSet"):
                for obj in self.store.view(kind, namespace):
                    want = (obj.get("spec") or {}).get("replicas", 1)
                    if (obj.get("status") or {}).get("readyReplicas", 0) != want:
                        return None
            return pods or [{}]

        result = self.wait_for(ready, timeout, interval=0.05)
        return [copy.deepcopy(p) for p in result if p]


def random_pod_range() -> str:
    """A /20 of pod IPs far from kubefwd's 127.[1+cluster].[27+ns].x addresses.

    Chosen at random so that clusters in concurrent processes (parallel test runs) do not
    hand out the same pod IP:port.
    """
    second = secrets.randbelow(64) + 64  # 127.64.0.0 - 127.127.255.255
    third = secrets.randbelow(16) * 16
    return f"127.{second}.{third}.0/20"


def _load(manifests: Manifests) -> list[Obj]:
    if manifests is None:
        return []
    if isinstance(manifests, Path):
        return parse_documents(manifests.read_text())
    if isinstance(manifests, str):
        return parse_documents(manifests)
    if isinstance(manifests, dict):
        return [dict(manifests)]
    out: list[Obj] = []
    for item in manifests:
        out.extend(_load(item))
    return out


def _make_kubelet(on_status: Callable[[str, str, Obj], None], start_delay: float,
                  ip_range: str) -> Any:
    from kubefwd.sim.kubelet import Kubelet

    return Kubelet(on_status=on_status, start_delay=start_delay, ip_range=ip_range)
