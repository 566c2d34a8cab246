"""The local REST API (``--api``): routes, authentication, the OpenAPI spec, its server.

A layer beside ``ui``, between ``app`` and ``commands``: it reads the state store, the
metrics registry, the HTTP log and the event bus of a running ``Kubefwd``, and changes
things only through ``app.control`` (and looks the cluster up through ``app.lookups``). It
never reaches into forwarders, the tunnel pool or the Kubernetes client. Only this package
imports the web framework (falcon) and the threaded WSGI server (cheroot); ``keys`` is
plain standard library so that ``kubefwd status`` and ``kubefwd mcp`` can find a running
instance's API without importing either.
"""
