"""A client that stops reading must not stall the other connections to the same pod.

Both connections go to the one pod of ``shop/web`` through the same forward, so over SPDY
they share one session (one API connection): the stuck one's bytes and the other's arrive
interleaved on it. The other connection must still complete a 50 MB download in bounded
time, on every transport.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_svc_e2e import Kubefwd, block, cluster, hosts, hosts_entries, run

pytestmark = pytest.mark.e2e

_ = (block, cluster, hosts, run)

BIG = 50 * 1000 * 1000
# Far more than any buffer on the way: the pod keeps sending for as long as the test runs.
ENDLESS = 10 * 1000 * 1000 * 1000


def _get(ip: str, size: int, *, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((ip, 80))
    sock.sendall(f"GET /bytes/{size} HTTP/1.0\r\nHost: web\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket, want: int, deadline: float) -> int:
    """Bytes of body read before EOF or the deadline."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    head = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            n = sock.recv_into(view)
        except (TimeoutError, OSError):
            break
        if not n:
            break
        if head is not None:
            head += bytes(view[:n])
            if b"\r\n\r\n" not in head:
                continue
            n = len(head.partition(b"\r\n\r\n")[2])
            head = None  # type: ignore[assignment]
        got += n
        if got >= want:
            break
    return got


@pytest.mark.parametrize("transport", ["auto", "spdy", "ws"])
def test_a_stuck_client_does_not_stall_the_others_to_the_same_pod(
    run: Callable[..., Kubefwd], hosts: Path, transport: str
) -> None:
    fwd = run("-n", "shop", "--transport", transport)
    ip = hosts_entries(hosts)["web"]
    # Warm up: the tunnel is open, so both connections below share its session.
    warm = _get(ip, 1000)
    assert _read_all(warm, 1000, time.monotonic() + 10) == 1000
    warm.close()

    stuck = _get(ip, ENDLESS, rcvbuf=4096)  # reads nothing from here on
    time.sleep(1.0)  # its bytes fill every buffer on the way

    other = _get(ip, BIG)
    started = time.monotonic()
    got = _read_all(other, BIG, started + 30)
    elapsed = time.monotonic() - started
    other.close()
    print(f"{transport}: the other connection moved {got / 1e6:.1f} MB in {elapsed:.2f} s "
          f"({got / elapsed / 1e6:.1f} MB/s) while one client read nothing")
    assert got == BIG, f"only {got} of {BIG} bytes in {elapsed:.1f}s: the stuck client stalls it"
    assert elapsed < 10

    # Still serving new connections afterwards, and the stuck one does not leak: it is
    # closed (or cut) once its client goes away.
    fresh = _get(ip, 1000)
    assert _read_all(fresh, 1000, time.monotonic() + 10) == 1000
    fresh.close()
    stuck.close()
    fwd.stop_cleanly()


def test_a_slow_reader_alone_on_its_pod_gets_every_byte(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    """Holding the session up hurts nobody when no other connection shares it: a client that
    reads far slower than the pod sends, with pauses longer than the stall limit, is slowed
    down, not cut."""
    fwd = run("-n", "shop", "--transport", "spdy")
    ip = hosts_entries(hosts)["web"]
    size = 24 * 1000 * 1000
    sock = _get(ip, size, rcvbuf=65536)
    pause = threading.Event()
    pause.wait(3.0)  # longer than the stall limit, with nothing read
    got = 0
    head = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        if head is not None:
            head += chunk
            if b"\r\n\r\n" not in head:
                continue
            chunk = head.partition(b"\r\n\r\n")[2]
            head = None  # type: ignore[assignment]
        got += len(chunk)
        pause.wait(0.002)  # a slow reader: far slower than the pod writes
    sock.close()
    assert got == size
    assert "stopped reading" not in fwd.output
    fwd.stop_cleanly()
