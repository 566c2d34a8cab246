"""The desired state: services, pods, addresses, names and reservations, turned into commands
for the forwarders and the hosts writer; never calling out while holding its lock.

May import ``cluster`` (informer events), ``events``, ``support``, ``wire`` and ``errors``.
"""
