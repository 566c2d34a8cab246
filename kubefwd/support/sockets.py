"""Socket teardown that never raises, shared by the tunnel, the API client and the sim."""

from __future__ import annotations

import socket
from typing import Any


def hard_shutdown(sock: Any) -> None:
    """Shut a (TLS) socket down both ways to wake threads blocked on it; never raises.

    Only shut down, not closed: the thread that owns the socket closes it, so its descriptor
    number cannot be reused under that thread's feet. For a TLS socket the descriptor itself
    is shut down (``SSLSocket.shutdown`` would drop its TLS object under a reading thread's
    feet), so a reader blocked in it sees EOF instead of a vanished object.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):
        pass


def close_quietly(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass
