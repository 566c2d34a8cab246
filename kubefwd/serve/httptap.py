"""The HTTP tap of one port of one forward: a sniffer per connection, exchanges on the bus.

The forwarder hands its port's ``HttpTap`` to the tunnel with each connection; the tunnel asks
it for a sniffer (``kubefwd.tunnel.io.Tap``) and shows it the bytes both ways on the loop
thread. Each exchange seen becomes an ``HttpRequestSeen`` on the forward's bus. A port whose
connections keep turning out not to be HTTP (redis, TLS, a database) gets no sniffer any
more: its connections then cost nothing at all.
"""

from __future__ import annotations

from kubefwd.events.bus import EventBus
from kubefwd.events.types import HttpRequestSeen
from kubefwd.serve.httpsniff import Exchange, HttpSniffer

# Connections in a row that were not HTTP, after which a port is no longer looked at.
MISSES_TO_STOP = 3


class HttpTap:
    """Used on the forwarder's loop thread only."""

    def __init__(self, key: str, port: int, bus: EventBus) -> None:
        self.key = key
        self.port = port
        self.bus = bus
        self.misses = 0  # connections in a row that were not HTTP
        self.seen = 0  # exchanges published

    @property
    def watching(self) -> bool:
        return self.misses < MISSES_TO_STOP

    def sniffer(self) -> _TapSniffer | None:
        if self.misses >= MISSES_TO_STOP:
            return None
        return _TapSniffer(self)

    def publish(self, exchange: Exchange) -> None:
        self.seen += 1
        latency = exchange.latency_ms
        self.bus.publish(HttpRequestSeen(
            key=self.key, port=self.port, method=exchange.method, path=exchange.path,
            status=exchange.status, size=exchange.size,
            latency_ms=None if latency is None else round(latency, 3)))


class _TapSniffer(HttpSniffer):
    """A sniffer that tells its tap whether its connection turned out to be HTTP."""

    def __init__(self, tap: HttpTap) -> None:
        super().__init__(tap.publish)
        self.tap = tap

    def _give_up(self) -> None:
        super()._give_up()
        # Not HTTP, or lost track of it: only the first counts against the port.
        self.tap.misses = 0 if self.http else self.tap.misses + 1

    def end(self) -> None:
        # A connection that ends before its first bytes said anything (a readiness probe
        # connects and closes) is no verdict either way.
        if not self.dead and self.http:
            self.tap.misses = 0
        super().end()
