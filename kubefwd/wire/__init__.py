"""Wire protocols of Kubernetes port-forwarding: WebSocket framing and SPDY/3.1 sessions.

Shared by the client tunnel (``kubefwd.tunnel``) and the simulated API server
(``kubefwd.sim.portforward``).
"""
