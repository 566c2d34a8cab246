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
    # Sent with every request after auth_headers; a name may repeat (Impersonate-Group).
    extra_headers: tuple[tuple[str, str], ...] = ()
    # Called for every new connection when set (a client certificate an exec plugin
    # refreshes), instead of ssl_context.
    tls: Callable[[], ssl.SSLContext | None] | None = field(default=None, compare=False)
    # The proxy every connection goes through (proxy-url or the environment), if any.
    proxy: Proxy | None = None
    # Shared by every request to this server: Retry-After is waited out by all of them.
    throttle: ApiThrottle | None = field(default=None, compare=False)

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context for a new connection (raises ConfigError for TLS material that
        cannot be loaded)."""
        context = self.tls() if self.tls is not None else self.ssl_context
        return context or ssl.create_default_context()
