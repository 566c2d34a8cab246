"""Routing: which pod's tunnel takes a new connection, the per-pod back-off, closing tunnels
no forward uses, and -a opening them ahead. The tunnel pool is a recording stand-in: these are
the decisions, the tunnels themselves are tested in tests/tunnel."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubefwd.cluster.target import ApiTarget
from kubefwd.errors import KubefwdError
from kubefwd.events.bus import EventBus
from kubefwd.events.report import Reporter
from kubefwd.events.types import ConnectionRouted, LogLine, WarningRaised
from kubefwd.registry.model import ForwardKey, ForwardUpsert, PodRef
from kubefwd.serve.forwarder import PodBackoff
from kubefwd.serve.routing import UNUSED_TUNNEL_GRACE, Router

ONE = ApiTarget("127.0.0.1", 6443, "https")
TWO = ApiTarget("127.0.0.2", 6443, "https")


@dataclass
class FakeTunnel:
    target: ApiTarget
    namespace: str
    pod: str
    transport_name: str = ""
    alive: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    fail_open: bool = False
    opened: int = 0
    timeouts: list[float] = field(default_factory=list)

    def open(self, timeout: float) -> None:
        self.opened += 1
        self.timeouts.append(timeout)
        if self.fail_open:
            raise KubefwdError(f"cannot reach {self.pod}")
        self.transport_name, self.alive = "spdy", True


@dataclass
class FakePool:
    tunnel_list: dict[tuple[str, str, str], FakeTunnel] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    asked: list[tuple[str, str, str, Any]] = field(default_factory=list)
    targets: list[ApiTarget] = field(default_factory=list)
    dropped: list[tuple[str, str, str]] = field(default_factory=list)

    def get(self, target: ApiTarget, context: str, namespace: str, pod: str, *,
            loop: Any = None) -> FakeTunnel:
        self.asked.append((context, namespace, pod, loop))
        self.targets.append(target)
        if pod in self.refuse:
            raise KubefwdError("no tunnel")
        return self.tunnel_list.setdefault((context, namespace, pod),
                                           FakeTunnel(target, namespace, pod))

    def tunnels(self) -> list[FakeTunnel]:
        return list(self.tunnel_list.values())

    def drop(self, context: str, namespace: str, pod: str) -> None:
        self.dropped.append((context, namespace, pod))
        self.tunnel_list.pop((context, namespace, pod), None)


class FakeForwarder:
    def __init__(self) -> None:
        self.loop = object()
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1


@dataclass
class State:
    key: ForwardKey
    upsert: ForwardUpsert
    forwarder: FakeForwarder = field(default_factory=FakeForwarder)


def state(*pods: PodRef, context: str = "one", namespace: str = "shop",
          service: str = "web") -> State:
    key = ForwardKey(context, namespace, service)
    return State(key, ForwardUpsert(key, "127.1.27.1", [service], [], list(pods)))


def ref(name: str, ports: dict[int, int] | None = None) -> PodRef:
    return PodRef(name, "10.0.0.1", {80: 8080} if ports is None else ports)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(*, pool: FakePool | None = None,
           policy: str = "first") -> tuple[Router, FakePool, Clock, Any]:
    """A router over a fake pool; ``first`` unless said (these tests are about which pods
    may take a connection at all; spreading among them is tested end to end)."""
    bus = EventBus()
    events = bus.subscribe("test")
    r = Router(Reporter(bus, verbose=True), {"one": ONE, "two": TWO}, policy=policy)
    clock = Clock()
    r._backoff = PodBackoff(clock=clock)
    r.pool = pool if pool is not None else FakePool()  # type: ignore[assignment]
    return r, r.pool, clock, events  # type: ignore[return-value]


def test_a_connection_goes_to_the_first_pod_with_the_port() -> None:
    r, pool, _, events = router()
    st = state(ref("a", {}), ref("b", {80: 8081}), ref("c"))
    got = r.route(st, "web", 80)  # type: ignore[arg-type]
    assert got is not None
    tunnel, port = got
    assert (tunnel.pod, tunnel.namespace, tunnel.target, port) == ("b", "shop", ONE, 8081)
    assert pool.asked == [("one", "shop", "b", st.forwarder.loop)]
    seen = events.drain()
    assert [(e.key, e.port, e.pod) for e in seen if isinstance(e, ConnectionRouted)] == \
        [("web", 80, "b")]
    warned = [e.message for e in seen if isinstance(e, WarningRaised)]
    assert warned == ["web: pod a has no container port for service port 80; skipped"]
    r.route(st, "web", 80)  # type: ignore[arg-type]
    assert not [e for e in events.drain() if isinstance(e, WarningRaised)]  # said once


def test_no_state_no_pool_no_target_or_no_pod_holds_the_connection() -> None:
    r, pool, _, _ = router()
    assert r.route(None, "web", 80) is None
    assert r.route(state(ref("a"), context="three"), "web", 80) is None  # type: ignore[arg-type]
    assert r.route(state(), "web", 80) is None  # type: ignore[arg-type]
    assert r.route(state(ref("a")), "web", 81) is None  # type: ignore[arg-type]
    assert pool.asked == []
    r.pool = None
    assert r.route(state(ref("a")), "web", 80) is None  # type: ignore[arg-type]


def test_a_pool_that_cannot_give_a_tunnel_holds_the_connection() -> None:
    r, pool, _, events = router(pool=FakePool(refuse={"a"}))
    assert r.route(state(ref("a"), ref("b")), "web", 80) is None  # type: ignore[arg-type]
    assert [p for _, _, p, _ in pool.asked] == ["a"]
    assert not [e for e in events.drain() if isinstance(e, ConnectionRouted)]


def test_a_pod_whose_tunnel_died_is_avoided_for_its_back_off() -> None:
    r, pool, clock, _ = router()
    st = state(ref("a"), ref("b"))
    r.tunnel_died("one", "shop", "a")
    got = r.route(st, "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "b"
    clock.now += 0.9
    got = r.route(st, "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "b"
    clock.now += 0.2  # the first back-off (1 s) is over
    got = r.route(st, "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "a"
    # The tunnel had not opened yet: the back-off stands; a second failure doubles it.
    r.tunnel_died("one", "shop", "a")
    clock.now += 1.5
    got = r.route(st, "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "b"
    clock.now += 0.6
    pool.tunnel_list[("one", "shop", "a")].transport_name = "spdy"
    got = r.route(st, "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "a"
    # It opened: the pod answers again, so the next failure starts from 1 s.
    r.tunnel_died("one", "shop", "a")
    clock.now += 1.0
    got = r.route(st, "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "a"


def test_the_api_coming_back_forgets_the_back_off_of_its_context_and_pokes_its_forwards(
) -> None:
    r, _, _, _ = router()
    mine = state(ref("a"))
    other = state(ref("a"), context="two")
    r.tunnel_died("one", "shop", "a")
    r.tunnel_died("two", "shop", "a")
    r.api_reachable("one", [other, mine])  # type: ignore[list-item]
    assert (mine.forwarder.pokes, other.forwarder.pokes) == (1, 0)
    got = r.route(mine, "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "a"
    assert r.route(other, "web", 80) is None  # type: ignore[arg-type]


def test_unused_tunnels_close_after_the_grace_unless_they_carry_traffic() -> None:
    r, pool, _, _ = router()
    for ctx, target, pod in (("one", ONE, "idle"), ("one", ONE, "busy"), ("one", ONE, "kept"),
                             ("two", TWO, "idle")):
        pool.tunnel_list[(ctx, "shop", pod)] = FakeTunnel(target, "shop", pod)
    wanted = {("one", "shop", "kept")}
    t0 = 5000.0
    r.close_unused(wanted, t0)
    assert pool.dropped == []
    r.tunnel_died("two", "shop", "idle")
    pool.tunnel_list[("one", "shop", "busy")].bytes_in = 10
    r.close_unused(wanted, t0 + UNUSED_TUNNEL_GRACE)
    assert pool.dropped == []  # exactly the grace: not yet
    pool.tunnel_list[("one", "shop", "busy")].bytes_out = 5
    r.close_unused(wanted, t0 + UNUSED_TUNNEL_GRACE + 1)
    assert sorted(pool.dropped) == [("one", "shop", "idle"), ("two", "shop", "idle")]
    pool.dropped.clear()
    r.close_unused(wanted, t0 + 2 * UNUSED_TUNNEL_GRACE + 1)
    assert pool.dropped == []  # busy moved bytes at the last look
    r.close_unused(wanted, t0 + 2 * UNUSED_TUNNEL_GRACE + 2)
    assert pool.dropped == [("one", "shop", "busy")]
    # A dropped pod starts afresh: no back-off, no memory of its last use.
    pool.tunnel_list[("two", "shop", "idle")] = FakeTunnel(TWO, "shop", "idle")
    assert r.route(state(ref("idle"), context="two"), "web", 80) is not None  # type: ignore
    r.close_unused(wanted, t0 + 3 * UNUSED_TUNNEL_GRACE)
    assert ("two", "shop", "idle") not in pool.dropped
    r.pool = None
    r.close_unused(set(), t0 * 10)  # no pool yet: nothing to do


def test_a_tunnel_used_a_moment_ago_is_not_closed() -> None:
    r, pool, _, _ = router()
    st = state(ref("a"))
    pool.get(ONE, "one", "shop", "a")
    r.close_unused({("one", "shop", "a")}, time.monotonic() - 2 * UNUSED_TUNNEL_GRACE)
    assert r.route(st, "web", 80) is not None  # type: ignore[arg-type]
    r.close_unused(set(), time.monotonic() + UNUSED_TUNNEL_GRACE - 5)
    assert pool.dropped == []
    r.close_unused(set(), time.monotonic() + UNUSED_TUNNEL_GRACE + 5)
    assert pool.dropped == [("one", "shop", "a")]


def test_keep_open_opens_each_forwards_first_pod_and_backs_off_on_failure() -> None:
    r, pool, clock, events = router()
    pool.tunnel_list[("one", "shop", "bad")] = FakeTunnel(ONE, "shop", "bad", fail_open=True)
    pool.tunnel_list[("one", "shop", "up")] = FakeTunnel(ONE, "shop", "up", "spdy", True)
    states = [state(ref("a"), ref("second")), state(ref("bad"), service="api"),
              state(ref("up"), service="db"), state(ref("x"), context="three"), state()]
    r.keep_open(states, None)  # type: ignore[arg-type]
    assert pool.tunnel_list[("one", "shop", "a")].opened == 1
    assert ("one", "shop", "second") not in pool.tunnel_list
    assert pool.tunnel_list[("one", "shop", "bad")].opened == 1
    assert pool.tunnel_list[("one", "shop", "up")].opened == 0  # already open
    assert [e.message for e in events.drain() if isinstance(e, WarningRaised)] == [
        "one/shop/api: cannot reach bad; retrying in 1s"]
    r.keep_open(states, None)  # type: ignore[arg-type]
    assert pool.tunnel_list[("one", "shop", "bad")].opened == 1  # backing off
    assert pool.tunnel_list[("one", "shop", "a")].opened == 1  # open now
    clock.now += 1.0
    pool.tunnel_list[("one", "shop", "bad")].fail_open = False
    r.keep_open(states, None)  # type: ignore[arg-type]
    assert pool.tunnel_list[("one", "shop", "bad")].opened == 2
    # It opened: a later failure starts from 1 s again.
    pool.tunnel_list[("one", "shop", "bad")].alive = False
    pool.tunnel_list[("one", "shop", "bad")].fail_open = True
    r.keep_open(states, None)  # type: ignore[arg-type]
    assert [e.message for e in events.drain() if isinstance(e, WarningRaised)] == [
        "one/shop/api: cannot reach bad; retrying in 1s"]


def test_keep_open_stops_early_once_stopping_is_set() -> None:
    r, pool, _, _ = router()
    stopping = threading.Event()
    stopping.set()
    r.keep_open([state(ref("a")), state(ref("b"), service="api")], stopping)  # type: ignore
    assert [p for _, _, p, _ in pool.asked] == ["a"]
    r.keep_open([state(ref("c"))], threading.Event())  # type: ignore[list-item]
    assert pool.tunnel_list[("one", "shop", "c")].opened == 1


def test_a_new_router_holds_connections_until_it_has_a_pool_and_backs_off_on_its_own() -> None:
    bus = EventBus()
    events = bus.subscribe("test")
    r = Router(Reporter(bus, verbose=True), {"one": ONE}, policy="first")
    assert r.route(state(ref("a")), "web", 80) is None  # type: ignore[arg-type]
    r.close_unused(set(), 0.0)
    r.pool = FakePool()  # type: ignore[assignment]
    r.tunnel_died("one", "shop", "a")
    got = r.route(state(ref("a"), ref("b")), "web", 80)  # type: ignore[arg-type]
    assert got is not None and got[0].pod == "b"
    assert [e.message for e in events.drain() if isinstance(e, LogLine)] == [
        "tunnel to shop/a failed; avoiding that pod for 1s"]


def test_each_pod_without_the_port_is_named_once() -> None:
    r, _, _, events = router()
    st = state(ref("a", {}), ref("b", {}))
    r.route(st, "web", 80)  # type: ignore[arg-type]
    r.route(st, "web", 80)  # type: ignore[arg-type]
    assert [e.message for e in events.drain() if isinstance(e, WarningRaised)] == [
        "web: pod a has no container port for service port 80; skipped",
        "web: pod b has no container port for service port 80; skipped"]


def test_tunnels_of_an_unknown_api_server_close_under_no_context() -> None:
    r, pool, _, _ = router()
    stray = ApiTarget("127.0.0.9", 6443, "https")
    pool.tunnel_list[("?", "shop", "a")] = FakeTunnel(stray, "shop", "a")
    r.close_unused(set(), 100.0)
    r.close_unused(set(), 100.0 + UNUSED_TUNNEL_GRACE + 1)
    assert pool.dropped == [("", "shop", "a")]


def test_traffic_either_way_counts_as_use() -> None:
    r, pool, _, _ = router()
    pool.tunnel_list[("one", "shop", "a")] = FakeTunnel(ONE, "shop", "a", bytes_in=10,
                                                        bytes_out=5)
    r.close_unused(set(), 100.0)
    pool.tunnel_list[("one", "shop", "a")].bytes_in = 15
    pool.tunnel_list[("one", "shop", "a")].bytes_out = 10
    r.close_unused(set(), 100.0 + UNUSED_TUNNEL_GRACE + 1)
    assert pool.dropped == []


def test_keep_open_asks_for_each_pods_tunnel_on_its_forwarders_loop_and_waits_5s() -> None:
    r, pool, _, _ = router()
    pool.tunnel_list[("one", "shop", "bad")] = FakeTunnel(ONE, "shop", "bad", fail_open=True)
    first, bad, late = state(ref("a")), state(ref("bad"), service="api"), state(ref("late"),
                                                                                 service="db")
    late_two = state(ref("z"), context="two")
    r.keep_open([first, bad, late, late_two], None)  # type: ignore[list-item]
    assert pool.asked == [("one", "shop", "a", first.forwarder.loop),
                          ("one", "shop", "bad", bad.forwarder.loop),
                          ("one", "shop", "late", late.forwarder.loop),
                          ("two", "shop", "z", late_two.forwarder.loop)]
    assert pool.targets == [ONE, ONE, ONE, TWO]
    # One pod failing keeps only that pod back.
    assert pool.tunnel_list[("one", "shop", "late")].timeouts == [5.0]


def test_a_tunnel_opened_again_after_its_pod_was_dropped_gets_the_whole_grace() -> None:
    r, pool, _, _ = router()
    pool.tunnel_list[("one", "shop", "a")] = FakeTunnel(ONE, "shop", "a")
    r.close_unused(set(), 1000.0)
    r.close_unused(set(), 1000.0 + UNUSED_TUNNEL_GRACE + 1)
    assert pool.dropped == [("one", "shop", "a")]
    pool.tunnel_list[("one", "shop", "a")] = FakeTunnel(ONE, "shop", "a")  # a new one
    r.close_unused(set(), 2000.0)
    assert pool.dropped == [("one", "shop", "a")]  # not dropped again at its first look
