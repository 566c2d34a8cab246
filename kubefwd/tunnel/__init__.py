"""Port-forward tunnels to pods through the Kubernetes API server: the hot path.

A ``PodTunnel`` multiplexes every TCP connection forwarded to one pod over one SPDY/3.1
session (tunnelled in a WebSocket, or through the plain HTTP upgrade): per connection an
error stream and a data stream, with half-close both ways. When the server refuses both SPDY
forms, each connection gets a WebSocket ``v4.channel.k8s.io`` of its own instead.

No tunnel has a thread: each lives on the ``Loop`` of the forwarder that uses it, which
selects over its API connection and local sockets together with the forwarder's listeners.

Where the API server is (``ApiTarget``) belongs to the cluster layer. Modules: ``dial``
(blocking upgrade and negotiation, on short-lived opener threads), ``loop`` (selector,
timers, hand-over), ``io`` (non-blocking API connection, WebSocket frame reader, local
ends), ``spdy_client`` (the SPDY session),
``ws_v4`` (the v4 fallback), ``pod`` (``PodTunnel``), ``pool`` (``TunnelPool``).
"""

from __future__ import annotations

from kubefwd.tunnel.loop import Loop, LoopThread
from kubefwd.tunnel.pod import PodTunnel
from kubefwd.tunnel.pool import TunnelPool

__all__ = ["Loop", "LoopThread", "PodTunnel", "TunnelPool"]
