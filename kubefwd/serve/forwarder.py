"""Forwarders: one thread per forwarded service, owning its listeners on ``IP:port``.

The thread runs a ``Loop`` (a selector with timers) over the service's listening sockets (one
per TCP port) and over every tunnel it sends connections to: their API connections and local
sockets are driven by the same loop, so a service costs one thread however many connections
it carries. Each accepted connection asks ``route(key, service_port)`` which pod tunnel to use
*at that moment* (so a pod change takes effect for the very next connection, with no debounce)
and hands the socket to ``tunnel.splice``. Nothing on the loop blocks on the network; tunnels
dial on short-lived opener threads.

A connection that arrives while the service has no usable pod is held (not accepted into a
tunnel, not closed) for at most ``hold_timeout`` seconds and spliced as soon as ``poke()``
reports a change that gives it a route; after that it is closed, so a client sees EOF instead
of hanging forever.

A connection its tunnel could not carry before any byte of it was relayed (the tunnel failed
to open, say because the API server is down or the pod vanished, or died first) comes back
through the ``give_back`` callback of ``splice`` and is routed again like a new one: to
another ready pod at once (the failed pod backs off), or held until a route appears, within
the same ``hold_timeout`` counted from its accept.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubefwd.errors import NetworkError
from kubefwd.events.bus import EventBus
from kubefwd.events.metrics import PortCounters
from kubefwd.events.types import ConnectionFailed, ConnectionHeld
from kubefwd.serve.httptap import HttpTap
from kubefwd.support.threads import StoppableThread
from kubefwd.tunnel.io import Tap
from kubefwd.tunnel.loop import READ, Loop

log = logging.getLogger(__name__)

# Accept at most this many connections per listener per wake-up, so one busy port cannot
# starve the others of the same service.
_ACCEPT_BURST = 64
# Connections held while a service has no ready pod; more are closed at once.
_MAX_HELD = 256
# While connections are held, re-ask for a route this often even without a poke (a tunnel
# back-off may have expired).
_HELD_RETRY = 0.25
# A connection handed back more than once waits this long (doubling, up to the cap) before
# it is routed again, so a route that keeps failing at once cannot spin the loop.
_RETURN_DELAY = 0.05
_RETURN_DELAY_CAP = 1.0
_BACKLOG = 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


GiveBack = Callable[..., None]  # (sock) or (sock, prefix): see ``Splicer``


class Splicer(Protocol):
    """What a route hands back: a ``PodTunnel`` (or anything that can take a socket).

    ``give_back`` (called on the forwarder's loop thread) takes back a socket the splicer
    could not carry before any byte of it reached the pod, to be routed again; with a
    second argument, the bytes the client had sent already, which the next splicer is given
    as ``prefix`` to send first. ``tap`` (the port's ``HttpTap``) is shown the connection's
    bytes, to see the HTTP requests in them.
    """

    def splice(self, local: socket.socket, port: int,
               give_back: GiveBack | None = None,
               meter: PortCounters = ..., prefix: bytes = b"",
               tap: Tap | None = None) -> None: ...


Route = Callable[[str, int], "tuple[Splicer, int] | None"]


@dataclass(frozen=True)
class ListenPort:
    """One TCP port of a service: clients connect to ``local_port``; ``port`` is the service
    port handed to ``route`` (it resolves the pod's target port)."""

    port: int
    local_port: int
    name: str = ""


@dataclass
class _Listener:
    spec: ListenPort
    sock: socket.socket


@dataclass
class _Held:
    sock: socket.socket
    port: int
    deadline: float
    meter: PortCounters
    tap: HttpTap | None = None
    returns: int = 0  # times a tunnel handed it back
    not_before: float = 0.0
    prefix: bytes = b""  # sent by the client through a tunnel that refused it


@dataclass
class ForwardStats:
    accepted: int = 0
    spliced: int = 0
    held: int = 0
    dropped: int = 0
    returned: int = 0  # connections a tunnel handed back (to be routed again)


# A pod whose tunnel keeps failing is avoided for 1 s, then 2, 4, … up to 5 minutes; the
# delay resets once a connection through it works again.
BACKOFF_INITIAL = 1.0
BACKOFF_CAP = 300.0


class PodBackoff:
    """Per-pod failure back-off: 1 s doubling to 5 min, reset on success. Thread-safe."""

    def __init__(
        self,
        *,
        initial: float = BACKOFF_INITIAL,
        cap: float = BACKOFF_CAP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[Any, tuple[float, float]] = {}  # key -> (delay, not_before)

    def failed(self, key: Any) -> float:
        """Record a failure; returns how long the pod is now avoided."""
        with self._lock:
            delay, _ = self._state.get(key, (0.0, 0.0))
            delay = self.initial if delay == 0 else min(delay * 2, self.cap)
            self._state[key] = (delay, self._clock() + delay)
            return delay

    def succeeded(self, key: Any) -> None:
        with self._lock:
            self._state.pop(key, None)

    def forget(self, key: Any) -> None:
        self.succeeded(key)

    def usable(self, key: Any) -> bool:
        with self._lock:
            state = self._state.get(key)
        return state is None or self._clock() >= state[1]

    def remaining(self, key: Any) -> float:
        with self._lock:
            state = self._state.get(key)
        return 0.0 if state is None else max(0.0, state[1] - self._clock())


def describe_holder(ip: str, port: int) -> str:
    """``" (held by pid 42, nginx)"`` when psutil can tell who listens on ``ip:port``."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
                continue
            if conn.laddr.ip not in (ip, "0.0.0.0", "::"):
                continue
            if conn.pid is None:
                return " (by another process)"
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            return f" (by pid {conn.pid}, {name})"
    except Exception:  # best effort only: psutil may lack permission or support
        log.debug("could not find who listens on %s:%d", ip, port, exc_info=True)
    return ""


class BindError(NetworkError):
    """A listener could not be bound; ``ip``/``port`` say where (the OSError is the cause)."""

    def __init__(self, message: str, *, ip: str, port: int) -> None:
        super().__init__(message)
        self.ip = ip
        self.port = port


def bind_listener(ip: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``ip:port``, or a ``BindError`` saying why not."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f"{ip}:{port}"
        if exc.errno == errno.EADDRINUSE:
            why = f"the address is already in use{describe_holder(ip, port)}"
        elif exc.errno == errno.EACCES:
            high = port + 8000 if port + 8000 < 65536 else 8080
            why = (
                f"port {port} needs root (or CAP_NET_BIND_SERVICE); run with sudo or map it "
                f"to a high port with -m {port}:{high}"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"{ip} is not configured on the loopback interface"
        else:
            why = exc.strerror or str(exc)
        raise BindError(f"cannot listen on {where}: {why}", ip=ip, port=port) from exc
    return sock


class Forwarder(StoppableThread):
    """Listeners and accept loop of one forwarded service (all of its TCP ports)."""

    def __init__(
        self,
        key: str,
        ip: str,
        ports: Sequence[ListenPort],
        route: Route,
        *,
        hold_timeout: float = 300.0,
        thread_name: str | None = None,
        bus: EventBus | None = None,
        meters: Callable[[int], PortCounters] | None = None,
        detect_http: bool = False,
    ) -> None:
        super().__init__(thread_name or f"forward/{key}")
        self.key = key
        # Look for HTTP exchanges in the connections' bytes (only when an output shows them:
        # it costs a little on every new connection).
        self.detect_http = detect_http
        # Connection events go to ``bus``; ``meters(port)`` gives the counters of a port
        # (bytes and connections, counted with an integer add on this thread).
        self.bus = bus if bus is not None else EventBus()
        self._meters = meters if meters is not None else _own_meters()
        self._taps: dict[int, HttpTap] = {}  # by service port: HTTP seen on it
        self.route = route
        self.hold_timeout = hold_timeout
        self.stats = ForwardStats()
        self._lock = threading.Lock()
        self._ip = ip
        self._wanted: list[ListenPort] = list(ports)
        self._listeners: dict[int, _Listener] = {}  # by local port
        self._held: deque[_Held] = deque()
        self._changed = True
        self._poked = False
        self._registered: dict[int, socket.socket] = {}
        self._no_route_logged = False
        self._closing = False
        # The loop this thread runs; tunnels that carry this service's connections live on
        # it (``route`` gets them from the pool for this loop).
        self.loop = Loop(self.name)
        self.loop.expect_thread()

    # -- called from other threads -------------------------------------------------------

    @property
    def ip(self) -> str:
        return self._ip

    def bound_ports(self) -> list[int]:
        with self._lock:
            return sorted(self._listeners)

    def listens(self) -> bool:
        """Whether any port is bound: ``bool(bound_ports())`` without the lock or the list
        (the listeners change under the lock; whether there are any is one atomic read)."""
        return bool(self._listeners)

    def bind(self) -> list[BindError]:
        """Bind every wanted port not yet bound; returns the errors (the rest still serve)."""
        with self._lock:
            return self._sync_listeners_locked()

    def reconfigure(self, ip: str, ports: Sequence[ListenPort]) -> list[BindError]:
        """New IP or ports: open what is new, close what is gone; returns bind errors."""
        with self._lock:
            if ip != self._ip:
                for listener in self._listeners.values():
                    listener.sock.close()
                self._listeners.clear()
                self._ip = ip
            self._wanted = list(ports)
            errors = self._sync_listeners_locked()
        self._wake()
        return errors

    def poke(self) -> None:
        """Routes may have changed (a pod became ready): retry held connections now."""
        with self._lock:
            self._poked = True
        self._wake()

    def on_stop(self) -> None:
        self._wake()

    # -- the thread ----------------------------------------------------------------------

    def _sync_listeners_locked(self) -> list[BindError]:
        errors: list[BindError] = []
        wanted = {p.local_port: p for p in self._wanted}
        for local_port in list(self._listeners):
            if local_port not in wanted:
                self._listeners.pop(local_port).sock.close()
        for local_port, spec in wanted.items():
            current = self._listeners.get(local_port)
            if current is not None:
                current.spec = spec
                continue
            try:
                sock = bind_listener(self._ip, local_port)
            except BindError as exc:
                errors.append(exc)
                continue
            self._listeners[local_port] = _Listener(spec, sock)
        self._changed = True
        return errors

    def _wake(self) -> None:
        self.loop.wake()

    def run_loop(self) -> None:
        loop = self.loop
        loop.bind_thread()
        try:
            while not self.stopping.is_set():
                with self._lock:
                    changed, self._changed = self._changed, False
                    poked, self._poked = self._poked, False
                    listeners = dict(self._listeners) if changed else None
                if listeners is not None:
                    self._register(listeners)
                if poked or self._held:
                    self._retry_held()
                loop.run_once(_HELD_RETRY if self._held else None)
        finally:
            self._close_all()
            loop.close()  # and with it every tunnel (and connection) on it

    def _register(self, listeners: dict[int, _Listener]) -> None:
        registered = self._registered
        for local_port, sock in list(registered.items()):
            current = listeners.get(local_port)
            if current is None or current.sock is not sock:
                self.loop.forget(sock)
                del registered[local_port]
        for local_port, listener in listeners.items():
            if local_port not in registered and listener.sock.fileno() >= 0:
                self.loop.set_events(listener.sock, READ,
                                     functools.partial(self._on_listener, listener))
                registered[local_port] = listener.sock

    def _on_listener(self, listener: _Listener, _mask: int) -> None:
        self._accept(listener.sock, listener.spec.port)

    def _accept(self, listener: socket.socket, port: int) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.warning("%s: out of file descriptors; refusing a connection", self.key)
                return
            self.stats.accepted += 1
            meter = self._meters(port)
            meter.total += 1
            meter.open += 1
            conn.setblocking(True)
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            held = _Held(conn, port, time.monotonic() + self.hold_timeout, meter,
                         self._tap(port) if self.detect_http else None)
            if not self._dispatch(held):
                if len(self._held) >= _MAX_HELD or self.hold_timeout <= 0:
                    self._drop(held, "no ready pod")
                else:
                    self.stats.held += 1
                    self._held.append(held)
                    self.bus.publish(ConnectionHeld(key=self.key, port=port))

    def _dispatch(self, held: _Held) -> bool:
        """Splice a connection into a tunnel if a route exists now; False when it has to
        wait."""
        conn, port = held.sock, held.port
        try:
            route = self.route(self.key, port)
        except Exception:
            log.exception("%s: route lookup failed", self.key)
            route = None
        if route is None:
            if not self._no_route_logged:
                self._no_route_logged = True
                log.info("%s: no pod to send to right now (none ready, or backing off); holding "
                         "new connections for up to %gs",
                         self.key, self.hold_timeout)
            return False
        self._no_route_logged = False
        tunnel, target_port = route
        give_back = functools.partial(self._given_back, held)
        try:
            if held.prefix:
                tunnel.splice(conn, target_port, give_back, held.meter, prefix=held.prefix,
                              tap=held.tap)
            else:
                tunnel.splice(conn, target_port, give_back, held.meter, tap=held.tap)
        except Exception as exc:  # the tunnel owns the socket only once splice returned
            log.warning("%s: could not hand a connection to the tunnel: %s", self.key, exc)
            self._drop(held, f"the tunnel refused it: {exc}")
            return True
        self.stats.spliced += 1
        return True

    def _tap(self, port: int) -> HttpTap:
        tap = self._taps.get(port)
        if tap is None:
            tap = self._taps[port] = HttpTap(self.key, port, self.bus)
        return tap

    def _given_back(self, held: _Held, sock: socket.socket, prefix: bytes = b"") -> None:
        """A tunnel could not carry this connection (nothing of it reached the pod): route
        it again on the next turn of the loop (the failure is reported by then, so the pod
        that failed backs off), keeping its hold deadline and what the client sent already."""
        if not self.loop.in_loop():  # tunnels call on the loop thread; be safe anyway
            if not self.loop.call_soon(functools.partial(self._given_back, held, sock, prefix)):
                held.sock = sock
                self._drop(held, "stopping")
            return
        self.stats.returned += 1
        held.sock = sock
        held.prefix = prefix or held.prefix
        if self._closing or self.stopping.is_set() or len(self._held) >= _MAX_HELD:
            self._drop(held, "stopping" if self._closing or self.stopping.is_set()
                       else "too many connections waiting")
            return
        try:
            sock.setblocking(True)
        except OSError:
            pass
        held.returns += 1
        held.sock = sock
        held.not_before = 0.0
        if held.returns > 1:
            delay = min(_RETURN_DELAY * 2 ** (held.returns - 2), _RETURN_DELAY_CAP)
            held.not_before = time.monotonic() + delay
        log.debug("%s: a connection came back from its tunnel; routing it again", self.key)
        self._held.append(held)
        self._wake()

    def _retry_held(self) -> None:
        now = time.monotonic()
        for _ in range(len(self._held)):
            held = self._held.popleft()
            if self.stopping.is_set():
                self._drop(held, "stopping")
            elif now < held.not_before and now < held.deadline:
                self._held.append(held)
            elif self._dispatch(held):
                continue
            elif now >= held.deadline:
                log.warning("%s: closed a connection that waited %gs for a ready pod",
                            self.key, self.hold_timeout)
                self._drop(held, f"no ready pod within {self.hold_timeout:g}s")
            else:
                self._held.append(held)

    def _drop(self, held: _Held, reason: str) -> None:
        """Close a connection nobody will carry (an RST), counted as failed."""
        conn = held.sock
        held.meter.open -= 1
        held.meter.failed += 1
        self.bus.publish(ConnectionFailed(key=self.key, port=held.port, reason=reason))
        self.stats.dropped += 1
        try:
            # An RST, not a FIN: the client learns at once that nothing answered.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        conn.close()

    def _close_all(self) -> None:
        self._closing = True  # connections tunnels hand back from now on are closed
        with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
        for listener in listeners:
            listener.sock.close()
        while self._held:
            self._drop(self._held.popleft(), "stopping")

    def held_count(self) -> int:
        return len(self._held)

    def stop_and_join(self, timeout: float = 5.0) -> bool:
        """Stop and join; a forwarder that never started still closes its listeners."""
        if self.ident is None:
            self.stopping.set()
            self._close_all()
            self.loop.close()
            return True
        return super().stop_and_join(timeout)


def _own_meters() -> Callable[[int], PortCounters]:
    """Counters of a forwarder nobody meters (tests, embedding): kept, but read by nobody."""
    meters: dict[int, PortCounters] = {}

    def meter(port: int) -> PortCounters:
        counters = meters.get(port)
        if counters is None:
            counters = meters[port] = PortCounters()
        return counters

    return meter
