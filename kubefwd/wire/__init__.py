"""Wire protocols of Kubernetes port-forwarding, codecs only: WebSocket framing and
handshakes, SPDY/3.1 frames and header compression.

Shared by the client tunnel (``kubefwd.tunnel``) and the simulated API server, whose threaded
sessions live in ``kubefwd.sim``. The bottom layer with ``support``: imports only the standard
library and ``errors``.
"""
