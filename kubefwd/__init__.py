"""kubefwd: forward Kubernetes Services to the workstation, each on its own loopback IP."""

__version__ = "0.1.0"
