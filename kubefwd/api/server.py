"""The API's threaded server (cheroot) on a loopback address, and where that address is.

``127.2.27.1:80`` (with the name ``kubefwd.internal`` in the hosts file) when running as
root, otherwise ``127.0.0.1`` on a free port; ``--api-addr HOST:PORT`` overrides, and must be
a loopback address. The server runs on a pool of named threads; an SSE stream holds one of
them while it is open, so the pool is sized for many streams.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from typing import Any

from cheroot import wsgi

from kubefwd.api.routes import Api
from kubefwd.errors import NetworkError, UsageError

log = logging.getLogger("kubefwd.api")

ROOT_ADDRESS = ("127.2.27.1", 80)
HOST_NAME = "kubefwd.internal"
THREADS = 32


def parse_api_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 picks a free one) on loopback only."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--api-addr '{text}': expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--api-addr '{text}': '{host}' is not an IP address") from None
    if not ip.is_loopback:
        raise UsageError(f"--api-addr '{text}': the API listens only on a loopback address "
                         "(127.0.0.0/8 or ::1)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--api-addr '{text}': '{port_text}' is not a port (0-65535)")
    return str(ip), int(port_text)


def default_addr() -> tuple[str, int]:
    return ROOT_ADDRESS if os.geteuid() == 0 else ("127.0.0.1", 0)


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class ApiServer:
    """Serves an ``Api`` until ``stop()``; ``url`` once started."""

    def __init__(self, app: Any, key: str, addr: tuple[str, int],
                 *, threads: int = THREADS) -> None:
        self.api = Api(app, key)
        self.addr = addr
        self.threads = threads
        self.url = ""
        self._server: wsgi.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        host, port = self.addr
        server = wsgi.Server((host, port), self.api.wsgi, numthreads=self.threads,
                             server_name="kubefwd", shutdown_timeout=2)
        server.nodelay = True
        try:
            server.prepare()
        except OSError as exc:
            raise NetworkError(f"API: cannot listen on {url_of(host, port)}: "
                               f"{exc.strerror or exc}") from exc
        bound = server.bind_addr
        if isinstance(bound, tuple):
            port = int(bound[1])
        self.url = url_of(host, port)
        self.api.url = self.url
        self._server = server
        self._thread = threading.Thread(target=self._serve, name="kubefwd/api", daemon=True)
        self._thread.start()
        return self.url

    def _serve(self) -> None:
        assert self._server is not None
        try:
            self._server.serve()
        except Exception:
            log.exception("the API server stopped")

    def stop(self) -> None:
        self.api.close()
        if self._server is not None:
            self._server.stop()
        if self._thread is not None:
            self._thread.join(10.0)
            if self._thread.is_alive():
                log.warning("the API server did not stop in time")

    @property
    def socket(self) -> socket.socket | None:
        return self._server.socket if self._server is not None else None
