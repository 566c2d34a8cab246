"""Starting the REST API for ``kubefwd svc --api`` (and idle mode): the key, the address,
the key file, the one line that says where it is."""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, TextIO

from kubefwd.api.keys import ApiEndpoint, api_key, remove_key_file, write_key_file
from kubefwd.api.server import HOST_NAME, ROOT_ADDRESS, ApiServer, default_addr
from kubefwd.errors import NetworkError


class RunningApi:
    def __init__(self, server: ApiServer) -> None:
        self.server = server

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            remove_key_file(os.getpid())


def start_api(app: Any, out: TextIO | None = None) -> RunningApi:
    """Start the API for ``app`` (before ``app.run()``); the URL and, when it was generated,
    the key are printed once (on ``out``: stdout, or stderr when stdout carries JSON)."""
    out = out or sys.stdout
    key, generated = api_key()
    addr = app.options.api_addr or default_addr()
    server = ApiServer(app, key, addr)
    try:
        url = server.start()
    except NetworkError as exc:
        if app.options.api_addr or addr != ROOT_ADDRESS:
            raise  # the address was asked for: not listening there is the error
        # Another instance (idle, or with --api) has kubefwd.internal already: this one
        # listens on a free port of 127.0.0.1 instead, and says so.
        out.write(f"API: {exc.message}; using a free port on 127.0.0.1 instead\n")
        addr = ("127.0.0.1", 0)
        server = ApiServer(app, key, addr)
        url = server.start()
    running = RunningApi(server)
    try:
        path = write_key_file(ApiEndpoint(os.getpid(), url, key))
    except OSError as exc:
        path = None
        out.write(f"API: could not write the key file: {exc.strerror or exc}\n")
    atexit.register(remove_key_file, os.getpid())
    shown = url
    if addr == ROOT_ADDRESS:
        app.add_host_entry(ROOT_ADDRESS[0], [HOST_NAME])
        shown = f"{url} (http://{HOST_NAME})"
    where = f"; key file {path}" if path else ""
    if generated:
        out.write(f"API: {shown} key {key}{where}\n")
    else:
        out.write(f"API: {shown} key from $KUBEFWD_API_KEY{where}\n")
    out.flush()
    return running
