"""The plain log as a bus subscriber: the same lines the log always had, in order, and quiet
once its stream is gone."""

from __future__ import annotations

import io
import logging

from kubefwd.events.bus import EventBus
from kubefwd.events.report import Reporter, route_logging, unroute_logging
from kubefwd.events.types import ForwardBound, LogLine, Ready
from kubefwd.ui.text import TextLog, format_event, human_bytes


def bound(pod: str | None, path: str | None) -> ForwardBound:
    return ForwardBound(key="one/shop/web", context="one", namespace="shop", service="web",
                        ip="127.1.27.1", names=("web", "web.shop"), ports=("80", "8080:81"),
                        pod=pod, pod_path=path)


def test_lines_are_the_ones_users_know() -> None:
    assert format_event(bound("web-1", "shop/web-1")) == \
        "Forwarding web, web.shop → 127.1.27.1:80,8080:81 → shop/web-1"
    assert format_event(bound(None, None), " -> ") == \
        "Forwarding web, web.shop -> 127.1.27.1:80,8080:81 -> (no ready pod yet)"
    assert format_event(Ready(services=3, addresses=5, seconds=0.123, hosts_writes=1)) == (
        "ready: 3 services forwarded on 5 addresses in 0.12s (hosts file written 1 times); "
        "Ctrl-C to stop")
    assert format_event(LogLine(level="debug", message="x")) == "debug x"
    assert format_event(LogLine(level="info", message="x")) == "x"


def test_reporter_and_logging_reach_the_text_log_in_order() -> None:
    bus = EventBus()
    out = io.StringIO()
    text = TextLog(bus, out)
    text.start()
    report = Reporter(bus)
    handler = route_logging(bus, verbose=False)
    try:
        report.forwarded("one/shop/web", context="one", namespace="shop", service="web",
                         names=["web"], ip="127.1.27.1", ports=["80"], pod="web-1",
                         pod_path="shop/web-1")
        report.warning_once("k", "first %s", "time")
        report.warning_once("k", "first %s", "time")
        logging.getLogger("kubefwd.some.module").warning("from a module: %d", 7)
        logging.getLogger("kubefwd.some.module").debug("not without -v")
        report.debug("nor this")
        report.error("broken")
    finally:
        unroute_logging(handler)
        text.finish()
    # StringIO names no encoding: the ASCII arrow.
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == ["Forwarding web -> 127.1.27.1:80 -> shop/web-1", "WARNING first time",
                     "WARNING from a module: 7", "ERROR broken"]


class Gone(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise OSError("no descriptor")


def test_a_stream_that_is_gone_silences_the_log_not_the_program() -> None:
    bus = EventBus()
    text = TextLog(bus, Gone())
    text.start()
    bus.publish(LogLine(level="info", message="one"))
    bus.publish(LogLine(level="info", message="two"))
    text.finish()
    assert text.broken and not text.is_alive()


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1500, 2_500_000, 3e9)] == \
        ["0 B", "999 B", "1.5 KB", "2.5 MB", "3.0 GB"]
