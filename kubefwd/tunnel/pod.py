"""``PodTunnel``: every TCP connection forwarded to one pod, over one port-forward session.

A tunnel is a state machine without threads of its own: it lives on a ``Loop`` (the one of
the forwarder that sends it connections) and every socket it has is driven by that loop.
Only dialing blocks (TCP, TLS, the upgrade, maybe an exec credential plugin), so each dial
runs on one of a few shared opener threads (``openers``) and hands the upgraded connection
back to the loop.
A tunnel made without a loop runs one of its own on a thread (tests and tools).

States: idle (no session) → opening → open → dead (a failure; the pool replaces it) or back
to idle after ``idle_timeout`` without connections; closed for good by ``close()``. A tunnel
that retires (a stream reported an error, GOAWAY, a planned replacement) takes no new
connections but carries the ones it has to their end, as kubectl does.

A connection the tunnel cannot carry before anything of it was relayed (queued while the
tunnel opens and the open fails, spliced just as the tunnel died or retired, its streams
not yet used when the session was lost) goes back to whoever spliced it, through the
``give_back`` callback of ``splice``, to be routed again; without one it is closed. One that
had bytes relayed is never replayed: it ends with its tunnel.
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kubefwd.cluster.target import ApiTarget
from kubefwd.errors import TunnelError
from kubefwd.events.metrics import PortCounters
from kubefwd.support.sockets import close_quietly, hard_shutdown
from kubefwd.support.transports import TRANSPORTS
from kubefwd.tunnel.dial import (
    FINAL_STATUSES,
    AnySocket,
    UpgradeRefused,
    dial_v4,
    negotiate,
)
from kubefwd.tunnel.io import UNMETERED, GiveBack, LocalConn, Tap, close_local, hand_back
from kubefwd.tunnel.loop import Loop, LoopThread, Timer
from kubefwd.tunnel.openers import OPENERS, Openers
from kubefwd.tunnel.spdy_client import SpdySession
from kubefwd.tunnel.ws_v4 import V4Link

log = logging.getLogger("kubefwd.tunnel")

# Default seconds between keepalive pings; no frame at all for two intervals = dead.
PING_INTERVAL = 7.0
# Default seconds without any connection after which a tunnel closes its session; the next
# connection reopens it, which costs one TLS handshake and one upgrade.
IDLE_TIMEOUT = 120.0
# A session lost while it carried nothing (a load balancer's or kubelet's idle cut, an API
# server restart) is opened again at once, not blamed on the pod, when it had lived this
# long (a server that closes every session at once must not be redialed in a loop).
REOPEN_MIN_AGE = 2.0

_IDLE, _OPENING, _OPEN, _DEAD, _CLOSED = "idle", "opening", "open", "dead", "closed"

_Dialed = tuple[str, AnySocket | None, bytes]


class PodTunnel:
    """One multiplexed port-forward connection to one pod; see the module docstring.

    Thread-safe entry points: ``splice``, ``open``, ``retire``, ``kill``, ``close`` and the
    counters; everything else runs on the loop thread.
    """

    def __init__(self, target: ApiTarget, namespace: str, pod: str, *,
                 transport: str = "auto",
                 on_dead: Callable[[PodTunnel], None] | None = None,
                 ping_interval: float = PING_INTERVAL, open_timeout: float = 10.0,
                 idle_timeout: float = IDLE_TIMEOUT, prefer: str = "",
                 loop: Loop | None = None, openers: Openers | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
        self.target = target
        self.namespace = namespace
        self.pod = pod
        self.transport = transport
        self.on_dead = on_dead
        self.ping_interval = ping_interval
        self.open_timeout = open_timeout
        # Close the session after this many seconds without a connection (0: never).
        self.idle_timeout = idle_timeout
        # With "auto": start negotiating at this transport (one that worked before).
        self.prefer = prefer
        self.on_open: Callable[[PodTunnel], None] | None = None
        self.transport_name = ""  # what was negotiated: spdy-ws, spdy or ws
        self.alive = True
        self.last_error: TunnelError | None = None
        self.bytes_in = 0  # delivered from the pod to local clients
        self.bytes_out = 0  # read from local clients and sent to the pod
        self.connections = 0  # connections spliced so far
        self.sessions = 0  # sessions opened so far (more than one after idle closes)
        self.active = 0  # connections open now
        self._label = f"{namespace}/{pod}"
        self._path = f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = _IDLE
        self._opens = 0  # times the tunnel became open
        self._retiring = False
        self._reported = False
        # Spliced while opening: socket, pod port, where it goes if the open fails.
        self._pending: list[tuple[socket.socket, int, GiveBack | None, PortCounters,
                                  bytes, Tap | None]] = []
        self._session: SpdySession | None = None
        self._links: set[V4Link] = set()
        # Dials under way, by number: the connection each is for (None: the session), the
        # socket being dialed, and an event set once the dial has handed its outcome over.
        self._dialing: dict[int, LocalConn | None] = {}
        self._dial_socks: dict[int, AnySocket] = {}
        self._openers: dict[int, threading.Event] = {}
        self._dials_begun: set[int] = set()  # taken up by a thread (under the lock)
        self._dial_numbers = itertools.count()
        self._opener_pool = openers if openers is not None else OPENERS
        self._next_request = 0
        self._idle_timer: Timer | None = None
        self._opened_at = 0.0  # monotonic time the current session opened
        self._last_used = time.monotonic()  # a connection started or ended
        self.reopened = 0  # sessions lost while idle and opened again at once
        self._thread: LoopThread | None = None
        self._own_loop = loop is None
        self.loop = loop if loop is not None else Loop(f"tunnel {self._label}")
        if not self.loop.attach(self):
            self._state = _CLOSED
            self.alive = False

    # -- any thread ------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<PodTunnel {self._label} {self._state} {self.transport_name}>"

    @property
    def label(self) -> str:
        """``namespace/pod``, for messages."""
        return self._label

    @property
    def state(self) -> str:
        """idle, opening, open, dead or closed."""
        return self._state

    @property
    def load(self) -> int:
        """Connections open on the tunnel plus those waiting for it to open."""
        return self.active + len(self._pending)

    @property
    def retiring(self) -> bool:
        """True once the tunnel takes no new connections but still carries some."""
        return self._retiring and self._state == _OPEN

    def splice(self, local: socket.socket, port: int,
               give_back: GiveBack | None = None, meter: PortCounters = UNMETERED,
               prefix: bytes = b"", tap: Tap | None = None) -> None:
        """Take ownership of a connected local socket and relay it to ``port`` of the pod.

        Returns at once. If the tunnel cannot carry the connection before a byte of it was
        relayed (it is dead, closed or retiring, fails to open, or dies first), the socket
        goes to ``give_back`` (on the loop thread, after the failure was reported to
        ``on_dead``), or is closed without one. Once the loop has ended it is closed.
        ``prefix``: bytes the client sent already (through a tunnel that refused it), sent
        to the pod first. ``tap``: what looks at the connection's bytes (``LocalConn``).
        """
        if not self._submit(functools.partial(self._splice, local, port, give_back, meter,
                                              prefix, tap)):
            meter.open -= 1
            close_local(local)

    def open(self, timeout: float | None = None) -> None:
        """Connect now (if not yet); raises TunnelError when the tunnel cannot be opened.

        On the loop thread itself this only starts opening (it cannot wait for itself).
        """
        if timeout is not None:
            self.open_timeout = timeout
        in_loop = self.loop.in_loop() and not self._own_loop
        with self._lock:
            opens = self._opens
        while True:
            with self._lock:
                state = self._state
                if state == _OPEN or self._opens > opens:
                    return
                if state == _CLOSED:
                    raise TunnelError(f"tunnel to {self._label} is closed")
                if state == _DEAD:
                    raise self.last_error or TunnelError(f"tunnel to {self._label} is dead")
            if state == _IDLE and not self._submit(self._request_open):
                raise TunnelError(f"tunnel to {self._label} is closed")
            if in_loop:
                return
            with self._lock:
                if self._state in (_IDLE, _OPENING) and self._opens == opens:
                    self._changed.wait(1.0)

    def retire(self, reason: str, *, report: bool = True) -> None:
        """Take no new connections; end once the last one is done.

        ``report``: call ``on_dead`` (the pod misbehaved), not for a planned replacement.
        """
        with self._lock:
            if self._state != _OPEN or self._retiring:
                return
            self._retiring = True
            self.alive = False
        self.last_error = TunnelError(f"tunnel to {self._label}: {reason}")
        log.debug("tunnel to %s retires: %s", self._label, reason)
        self._submit(functools.partial(self._retired, report))

    def kill(self, reason: str) -> None:
        """Declare the tunnel dead now: every connection on it is cut."""
        self._submit(functools.partial(self._die, reason))

    def close(self) -> None:
        """Close every connection of the tunnel and wait for its threads."""
        if self.loop.in_loop():
            self._close_now()
        else:
            done = threading.Event()

            def close_and_tell() -> None:
                try:
                    self._close_now()
                finally:
                    done.set()

            if self.loop.call_soon(close_and_tell):
                done.wait(15.0)
        thread = self._thread
        if thread is not None:
            thread.stop_and_join()

    def loop_closed(self) -> None:
        """The loop ends (its forwarder stopped): close."""
        self._close_now()

    def _submit(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the loop thread (starting our own, if we have one); False when the
        loop is closed."""
        if self._own_loop and self._thread is None:
            with self._lock:
                if self._thread is None and self._state != _CLOSED:
                    self._thread = LoopThread(self.loop, f"tunnel {self._label}")
                    self._thread.start()
        return self.loop.call_soon(fn)

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state
            if state == _OPEN:
                self._opens += 1
            if state in (_DEAD, _CLOSED):
                self.alive = False
            self._changed.notify_all()

    # -- opening (loop thread) -------------------------------------------------------------

    def _splice(self, local: socket.socket, port: int, give_back: GiveBack | None,
                meter: PortCounters, prefix: bytes = b"", tap: Tap | None = None) -> None:
        state = self._state
        if state in (_IDLE, _OPENING):
            self._pending.append((local, port, give_back, meter, prefix, tap))
            if state == _IDLE:
                self._begin_opening()
            return
        if state == _OPEN and not self._retiring:
            self._start_conn(local, port, give_back, meter, prefix, tap)
            return
        log.debug("tunnel %s is %s; handing a connection back", self._label,
                  "retiring" if state == _OPEN else state)
        hand_back(local, give_back, prefix)

    def _request_open(self) -> None:
        if self._state == _IDLE:
            # Asked for explicitly: that is a use, so the session gets its idle time.
            self._last_used = time.monotonic()
            self._begin_opening()

    def _begin_opening(self) -> None:
        self._cancel_idle()
        self._set_state(_OPENING)
        self._start_opener(self._dial_session, None)

    def _start_opener(self, dial: Callable[[Callable[[Any], None]], Any],
                      conn: LocalConn | None) -> None:
        ident = next(self._dial_numbers)
        done = threading.Event()
        self._openers[ident] = done
        self._dialing[ident] = conn
        try:
            self._opener_pool.submit(functools.partial(self._opener_main, ident, dial, done))
        except BaseException:
            del self._openers[ident], self._dialing[ident]
            raise

    def _opener_main(self, ident: int, dial: Callable[[Callable[[Any], None]], Any],
                     done: threading.Event) -> None:
        """On an opener thread: dial, then hand the outcome to the loop."""
        result: Any = None
        error: TunnelError | None = None
        with self._lock:
            closed = self._state == _CLOSED  # closed while this dial waited for a thread
            if not closed:
                self._dials_begun.add(ident)
        try:
            if closed:
                error = TunnelError("the tunnel was closed")
            else:
                result = dial(functools.partial(self._track, ident))
        except TunnelError as e:
            error = e
        except Exception as e:  # a bug must not leave the tunnel opening forever
            log.exception("tunnel %s: opening failed", self._label)
            error = TunnelError(f"opening failed: {e}")
        try:
            if not self.loop.call_soon(functools.partial(self._dialed, ident, result, error)):
                _close_result(result)
        finally:
            with self._lock:
                self._dials_begun.discard(ident)
            done.set()

    def _track(self, ident: int, sock: AnySocket | None) -> None:
        """Opener threads: the socket being dialed, so that ``close`` can cut it."""
        with self._lock:
            if sock is None:
                self._dial_socks.pop(ident, None)
            else:
                self._dial_socks[ident] = sock
            closed = self._state == _CLOSED
        if sock is not None and closed:
            hard_shutdown(sock)

    def _dial_session(self, track: Callable[[Any], None]) -> _Dialed:
        return negotiate(self.target, self._path, transport=self.transport,
                         prefer=self.prefer, timeout=self.open_timeout, track=track,
                         label=self._label)

    def _dialed(self, ident: int, result: Any, error: TunnelError | None) -> None:
        self._openers.pop(ident, None)  # it has handed over
        conn = self._dialing.pop(ident, None)
        if conn is not None:
            self._v4_dialed(conn, result, error)
        elif self._state != _OPENING:  # closed meanwhile
            _close_result(result)
        elif error is not None:
            self._open_failed(error)
        else:
            self._session_opened(result)

    def _session_opened(self, dialed: _Dialed) -> None:
        name, sock, rest = dialed
        self.sessions += 1
        self._opened_at = time.monotonic()
        self.transport_name = name
        if self.transport == "auto":
            self.prefer = name  # reopening after an idle close: start with what worked
        if sock is not None:
            self._session = SpdySession(self, self.loop, sock, rest,
                                        websocket=name == "spdy-ws",
                                        ping_interval=self.ping_interval)
            self._session.start()
        self._set_state(_OPEN)
        log.debug("tunnel %s open over %s", self._label, name)
        if self.on_open is not None:
            self.on_open(self)
        pending, self._pending = self._pending, []
        for local, port, give_back, meter, prefix, tap in pending:
            self._start_conn(local, port, give_back, meter, prefix, tap)
        self._arm_idle()

    def _open_failed(self, error: TunnelError) -> None:
        self.last_error = error
        self._set_state(_DEAD)
        pending, self._pending = self._pending, []
        log.warning("port-forward to %s: %s", self._label, error)
        self._report_dead()  # first: whoever routes them again knows to avoid this pod
        for local, _port, give_back, _meter, prefix, _tap in pending:
            hand_back(local, give_back, prefix)

    # -- connections (loop thread) ---------------------------------------------------------

    def _start_conn(self, local: socket.socket, port: int, give_back: GiveBack | None,
                    meter: PortCounters, prefix: bytes = b"", tap: Tap | None = None) -> None:
        conn = LocalConn(local, port, self._next_request, give_back, meter, prefix, tap)
        self._next_request += 1
        self.connections += 1
        self.active += 1
        self._last_used = time.monotonic()
        self._cancel_idle()
        if self._session is not None:
            self._session.add(conn)
            return
        path, target, timeout = self._path, self.target, self.open_timeout

        def dial(track: Callable[[Any], None]) -> tuple[AnySocket, bytes]:
            return dial_v4(target, path, port, timeout=timeout, track=track)

        self._start_opener(dial, conn)

    def _v4_dialed(self, conn: LocalConn, result: Any, error: TunnelError | None) -> None:
        if conn.closed or self._state != _OPEN:
            _close_result(result)
            if not conn.closed:
                conn.release()  # nothing was relayed yet: it may go elsewhere
                self._conn_ended()
            return
        if error is not None:
            # This connection's own WebSocket is what the session is for the other
            # transports: it failing means the pod cannot be reached now. Report that, and
            # hand the connection (nothing of it relayed) back to be routed again.
            log.warning("port-forward to %s port %d: %s", self._label, conn.port, error)
            self.last_error = error
            if isinstance(error, UpgradeRefused) and error.status in FINAL_STATUSES:
                self._die(str(error))
            else:
                self._retire_now(str(error))
            conn.release()
            if self._state == _OPEN:
                self._conn_ended()
            return
        sock, rest = result
        link = V4Link(self, self.loop, conn, sock, rest)
        self._links.add(link)
        link.start()

    def _link_ended(self, link: V4Link) -> None:
        self._links.discard(link)
        self._conn_ended()

    def _conn_ended(self) -> None:
        self.active -= 1
        self._last_used = time.monotonic()
        if self._retiring and self.active <= 0:
            self._die("retired", quiet=True)
        else:
            self._arm_idle()

    def _forward_error(self, port: int, message: str, *, report_now: bool = False) -> None:
        """A connection got the kubelet's error text: retire the tunnel (as kubectl
        stops using such a connection). ``report_now``: report it before returning (a
        connection is about to be handed back, to be routed elsewhere)."""
        log.warning("port-forward to %s port %d: %s", self._label, port, message)
        if report_now:
            self.last_error = TunnelError(f"tunnel to {self._label}: {message}")
            self._retire_now(message)
        else:
            self.retire(message)

    def _session_lost(self, session: SpdySession, reason: str) -> None:
        if session is not self._session:
            return
        now = time.monotonic()
        if (self._state == _OPEN and not self._retiring and self.active <= 0
                and now - self._opened_at >= REOPEN_MIN_AGE
                and (self.idle_timeout <= 0 or now - self._last_used < self.idle_timeout)):
            # Cut while it carried nothing: not the pod's fault. Replace the session now,
            # so the next connection finds one open instead of paying for the dial.
            log.debug("tunnel %s: session lost while idle (%s); opening a new one",
                      self._label, reason)
            self.reopened += 1
            for conn in self._teardown():  # none: it had no connection
                conn.release()
            self._set_state(_IDLE)
            self._begin_opening()
            return
        self._die(reason)

    # -- idle, retirement, death (loop thread) ---------------------------------------------

    def _arm_idle(self) -> None:
        if (self.idle_timeout > 0 and self.active <= 0 and self._state == _OPEN
                and not self._retiring and self._idle_timer is None):
            # Counted from the last use, not from the open: a session replaced after an
            # idle cut does not extend the tunnel's life.
            left = self.idle_timeout - (time.monotonic() - self._last_used)
            self._idle_timer = self.loop.call_later(max(0.0, left), self._idle_check)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_check(self) -> None:
        """No connection for ``idle_timeout``: end the session (buffers, the API
        connection); the next splice opens a new one."""
        self._idle_timer = None
        if self._state != _OPEN or self.active > 0 or self._retiring:
            return
        log.debug("tunnel %s idle: closing its session", self._label)
        for conn in self._teardown():  # none: it has no connection
            conn.release()
        self._set_state(_IDLE)

    def _retire_now(self, reason: str) -> None:
        """``retire`` on the loop thread, reporting at once."""
        with self._lock:
            if self._state != _OPEN or self._retiring:
                return
            self._retiring = True
            self.alive = False
        log.debug("tunnel to %s retires: %s", self._label, reason)
        self._report_dead()
        if self.active <= 0:
            self._die("retired", quiet=True)

    def _retired(self, report: bool) -> None:
        if report:
            self._report_dead()
        else:
            self._reported = True
        if self.active <= 0:
            self._die("retired", quiet=True)

    def _die(self, reason: str, *, quiet: bool = False) -> None:
        if self._state != _OPEN:
            return
        self._set_state(_DEAD)
        if not quiet:
            self.last_error = TunnelError(f"tunnel to {self._label}: {reason}")
            log.warning("tunnel to %s died: %s", self._label, reason)
        unstarted = self._teardown()
        self._report_dead()  # first: whoever routes them again knows to avoid this pod
        for conn in unstarted:
            conn.release()

    def _teardown(self) -> list[LocalConn]:
        """Close the session and every connection on it, except those nothing was relayed
        for yet: those are returned (no longer watched), for ``release``."""
        self._cancel_idle()
        unstarted: list[LocalConn] = []
        session, self._session = self._session, None
        if session is not None:
            unstarted += session.close(keep_unstarted=True)
        for link in list(self._links):
            link.close()
        self._links.clear()
        for ident, conn in list(self._dialing.items()):
            if conn is not None and not conn.closed:
                conn.closed = True  # its dial's outcome is dropped when it comes
                unstarted.append(conn)
                sock = self._dial_socks.get(ident)
                if sock is not None:
                    hard_shutdown(sock)
        self.active = 0
        return unstarted

    def _report_dead(self) -> None:
        if self._reported:
            return
        self._reported = True
        if self.on_dead is not None:
            try:
                self.on_dead(self)
            except Exception:
                log.exception("on_dead callback failed")

    def _close_now(self) -> None:
        """Close for good (loop thread, or any thread once the loop is gone)."""
        if self._state == _CLOSED:
            return
        self._set_state(_CLOSED)
        pending, self._pending = self._pending, []
        with self._lock:
            dialing = list(self._dial_socks.values())
        for sock in dialing:
            hard_shutdown(sock)
        unstarted = self._teardown()
        for local, _port, give_back, _meter, prefix, _tap in pending:
            hand_back(local, give_back, prefix)
        for conn in unstarted:
            conn.release()
        with self._lock:  # dials still queued see the state and do not begin
            begun = [self._openers[i] for i in self._dials_begun if i in self._openers]
        for done in begun:
            done.wait(10.0)  # its socket was shut down: it ends soon
        self._openers.clear()
        self._dialing.clear()
        self.loop.detach(self)


def _close_result(result: Any) -> None:
    """Close the socket of a dial whose outcome nobody wants any more."""
    if isinstance(result, tuple):
        for item in result:
            if isinstance(item, socket.socket):
                close_quietly(item)
