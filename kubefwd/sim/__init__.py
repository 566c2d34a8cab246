"""A simulated Kubernetes cluster that speaks the real wire protocols, for tests and demos."""
