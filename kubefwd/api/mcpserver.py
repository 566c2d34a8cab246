"""``kubefwd mcp``: a stdio MCP server (the official SDK) bridging to a running kubefwd's
REST API, for IDEs and AI assistants.

It runs as its own process with its own event loop and talks to kubefwd only over HTTP, so
nothing asynchronous ever touches the threaded core. Every tool answers with JSON text; when
no API runs, every tool says in one sentence how to start it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer

from kubefwd import __version__
from kubefwd.api.client import ApiClient, ApiFailure, ApiUnavailable, seg

INSTRUCTIONS = (
    "kubefwd forwards Kubernetes services to this machine: each service gets a loopback IP "
    "and its names go into the hosts file. Use list_services and get_connection_info to "
    "learn how to reach a service, add_namespace/add_service to forward more, "
    "diagnose_errors and analyze when something fails."
)


def _text(fn: Callable[[], Any]) -> str:
    try:
        return json.dumps(fn(), indent=1)
    except ApiUnavailable as exc:
        return str(exc)
    except ApiFailure as exc:
        return f"error ({exc.code}): {exc}"


def _reader(api: ApiClient, path: str) -> Callable[[], str]:
    def read() -> str:
        return _text(lambda: api.get(path))

    return read


def build_server(api: ApiClient) -> MCPServer:
    server: MCPServer = MCPServer(name="kubefwd", version=__version__,
                                  instructions=INSTRUCTIONS)
    tool = server.tool()

    def _connection_info(service: str) -> Any:
        from kubefwd.api.views import connection_info

        return connection_info(api.get(f"/api/v1/services/{seg(service)}"))

    # -- forwarding ------------------------------------------------------------------------

    @tool
    def add_namespace(namespace: str, context: str = "", selector: str = "") -> str:
        """Forward every service of a namespace (and those created later)."""
        body = {"namespace": namespace, **({"context": context} if context else {}),
                **({"selector": selector} if selector else {})}
        return _text(lambda: api.post("/api/v1/namespaces", body))

    @tool
    def remove_namespace(namespace: str, context: str = "") -> str:
        """Stop forwarding a namespace."""
        return _text(lambda: api.delete(f"/api/v1/namespaces/{seg(namespace)}",
                                        context=context))

    @tool
    def add_service(namespace: str, service: str, context: str = "") -> str:
        """Forward one service of a namespace."""
        body = {"namespace": namespace, "service": service,
                **({"context": context} if context else {})}
        return _text(lambda: api.post("/api/v1/services", body))

    @tool
    def remove_service(service: str) -> str:
        """Stop forwarding one service (NAMESPACE/NAME or CONTEXT/NAMESPACE/NAME)."""
        return _text(lambda: api.delete(f"/api/v1/services/{seg(service)}"))

    @tool
    def get_connection_info(service: str) -> str:
        """How to connect to a forwarded service: IP, host names, ports, URLs and
        environment variables to paste (NAMESPACE/NAME or CONTEXT/NAMESPACE/NAME)."""
        return _text(lambda: _connection_info(service))

    @tool
    def list_services(namespace: str = "", status: str = "", search: str = "") -> str:
        """The forwarded services with their addresses, names, ports and status."""
        return _text(lambda: api.get("/api/v1/services", namespace=namespace,
                                     status=status, search=search)["items"])

    @tool
    def get_service(service: str) -> str:
        """One forwarded service (NAMESPACE/NAME or CONTEXT/NAMESPACE/NAME)."""
        return _text(lambda: api.get(f"/api/v1/services/{seg(service)}"))

    @tool
    def find_services(query: str) -> str:
        """Forwarded services whose name, address or host name contains ``query``."""
        return _text(lambda: api.get("/api/v1/services", search=query)["items"])

    @tool
    def list_hostnames() -> str:
        """Every host name kubefwd wrote, with its address."""
        return _text(lambda: {n: f["ip"] for f in api.get("/api/v1/forwards")["items"]
                              for n in f["names"]})

    @tool
    def reconnect_service(service: str) -> str:
        """Open a forwarded service's tunnels afresh."""
        return _text(lambda: api.post(f"/api/v1/services/{seg(service)}/reconnect"))

    @tool
    def reconnect_errored() -> str:
        """Reconnect every forward in error."""
        return _text(lambda: api.post("/api/v1/services/reconnect"))

    @tool
    def sync(namespace: str = "") -> str:
        """List the watched namespaces (or one) again from the cluster now."""
        return _text(lambda: api.post("/api/v1/services/sync",
                                      {"namespace": namespace} if namespace else {}))

    # -- the cluster -----------------------------------------------------------------------

    @tool
    def list_contexts() -> str:
        """The kubeconfig's contexts."""
        return _text(lambda: api.get("/api/v1/kubernetes/contexts"))

    @tool
    def list_namespaces(context: str = "") -> str:
        """The cluster's namespaces (names), and which ones kubefwd watches."""
        return _text(lambda: {
            "cluster": [n.get("metadata", {}).get("name") for n in
                        api.get("/api/v1/kubernetes/namespaces", context=context)],
            "watched": api.get("/api/v1/namespaces")})

    @tool
    def list_k8s_services(namespace: str, context: str = "") -> str:
        """The services of a namespace in the cluster (forwarded or not)."""
        return _text(lambda: api.get(f"/api/v1/kubernetes/namespaces/{seg(namespace)}"
                                     "/services", context=context))

    @tool
    def list_pods(namespace: str, context: str = "", selector: str = "") -> str:
        """The pods of a namespace."""
        return _text(lambda: api.get(f"/api/v1/kubernetes/namespaces/{seg(namespace)}/pods",
                                     context=context, selector=selector))

    @tool
    def get_pod(namespace: str, pod: str, context: str = "") -> str:
        """One pod."""
        return _text(lambda: api.get(f"/api/v1/kubernetes/namespaces/{seg(namespace)}/pods/"
                                     f"{seg(pod)}", context=context))

    @tool
    def pod_logs(namespace: str, pod: str, tail: int = 100, container: str = "",
                 context: str = "") -> str:
        """The last lines of a pod's log."""
        return _text(lambda: api.get(f"/api/v1/kubernetes/namespaces/{seg(namespace)}/pods/"
                                     f"{seg(pod)}/logs", tail=tail, container=container,
                                     context=context))

    @tool
    def namespace_events(namespace: str, context: str = "") -> str:
        """The Kubernetes events of a namespace."""
        return _text(lambda: api.get(f"/api/v1/kubernetes/namespaces/{seg(namespace)}/events",
                                     context=context))

    @tool
    def service_endpoints(namespace: str, service: str, context: str = "") -> str:
        """A service's endpoints in the cluster."""
        return _text(lambda: api.get(f"/api/v1/kubernetes/namespaces/{seg(namespace)}/"
                                     f"services/{seg(service)}/endpoints", context=context))

    # -- health and diagnostics --------------------------------------------------------------

    @tool
    def health() -> str:
        """Whether kubefwd's API answers."""
        return _text(lambda: api.get("/api/health"))

    @tool
    def quick_status() -> str:
        """A summary in words and counts."""
        return _text(lambda: api.get("/api/v1/status"))

    @tool
    def metrics(service: str = "") -> str:
        """Bytes and connections: totals, or one service's with its rate history."""
        if service:
            return _text(lambda: api.get(f"/api/v1/metrics/services/{seg(service)}/history"))
        return _text(lambda: api.get("/api/v1/metrics"))

    @tool
    def diagnose_errors(service: str = "") -> str:
        """What is failing now and the recent errors (or one service's diagnosis)."""
        if service:
            return _text(lambda: api.get(f"/api/v1/diagnostics/services/{seg(service)}"))
        return _text(lambda: api.get("/api/v1/diagnostics/errors"))

    @tool
    def analyze() -> str:
        """What is wrong and what to do about it, in words."""
        return _text(lambda: api.get("/api/v1/analyze"))

    @tool
    def kubefwd_logs(limit: int = 100, level: str = "") -> str:
        """kubefwd's own log lines."""
        return _text(lambda: api.get("/api/v1/logs", limit=limit, level=level))

    @tool
    def http_traffic(service: str, limit: int = 50) -> str:
        """The HTTP requests seen on a forwarded service (method, path, status, latency)."""
        return _text(lambda: api.get(f"/api/v1/services/{seg(service)}/http", limit=limit))

    @tool
    def history(kind: str = "events", limit: int = 100) -> str:
        """Recent history: kind is events, errors or reconnections."""
        if kind not in ("events", "errors", "reconnections"):
            return "kind must be events, errors or reconnections"
        return _text(lambda: api.get(f"/api/v1/history/{kind}", limit=limit))

    # -- resources -----------------------------------------------------------------------------

    for uri, path, what in (
        ("kubefwd://services", "/api/v1/services", "The forwarded services"),
        ("kubefwd://forwards", "/api/v1/forwards", "Every forward"),
        ("kubefwd://metrics", "/api/v1/metrics", "Byte and connection totals"),
        ("kubefwd://summary", "/api/v1/analyze", "What is wrong, in words"),
        ("kubefwd://errors", "/api/v1/diagnostics/errors", "Failing forwards and errors"),
        ("kubefwd://status", "/api/v1/status", "A summary with counts"),
        ("kubefwd://contexts", "/api/v1/kubernetes/contexts", "The kubeconfig's contexts"),
    ):
        server.resource(uri, name=uri.split("//")[1], description=what,
                        mime_type="application/json")(_reader(api, path))

    @server.resource("kubefwd://http/{service}", name="http",
                     description="HTTP requests seen on a service (NAMESPACE%2FNAME)",
                     mime_type="application/json")
    def http_resource(service: str) -> str:
        return _text(lambda: api.get(f"/api/v1/services/{seg(service)}/http"))

    # -- prompts ---------------------------------------------------------------------------

    @server.prompt()
    def why_is_it_failing(service: str) -> str:
        """Why is this service failing?"""
        return (f"The forwarded service {service} is failing. Call diagnose_errors with "
                f"service={service!r}, then analyze; look at the pod logs (pod_logs) and the "
                "namespace events (namespace_events) of its pods, and say what is wrong and "
                "what to do, in a few sentences.")

    @server.prompt()
    def how_do_i_connect(service: str) -> str:
        """How do I connect to this service?"""
        return (f"Call get_connection_info with service={service!r} (find_services first if "
                "you do not know its namespace) and answer with the host name, port and the "
                "environment variables or URL to paste.")

    @server.prompt()
    def what_is_forwarded() -> str:
        """What does kubefwd forward right now?"""
        return ("Call quick_status and list_services and summarise what is forwarded, by "
                "namespace, with any service that is not active.")

    return server
