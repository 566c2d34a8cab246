"""The port-forward transports by name, for the command line and the dialer alike: SPDY/3.1
in a WebSocket (``spdy-ws``), SPDY over the plain HTTP upgrade (``spdy``), one WebSocket
``v4.channel.k8s.io`` per connection (``ws``), or ``auto``: the first the server accepts, in
``AUTO_ORDER``."""

from __future__ import annotations

TRANSPORTS = ("auto", "spdy-ws", "spdy", "ws")
# What "auto" tries, in order.
AUTO_ORDER = ("spdy-ws", "spdy", "ws")
