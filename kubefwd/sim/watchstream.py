"""Watch streams of the simulated API server: chunked JSON events, bookmarks, 410s.

Owns one long-lived response: it follows a store watch from a resourceVersion, writes each
batch of events as one chunk, sends BOOKMARKs when asked, answers a too-old
resourceVersion with one ERROR event (as a real server does), and ends on the timeout, a
dropped connection or the server stopping. Apart from the server because it is the only
response that outlives its request.
"""

from __future__ import annotations

import json
import threading
import time

from kubefwd.sim import tables
from kubefwd.sim.httpconn import Connection, Request
from kubefwd.sim.store import Filter, Obj, ResourceInfo, StatusError, Store, bad_request


def serve_watch(conn: Connection, req: Request, info: ResourceInfo, flt: Filter, *,
                store: Store, stopping: threading.Event, bookmark_interval: float,
                default_timeout: float, table: bool = False) -> bool:
    """Stream watch events as chunked JSON lines until the timeout, a drop or a stop; False
    when the connection must end."""
    try:
        timeout = float(req.arg("timeoutSeconds") or default_timeout)
    except ValueError as exc:
        raise bad_request("timeoutSeconds must be a number") from exc
    bookmarks = req.arg("allowWatchBookmarks") in ("true", "1")
    deadline = time.monotonic() + timeout
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n")
    try:
        watch = store.watch(flt, req.arg("resourceVersion"))
    except StatusError as err:
        if err.code != 410:
            raise
        # Too old: a real server answers 200 and one ERROR event, then ends the stream.
        conn.send(head)
        _chunk(conn, {"type": "ERROR", "object": err.to_status()})
        conn.send(b"0\r\n\r\n")
        return True
    conn.send(head)
    last_sent = time.monotonic()

    def cancelled() -> bool:
        return conn.dropped.is_set() or stopping.is_set()

    while True:
        now = time.monotonic()
        if now >= deadline or cancelled():
            break
        wait = deadline - now
        if bookmarks:
            wait = min(wait, max(0.0, last_sent + bookmark_interval - now))
        try:
            events = watch.next_events(wait, cancelled)
        except StatusError as err:
            _chunk(conn, {"type": "ERROR", "object": err.to_status()})
            break
        if events:
            include = req.arg("includeObject", "Metadata")
            data = b"".join(
                json.dumps({"type": t, "object": tables.table(
                    info.kind, [o], o["metadata"]["resourceVersion"], include_object=include
                ) if table else o}, separators=(",", ":")).encode() + b"\n"
                for t, o in events
            )
            _raw_chunk(conn, data)
            last_sent = time.monotonic()
        elif bookmarks and time.monotonic() >= last_sent + bookmark_interval:
            _chunk(conn, {"type": "BOOKMARK", "object": {
                "kind": info.kind, "apiVersion": info.api_version,
                "metadata": {"resourceVersion": str(watch.position)},
            }})
            last_sent = time.monotonic()
    if cancelled():
        return False
    conn.send(b"0\r\n\r\n")
    return True


def _chunk(conn: Connection, event: Obj) -> None:
    _raw_chunk(conn, json.dumps(event, separators=(",", ":")).encode() + b"\n")


def _raw_chunk(conn: Connection, data: bytes) -> None:
    conn.send(b"%x\r\n" % len(data) + data + b"\r\n")
