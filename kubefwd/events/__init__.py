"""The event bus, the state store and the metrics registry.

This package owns what the core says about itself while it runs: typed, immutable events
(``types``), their fan-out to subscribers with bounded queues and to inline listeners (``bus``),
the fold of those events into one snapshot of every forward (``store``), and the byte and
connection counters with their sampled rates (``metrics``). It sits just above the support
layer and may import only the standard library, ``kubefwd.errors`` and ``kubefwd.support.threads``,
so every other layer can publish into it without an import cycle.
"""

from __future__ import annotations

from kubefwd.events.bus import EventBus, Subscription
from kubefwd.events.metrics import (
    ForwardMetrics,
    MetricsRegistry,
    MetricsSampler,
    MetricsSnapshot,
    PortCounters,
    PortMetrics,
)
from kubefwd.events.store import ForwardState, StateStore
from kubefwd.events.types import Event, to_json

__all__ = [
    "Event",
    "EventBus",
    "ForwardMetrics",
    "ForwardState",
    "MetricsRegistry",
    "MetricsSampler",
    "MetricsSnapshot",
    "PortCounters",
    "PortMetrics",
    "StateStore",
    "Subscription",
    "to_json",
]
