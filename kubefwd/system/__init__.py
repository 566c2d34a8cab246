"""The machine: loopback aliases per OS, and saying exactly why root is needed.

May import ``tunnel``, ``hosts``, ``registry``, ``cluster``, ``events``, ``support``, ``wire``
and ``errors``.
"""
