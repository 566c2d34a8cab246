"""``kubefwd sim``: serve a simulated cluster in the foreground."""

from __future__ import annotations

from kubefwd.errors import KubefwdError


def sim_command() -> None:
    """Serve a simulated Kubernetes cluster until Ctrl-C (being built)."""
    raise KubefwdError("the simulated cluster is not built yet")
