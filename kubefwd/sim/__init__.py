"""A simulated Kubernetes cluster that speaks the real wire protocols, for tests and demos."""

from __future__ import annotations

from kubefwd.sim.cluster import SimCluster
from kubefwd.sim.store import StatusError, Store

__all__ = ["SimCluster", "StatusError", "Store"]
