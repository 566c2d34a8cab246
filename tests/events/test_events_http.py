"""The HTTP log: a bounded ring per forward folded from ``HttpRequestSeen`` events."""

from __future__ import annotations

from kubefwd.events.bus import EventBus
from kubefwd.events.http import HttpExchange, HttpLog
from kubefwd.events.types import HttpRequestSeen, LogLine, to_json


def seen(key: str, path: str, status: int | None = 200) -> HttpRequestSeen:
    return HttpRequestSeen(key=key, port=80, method="GET", path=path, status=status,
                           latency_ms=1.5 if status else None, size=12 if status else None,
                           time=1000.0)


def test_rings_per_forward_newest_last_and_bounded() -> None:
    bus = EventBus()
    log = HttpLog(size=3)
    bus.attach(log.fold)
    for i in range(5):
        bus.publish(seen("one/shop/web", f"/{i}"))
    bus.publish(seen("one/shop/cart", "/c", status=None))
    bus.publish(LogLine(level="info", message="not http"))
    assert [x.path for x in log.recent("one/shop/web")] == ["/2", "/3", "/4"]
    assert [x.path for x in log.recent("one/shop/web", limit=2)] == ["/3", "/4"]
    assert log.recent("one/shop/web", limit=0) == []
    assert log.recent("one/shop/cart") == [HttpExchange(1000.0, "one/shop/cart", 80, "GET",
                                                        "/c", None, None, None)]
    assert log.recent("one/shop/none") == []
    log.forget("one/shop/web")
    assert log.recent("one/shop/web") == []


def test_event_json() -> None:
    assert to_json(seen("k", "/x"))["type"] == "http_request_seen"
