"""A local connection's tap: the sniffer it gives sees the replayed prefix, is told when the
connection ends, and is dropped unheard when the connection is handed back."""

from __future__ import annotations

import socket

from kubefwd.events.bus import EventBus
from kubefwd.events.types import Event, HttpRequestSeen
from kubefwd.serve.httptap import HttpTap
from kubefwd.tunnel.io import LocalConn


def published(bus: EventBus) -> list[Event]:
    events: list[Event] = []
    bus.attach(events.append)
    return events


def test_prefix_is_seen_and_end_reports_the_request_without_answer() -> None:
    bus = EventBus()
    events = published(bus)
    a, b = socket.socketpair()
    with b:
        conn = LocalConn(a, 80, 1, tap=HttpTap("k", 80, bus),
                         prefix=b"GET /replayed HTTP/1.1\r\n\r\n")
        assert conn.sniff is not None
        conn.close()
    assert conn.sniff is None
    assert [(e.method, e.path, e.status) for e in events if isinstance(e, HttpRequestSeen)
            ] == [("GET", "/replayed", None)]


def test_not_http_prefix_drops_the_sniffer_and_release_reports_nothing() -> None:
    bus = EventBus()
    events = published(bus)
    a, b = socket.socketpair()
    with b:
        conn = LocalConn(a, 80, 1, tap=HttpTap("k", 80, bus), prefix=b"\x16\x03\x01")
        assert conn.sniff is None
        conn.close()
    a, b = socket.socketpair()
    with b:
        conn = LocalConn(a, 80, 1, tap=HttpTap("k", 80, bus), prefix=b"GET / HTTP/1.1\r\n\r\n")
        conn.release()  # nothing reached the pod: whoever takes it looks at it again
    assert conn.sniff is None
    assert not any(isinstance(e, HttpRequestSeen) for e in events)


def test_without_a_tap_there_is_no_sniffer() -> None:
    a, b = socket.socketpair()
    with b:
        conn = LocalConn(a, 80, 1)
        assert conn.sniff is None
        conn.close()
