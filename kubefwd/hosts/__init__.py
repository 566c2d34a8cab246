"""The hosts file: its format, safe I/O (a lock shared by every instance, atomic or in-place
writes that never truncate it), the backup, the writer thread and the owners registry it
shares with the app, the names the cluster may not write, and the instances that have lines
in it.

May import ``events``, ``support``, ``wire`` and ``errors``.
"""
