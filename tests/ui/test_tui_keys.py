"""The TUI in-process: the real prompt_toolkit application on a pipe input, every key, drawn
at 80x24 (and narrower), against the real bus, state store and metrics of a fake app."""

from __future__ import annotations

import time

from helpers import wait_for
from tuikit import Exchange, FakeApp, running

from kubefwd.events.types import LogLine


def row_of(lines: list[str], host: str) -> str:
    return next(line for line in lines if line.startswith(host + " "))


def test_table_lists_every_forward_at_80x24_without_wrapping() -> None:
    app = FakeApp(services=8)
    with running(app) as h:
        lines = h.screen()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        assert lines[0].startswith(" kubefwd ") and "context one" in lines[0]
        assert "forwards 8/8 active" in lines[1] and "errors 0" in lines[1]
        assert lines[2].startswith("HOSTNAME↓")
        shown = [line.split()[0] for line in lines[3:11]]
        assert shown == sorted(["web", "api", "cart", "db", "search", "mail", "queue", "auth"])
        # Two namespaces: the namespace column shows; the status is words, not just colour.
        assert "payments" in row_of(lines, "api") and "active" in row_of(lines, "api")
        assert "127.1.27.1:80 " in row_of(lines, "web")
        app.bind("api", "payments", 1, pod_port="8080")  # replaced: its pod listens on 8080
        wait_for(lambda: "127.1.27.2:80→8080 " in row_of(h.screen(), "api"), 3, "the pod port")
        assert all(len(line) <= 80 for line in h.screen())
        app.bind("late", "shop", 20)  # the log pane: the plain mode's lines
        wait_for(lambda: any("Forwarding late, late.shop → 127.1.27.21:80" in line
                             for line in h.screen()), 3, "the log line")


def test_moving_the_selection_and_detail_info_tab_copy_keys() -> None:
    app = FakeApp(services=4)
    with running(app) as h:
        assert h.view.selected == "one/payments/api"
        h.keys("j")
        assert h.view.selected == "one/shop/cart"
        h.keys("G")
        assert h.view.selected == "one/shop/web"
        h.keys("k")
        assert h.view.selected == "one/payments/db"
        h.keys("g")
        assert h.view.selected == "one/payments/api"
        h.keys("\x1b[B")  # down arrow
        assert h.view.selected == "one/shop/cart"
        h.keys("\r")
        text = h.text()
        assert "Info" in text and "1  cart:80" in text and "2  cart.shop:80" in text
        assert "last error  none" in text
        h.keys("2")
        assert h.copied == ["cart.shop:80"]
        h.keys("y")
        assert h.copied == ["cart.shop:80", "cart:80"]
        assert "copied cart:80" in h.text()
        h.clipboard_problem = "no clipboard on this machine"
        h.keys("1")
        assert "cannot copy cart:80: no clipboard on this machine" in h.text()
        h.keys("\x1b", settle=0.3)
        assert not h.view.detail


def test_filter_narrows_by_name_and_status_enter_keeps_esc_clears() -> None:
    app = FakeApp(services=6)
    app.fail("one/shop/search")
    with running(app) as h:
        h.keys("/err")
        assert h.view.filtering and [r.host for r in h.view.rows()] == ["search"]
        h.keys("\r")
        assert not h.view.filtering and h.view.filter == "err"
        assert "filter 'err': 1 shown" in h.text()
        h.keys("j")  # keys work on the table again
        h.keys("/", settle=0.2)
        h.keys("\x7f\x7f\x7fpay")  # backspaces, then a namespace
        assert {r.namespace for r in h.view.rows()} == {"payments"}
        h.keys("\x1b", settle=0.3)
        assert h.view.filter == "" and len(h.view.rows()) == 6
        h.keys("/q")  # q is typed into the filter, it does not quit
        assert h.thread.is_alive() and h.view.filter == "q"
        h.keys("\x1b", settle=0.3)


def test_sort_cycles_and_keeps_the_selected_row() -> None:
    app = FakeApp(services=6)
    app.fail("one/shop/search")
    with running(app) as h:
        h.keys("jj")
        picked = h.view.selected
        h.keys("s")
        assert h.view.sort == "namespace" and h.view.selected == picked
        assert "NAMESPACE↓" in h.screen()[2]
        namespaces = [r.namespace for r in h.view.rows()]
        assert namespaces == sorted(namespaces)
        h.keys("s")
        assert h.view.sort == "status" and h.view.rows()[0].host == "search"
        h.keys("s")
        assert h.view.sort == "rate"
        h.keys("s")
        assert h.view.sort == "hostname" and h.view.selected == picked


def test_compact_and_bandwidth_columns() -> None:
    app = FakeApp(services=3)
    with running(app, columns=120) as h:
        assert "RATE IN" in h.screen()[2] and "POD" in h.screen()[2]
        h.keys("b")
        assert "RATE IN" not in h.screen()[2]
        h.keys("b")
        h.keys("c")
        header = h.screen()[2]
        assert "RATE IN" in header and "POD" not in header and "LAST 60S" not in header


def test_r_reconnects_the_selected_R_every_errored_d_removes_after_y() -> None:
    app = FakeApp(services=4)
    app.fail("one/shop/web")
    app.fail("one/payments/db")
    control = app.control
    with running(app) as h:
        h.keys("r")
        wait_for(lambda: ("reconnect", "one/payments/api") in control.calls, 5, "reconnect")
        h.keys("R")
        wait_for(lambda: ("reconnect_errored", "one/payments/db", "one/shop/web")
                 in control.calls, 5, "reconnect errored")
        h.keys("d")
        assert "remove api" in h.text()
        h.keys("n")
        assert "cancelled" in h.text()
        assert not any(c[0] == "remove_service" for c in control.calls)
        h.keys("d")
        h.keys("y")
        wait_for(lambda: ("remove_service", "one/payments/api") in control.calls, 5, "remove")


def test_browser_adds_a_namespace_and_a_service() -> None:
    app = FakeApp(services=2)
    control = app.control
    with running(app) as h:
        h.keys("f", settle=0.3)
        assert "browse: contexts" in h.text() and "one" in h.text()
        h.keys("j\r", settle=0.3)  # into context two
        assert "namespaces of two" in h.text()
        h.keys("jj\r", settle=0.3)  # zoo: forward it all
        wait_for(lambda: ("add_namespace", "zoo", "two") in control.calls, 5, "add namespace")
        assert h.view.browser is None
        h.keys("f", settle=0.3)
        h.keys("\r", settle=0.3)
        h.keys("\x1b[C", settle=0.3)  # right: into payments
        assert "services of payments (one)" in h.text()
        h.keys("j\r")
        wait_for(lambda: ("add_service", "payments", "echo", "one") in control.calls, 5,
                 "add service")
        h.keys("f", settle=0.3)
        h.keys("\r", settle=0.3)
        h.keys("h", settle=0.3)
        assert "browse: contexts" in h.text()
        h.keys("\x1b", settle=0.3)
        assert h.view.browser is None


def test_http_tab_shows_the_recent_requests_or_says_none() -> None:
    app = FakeApp(services=2)
    assert app.http is not None
    now = time.time()
    app.http.exchanges += [
        Exchange(now, "one/payments/api", 80, "GET", "/orders/7", 200, 3.25, 1234),
        Exchange(now, "one/payments/api", 80, "POST", "/pay", 503, 12.0, 20),
    ]
    with running(app) as h:
        h.keys("\r")
        h.keys("\t")
        text = h.text()
        assert "GET" in text and "/orders/7" in text and "200" in text and "3.2ms" in text
        assert "POST" in text and "503" in text
        h.keys("\x1b", settle=0.3)
        h.keys("j\r\t")  # web: nothing seen
        assert "no HTTP traffic seen" in h.text()
    bare = FakeApp(services=1, http=False)
    with running(bare) as h:
        h.keys("\r\t")
        assert "no HTTP traffic seen" in h.text()


def test_logs_tab_tails_follows_and_stops_with_the_tab() -> None:
    app = FakeApp(services=1)
    with running(app) as h:
        h.keys("\r\t\t", settle=0.4)
        follower = h.view.pod_log
        assert follower is not None
        wait_for(lambda: follower.received == 100, 5, "100 lines")
        text = h.text()
        assert "web-abc: line 149" in text and "web-abc: line 49" not in text
        h.keys("k" * 5)  # scrolled up: paused
        assert "paused" in h.text() and "line 149" not in h.text()
        h.keys("G")
        assert "line 149" in h.text()
        h.keys("\t")  # leaving the tab ends the stream
        wait_for(app.lookups.stopped.is_set, 5, "the log stream stopped")
        assert h.view.pod_log is None


def test_log_pane_focus_scroll_and_help() -> None:
    app = FakeApp(services=1)
    with running(app) as h:
        for i in range(30):
            app.log(f"message {i}")
        wait_for(lambda: "message 29" in h.text(), 3, "the last message")
        h.keys("\t")
        assert h.view.focus_log
        h.keys("kkk")
        assert h.view.log_offset == 3 and "message 29" not in h.text()
        h.keys("G")
        assert h.view.log_offset == 0
        h.keys("\t?")
        assert h.view.help and "reconnect every forward in error" in h.text()
        h.keys("x")
        assert not h.view.help


def test_new_events_redraw_without_a_key() -> None:
    app = FakeApp(services=1)
    with running(app) as h:
        before = h.tui.redraws
        app.bind("late", "shop", 9)
        app.bus.publish(LogLine(level="info", message="late one"))
        wait_for(lambda: h.tui.redraws > before, 3, "a redraw")
        assert "late" in h.text()


def test_q_quits_and_a_stop_request_ends_the_view() -> None:
    app = FakeApp(services=1)
    with running(app) as h:
        h.keys("q", settle=0.5)
        h.thread.join(5)  # a loaded machine may take longer than the settle time
        assert not h.thread.is_alive() and h.view.quit_requested
    other = FakeApp(services=1)
    with running(other) as h:
        other.stop_requested.set()
        h.thread.join(3)
        assert not h.thread.is_alive()


def test_mouse_wheel_and_click() -> None:
    app = FakeApp(services=6)
    with running(app) as h:
        # SGR mouse: a left click on the third table row (screen line 6), press and release.
        h.keys("\x1b[<0;5;6M\x1b[<0;5;6m")
        assert h.view.selected == h.view.rows()[2].key
        h.keys("\x1b[<65;5;6M")  # wheel down
        assert h.view.selected == h.view.rows()[5].key
