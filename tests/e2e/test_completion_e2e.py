"""Shell completion run as bash runs it (``_KUBEFWD_COMPLETE``, ``COMP_WORDS``,
``COMP_CWORD``): contexts from the kubeconfig file, namespaces from the API server when it
answers within a second."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e



def complete(words: str) -> tuple[list[str], float]:
    """What bash's completion function gets for the last word of ``words``."""
    parts = words.split(" ")
    env = dict(os.environ, _KUBEFWD_COMPLETE="complete_bash", COMP_WORDS=words,
               COMP_CWORD=str(len(parts) - 1))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "kubefwd"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout.split(), time.monotonic() - started


KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: beta
contexts:
- {{name: alpha, context: {{cluster: c, user: u, namespace: shop}}}}
- {{name: beta, context: {{cluster: c, user: u}}}}
- {{name: alpine, context: {{cluster: c, user: u}}}}
clusters:
- {{name: c, cluster: {{server: "https://127.0.0.1:{port}"}}}}
users:
- {{name: u, user: {{token: x}}}}
"""


def test_contexts_complete_from_the_kubeconfig_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(KUBECONFIG.format(port=1))
    got, _ = complete(f"kubefwd svc -c {config} -x al")
    assert got == ["alpha", "alpine"]
    got, _ = complete(f"kubefwd svc -c {config} --context ")
    assert got == ["beta", "alpha", "alpine"]  # the current one first
    got, _ = complete(f"kubefwd svc -c {config} -x beta,alp")
    assert got == ["beta,alpha", "beta,alpine"]


def test_namespaces_come_from_the_api_server_when_it_answers(cluster: SimCluster) -> None:
    got, _ = complete(f"kubefwd svc -c {cluster.kubeconfig_path} -x two -n ")
    assert {"shop", "payments", "default"} <= set(got)
    got, _ = complete(f"kubefwd svc -c {cluster.kubeconfig_path} -n pay")
    assert got == ["payments"]


def test_a_server_that_never_answers_does_not_hold_completion(tmp_path: Path) -> None:
    """The look-up gives up after a second (the figure is not asserted here: machines are
    shared and noisy); without that bound completion would wait for the client's own
    timeout, far longer than the margin below."""
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config = tmp_path / "config"
        config.write_text(KUBECONFIG.format(port=silent.getsockname()[1]))
        _, baseline = complete(f"kubefwd svc -c {config} -x al")
        got, took = complete(f"kubefwd svc -c {config} -x alpha -n ")
    assert got == ["shop"]  # the context's own namespace
    assert took - baseline < 8.0, (took, baseline)
