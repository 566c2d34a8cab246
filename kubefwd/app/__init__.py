"""One run of kubefwd: the object graph built at once, start-up, signals, the run until
stopped, ``-- CMD``, and ``Control``, the one path for changes while running.

May import every layer below it (serve, system, tunnel, hosts, registry, cluster, events,
support, wire, errors); never ``ui``, ``commands`` or ``sim``.
"""
