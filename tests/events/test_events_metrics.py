from __future__ import annotations

import sys
import threading

import pytest
from helpers import wait_for

from kubefwd.events.metrics import MetricsRegistry, MetricsSampler, PortCounters

WEB = "ctx/shop/web"
DB = "ctx/shop/db"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_counters_are_created_once_and_are_plain_ints(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    c = reg.counters(WEB, 80)
    assert reg.counters(WEB, 80) is c
    assert reg.counters(WEB, 443) is not c
    assert reg.counters(DB, 80) is not c
    assert (c.bytes_in, c.bytes_out, c.open, c.total, c.failed) == (0, 0, 0, 0, 0)
    c.bytes_in += 5
    assert type(c.bytes_in) is int
    assert not hasattr(c, "__dict__")
    with pytest.raises(AttributeError):
        c.other = 1  # type: ignore[attr-defined]


def test_rate_is_bytes_per_second_over_the_window(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock, window=5.0)
    c = reg.counters(WEB, 80)
    # 1000 B/s in and 100 B/s out for 10 s, sampled every second.
    for _ in range(10):
        clock.now += 1
        c.bytes_in += 1000
        c.bytes_out += 100
        reg.sample()
        fwd = reg.snapshot().forwards[0]
        assert fwd.rate_in == pytest.approx(1000)
        assert fwd.rate_out == pytest.approx(100)
    # Traffic doubles: after a full window the rate is the new one, halfway it is between.
    for second in range(1, 6):
        clock.now += 1
        c.bytes_in += 2000
        reg.sample()
        expected = (second * 2000 + (5 - second) * 1000) / 5
        assert reg.snapshot().rate_in == pytest.approx(expected)
    # Traffic stops: the rate falls to zero once the window has passed.
    for second in range(1, 6):
        clock.now += 1
        reg.sample()
        assert reg.snapshot().rate_in == pytest.approx((5 - second) * 2000 / 5)
    assert reg.snapshot().rate_in == 0


def test_a_port_younger_than_the_window_is_measured_since_it_appeared(
    clock: FakeClock,
) -> None:
    reg = MetricsRegistry(clock, window=5.0)
    reg.sample()
    clock.now += 0.5
    c = reg.counters(WEB, 80)
    clock.now += 2
    c.bytes_in += 1000
    reg.sample()
    assert reg.snapshot().forwards[0].rate_in == pytest.approx(500)


def test_history_has_one_sample_a_forward_and_is_capped_at_60(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    web = reg.counters(WEB, 80)
    reg.counters(DB, 5432)
    for i in range(75):
        clock.now += 1
        web.bytes_in += 10 * i
        reg.sample()
    snap = reg.snapshot()
    by_key = {f.key: f for f in snap.forwards}
    assert len(by_key[WEB].history) == 60
    assert len(by_key[DB].history) == 60
    assert set(by_key[DB].history) == {(0.0, 0.0)}
    # Oldest first: rates grow with i.
    rates = [rate_in for rate_in, _ in by_key[WEB].history]
    assert rates == sorted(rates) and rates[-1] > rates[0]
    assert isinstance(by_key[WEB].history, tuple)


def test_history_length_follows_the_setting(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock, history=3)
    reg.counters(WEB, 80)
    for _ in range(5):
        clock.now += 1
        reg.sample()
    assert len(reg.snapshot().forwards[0].history) == 3


def test_per_port_breakdown_and_forward_sums(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    http = reg.counters(WEB, 80)
    https = reg.counters(WEB, 443)
    http.bytes_in, http.bytes_out, http.open, http.total, http.failed = 300, 30, 1, 4, 1
    https.bytes_in, https.bytes_out, https.open, https.total, https.failed = 700, 70, 2, 5, 0
    clock.now += 1
    reg.sample()
    [fwd] = reg.snapshot().forwards
    assert [p.port for p in fwd.ports] == [80, 443]
    p80, p443 = fwd.ports
    assert (p80.bytes_in, p80.bytes_out, p80.open, p80.total, p80.failed) == (300, 30, 1, 4, 1)
    assert (p443.rate_in, p443.rate_out) == (pytest.approx(700), pytest.approx(70))
    assert (fwd.bytes_in, fwd.bytes_out, fwd.open, fwd.total, fwd.failed) == (1000, 100, 3, 9, 1)
    assert (fwd.rate_in, fwd.rate_out) == (pytest.approx(1000), pytest.approx(100))


def test_totals_over_every_forward(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    web, db = reg.counters(WEB, 80), reg.counters(DB, 5432)
    web.bytes_in, web.open, web.total = 1000, 2, 3
    db.bytes_out, db.total, db.failed = 50, 1, 1
    clock.now += 1
    reg.sample()
    snap = reg.snapshot()
    assert [f.key for f in snap.forwards] == [DB, WEB]
    assert (snap.bytes_in, snap.bytes_out, snap.open, snap.total, snap.failed) == (
        1000, 50, 2, 4, 1,
    )
    assert (snap.rate_in, snap.rate_out) == (pytest.approx(1000), pytest.approx(50))
    assert snap.time == clock.now


def test_snapshot_reads_counters_live_and_rates_as_of_the_last_sample(
    clock: FakeClock,
) -> None:
    reg = MetricsRegistry(clock)
    c = reg.counters(WEB, 80)
    c.bytes_in += 10
    assert reg.snapshot().bytes_in == 10
    assert reg.snapshot().rate_in == 0


def test_forget_drops_a_forward_at_the_next_sample(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    web, db = reg.counters(WEB, 80), reg.counters(DB, 5432)
    web.bytes_in, web.total = 500, 2
    db.bytes_in = 100
    clock.now += 1
    reg.sample()
    reg.forget(WEB)
    # Still shown until the sampler has run once more...
    assert [f.key for f in reg.snapshot().forwards] == [DB, WEB]
    clock.now += 1
    reg.sample()
    snap = reg.snapshot()
    assert [f.key for f in snap.forwards] == [DB]
    # ...and the totals keep what it counted.
    assert (snap.bytes_in, snap.total) == (600, 2)
    assert snap.rate_in == pytest.approx(100 / 2)  # db alone: 100 bytes in 2 s
    # A forward of the same key later starts afresh.
    again = reg.counters(WEB, 80)
    assert again is not web and again.bytes_in == 0


def test_forget_of_an_unknown_forward_is_harmless(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    reg.forget("ctx/none/x")
    reg.sample()
    assert reg.snapshot().forwards == ()


def test_counting_from_one_thread_per_forward_while_sampling(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    go = threading.Event()

    def forward(key: str) -> None:
        counters: PortCounters = reg.counters(key, 80)
        go.wait(5)
        for _ in range(20_000):
            counters.bytes_in += 3
            counters.total += 1

    threads = [threading.Thread(target=forward, args=(f"c/ns/s{i}",), name=f"test-fwd-{i}")
               for i in range(4)]
    for t in threads:
        t.start()
    go.set()
    while any(t.is_alive() for t in threads):
        clock.now += 1
        reg.sample()
        reg.snapshot()
    for t in threads:
        t.join(5)
    snap = reg.snapshot()
    assert (snap.bytes_in, snap.total) == (4 * 60_000, 4 * 20_000)


def test_sampler_thread_samples_and_stops() -> None:
    reg = MetricsRegistry()
    reg.counters(WEB, 80)
    sampler = MetricsSampler(reg, interval=0.01)
    assert sampler.name == "kubefwd/metrics" and sampler.daemon
    sampler.start()
    wait_for(lambda: len(reg.snapshot().forwards[0].history) >= 3, 5, "three samples",
             interval=0.01)
    sampler.stop()
    assert not sampler.is_alive()
    length = len(reg.snapshot().forwards[0].history)
    assert sampler.stopping.is_set()
    threading.Event().wait(0.05)  # a few intervals: a stopped sampler samples no more
    assert len(reg.snapshot().forwards[0].history) == length


def test_sampler_stop_before_start_is_harmless() -> None:
    sampler = MetricsSampler(MetricsRegistry())
    sampler.stop()
    assert not sampler.is_alive()


def test_totals_forward_and_rates_agree_with_the_snapshot(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock)
    web, db = reg.counters(WEB, 80), reg.counters(DB, 5432)
    web.bytes_in, web.bytes_out, web.open, web.total = 1000, 200, 2, 3
    db.bytes_in, db.failed = 50, 1
    assert reg.seq == 0 and reg.rates() == {}
    clock.now += 1
    reg.sample()
    assert reg.seq == 1
    snap = reg.snapshot()
    totals = reg.totals()
    assert (totals.bytes_in, totals.bytes_out, totals.open, totals.total, totals.failed,
            totals.rate_in, totals.rate_out, totals.seq) == (
        snap.bytes_in, snap.bytes_out, snap.open, snap.total, snap.failed, snap.rate_in,
        snap.rate_out, 1)
    assert reg.forward(WEB) == next(f for f in snap.forwards if f.key == WEB)
    assert reg.forward("ctx/shop/none") is None
    assert reg.rates() == {WEB: (1000.0, 200.0), DB: (50.0, 0.0)}
    # Byte counts are at most max_age old; a new sample refreshes them at once.
    web.bytes_in += 500
    assert reg.totals().bytes_in == 1050
    clock.now += 1.0
    assert reg.totals().bytes_in == 1550
    web.bytes_in += 1
    reg.sample()
    assert reg.totals().bytes_in == 1551 and reg.totals().seq == 2
    # A forgotten forward's bytes stay in the totals, as in the snapshot.
    reg.forget(DB)
    reg.sample()
    assert reg.totals().bytes_in == reg.snapshot().bytes_in == 1551
    assert reg.forward(DB) is None


class ReferenceRates:
    """Every port sampled every second, as the registry did before quiet ports were skipped:
    the figures the registry must still give."""

    def __init__(self, window: float, history: int) -> None:
        self.window = window
        self.points: dict[tuple[str, int], list[tuple[float, int, int]]] = {}
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.size = history

    def add(self, key: str, port: int, now: float) -> None:
        self.points[(key, port)] = [(now, 0, 0)]
        self.history.setdefault(key, [])

    def sample(self, now: float, counts: dict[tuple[str, int], PortCounters]) -> None:
        rates: dict[str, tuple[float, float]] = {}
        for (key, port), points in self.points.items():
            c = counts[(key, port)]
            points.append((now, c.bytes_in, c.bytes_out))
            while len(points) > 1 and points[1][0] <= now - self.window:
                points.pop(0)
            t, b_in, b_out = points[0]
            span = now - t
            r = ((c.bytes_in - b_in) / span, (c.bytes_out - b_out) / span) if span > 0 \
                else (0.0, 0.0)
            old = rates.get(key, (0.0, 0.0))
            rates[key] = (old[0] + r[0], old[1] + r[1])
        for key, r in rates.items():
            self.history[key] = (self.history[key] + [r])[-self.size:]
        self.rates = rates


def test_quiet_spells_give_the_figures_of_sampling_every_port_every_second(
    clock: FakeClock,
) -> None:
    import random

    rng = random.Random(7)
    reg = MetricsRegistry(clock, window=5.0, history=20)
    ref = ReferenceRates(5.0, 20)
    counts: dict[tuple[str, int], PortCounters] = {}
    for key, port in [(WEB, 80), (WEB, 443), (DB, 5432)]:
        counts[(key, port)] = reg.counters(key, port)
        ref.add(key, port, clock.now)
    for second in range(300):
        clock.now += 1
        if second == 150:  # a forward appears in the middle
            counts[("ctx/shop/late", 9)] = reg.counters("ctx/shop/late", 9)
            ref.add("ctx/shop/late", 9, clock.now)
        # Bursts of traffic between quiet spells longer and shorter than the window.
        for c in counts.values():
            if (second // 13) % 3 == 0 and rng.random() < 0.7:
                c.bytes_in += rng.randrange(1, 5000)
            if second % 29 == 0:
                c.bytes_out += rng.randrange(1, 50)
        reg.sample()
        ref.sample(clock.now, counts)
        snap = reg.snapshot()
        for fwd in snap.forwards:
            assert (fwd.rate_in, fwd.rate_out) == pytest.approx(ref.rates[fwd.key]), second
            flat = [x for pair in fwd.history for x in pair]
            assert flat == pytest.approx([x for pair in ref.history[fwd.key] for x in pair])
            assert reg.forward(fwd.key) == fwd
        assert reg.rates().keys() == ref.rates.keys()
        for key, pair in reg.rates().items():
            assert pair == pytest.approx(ref.rates[key]), second


def test_a_quiet_forward_costs_no_history_append_and_no_point(clock: FakeClock) -> None:
    reg = MetricsRegistry(clock, window=5.0, history=60)
    web = reg.counters(WEB, 80)
    web.bytes_in += 100
    clock.now += 1
    reg.sample()
    for _ in range(10):  # the rate falls to 0 within the window
        clock.now += 1
        reg.sample()
    assert reg.forward(WEB).rate_in == 0  # type: ignore[union-attr]
    track = reg._forwards[WEB]
    kept, port = len(track.history), track.ports[80]
    points = tuple(port.points)
    assert len(points) == 1
    for _ in range(100):
        clock.now += 1
        reg.sample()
    assert len(track.history) == kept and tuple(port.points) == points
    # Readers still see one sample a second: the quiet ones as zeros.
    history = reg.forward(WEB).history  # type: ignore[union-attr]
    assert len(history) == 60 and set(history) == {(0.0, 0.0)}
    assert reg.seq == 111
    # Traffic again: measured over the window, as if every second had been sampled.
    web.bytes_in += 1000
    clock.now += 1
    reg.sample()
    fwd = reg.forward(WEB)
    assert fwd is not None and fwd.rate_in == pytest.approx(200)
    assert fwd.history[-1] == (pytest.approx(200), 0.0) and len(fwd.history) == 60


def test_bytes_counted_at_the_instant_a_port_appeared_still_make_a_rate(
    clock: FakeClock,
) -> None:
    reg = MetricsRegistry(clock, window=5.0)
    c = reg.counters(WEB, 80)
    c.bytes_in += 500
    reg.sample()  # no time has passed: no rate yet
    assert reg.forward(WEB).rate_in == 0  # type: ignore[union-attr]
    clock.now += 1
    reg.sample()
    assert reg.forward(WEB).rate_in == pytest.approx(500)  # type: ignore[union-attr]


def test_a_reader_racing_the_sampler_sees_one_sample_a_second_no_more_no_less(
    clock: FakeClock,
) -> None:
    reg = MetricsRegistry(clock, history=100_000)
    web = reg.counters(WEB, 80)
    done = threading.Event()
    bad: list[tuple[int, int, int]] = []

    def read() -> None:
        while not done.is_set():
            before = reg.seq
            fwd = reg.forward(WEB)
            after = reg.seq
            assert fwd is not None
            if not before <= len(fwd.history) <= after + 1:  # (+1: appended, not yet counted)
                bad.append((before, len(fwd.history), after))

    readers = [threading.Thread(target=read, name=f"test-reader-{i}") for i in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: in the middle of a sample too
    for reader in readers:
        reader.start()
    try:
        for second in range(3000):  # busy and quiet spells: appends and skipped samples
            clock.now += 1
            if (second // 7) % 2:
                web.bytes_in += 10
            reg.sample()
    finally:
        done.set()
        for reader in readers:
            reader.join(10)
        sys.setswitchinterval(interval)
    assert bad == []
