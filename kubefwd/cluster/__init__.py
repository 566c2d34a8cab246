"""The Kubernetes API: kubeconfig, credentials, proxies, Retry-After, the list/watch client,
informers, completion look-ups, and where the API server is (``ApiTarget``).

The only package that imports ``kubernetes``. May import ``events``, ``support``, ``wire`` and
``errors``.
"""
