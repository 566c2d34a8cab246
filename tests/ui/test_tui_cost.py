"""What a redraw costs with many forwards: the rows on screen, not every forward behind
them (the order is kept per store version, the status bar reads the totals)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import wait_for
from tuikit import FakeApp, running

from kubefwd.events.metrics import MetricsRegistry


class CountingMetrics(MetricsRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.snapshots = 0
        self.forwards: list[str] = []

    def snapshot(self) -> Any:
        self.snapshots += 1
        return super().snapshot()

    def forward(self, key: str) -> Any:
        self.forwards.append(key)
        return super().forward(key)


def test_key_presses_with_2000_forwards_read_only_the_rows_on_screen() -> None:
    app = FakeApp(services=2000, http=False)
    metrics = app.metrics = CountingMetrics()
    for state in app.store.snapshot():
        metrics.counters(state.key, 80).bytes_in = 7
    busy = "one/payments/svc1999"
    metrics.counters(busy, 80).bytes_in = 10_000_000
    metrics.sample()
    with running(app, columns=120, rows=30) as h:
        h.screen()
        metrics.snapshots, metrics.forwards = 0, []
        metrics.sample()  # new rates: the rows drawn read their figures again
        for _ in range(5):
            h.keys("j", settle=0.05)
        lines = h.screen()
        assert metrics.snapshots == 0
        assert 0 < len(set(metrics.forwards)) <= 30  # the visible rows, no more
        assert "forwards 2000/2000 active" in lines[1]
        assert "in 10.0M" in lines[1]  # totals, from the registry's sums
        # Sorted by rate, the busiest forward comes first, by the sampled rates.
        h.keys("sss")
        assert h.view.sort == "rate"
        assert h.view.rows()[0].key == busy
        h.keys("g")
        top = h.screen()[3]
        assert top.startswith("svc1999 ") and " 10.0M " in top


def test_an_idle_view_is_not_redrawn_by_each_sample_but_traffic_redraws_it() -> None:
    app = FakeApp(services=3)
    with running(app) as h:
        time.sleep(0.6)  # the start-up lines drawn
        before = h.tui.redraws
        for _ in range(4):  # samples with nothing moving: the same screen
            app.metrics.sample()
            time.sleep(0.3)
        assert h.tui.redraws == before
        app.metrics.counters("one/shop/web", 80).bytes_in += 5000
        app.metrics.sample()
        wait_for(lambda: h.tui.redraws > before, 3, "a redraw for the traffic")
        moved = h.tui.redraws
        app.metrics.sample()  # the rate still moves: each sample redraws (sparklines)
        wait_for(lambda: h.tui.redraws > moved, 3, "a redraw for the next sample")


def test_samples_redraw_only_while_what_they_show_moves() -> None:
    now = [1000.0]
    app = FakeApp(services=3)
    app.metrics = MetricsRegistry(clock=lambda: now[0])

    def sample() -> int:
        """One sample a (fake) second later; the redraws it caused."""
        before = h.tui.redraws
        now[0] += 1.0
        app.metrics.sample()
        time.sleep(0.35)  # more than a tick
        return h.tui.redraws - before

    with running(app, columns=120, rows=30) as h:  # wide enough for the sparklines
        h.screen()
        app.metrics.counters("one/shop/web", 80).bytes_in += 50_000
        moving = [sample() for _ in range(3)]
        assert all(moving), moving  # the rate and the sparkline move with each sample
        # The traffic stopped: the rate falls to zero over its window and the last spike
        # leaves the 12-cell sparkline; from then on a sample changes nothing visible.
        after = [sample() for _ in range(24)]
        assert any(after[:5]), after
        assert after[-6:] == [0] * 6, after
        assert "0B/s" in h.screen()[3 + [r.key for r in h.view.rows()].index("one/shop/web")]


def test_the_clis_view_freezes_the_collector_after_its_first_redraw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kubefwd.ui.tui.app as tui_app

    frozen: list[int] = []
    app = FakeApp(services=3)
    with running(app) as h:
        monkeypatch.setattr(tui_app.gc, "freeze", lambda: frozen.append(h.tui.redraws))
        h.tui.freeze_gc = True
        h.tui.redraws = 0  # as if nothing had been drawn yet
        h.keys("j")
        h.keys("k")
        assert frozen == [1]  # once, after the first redraw
    h2_app = FakeApp(services=3)
    with running(h2_app) as h2:  # an embedding program's view leaves the collector alone
        h2.keys("j")
    assert frozen == [1]


def test_no_collection_starts_while_the_clis_view_draws_a_frame() -> None:
    import gc
    import sys

    during: list[bool] = []
    switch: list[float] = []
    after: list[tuple[bool, float]] = []
    usual = sys.getswitchinterval()
    app = FakeApp(services=3)
    with running(app) as h:
        h.tui.freeze_gc = True
        h.tui.application.before_render += lambda _a: during.append(gc.isenabled())
        h.tui.application.before_render += lambda _a: switch.append(sys.getswitchinterval())
        h.tui.application.after_render += lambda _a: after.append(
            (gc.isenabled(), sys.getswitchinterval()))
        h.keys("j")
        h.keys("k")
    assert during and not any(during)  # off while a frame is drawn
    # A frame is not handed to other threads every few milliseconds...
    assert switch and min(switch) > usual
    # ...and after each frame both are as they were.
    assert after and set(after) == {(True, usual)}
    embedded: list[bool] = []
    with running(FakeApp(services=3)) as h2:  # an embedding program's view: left alone
        h2.tui.application.before_render += lambda _a: embedded.append(gc.isenabled())
        h2.keys("j")
    assert embedded and all(embedded)
    assert gc.isenabled()


def test_a_flood_of_redraws_asked_by_other_threads_is_a_few_frames_and_none_is_lost() -> None:
    import threading

    app = FakeApp(services=3)
    with running(app) as h:
        h.screen()
        time.sleep(0.3)
        before = h.tui.redraws

        def flood() -> None:
            for _ in range(2000):  # a pod log pouring lines for ~1 s
                h.tui._invalidate()
                time.sleep(0.0005)

        worker = threading.Thread(target=flood, name="test-flood")
        started = time.monotonic()
        worker.start()
        worker.join()
        took = time.monotonic() - started
        time.sleep(0.6)  # the ticker draws what was asked for last
        frames = h.tui.redraws - before
        # At most one frame per gap (and the ticker's), not one per request; at least one.
        assert 1 <= frames <= took / 0.05 + took / 0.25 + 3, (frames, took)
        assert not h.tui._asked  # the last request was drawn, not dropped
