"""Serving: forwarders (listeners and a selector loop per forward that also drives its
tunnels), the live forward set, routing connections to pods, dispatching registry commands,
and other instances on the same hosts file.

May import ``system``, ``tunnel``, ``hosts``, ``registry``, ``cluster``, ``events``,
``support``, ``wire`` and ``errors``.
"""
