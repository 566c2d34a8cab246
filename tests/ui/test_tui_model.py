"""The TUI's pure derivations: rows, filter, stable sort, columns that never wrap, numbers."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from kubefwd.events.store import ForwardState
from kubefwd.ui.tui import model


def state(name: str, ns: str = "shop", status: str = "active", pod: str | None = "shop/p-1",
          names: tuple[str, ...] | None = None) -> ForwardState:
    return ForwardState(key=f"one/{ns}/{name}", context="one", namespace=ns, service=name,
                        ip="127.1.27.1", names=names or (f"{name}.{ns}", name),
                        ports=("80", "443"), pod=pod, status=status, last_error=None,
                        last_error_time=None, connected_since=None, updated=0.0, reconnects=0)


def test_rows_take_the_shortest_name_and_the_bare_pod() -> None:
    rows = model.build_rows([state("web", pod="ctx/shop/web-1")], {})
    assert rows[0].host == "web" and rows[0].pod == "web-1"
    assert rows[0].address == "127.1.27.1:80,443"
    assert model.connect_strings(rows[0]) == ["web.shop:80", "web.shop:443", "web:80", "web:443"]
    assert model.pod_ref("ctx/shop/web-1", "one", "x") == ("ctx", "shop", "web-1")
    assert model.pod_ref("shop/web-1", "one", "x") == ("one", "shop", "web-1")
    assert model.pod_ref(None, "one", "x") is None


def test_the_address_shows_the_pods_port_where_it_differs() -> None:
    s = state("web")
    rows = model.build_rows([dataclasses.replace(s, pod_ports=("8080", "443"))], {})
    assert rows[0].address == "127.1.27.1:80→8080,443"
    assert model.port_pairs(("80", "81"), ("", "81")) == ["80", "81"]  # unknown, or the same
    assert model.port_pairs(("80",), ()) == ["80"]
    cols = model.columns(80, compact=False, bandwidth=True, multi_namespace=True,
                         multi_context=False, host_width=8, address_width=len(rows[0].address))
    assert sum(c.width + 1 for c in cols) <= 81
    cells = dict(model.render_row(rows[0], cols))
    assert cells["address"].rstrip() == "127.1.27.1:80→8080,443"


def test_filter_matches_every_word_in_names_namespace_pod_and_status() -> None:
    rows = model.build_rows([state("web"), state("api", "pay", status="error"),
                             state("db", pod="shop/postgres-0")], {})
    assert [r.host for r in model.filter_rows(rows, "ERR")] == ["api"]
    assert [r.host for r in model.filter_rows(rows, "postgres")] == ["db"]
    assert [r.host for r in model.filter_rows(rows, "shop active")] == ["web", "db"]
    assert len(model.filter_rows(rows, "  ")) == 3


def test_sort_is_stable_and_cycles() -> None:
    rows = model.build_rows([state("b", "x"), state("a", "y"), state("c", "x", "error")], {})
    assert [r.host for r in model.sort_rows(rows, "namespace")] == ["b", "c", "a"]
    assert [r.host for r in model.sort_rows(rows, "status")] == ["c", "b", "a"]
    assert [r.host for r in model.sort_rows(rows, "hostname")] == ["a", "b", "c"]
    assert [r.host for r in model.sort_rows(rows, "rate")] == ["b", "a", "c"]  # all 0: kept
    order = ["hostname"]
    for _ in model.SORTS:
        order.append(model.next_sort(order[-1]))
    assert order == [*model.SORTS, "hostname"]


@pytest.mark.parametrize("width", [80, 100, 132, 200])
@pytest.mark.parametrize("compact", [False, True])
def test_rendered_rows_fit_the_width_exactly(width: int, compact: bool) -> None:
    rows = model.build_rows([state("a-very-long-service-name-that-goes-on-and-on")], {})
    cols = model.columns(width, compact=compact, bandwidth=True, multi_namespace=True,
                         multi_context=True)
    line = " ".join(text for _, text in model.render_row(rows[0], cols))
    assert len(line) <= width and len(model.header(cols, "hostname")) <= width
    assert "active" in line  # the status is always there, as a word


def test_numbers_and_sparkline() -> None:
    assert model.human_bytes(999) == "999B" and model.human_bytes(1500) == "1.5K"
    assert model.human_rate(2_000_000) == "2.0M/s"
    assert model.human_duration(3725) == "1h02m"
    assert model.sparkline([0, 1, 2, 4], 6) == "  ▁▂▄█"
    assert model.sparkline([], 3) == "   "
    assert model.fit("abcdef", 4) == "abc…" and model.fit("ab", 4) == "ab  "


def test_tui_refuses_without_a_terminal_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "kubefwd", "svc", "--tui", "-n", "shop"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--tui needs a terminal" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "kubefwd", "svc", "--tui", "--theme", "pink"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--theme" in bad.stderr
