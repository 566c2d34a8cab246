"""The simulated API server: HTTP/1.1 (TLS or plain) over real sockets, a thread per connection.

It serves discovery, REST verbs on the store's kinds (``rest``), chunked watch streams
(``watchstream``), and hands port-forward upgrades over to ``kubefwd.sim.portforward``; this
module owns the sockets, the request parsing, the routing and that hand-off. Errors are
``Status`` objects like a real API server's. Faults (dropped connections, 403s, latency) are
injected by ``SimCluster`` through this class.
"""

from __future__ import annotations

import base64
import email.message
import importlib
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from kubefwd.sim import discovery, openapi, tables
from kubefwd.sim.discovery import GROUP_VERSIONS
from kubefwd.sim.httpconn import Connection, ConnectionClosed, Request, send_json
from kubefwd.sim.rest import (
    SUBRESOURCES,
    delete_collection,
    delete_options_dry_run,
    forbidden,
    parse_object,
    patch_object,
    scale,
    serve_log,
    verb_of,
)
from kubefwd.sim.store import (
    BY_KIND,
    RESOURCES,
    Filter,
    Obj,
    ResourceInfo,
    StatusError,
    Store,
    bad_request,
    not_found,
)
from kubefwd.sim.tls import peer_identity
from kubefwd.sim.watchstream import serve_watch

log = logging.getLogger(__name__)

_BY_PATH: dict[tuple[str, str], ResourceInfo] = {(r.api_version, r.plural): r for r in RESOURCES}


class Backend(Protocol):
    """What the API server needs from the cluster around it."""

    store: Store

    def delete_object(self, kind: str, namespace: str, name: str) -> Obj: ...

    def pod_connector(self, namespace: str, name: str) -> Callable[[int], socket.socket]: ...

    def pod_logs(self, namespace: str, name: str, container: str | None) -> str: ...

    def is_forbidden(self, resource: str, verb: str) -> bool: ...

    @property
    def port_forward_delay(self) -> float: ...


class ApiServer:
    """Listens on ``host:port`` and serves the Kubernetes API from ``backend``."""

    # A watch that asked for bookmarks gets one after this long without an event: about once
    # a minute, as kube-apiserver sends them (tests that need them sooner set it lower).
    bookmark_interval = 60.0
    default_watch_timeout = 1800.0
    # Who a request with the cluster's bearer token is.
    token_user = ("sim-user", ("system:authenticated",))

    def __init__(self, backend: Backend, *, token: str, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, version: str = "v1.31.0",
                 require_token: bool = True, path_prefix: str = "") -> None:
        self.backend = backend
        self.token = token
        self.require_token = require_token
        self.ssl_context = ssl_context
        self.version = version
        # Served under this path only (a server URL such as https://host:port/k8s/c1).
        # More bearer tokens and who they are (SimCluster.add_token).
        self.tokens: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.path_prefix = "/" + path_prefix.strip("/") if path_prefix.strip("/") else ""
        self.idle_cuts = 0  # connections closed by the idle cut
        self._idle_after: float | None = None
        self._idle_thread: threading.Thread | None = None
        self._listener = socket.create_server((host, port), backlog=512)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._threads: set[threading.Thread] = set()
        self._counter = 0
        self._stopping = threading.Event()
        self._accept_thread = self._new_accept_thread()

    def _new_accept_thread(self) -> threading.Thread:
        return threading.Thread(target=self._accept_loop, args=(self._listener,),
                                name=f"sim-api-accept-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path_prefix}"

    def cut_idle(self, after: float | None) -> None:
        """Close every connection (API calls, watches, port-forwards) that carried no data
        either way for ``after`` seconds, as a load balancer or a kubelet with an idle
        timeout does; None turns it off. TCP keepalive probes carry no data: they do not
        count, as for such a load balancer."""
        with self._lock:
            self._idle_after = after
            if after is None or self._idle_thread is not None or self._stopping.is_set():
                return
            self._idle_thread = threading.Thread(target=self._idle_loop,
                                                 name=f"sim-api-idle-{self.port}", daemon=True)
            self._idle_thread.start()

    def _idle_loop(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                after = self._idle_after
                conns = list(self._connections)
            if after is None:
                continue
            for conn in conns:
                idle = _idle_seconds(conn.sock)
                if idle is not None and idle >= after and not conn.dropped.is_set():
                    log.debug("cutting %s, idle for %.1fs", conn.peer, idle)
                    with self._lock:
                        self.idle_cuts += 1
                    conn.drop()

    def start(self) -> None:
        self._accept_thread.start()

    def drop_connections(self) -> None:
        """Drop every open connection (API calls, watches, port-forwards); keep listening."""
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.drop()
        self.backend.store.wake_watches()

    def restart(self, downtime: float = 0.0) -> None:
        """Act like a restarting API server: drop every connection and, for ``downtime``
        seconds, refuse new ones; then listen again on the same port (same CA and token)."""
        if downtime <= 0:
            self.drop_connections()
            return
        self._close_listener()
        self.drop_connections()
        if self._stopping.wait(downtime):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            self._listener = socket.create_server((self.host, self.port), backlog=512)
            self._accept_thread = self._new_accept_thread()
            self._accept_thread.start()

    def _close_listener(self) -> None:
        with self._lock:
            listener, thread = self._listener, self._accept_thread
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(5.0)

    def stop(self) -> None:
        self._stopping.set()
        self._close_listener()
        self.drop_connections()
        if self._idle_thread is not None:
            self._idle_thread.join(5.0)
        deadline = time.monotonic() + 10.0
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                break
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                log.warning("API server threads still running: %s", [t.name for t in threads])
                break

    # -- connections ------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                raw, addr = listener.accept()
            except OSError:
                if self._stopping.is_set() or listener.fileno() < 0:
                    return
                self._stopping.wait(0.05)  # e.g. out of file descriptors: do not spin
                continue
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(raw, f"{addr[0]}:{addr[1]}")
            with self._lock:
                if self._stopping.is_set():
                    raw.close()
                    return
                self._counter += 1
                thread = threading.Thread(
                    target=self._serve_connection, args=(conn,),
                    name=f"sim-api-conn-{self._counter}", daemon=True,
                )
                self._connections.add(conn)
                self._threads.add(thread)
            thread.start()

    def _serve_connection(self, conn: Connection) -> None:
        try:
            if self.ssl_context is not None:
                # A handshake never finished is cut like an idle connection: while it runs
                # the socket is the TLS layer's, out of the idle cut's reach.
                conn.sock.settimeout(min(10.0, self._idle_after or 10.0))
                tls = self.ssl_context.wrap_socket(conn.sock, server_side=True)
                tls.settimeout(None)
                conn.sock = tls
                conn.identity = peer_identity(tls)
            while not conn.dropped.is_set() and not self._stopping.is_set():
                if not self._serve_request(conn):
                    break
        except (ConnectionClosed, OSError, ssl.SSLError):
            pass
        except Exception:
            log.exception("API connection from %s failed", conn.peer)
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())

    def _serve_request(self, conn: Connection) -> bool:
        """Serve one request; False when the connection must end."""
        head = conn.read_head()
        if head is None:
            return False
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            send_json(conn, 400, _status(400, "BadRequest", "malformed request line"), close=True)
            return False
        headers = email.message.Message()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
        try:
            body = conn.read_body(headers)
        except ValueError:
            send_json(conn, 400, _status(400, "BadRequest", "malformed request body framing"),
                       close=True)
            return False
        url = urlsplit(target)
        path = unquote(url.path)
        if self.path_prefix:
            if path != self.path_prefix and not path.startswith(self.path_prefix + "/"):
                send_json(conn, 404, _status(404, "NotFound", "the server could not find the "
                                             "requested resource"))
                return True
            path = path[len(self.path_prefix):] or "/"
        req = Request(method.upper(), path, parse_qs(url.query), headers, body)
        keep_alive = version == "HTTP/1.1" and (headers.get("Connection", "").lower() != "close")
        conn.responded = False
        try:
            return self._dispatch(conn, req) and keep_alive
        except StatusError as err:
            if conn.responded:
                return False
            send_json(conn, err.code, err.to_status())
            return keep_alive
        except (ConnectionClosed, OSError, ssl.SSLError):
            raise
        except Exception:
            # A bug or an input we did not foresee: answer 500, keep serving everyone else.
            log.exception("API request %s %s failed", req.method, req.path)
            if conn.responded or conn.handed_over:
                return False
            send_json(conn, 500, _status(500, "InternalError",
                                          "an error on the server prevented the request "
                                          "from succeeding"))
            return keep_alive

    # -- routing ----------------------------------------------------------------------------

    def _dispatch(self, conn: Connection, req: Request) -> bool:
        path = req.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 2\r\n\r\nok")
            return True
        if path == "/version":
            send_json(conn, 200, discovery.version_info(self.version))
            return True
        auth = req.headers.get("Authorization", "")
        identity = conn.identity
        if identity is None or auth:
            other = self.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None
            if other is not None:
                identity = other
            elif auth != f"Bearer {self.token}" and (self.require_token or auth):
                send_json(conn, 401, _status(401, "Unauthorized", "Unauthorized"))
                return True
            else:
                identity = self.token_user
        identity = self._impersonate(identity, req)
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi_v3(conn, parts[2:])
        if parts == ["openapi", "v2"]:
            return self._openapi_v2(conn, req)
        if parts == ["api"]:
            send_json(conn, 200, {
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            })
            return True
        if parts == ["apis"]:
            send_json(conn, 200, discovery.group_list())
            return True
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in GROUP_VERSIONS:
            send_json(conn, 200, {"kind": "APIGroup", "apiVersion": "v1",
                                   **discovery.api_group(parts[1], GROUP_VERSIONS[parts[1]])})
            return True
        if parts == ["api", "v1"]:
            send_json(conn, 200, discovery.resource_list("v1"))
            return True
        if len(parts) == 3 and parts[0] == "apis" and GROUP_VERSIONS.get(parts[1]) == parts[2]:
            send_json(conn, 200, discovery.resource_list(f"{parts[1]}/{parts[2]}"))
            return True
        if len(parts) >= 3 and parts[:2] == ["api", "v1"]:
            return self._resource(conn, req, "v1", parts[2:])
        if len(parts) >= 4 and parts[0] == "apis" and GROUP_VERSIONS.get(parts[1]) == parts[2]:
            return self._resource(conn, req, f"{parts[1]}/{parts[2]}", parts[3:])
        send_json(conn, 404, _status(404, "NotFound", "the server could not find the requested "
                                      "resource"))
        return True

    def _impersonate(self, identity: tuple[str, tuple[str, ...]],
                     req: Request) -> tuple[str, tuple[str, ...]]:
        """The identity a request acts as: the authenticated one, or the one its
        Impersonate-User/Impersonate-Group headers ask for when the backend lets the
        requester impersonate it (403 otherwise); recorded with the backend."""
        user = req.headers.get("Impersonate-User", "")
        groups = tuple(req.headers.get_all("Impersonate-Group") or ())
        if groups and not user:
            raise StatusError(400, "BadRequest", f"requested {list(groups)} without "
                              "impersonating a user")
        acting = identity
        if user:
            refused = getattr(self.backend, "impersonation_refused", None)
            denied = refused(identity[0], user, groups) if refused is not None else None
            if denied is not None:
                kind, name = denied
                raise StatusError(403, "Forbidden", f'{kind} "{name}" is forbidden: User '
                                  f'"{identity[0]}" cannot impersonate resource "{kind}" in '
                                  'API group "" at the cluster scope',
                                  details={"name": name, "kind": kind})
            acting = (user, (*groups, "system:authenticated"))
        record = getattr(self.backend, "record_identity", None)
        if record is not None:
            record(acting[0], acting[1], identity[0] if user else "")
        return acting

    def _openapi_v3(self, conn: Connection, rest: list[str]) -> bool:
        gvs = {"api/v1": "v1", **{f"apis/{g}/{v}": f"{g}/{v}" for g, v in GROUP_VERSIONS.items()}}
        if not rest:
            send_json(conn, 200, openapi.v3_root(gvs))
            return True
        gv = gvs.get("/".join(rest))
        if gv is None:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        send_json(conn, 200, openapi.v3_document(gv, self.version))
        return True

    def _openapi_v2(self, conn: Connection, req: Request) -> bool:
        if openapi.V2_PROTOBUF in req.headers.get("Accept", ""):
            body = openapi.v2_protobuf(self.version)
            conn.send(f"HTTP/1.1 200 OK\r\nContent-Type: {openapi.V2_PROTOBUF_TYPE}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            return True
        send_json(conn, 200, openapi.v2_document(self.version))
        return True

    def _resource(self, conn: Connection, req: Request, gv: str, rest: list[str]) -> bool:
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        info = _BY_PATH.get((gv, rest[0]))
        if info is None or (namespace and not info.namespaced) or len(rest) > 3:
            raise StatusError(404, "NotFound",
                              "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in SUBRESOURCES.get(info.kind, ()):
            raise StatusError(404, "NotFound",
                              "the server could not find the requested resource")
        verb = verb_of(req, name)
        resource = f"{info.plural}/{sub}" if sub else info.plural
        admit = getattr(self.backend, "admit_request", None)
        refusal = admit(verb, resource) if admit is not None else None
        if refusal is not None:
            code, retry_after = refusal
            reason = "TooManyRequests" if code == 429 else "ServiceUnavailable"
            send_json(conn, code, _status(code, reason, "too many requests, please try again "
                                          "later" if code == 429 else "the server is "
                                          "currently unable to handle the request"),
                      headers={"Retry-After": str(retry_after)})
            return True
        if self.backend.is_forbidden(resource, verb) or (
            sub and self.backend.is_forbidden(info.plural, verb)
        ):
            raise forbidden(info, resource, verb, namespace, name)
        if sub == "portforward":
            return self._portforward(conn, req, namespace, name)
        if sub == "log":
            return serve_log(self.backend, conn, req, info, namespace, name)
        if sub == "scale":
            send_json(conn, 200, scale(self.backend.store, req, info, namespace, name))
            return True
        table = req.method == "GET" and tables.wants_table(req.headers.get("Accept", ""))
        include = req.arg("includeObject", "Metadata")
        if req.method == "GET":
            if name:
                obj = self.backend.store.get(info.kind, namespace, name, copy_=False)
                if obj is None:
                    raise not_found(info, name)
                if table:
                    obj = tables.table(info.kind, [obj], obj["metadata"]["resourceVersion"],
                                       include_object=include)
                send_json(conn, 200, obj)
                return True
            flt = Filter.parse(info.kind, namespace or None, req.arg("labelSelector"),
                               req.arg("fieldSelector"))
            if verb == "watch":
                return serve_watch(conn, req, info, flt, store=self.backend.store,
                                   stopping=self._stopping,
                                   bookmark_interval=self.bookmark_interval,
                                   default_timeout=self.default_watch_timeout, table=table)
            items, rv = self.backend.store.list_filtered(flt, copy_=False)
            if table:
                send_json(conn, 200, tables.table(info.kind, items, rv, include_object=include))
                return True
            items, rv, meta = _page(items, rv, req.arg("limit"), req.arg("continue"))
            send_json(conn, 200, {
                "kind": f"{info.kind}List", "apiVersion": info.api_version,
                "metadata": {"resourceVersion": rv, **meta}, "items": items,
            })
            return True
        if req.method == "POST" and not name:
            obj = parse_object(req, info, namespace)
            if req.arg("dryRun"):
                send_json(conn, 201, obj)
                return True
            send_json(conn, 201, self.backend.store.create(obj))
            return True
        if not name and req.method == "DELETE":
            return delete_collection(self.backend, conn, req, info, namespace)
        if not name:
            raise StatusError(405, "MethodNotAllowed",
                              "the server does not allow this method on the requested resource")
        dry_run = bool(req.arg("dryRun"))
        if req.method == "PUT":
            obj = parse_object(req, info, namespace)
            if (obj.get("metadata") or {}).get("name") != name:
                raise bad_request("the name of the object does not match the name on the URL")
            if dry_run:
                if self.backend.store.get(info.kind, namespace, name, copy_=False) is None:
                    raise not_found(info, name)
                send_json(conn, 200, obj)
                return True
            send_json(conn, 200, self.backend.store.replace(obj, keep_status=sub != "status"))
            return True
        if req.method == "PATCH":
            code, result = patch_object(self.backend.store, req, info, namespace, name,
                                        sub == "status", dry_run)
            send_json(conn, code, result)
            return True
        if req.method == "DELETE":
            dry_run = dry_run or delete_options_dry_run(req.body)
            if dry_run:
                current = self.backend.store.get(info.kind, namespace, name, copy_=False)
                if current is None:
                    raise not_found(info, name)
                send_json(conn, 200, current)
                return True
            send_json(conn, 200, self.backend.delete_object(info.kind, namespace, name))
            return True
        raise StatusError(405, "MethodNotAllowed",
                          "the server does not allow this method on the requested resource")

    # -- port-forward -----------------------------------------------------------------------

    def _portforward(self, conn: Connection, req: Request, namespace: str, name: str) -> bool:
        if req.method not in ("GET", "POST"):
            raise StatusError(405, "MethodNotAllowed",
                              "the server does not allow this method on the requested resource")
        pod = self.backend.store.get("Pod", namespace, name, copy_=False)
        if pod is None:
            raise not_found(BY_KIND["Pod"], name)
        if (pod.get("status") or {}).get("phase") != "Running":
            raise bad_request(f"pod {name} is not running; current phase: "
                              f"{(pod.get('status') or {}).get('phase', 'Pending')}")
        try:
            portforward: Any = importlib.import_module("kubefwd.sim.portforward")
        except ImportError as exc:
            raise StatusError(503, "ServiceUnavailable",
                              "port-forward is not available in this build") from exc
        pf_request = portforward.PortForwardRequest(
            method=req.method,
            headers=req.headers,
            query=req.query,
            namespace=namespace,
            pod=name,
            pod_uid=pod["metadata"].get("uid", ""),
            connect=self.backend.pod_connector(namespace, name),
            latency=self.backend.port_forward_delay,
            stopping=conn.dropped,
            initial=bytes(conn.buf),
        )
        conn.buf.clear()
        conn.handed_over = True
        portforward.serve_portforward(conn.sock, pf_request)
        return False


def _page(items: list[Obj], rv: str, limit: str | None,
          token: str | None) -> tuple[list[Obj], str, Obj]:
    """One page of a list sorted by (namespace, name), as ``limit``/``continue`` ask: the
    token carries the first page's resourceVersion and the last key served. (Unlike a real
    API server, later pages show objects as they are now, not as of that version.)"""
    if token:
        try:
            state = json.loads(base64.urlsafe_b64decode(token.encode()))
            after = (str(state["ns"]), str(state["name"]))
            rv = str(state["rv"])
        except (ValueError, KeyError, TypeError):
            raise bad_request("continue key is not valid") from None
        items = [o for o in items if _key(o) > after]
    if not limit:
        return items, rv, {}
    try:
        size = int(limit)
    except ValueError:
        raise bad_request(f"invalid limit {limit!r}") from None
    if size <= 0 or len(items) <= size:
        return items, rv, {}
    page = items[:size]
    ns, name = _key(page[-1])
    next_token = base64.urlsafe_b64encode(
        json.dumps({"rv": rv, "ns": ns, "name": name}).encode()).decode()
    return page, rv, {"continue": next_token, "remainingItemCount": len(items) - size}


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _idle_seconds(sock: socket.socket) -> float | None:
    """Seconds since the connection last carried data either way (Linux TCP_INFO), or None
    where the kernel does not tell."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        last_sent, _last_ack_sent, last_received = struct.unpack_from("=III", info, 44)
    except (OSError, AttributeError, struct.error):
        return None
    return min(last_sent, last_received) / 1000.0


def _status(code: int, reason: str, message: str) -> Obj:
    return StatusError(code, reason, message).to_status()
