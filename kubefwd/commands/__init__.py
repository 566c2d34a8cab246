"""The command line: one module per subcommand, flag validation (every value checked before
the rest of kubefwd is imported), and in ``cli`` the one place exceptions become a line on
stderr and an exit code.

The top layer: may import everything, ``sim`` included (``kubefwd sim``).
"""
