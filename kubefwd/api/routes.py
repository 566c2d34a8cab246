"""The REST API's routes (falcon): authentication, CORS, the JSON envelope, every resource.

Every answer is ``{"success": bool, "data": ..., "error": {"code", "message"} | null}``;
every route but ``/api/health`` (and CORS preflights) needs ``Authorization: Bearer KEY``.
Bad input is a 400 with a sentence, an unknown key a 404, and an unexpected failure a 500
with a sentence (never a traceback). Changes go through ``app.control``; look-ups of the
cluster through ``app.lookups`` (503 when this build has none).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import falcon

from kubefwd import __version__
from kubefwd.api import diagnose, views
from kubefwd.api.history import EventHistory, LogRing
from kubefwd.api.keys import same_key
from kubefwd.app.control import ControlError
from kubefwd.errors import ApiError, KubefwdError
from kubefwd.events.types import EVENT_TYPES, Event, to_json

log = logging.getLogger("kubefwd.api")

# SSE: a comment this often keeps proxies and clients from timing out an idle stream.
KEEPALIVE = 15.0
# Events an SSE client may lag behind before it starts losing them (never blocking the bus).
SSE_QUEUE = 2000
MAX_LIMIT = 1000
_EVENT_TYPES = {cls.type: cls for cls in EVENT_TYPES}
_LOCAL_ORIGIN_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1", "kubefwd.internal"}
_STATUS_CODES = {"invalid": 400, "not_found": 404, "conflict": 409, "unavailable": 503}
_SERVICE_ACTIONS = ("reconnect", "http")


class Failure(Exception):
    """An answer other than success: HTTP status, error code and a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _envelope(data: Any = None, error: tuple[str, str] | None = None) -> bytes:
    body = {"success": error is None, "data": data,
            "error": None if error is None else {"code": error[0], "message": error[1]}}
    return json.dumps(body, separators=(",", ":")).encode()


def _status_line(code: int) -> str:
    return falcon.code_to_http_status(code)


def _control_failure(exc: ControlError) -> Failure:
    return Failure(_STATUS_CODES.get(exc.code, 400), exc.code, exc.message)


def local_origin(origin: str) -> bool:
    """A browser page served from this machine (http(s)://localhost…, 127.x, [::1])."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return parts.scheme in ("http", "https") and (
        host in _LOCAL_ORIGIN_HOSTS or host.startswith("127.") or host.endswith(".localhost"))


class _Middleware:
    def __init__(self, key: str) -> None:
        self.key = key

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        origin = req.get_header("Origin")
        if origin and local_origin(origin):
            resp.set_header("Access-Control-Allow-Origin", origin)
            resp.set_header("Vary", "Origin")
            if req.method == "OPTIONS":
                resp.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
                resp.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
                resp.set_header("Access-Control-Max-Age", "600")
                resp.status = falcon.HTTP_204
                resp.complete = True
                return
        if req.path == "/api/health":
            return
        header = req.get_header("Authorization") or ""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip() or \
                not same_key(given.strip(), self.key):
            raise Failure(401, "unauthorized",
                          "missing or wrong API key: send 'Authorization: Bearer KEY' "
                          "(KUBEFWD_API_KEY, or the key kubefwd printed at start)")


def _int(req: falcon.Request, name: str, default: int, low: int, high: int) -> int:
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Failure(400, "invalid", f"query parameter {name}: '{raw}' is not a whole "
                                      "number") from None
    if not low <= value <= high:
        raise Failure(400, "invalid", f"query parameter {name}: {value} is outside "
                                      f"{low}-{high}")
    return value


def _bool(req: falcon.Request, name: str) -> bool:
    raw = (req.get_param(name) or "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise Failure(400, "invalid", f"query parameter {name}: '{raw}' is not true or false")


def _body(req: falcon.Request, required: tuple[str, ...],
          optional: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    raw = req.bounded_stream.read(65536 + 1) if req.content_length else b""
    if len(raw) > 65536:
        raise Failure(413, "invalid", "the request body is larger than 64 KiB")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise Failure(400, "invalid", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise Failure(400, "invalid", "the request body must be a JSON object")
    allowed = {**{name: str for name in required}, **optional}
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise Failure(400, "invalid", f"unknown field(s): {', '.join(unknown)}; "
                                      f"allowed: {', '.join(sorted(allowed))}")
    for name in required:
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise Failure(400, "invalid", f"field '{name}' is required (a non-empty string)")
    for name, kind in optional.items():
        if name in body and body[name] is not None and (
                not isinstance(body[name], kind) or isinstance(body[name], bool)):
            raise Failure(400, "invalid", f"field '{name}' has the wrong type")
    return body


def _segments(req: falcon.Request, prefix: str) -> list[str]:
    """The path after ``prefix`` as segments, each decoded on its own (so an encoded
    ``shop%2Fweb`` stays one segment)."""
    raw = req.env.get("REQUEST_URI") or req.env.get("RAW_URI") or req.path
    path = raw.split("?", 1)[0]
    if not path.startswith(prefix):
        path = req.path
    rest = path[len(prefix):].strip("/")
    return [unquote(s) for s in rest.split("/")] if rest else []


def _split_key_action(segments: list[str]) -> tuple[str, str]:
    """(key, action) from the segments after ``/services/`` or ``/forwards/``."""
    if not segments:
        return "", ""
    if "/" in segments[0]:
        return segments[0], "/".join(segments[1:])
    if len(segments) >= 3 and segments[-1] in _SERVICE_ACTIONS:
        return "/".join(segments[:-1]), segments[-1]
    return "/".join(segments), ""


class Api:
    """The WSGI application over one running ``Kubefwd`` (see the module docstring)."""

    def __init__(self, app: Any, key: str, *, stop: threading.Event | None = None,
                 url: str = "") -> None:
        self.app = app
        self.key = key
        self.url = url
        self.stop = stop or threading.Event()
        self.started = time.time()
        self.history = EventHistory()
        self.logs = LogRing()
        self._detach = [app.bus.attach(self.history.fold), app.bus.attach(self.logs.fold)]
        self.wsgi = falcon.App(middleware=[_Middleware(key)], cors_enable=False)
        self.wsgi.req_options.strip_url_path_trailing_slash = True
        self.wsgi.add_error_handler(Exception, self._error)
        self.wsgi.add_error_handler(falcon.HTTPError, self._error)
        self._routes()

    def close(self) -> None:
        self.stop.set()
        for detach in self._detach:
            detach()

    # -- plumbing --------------------------------------------------------------------------

    def _error(self, req: falcon.Request, resp: falcon.Response, exc: BaseException,
               params: dict[str, Any]) -> None:
        if isinstance(exc, Failure):
            status, code, message = exc.status, exc.code, exc.message
        elif isinstance(exc, ControlError):
            failure = _control_failure(exc)
            status, code, message = failure.status, failure.code, failure.message
        elif isinstance(exc, falcon.HTTPError):
            status = exc.status_code
            code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid")
            message = exc.title + (f": {exc.description}" if exc.description else "")
            if status == 404:
                message = f"no route {req.method} {req.path}"
            elif status == 405:
                message = f"{req.method} is not allowed on {req.path}"
        elif isinstance(exc, ApiError):
            status, code, message = 502, "kubernetes", exc.message
        elif isinstance(exc, KubefwdError):
            status, code, message = 500, "internal", exc.message
        else:
            log.exception("API: %s %s failed", req.method, req.path)
            status, code, message = 500, "internal", f"internal error: {type(exc).__name__}"
        resp.status = _status_line(status)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _envelope(error=(code, message))
        resp.stream = None
        if status == 401:
            resp.set_header("WWW-Authenticate", 'Bearer realm="kubefwd"')

    def _route(self, path: str, **handlers: Callable[..., Any]) -> None:
        api = self

        class Resource:
            pass

        for method, fn in handlers.items():
            def responder(_self: Any, req: falcon.Request, resp: falcon.Response,
                          _fn: Callable[..., Any] = fn, **params: Any) -> None:
                result = _fn(req, resp, **params)
                if resp.stream is not None or resp.data is not None:
                    return
                status = 200
                if isinstance(result, tuple):
                    status, result = result
                resp.status = _status_line(status)
                resp.content_type = falcon.MEDIA_JSON
                resp.data = _envelope(result)

            setattr(Resource, f"on_{method}", responder)
        del api
        self.wsgi.add_route(path, Resource())

    def _routes(self) -> None:
        r = self._route
        r("/api/health", get=self.health)
        r("/api/info", get=self.info)
        r("/openapi.yaml", get=self.openapi)
        r("/docs", get=self.docs)
        v1 = "/api/v1"
        r(f"{v1}/services", get=self.list_services, post=self.add_service)
        r(f"{v1}/services/{{rest:path}}", get=self.get_service, post=self.service_action,
          delete=self.remove_service)
        r(f"{v1}/forwards", get=self.list_forwards)
        r(f"{v1}/forwards/{{rest:path}}", get=self.get_forward)
        r(f"{v1}/namespaces", get=self.list_namespaces, post=self.add_namespace)
        r(f"{v1}/namespaces/{{name}}", delete=self.remove_namespace)
        r(f"{v1}/metrics", get=self.metrics)
        r(f"{v1}/metrics/services", get=self.metrics_services)
        r(f"{v1}/metrics/services/{{rest:path}}", get=self.metrics_history)
        r(f"{v1}/events", get=self.events)
        r(f"{v1}/status", get=self.status)
        r(f"{v1}/analyze", get=self.analyze)
        r(f"{v1}/diagnostics/errors", get=self.diag_errors)
        r(f"{v1}/diagnostics/network", get=self.diag_network)
        r(f"{v1}/diagnostics/services/{{rest:path}}", get=self.diag_service)
        r(f"{v1}/history/events", get=self.history_events)
        r(f"{v1}/history/errors", get=self.history_errors)
        r(f"{v1}/history/reconnections", get=self.history_reconnections)
        r(f"{v1}/logs", get=self.logs_get)
        r(f"{v1}/logs/stream", get=self.logs_stream)
        k8s = f"{v1}/kubernetes"
        r(f"{k8s}/contexts", get=self.k8s_contexts)
        r(f"{k8s}/namespaces", get=self.k8s_namespaces)
        r(f"{k8s}/namespaces/{{namespace}}/services", get=self.k8s_services)
        r(f"{k8s}/namespaces/{{namespace}}/services/{{service}}/endpoints",
          get=self.k8s_endpoints)
        r(f"{k8s}/namespaces/{{namespace}}/pods", get=self.k8s_pods)
        r(f"{k8s}/namespaces/{{namespace}}/pods/{{pod}}", get=self.k8s_pod)
        r(f"{k8s}/namespaces/{{namespace}}/pods/{{pod}}/logs", get=self.k8s_logs)
        r(f"{k8s}/namespaces/{{namespace}}/events", get=self.k8s_events)

    # -- data ------------------------------------------------------------------------------

    def _services(self) -> list[dict[str, Any]]:
        return views.services_json(self.app.store.snapshot(), self.app.metrics.snapshot())

    def _service(self, key: str) -> dict[str, Any]:
        services = self._services()
        found = views.find_key([s["key"] for s in services], key, self.app.control.contexts)
        if found is None:
            raise Failure(404, "not_found", f"no forwarded service '{key}' "
                                            "(use NAMESPACE/NAME or CONTEXT/NAMESPACE/NAME)")
        return next(s for s in services if s["key"] == found)

    @staticmethod
    def _page(req: falcon.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
        limit = _int(req, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        offset = _int(req, "offset", 0, 0, 10**9)
        return {"total": len(items), "offset": offset, "limit": limit,
                "items": items[offset:offset + limit]}

    @staticmethod
    def _filters(req: falcon.Request) -> dict[str, str | None]:
        return {name: req.get_param(name) or None
                for name in ("namespace", "context", "status", "search")}

    # -- health and info -------------------------------------------------------------------

    def health(self, req: falcon.Request, resp: falcon.Response) -> Any:
        return {"status": "ok", "ready": self.app.ready.is_set()}

    def info(self, req: falcon.Request, resp: falcon.Response) -> Any:
        return {
            "version": __version__,
            "pid": _pid(),
            "url": self.url,
            "ready": self.app.ready.is_set(),
            "idle": bool(getattr(self.app.options, "idle", False)),
            "contexts": self.app.control.contexts,
            "namespaces": [_watched_json(w) for w in self.app.control.namespaces()],
            "uptime": round(time.time() - self.started, 1),
            "hosts_file": str(self.app.options.hosts_path),
        }

    def openapi(self, req: falcon.Request, resp: falcon.Response) -> Any:
        resp.content_type = "application/yaml"
        resp.data = resources.files("kubefwd.api").joinpath("openapi.yaml").read_bytes()

    def docs(self, req: falcon.Request, resp: falcon.Response) -> Any:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = resources.files("kubefwd.api").joinpath("docs.html").read_bytes()

    # -- services ----------------------------------------------------------------------------

    def list_services(self, req: falcon.Request, resp: falcon.Response) -> Any:
        filters = self._filters(req)
        items = [s for s in self._services() if views.matches(s, **filters)]
        return self._page(req, items)

    def get_service(self, req: falcon.Request, resp: falcon.Response, rest: str) -> Any:
        key, action = _split_key_action(_segments(req, "/api/v1/services/"))
        if action == "http":
            service = self._service(key)
            return self._http(req, service["forwards"])
        if action:
            raise Failure(404, "not_found", f"no route GET {req.path}")
        return self._service(key)

    def add_service(self, req: falcon.Request, resp: falcon.Response) -> Any:
        body = _body(req, ("namespace", "service"),
                     {"context": str, "ports": list, "ip": str})
        if body.get("ports") or body.get("ip"):
            raise Failure(400, "invalid", "choosing ports or an address at run time is not "
                                          "supported: start kubefwd with -m or -r for that")
        self.app.control.add_service(body["namespace"], body["service"], body.get("context"))
        ctx, ns = body.get("context") or "", body["namespace"]
        key = "/".join(p for p in (ctx, ns, body["service"]) if p)
        return 202, {"service": key, "accepted": True}

    def service_action(self, req: falcon.Request, resp: falcon.Response, rest: str) -> Any:
        segments = _segments(req, "/api/v1/services/")
        if segments == ["reconnect"]:
            _body(req, (), {})
            return {"reconnected": self.app.control.reconnect_errored()}
        if segments == ["sync"]:
            body = _body(req, (), {"namespace": str, "context": str})
            self.app.control.sync(body.get("namespace"), body.get("context"))
            return {"synced": True}
        key, action = _split_key_action(segments)
        if action != "reconnect":
            raise Failure(404, "not_found", f"no route POST {req.path}")
        service = self._service(key)
        for forward in service["forwards"]:
            self.app.control.reconnect(forward)
        return {"reconnected": service["forwards"]}

    def remove_service(self, req: falcon.Request, resp: falcon.Response, rest: str) -> Any:
        key, action = _split_key_action(_segments(req, "/api/v1/services/"))
        if action:
            raise Failure(404, "not_found", f"no route DELETE {req.path}")
        self.app.control.remove_service(key)
        return {"removed": key}

    # -- forwards ------------------------------------------------------------------------------

    def _forwards(self) -> list[dict[str, Any]]:
        metrics = {m.key: m for m in self.app.metrics.snapshot().forwards}
        return [views.forward_json(s, metrics.get(s.key))
                for s in sorted(self.app.store.snapshot(), key=lambda s: s.key)]

    def list_forwards(self, req: falcon.Request, resp: falcon.Response) -> Any:
        filters = self._filters(req)
        return self._page(req, [f for f in self._forwards() if views.matches(f, **filters)])

    def get_forward(self, req: falcon.Request, resp: falcon.Response, rest: str) -> Any:
        segments = _segments(req, "/api/v1/forwards/")
        action = ""
        if segments and segments[-1] == "http" and len(segments) > 1:
            segments, action = segments[:-1], "http"
        wanted = "/".join(segments)
        forwards = self._forwards()
        key = views.find_key([f["key"] for f in forwards], wanted, self.app.control.contexts)
        if key is None:
            raise Failure(404, "not_found", f"no forward '{wanted}'")
        if action == "http":
            return self._http(req, [key])
        return next(f for f in forwards if f["key"] == key)

    def _http(self, req: falcon.Request, keys: list[str]) -> Any:
        limit = _int(req, "limit", 100, 1, MAX_LIMIT)
        http = getattr(self.app, "http", None)
        if http is None:
            return []
        seen = []
        for key in keys:
            seen += http.recent(key, limit)
        seen.sort(key=lambda x: x.time)
        return [{"time": views._time(x.time), "key": x.key, "port": x.port, "method": x.method,
                 "path": x.path, "status": x.status, "latency_ms": x.latency_ms,
                 "size": x.size} for x in seen[-limit:]]

    # -- namespaces ------------------------------------------------------------------------

    def list_namespaces(self, req: falcon.Request, resp: falcon.Response) -> Any:
        return [_watched_json(w) for w in self.app.control.namespaces()]

    def add_namespace(self, req: falcon.Request, resp: falcon.Response) -> Any:
        body = _body(req, ("namespace",), {"context": str, "selector": str})
        watched = self.app.control.add_namespace(body["namespace"], body.get("context"),
                                                 body.get("selector") or "")
        return 201, _watched_json(watched)

    def remove_namespace(self, req: falcon.Request, resp: falcon.Response, name: str) -> Any:
        name = unquote(name)
        self.app.control.remove_namespace(name, req.get_param("context") or None)
        return {"removed": name}

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self, req: falcon.Request, resp: falcon.Response) -> Any:
        return views.metrics_json(self.app.metrics.snapshot())

    def metrics_services(self, req: falcon.Request, resp: falcon.Response) -> Any:
        return [views.forward_metrics_json(m) for m in self.app.metrics.snapshot().forwards]

    def metrics_history(self, req: falcon.Request, resp: falcon.Response, rest: str) -> Any:
        segments = _segments(req, "/api/v1/metrics/services/")
        if segments and segments[-1] == "history" and len(segments) > 1:
            segments = segments[:-1]
        wanted = "/".join(segments)
        snapshot = self.app.metrics.snapshot().forwards
        by_key = {m.key: m for m in snapshot}
        service = views.find_key(sorted({views.service_key(k) for k in by_key}), wanted,
                                 self.app.control.contexts)
        if service is None:
            raise Failure(404, "not_found", f"no metrics for '{wanted}'")
        return [views.forward_metrics_json(m, history=True) for m in snapshot
                if views.service_key(m.key) == service]

    # -- events (SSE) ------------------------------------------------------------------------

    def events(self, req: falcon.Request, resp: falcon.Response) -> Any:
        types: list[type[Event]] | None = None
        wanted = [t for t in (req.get_param("type") or "").split(",") if t]
        if wanted:
            unknown = [t for t in wanted if t not in _EVENT_TYPES]
            if unknown:
                raise Failure(400, "invalid", f"unknown event type(s): {', '.join(unknown)}")
            types = [_EVENT_TYPES[t] for t in wanted]
        sub = self.app.bus.subscribe(f"api-sse-{req.remote_addr}", maxsize=SSE_QUEUE,
                                     types=types)
        _stream(resp, self._sse(sub))

    def _sse(self, sub: Any) -> Iterator[bytes]:
        try:
            yield b": kubefwd events\n\n"
            last = time.monotonic()
            seq = 0
            while not self.stop.is_set() and not sub.closed:
                event = sub.get(timeout=1.0)
                if event is None:
                    if time.monotonic() - last >= KEEPALIVE:
                        last = time.monotonic()
                        yield b": keep-alive\n\n"
                    continue
                batch = [event, *sub.drain()]
                chunks = []
                for item in batch:
                    seq += 1
                    chunks.append(f"id: {seq}\nevent: {item.type}\ndata: "
                                  f"{json.dumps(to_json(item), separators=(',', ':'))}\n\n")
                last = time.monotonic()
                yield "".join(chunks).encode()
        finally:
            sub.close()

    # -- diagnostics -------------------------------------------------------------------------

    def _problems(self) -> list[dict[str, Any]]:
        store = self.app.store
        return diagnose.analyze(store.snapshot(), store.errors(), store.reconnections())

    def status(self, req: falcon.Request, resp: falcon.Response) -> Any:
        store = self.app.store
        counts = store.counts()
        problems = self._problems()
        return {
            "summary": diagnose.summary(store.snapshot(), problems),
            "ready": self.app.ready.is_set(),
            "services": counts.services,
            "forwards": counts.forwards,
            "by_status": {s: getattr(counts, s) for s in
                          ("pending", "connecting", "active", "error", "reconnecting",
                           "stopping")},
            "problems": len(problems),
        }

    def analyze(self, req: falcon.Request, resp: falcon.Response) -> Any:
        problems = self._problems()
        return {"summary": diagnose.summary(self.app.store.snapshot(), problems),
                "problems": problems}

    def diag_errors(self, req: falcon.Request, resp: falcon.Response) -> Any:
        store = self.app.store
        failing = [views.forward_json(s) for s in store.snapshot() if s.status == "error"]
        return {"failing": sorted(failing, key=lambda f: f["key"]),
                "recent": [views.error_json(e) for e in store.errors()][-100:]}

    def diag_service(self, req: falcon.Request, resp: falcon.Response, rest: str) -> Any:
        key, _ = _split_key_action(_segments(req, "/api/v1/diagnostics/services/"))
        service = self._service(key)
        keys = set(service["forwards"])
        store = self.app.store
        return {
            "service": service,
            "forwards": [views.forward_json(s) for s in store.snapshot() if s.key in keys],
            "errors": [views.error_json(e) for e in store.errors()
                       if e.key is not None and views.service_key(e.key) == service["key"]],
            "reconnections": [views.reconnection_json(r) for r in store.reconnections()
                              if views.service_key(r.key) == service["key"]],
            "problems": [p for p in self._problems()
                         if p["key"] and views.service_key(p["key"]) == service["key"]],
        }

    def diag_network(self, req: falcon.Request, resp: falcon.Response) -> Any:
        addresses = [{"key": s.key, "ip": s.ip, "ports": views.local_ports(s), "names":
                      list(s.names)} for s in sorted(self.app.store.snapshot(),
                                                     key=lambda s: s.key) if s.ip]
        strategy, added = self.app.loopback()
        return {"api": self.url, "hosts_file": str(self.app.options.hosts_path),
                "addresses": addresses, "loopback": strategy, "aliases": added}

    # -- history and logs ----------------------------------------------------------------------

    def history_events(self, req: falcon.Request, resp: falcon.Response) -> Any:
        limit = _int(req, "limit", 100, 1, MAX_LIMIT)
        wanted = {t for t in (req.get_param("type") or "").split(",") if t} or None
        return self.history.recent(limit, wanted)

    def history_errors(self, req: falcon.Request, resp: falcon.Response) -> Any:
        limit = _int(req, "limit", 100, 1, MAX_LIMIT)
        return [views.error_json(e) for e in self.app.store.errors()][-limit:]

    def history_reconnections(self, req: falcon.Request, resp: falcon.Response) -> Any:
        limit = _int(req, "limit", 100, 1, MAX_LIMIT)
        return [views.reconnection_json(r) for r in self.app.store.reconnections()][-limit:]

    def logs_get(self, req: falcon.Request, resp: falcon.Response) -> Any:
        limit = _int(req, "limit", 100, 1, MAX_LIMIT)
        level = req.get_param("level") or None
        if level not in (None, "debug", "info", "warning", "error"):
            raise Failure(400, "invalid", f"level '{level}' is not debug, info, warning or "
                                          "error")
        return self.logs.recent(limit, level)

    def logs_stream(self, req: falcon.Request, resp: falcon.Response) -> Any:
        tail = _int(req, "tail", 0, 0, MAX_LIMIT)

        def lines() -> Iterator[bytes]:
            yield b": kubefwd log\n\n"
            seq = self.logs.last_seq
            if tail:
                backlog = self.logs.recent(tail)
                for line in backlog:
                    yield f"data: {json.dumps(line)}\n\n".encode()
            last = time.monotonic()
            while not self.stop.is_set():
                new = self.logs.after(seq, 1.0)
                if new:
                    seq = new[-1]["seq"]
                    last = time.monotonic()
                    yield "".join(f"data: {json.dumps(x)}\n\n" for x in new).encode()
                elif time.monotonic() - last >= KEEPALIVE:
                    last = time.monotonic()
                    yield b": keep-alive\n\n"

        _stream(resp, lines())

    # -- Kubernetes look-ups ------------------------------------------------------------------

    def _lookups(self) -> Any:
        lookups = getattr(self.app, "lookups", None)
        if lookups is None:
            raise Failure(503, "unavailable", "Kubernetes look-ups are not available in this "
                                              "kubefwd")
        return lookups

    def _ns(self, req: falcon.Request, namespace: str) -> tuple[str, str | None]:
        name = unquote(namespace)
        context = req.get_param("context") or None
        if "/" in name:
            prefix, _, name = name.rpartition("/")
            context = context or prefix
        return name, context

    def _lookup(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ControlError as exc:
            raise _control_failure(exc) from None
        except ApiError as exc:
            if exc.status == 404:
                raise Failure(404, "not_found", exc.message) from None
            raise Failure(502, "kubernetes", exc.message) from None

    def k8s_contexts(self, req: falcon.Request, resp: falcon.Response) -> Any:
        lookups = self._lookups()
        return self._lookup(lookups.contexts)

    def k8s_namespaces(self, req: falcon.Request, resp: falcon.Response) -> Any:
        lookups = self._lookups()
        context = req.get_param("context") or None
        return [_plain(o) for o in self._lookup(lambda: lookups.namespaces(context))]

    def k8s_services(self, req: falcon.Request, resp: falcon.Response, namespace: str) -> Any:
        lookups = self._lookups()
        ns, ctx = self._ns(req, namespace)
        return [_plain(o) for o in self._lookup(lambda: lookups.services(ns, ctx))]

    def k8s_endpoints(self, req: falcon.Request, resp: falcon.Response, namespace: str,
                      service: str) -> Any:
        lookups = self._lookups()
        ns, ctx = self._ns(req, namespace)
        return [_plain(o) for o in
                self._lookup(lambda: lookups.endpoints(ns, unquote(service), ctx))]

    def k8s_pods(self, req: falcon.Request, resp: falcon.Response, namespace: str) -> Any:
        lookups = self._lookups()
        ns, ctx = self._ns(req, namespace)
        selector = req.get_param("selector") or ""
        return [_plain(o) for o in
                self._lookup(lambda: lookups.pods(ns, ctx, selector=selector))]

    def k8s_pod(self, req: falcon.Request, resp: falcon.Response, namespace: str,
                pod: str) -> Any:
        lookups = self._lookups()
        ns, ctx = self._ns(req, namespace)
        return _plain(self._lookup(lambda: lookups.pod(ns, unquote(pod), ctx)))

    def k8s_events(self, req: falcon.Request, resp: falcon.Response, namespace: str) -> Any:
        lookups = self._lookups()
        ns, ctx = self._ns(req, namespace)
        return [_plain(o) for o in self._lookup(lambda: lookups.events(ns, ctx))]

    def k8s_logs(self, req: falcon.Request, resp: falcon.Response, namespace: str,
                 pod: str) -> Any:
        lookups = self._lookups()
        ns, ctx = self._ns(req, namespace)
        tail = _int(req, "tail", 100, 0, 100000)
        since = _int(req, "since_seconds", 0, 0, 10**8) or None
        follow = _bool(req, "follow")
        container = req.get_param("container") or None
        name = unquote(pod)
        if not follow:
            lines = self._lookup(lambda: list(lookups.pod_logs(
                ns, name, context=ctx, container=container, tail_lines=tail,
                since_seconds=since)))
            return {"pod": name, "lines": lines}
        stop = threading.Event()
        source = self._lookup(lambda: lookups.pod_logs(
            ns, name, context=ctx, container=container, tail_lines=tail,
            since_seconds=since, follow=True, stop=stop))

        def stream() -> Iterator[bytes]:
            try:
                yield b": pod log\n\n"
                for line in source:
                    if self.stop.is_set():
                        break
                    yield f"data: {json.dumps(line)}\n\n".encode()
            except (KubefwdError, OSError) as exc:
                yield f"event: error\ndata: {json.dumps(str(exc))}\n\n".encode()
            finally:
                stop.set()

        _stream(resp, stream())


def _stream(resp: falcon.Response, body: Iterator[bytes]) -> None:
    resp.content_type = "text/event-stream"
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Accel-Buffering", "no")
    resp.stream = body


def _plain(obj: Any) -> Any:
    """A Kubernetes object as JSON, without the bulky ``managedFields``."""
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict) and "managedFields" in meta:
            obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def _watched_json(w: Any) -> dict[str, Any]:
    return {"context": w.context, "namespace": w.namespace,
            "services": None if w.services is None else list(w.services),
            "excluded": list(w.excluded), "selector": w.label_selector}


def _pid() -> int:
    import os

    return os.getpid()
