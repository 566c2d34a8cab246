"""Security promises of ``kubefwd svc``: listeners only on the allocated loopback addresses,
and no credential (the kubeconfig's token, a client key) in any output, even verbose, as
JSON, or with ``--traceback``, including when requests fail."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from helpers import unused_port
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    Kubefwd,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e


def test_listeners_bind_only_the_allocated_loopback_addresses(
    run: Callable[..., Kubefwd], hosts: Path
) -> None:
    fwd = run("-n", "shop,payments")
    allocated = set(hosts_entries(hosts).values())
    listening = {(c.laddr.ip, c.laddr.port) for c in
                 psutil.Process(fwd.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening, fwd.output
    assert {ip for ip, _ in listening} <= allocated  # never 0.0.0.0, ::, or 127.0.0.1
    fwd.stop_cleanly()


def _secrets_of(key_pem: bytes, token: str) -> list[str]:
    """The strings that must never be printed: the token, the key's base64 body (and any
    long piece of it), and the kubeconfig's base64 of the whole key."""
    body = "".join(line for line in key_pem.decode().splitlines() if "-----" not in line)
    pieces = [body[i:i + 24] for i in range(0, len(body) - 24, 24)]
    return [token, base64.b64encode(key_pem).decode()[:40], *pieces]


@pytest.mark.parametrize("fault", ["wrong-token", "unreachable", "forwarding"])
def test_no_credential_in_any_output(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int, fault: str
) -> None:
    # Signed by the cluster's CA (it checks client certificates), so every run reaches it.
    cert_pem, key_pem = cluster.issue_client_cert("kubefwd-test")
    token = cluster.token if fault == "forwarding" else "s3cr3t-" + os.urandom(12).hex()
    server = (f"http://127.0.0.1:{unused_port()}" if fault == "unreachable"
              else f"https://127.0.0.1:{cluster.port}")
    config = tmp_path / "kubeconfig"
    ca = cluster.kubeconfig_path.read_text().split("certificate-authority-data:", 1)
    ca_line = f"certificate-authority-data: {ca[1].split()[0]}" if len(ca) > 1 else \
        "insecure-skip-tls-verify: true"
    config.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters: [{{name: c, cluster: {{server: "{server}", {ca_line}}}}}]
        users: [{{name: u, user: {{token: "{token}",
          client-certificate-data: "{base64.b64encode(cert_pem).decode()}",
          client-key-data: "{base64.b64encode(key_pem).decode()}"}}}}]
        contexts: [{{name: one, context: {{cluster: c, user: u, namespace: shop}}}}]
        current-context: one
        """))
    base = tmp_path / "base.yaml"
    base.write_text(f"baseUnreservedIP: 127.1.{block}.1\n")
    outputs = []
    for extra in (["-v", "--traceback"], ["-v", "--traceback", "-o", "json"]):
        argv = [sys.executable, "-m", "kubefwd", "svc", "-c", str(config), "-n", "shop",
                "--hosts-path", str(hosts), "-z", str(base), *extra]
        env = dict(os.environ, HOME=str(tmp_path), PYTHONUNBUFFERED="1")
        if fault == "forwarding":  # a run that forwards, serves, and stops
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
            try:
                out, err = proc.communicate(timeout=8)
            except subprocess.TimeoutExpired:
                proc.send_signal(2)
                out, err = proc.communicate(timeout=20)
            assert "ready" in out, out + err
        else:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
            assert done.returncode == 4, done.stdout + done.stderr
            out, err = done.stdout, done.stderr
        outputs.append(out + err)
    assert hosts.read_bytes() == ORIGINAL_HOSTS
    for text in outputs:
        leaked = [s for s in _secrets_of(key_pem, token) if s in text]
        assert leaked == [], f"credential printed: {leaked[0][:8]}..."
