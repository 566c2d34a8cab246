"""``kubefwd svc --tui``: a live full-screen view of every forward, built on prompt_toolkit.

It reads only the event bus, the state store, the metrics registry and the look-ups, and acts
only through ``app.control``: it never reaches into forwarders, tunnels or the Kubernetes
client. ``model`` derives what is shown (pure, unit-tested), ``view`` holds the state of the
screen and what each key does, ``widgets`` draws it, ``keys`` binds the keys, ``logs`` follows
a pod's log, ``app`` runs it all in the main thread while the forwards keep running.
"""
