"""Byte and connection counters per forward and port, and their rates sampled once a second.

The hot path is a forwarder's selector loop: it keeps the ``PortCounters`` of each of its
ports and does ``counters.bytes_in += n``, nothing else, no lock. Each counter has one
writer (that forward's thread) and any number of readers, which only ever read whole ints.
Creating the counters of a port takes a lock once; the sampler thread calls ``sample()``
once a second, which turns the cumulative counts into rates over a rolling window and keeps
``history`` samples per forward for sparklines.

Thousands of forwards mostly sit still, so a sample costs a comparison for a quiet port (its
counts did not move and its rates are 0): no point is kept for it, and a quiet forward's
history is not appended to; it records up to which sample it is complete, and readers see
the samples since as zeros. A quiet port keeps the oldest point of its last window, and the
registry the times of its last window's samples: when traffic resumes, the port's points are
what sampling it every second would have kept, and so are its rates.

Direction: ``bytes_in`` came from the pod to the local client, ``bytes_out`` went from the
local client to the pod. A rate is bytes per second over the last ``window`` seconds (or
since the port's counters were created, when that is more recent).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubefwd.support.threads import StoppableThread

log = logging.getLogger("kubefwd.events")


class PortCounters:
    """Cumulative counts of one port of one forward; plain ints, one writer."""

    __slots__ = ("bytes_in", "bytes_out", "failed", "open", "total")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.open = 0  # connections open now
        self.total = 0  # connections accepted so far
        self.failed = 0  # connections given up

    def __repr__(self) -> str:
        return (
            f"PortCounters(in={self.bytes_in}, out={self.bytes_out}, open={self.open}, "
            f"total={self.total}, failed={self.failed})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMetrics:
    port: int
    bytes_in: int
    bytes_out: int
    open: int
    total: int
    failed: int
    rate_in: float
    rate_out: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardMetrics:
    """One forward's figures: sums over its ports, each port, and the rate history (oldest
    first) as (bytes_in_rate, bytes_out_rate) pairs."""

    key: str
    bytes_in: int
    bytes_out: int
    open: int
    total: int
    failed: int
    rate_in: float
    rate_out: float
    ports: tuple[PortMetrics, ...]
    history: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSnapshot:
    """Totals over every forward (including those already forgotten: totals never go down,
    except ``open``), and each forward sorted by key."""

    time: float
    bytes_in: int
    bytes_out: int
    open: int
    total: int
    failed: int
    rate_in: float
    rate_out: float
    forwards: tuple[ForwardMetrics, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsTotals:
    """The totals of a ``MetricsSnapshot`` without the per-forward figures; ``seq`` counts the
    samples taken so far (it changes when the rates do)."""

    seq: int
    time: float
    bytes_in: int
    bytes_out: int
    open: int
    total: int
    failed: int
    rate_in: float
    rate_out: float


class _PortTrack:
    """A port's counters and the points of its rolling window, kept by the sampler; its
    forward (``key``, ``track``); ``quiet`` while its rates are 0 and its counts were
    ``seen_in`` and ``seen_out`` (the very int objects: the sampler's look at a quiet port
    compares identities and touches nothing but the port and its counters)."""

    __slots__ = ("counters", "key", "points", "quiet", "rate_in", "rate_out", "seen_in",
                 "seen_out", "track")

    def __init__(self, counters: PortCounters, now: float, key: str,
                 track: _ForwardTrack) -> None:
        self.counters = counters
        self.points: collections.deque[tuple[float, int, int]] = collections.deque(
            [(now, 0, 0)]
        )
        self.rate_in = 0.0
        self.rate_out = 0.0
        self.key = key
        self.track = track
        self.quiet = True
        self.seen_in = counters.bytes_in
        self.seen_out = counters.bytes_out


class _ForwardTrack:
    """A forward's ports and rate history; ``seq``: the sample its history is complete up
    to (the samples after it, taken while the forward was quiet, were zeros)."""

    __slots__ = ("history", "ports", "quiet", "seq")

    def __init__(self, history: int, seq: int) -> None:
        self.ports: dict[int, _PortTrack] = {}
        self.history: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=history
        )
        self.seq = seq
        self.quiet = True  # every port quiet as of the last sample

    def advance(self, seq: int, sample: tuple[float, float]) -> None:
        """Sampler only: the zeros of the samples skipped since the last, then ``sample``
        as sample ``seq``. ``seq`` is -1 meanwhile, for readers to wait."""
        missing = min(seq - 1 - self.seq, self.history.maxlen or 0)
        self.seq = -1
        if missing > 0:
            self.history.extend(_ZERO for _ in range(missing))
        self.history.append(sample)
        self.seq = seq

    def recent(self, seq: int) -> tuple[tuple[float, float], ...]:
        """The history as of sample ``seq`` (oldest first), the skipped samples as zeros."""
        while True:  # the sampler may append meanwhile: take a history and seq that agree
            done = self.seq
            if done >= 0:
                history = tuple(self.history)
                if self.seq == done:
                    break
            time.sleep(0)  # let the sampler finish
        missing = seq - done
        if missing <= 0:
            return history
        size = self.history.maxlen or 0
        if missing >= size:
            return (_ZERO,) * size
        return (*history, *(_ZERO,) * missing)[-size:]


_ZERO = (0.0, 0.0)


class MetricsRegistry:
    """Counters per (forward, port), rates over a rolling window, and a rate history."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        window: float = 5.0,
        history: int = 60,
    ) -> None:
        if window <= 0 or history < 1:
            raise ValueError("the rate window must be positive and the history at least 1")
        self._clock = clock
        self._window = window
        self._history = history
        self._lock = threading.Lock()
        self._forwards: dict[str, _ForwardTrack] = {}
        self._retiring: dict[str, _ForwardTrack] = {}
        # What forgotten forwards had counted, so that totals never go down.
        self._gone_bytes_in = 0
        self._gone_bytes_out = 0
        self._gone_total = 0
        self._gone_failed = 0
        self._seq = 0
        self._rates: dict[str, tuple[float, float]] = {}
        self._added = False  # a forward or port appeared since the last sample
        # What the sampler goes over: (key, track, port) of every port, rebuilt when
        # forwards or ports come or go (no allocation per port and sample).
        self._scan: tuple[_PortTrack, ...] = ()
        # The times of the samples of the last window (and the newest before it): the
        # points a quiet port would have had.
        self._times: collections.deque[float] = collections.deque()
        self._totals: MetricsTotals | None = None

    def counters(self, key: str, port: int) -> PortCounters:
        """The counters of ``port`` of forward ``key``, created on the first call."""
        track = self._forwards.get(key)
        if track is not None:
            port_track = track.ports.get(port)
            if port_track is not None:
                return port_track.counters
        with self._lock:
            track = self._forwards.get(key)
            if track is None:
                track = self._forwards[key] = _ForwardTrack(self._history, self._seq)
                self._added = True
            port_track = track.ports.get(port)
            if port_track is None:
                port_track = _PortTrack(PortCounters(), self._clock(), key, track)
                # Copy on write: the sampler and snapshot iterate ports without the lock.
                track.ports = {**track.ports, port: port_track}
                self._added = True
            return port_track.counters

    def forget(self, key: str) -> None:
        """Forward ``key`` is gone: it stays in snapshots until the next ``sample()``, and a
        later ``counters(key, ...)`` starts afresh."""
        with self._lock:
            track = self._forwards.pop(key, None)
            if track is not None:
                self._retiring[key] = track

    def sample(self) -> None:
        """Compute every port's rates over the window and append one history sample per
        forward; drop the forwards forgotten since the last sample. A quiet port costs a
        comparison, a quiet forward nothing more."""
        now = self._clock()
        horizon = now - self._window
        with self._lock:
            retired, self._retiring = tuple(self._retiring.values()), {}
            for track in retired:
                for p in track.ports.values():
                    c = p.counters
                    self._gone_bytes_in += c.bytes_in
                    self._gone_bytes_out += c.bytes_out
                    self._gone_total += c.total
                    self._gone_failed += c.failed
            added, self._added = self._added, False
            if added or retired:
                forwards = tuple(self._forwards.items())
                self._scan = tuple(p for _key, track in forwards for p in track.ports.values())
            scan = self._scan
        seq = self._seq + 1
        times = self._times
        moved: dict[str, _ForwardTrack] = {}
        for p in scan:
            c = p.counters
            if p.quiet and c.bytes_in is p.seen_in and c.bytes_out is p.seen_out:
                continue  # quiet: points[0] stands for every sample since
            b_in, b_out = c.bytes_in, c.bytes_out
            moved[p.key] = p.track
            points = p.points
            last = points[-1]
            if len(points) == 1 and times and times[-1] > last[0]:
                # Resumed after a quiet spell: the samples skipped would have found
                # these counts.
                points.extend((t, last[1], last[2]) for t in times if t > last[0])
            points.append((now, b_in, b_out))
            # The base is the newest point at or before the horizon, or the oldest
            # point when the port is younger than the window.
            while len(points) > 1 and points[1][0] <= horizon:
                points.popleft()
            base_t, base_in, base_out = points[0]
            span = now - base_t
            if span > 0:
                p.rate_in = (b_in - base_in) / span
                p.rate_out = (b_out - base_out) / span
            else:
                p.rate_in = p.rate_out = 0.0
            p.quiet = b_in == base_in and b_out == base_out  # nothing moved in the window
            if p.quiet:
                # Quiet from now on (rates 0): keep the base alone, its counts are these.
                while len(points) > 1:
                    points.pop()
                p.seen_in, p.seen_out = b_in, b_out
        # A forward none of whose ports moved is quiet (a port with rates is never quiet).
        changed: dict[str, tuple[float, float]] = {}
        for key, track in moved.items():
            fwd_in = fwd_out = 0.0
            for p in track.ports.values():
                fwd_in += p.rate_in
                fwd_out += p.rate_out
            track.advance(seq, (fwd_in, fwd_out))
            track.quiet = not fwd_in and not fwd_out
            changed[key] = (fwd_in, fwd_out)
        if added or retired:
            rates = {key: _ZERO if track.quiet else self._rates.get(key, _ZERO)
                     for key, track in forwards}
            rates.update(changed)
            self._rates = rates
        elif changed:
            self._rates = {**self._rates, **changed}  # copy on write: readers iterate it
        times.append(now)
        while len(times) > 1 and times[1] <= horizon:
            times.popleft()
        self._seq = seq
        self._totals = None

    def totals(self, max_age: float = 1.0) -> MetricsTotals:
        """The totals of ``snapshot()`` without building a figure per forward: rates as of the
        last sample, byte counts at most ``max_age`` seconds old (O(ports) once per
        ``max_age``, O(1) otherwise). For readers that only show the sums (a status bar)."""
        cached = self._totals
        now = self._clock()
        if cached is not None and cached.seq == self._seq and now - cached.time < max_age:
            return cached
        with self._lock:
            tracks = (*self._retiring.values(), *self._forwards.values())
            gone = (self._gone_bytes_in, self._gone_bytes_out, self._gone_total,
                    self._gone_failed)
            seq = self._seq
        b_in, b_out, opened, total, failed = gone[0], gone[1], 0, gone[2], gone[3]
        r_in = r_out = 0.0
        for track in tracks:
            for p in track.ports.values():
                c = p.counters
                b_in += c.bytes_in
                b_out += c.bytes_out
                opened += c.open
                total += c.total
                failed += c.failed
                r_in += p.rate_in
                r_out += p.rate_out
        totals = MetricsTotals(seq=seq, time=now, bytes_in=b_in, bytes_out=b_out, open=opened,
                               total=total, failed=failed, rate_in=r_in, rate_out=r_out)
        self._totals = totals
        return totals

    def rates(self) -> dict[str, tuple[float, float]]:
        """(rate in, rate out) of every forward as of the last sample (do not modify it)."""
        return self._rates

    @property
    def seq(self) -> int:
        """How many samples were taken so far: the rates change only when this does."""
        return self._seq

    def forward(self, key: str) -> ForwardMetrics | None:
        """The figures of forward ``key`` alone (O(its ports)), or None when it has none."""
        track = self._forwards.get(key) or self._retiring.get(key)
        return _forward_metrics(key, track, self._seq) if track is not None else None

    def snapshot(self) -> MetricsSnapshot:
        """Every figure as of now (rates as of the last sample)."""
        with self._lock:
            tracks = {**self._retiring, **self._forwards}
            gone = (self._gone_bytes_in, self._gone_bytes_out, self._gone_total,
                    self._gone_failed)
            seq = self._seq
        forwards = tuple(_forward_metrics(k, tracks[k], seq) for k in sorted(tracks))
        return MetricsSnapshot(
            time=self._clock(),
            bytes_in=gone[0] + sum(f.bytes_in for f in forwards),
            bytes_out=gone[1] + sum(f.bytes_out for f in forwards),
            open=sum(f.open for f in forwards),
            total=gone[2] + sum(f.total for f in forwards),
            failed=gone[3] + sum(f.failed for f in forwards),
            rate_in=sum(f.rate_in for f in forwards),
            rate_out=sum(f.rate_out for f in forwards),
            forwards=forwards,
        )


def _forward_metrics(key: str, track: _ForwardTrack, seq: int) -> ForwardMetrics:
    ports = tuple(
        PortMetrics(
            port=port,
            bytes_in=p.counters.bytes_in,
            bytes_out=p.counters.bytes_out,
            open=p.counters.open,
            total=p.counters.total,
            failed=p.counters.failed,
            rate_in=p.rate_in,
            rate_out=p.rate_out,
        )
        for port, p in sorted(track.ports.items())
    )
    return ForwardMetrics(
        key=key,
        bytes_in=sum(p.bytes_in for p in ports),
        bytes_out=sum(p.bytes_out for p in ports),
        open=sum(p.open for p in ports),
        total=sum(p.total for p in ports),
        failed=sum(p.failed for p in ports),
        rate_in=sum(p.rate_in for p in ports),
        rate_out=sum(p.rate_out for p in ports),
        ports=ports,
        history=track.recent(seq),
    )


class MetricsSampler(StoppableThread):
    """The thread that calls ``registry.sample()`` once per ``interval`` seconds."""

    def __init__(self, registry: MetricsRegistry, interval: float = 1.0) -> None:
        super().__init__("kubefwd/metrics")
        self.registry = registry
        self.interval = interval

    def run_loop(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.registry.sample()
            except Exception:  # a bad sample must not stop the rates for good
                log.exception("metrics sample failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Set the stop Event and wait up to ``timeout`` seconds for the thread to end."""
        super().stop()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
