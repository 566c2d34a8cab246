"""Where and how a tunnel reaches one cluster's API server."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from kubefwd.cluster.proxy import Proxy
from kubefwd.cluster.throttle import ApiThrottle


@dataclass(frozen=True)
class ApiTarget:
    """Where and how to reach one cluster's API server (built from a kubeconfig context)."""

    host: str
    port: int
    scheme: str
    base_path: str = ""
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    # Called for every new connection, so refreshed tokens are picked up.
    auth_headers: Callable[[], dict[str, str]] = dict
    # The proxy every connection goes through (proxy-url or the environment), if any.
    proxy: Proxy | None = None
    # Shared by every request to this server: Retry-After is waited out by all of them.
    throttle: ApiThrottle | None = field(default=None, compare=False)
