
"""Every kubeconfig connection setting kubectl honours, one case each: ``kubefwd svc`` with
the edited kubeconfig forwards and a request goes through a forward, the simulated cluster
saw the identity the setting stands for, and ``kubectl`` given the same kubeconfig is the
judge (it must succeed, as the same identity)."""

from __future__ import annotations

import base64
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, http_text, kubectl, needs_kubectl, try_http, wait_for
from test_svc_e2e import (
    MANIFESTS,
    ORIGINAL_HOSTS,
    POD_RANGE,
    Kubefwd,
    _run_to_end,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e

SERVER_NAME = "kube.sim.internal"  # the only name the serving certificate of tls-server-name has


Doc = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One connection setting: how it edits the kubeconfig, who the cluster must see."""

    id: str
    edit: Callable[[Doc, SimCluster, Path], None]
    user: str = "sim-user"
    groups: tuple[str, ...] = ()
    impersonator: str = ""
    sim: dict[str, Any] = field(default_factory=dict)
    warning: str = ""


def _cluster(doc: Doc) -> Doc:
    return dict(doc["clusters"][0]["cluster"])


def _set(doc: Doc, *, cluster: Doc | None = None, user: Doc | None = None) -> None:
    for entry in doc["clusters"]:
        if cluster is not None:
            entry["cluster"] = cluster
    if user is not None:
        doc["users"][0]["user"] = user


def _write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path.name  # relative to the kubeconfig's directory, as users write them


def ca_file(doc: Doc, sim: SimCluster, d: Path) -> None:
    c = _cluster(doc)
    c.pop("certificate-authority-data")
    assert sim.ca_pem is not None
    c["certificate-authority"] = _write(d / "ca.crt", sim.ca_pem)
    _set(doc, cluster=c)


def ca_data(doc: Doc, sim: SimCluster, d: Path) -> None:
    assert "certificate-authority-data" in _cluster(doc)  # what the sim writes: kept


def insecure(doc: Doc, sim: SimCluster, d: Path) -> None:
    c = _cluster(doc)
    c.pop("certificate-authority-data")
    c["insecure-skip-tls-verify"] = True
    _set(doc, cluster=c)


def tls_server_name(doc: Doc, sim: SimCluster, d: Path) -> None:
    c = _cluster(doc)
    c["tls-server-name"] = SERVER_NAME  # the server is 127.0.0.1, not in the certificate
    _set(doc, cluster=c)


def client_cert_files(doc: Doc, sim: SimCluster, d: Path) -> None:
    cert, key = sim.issue_client_cert("file-user", ["devs"])
    _set(doc, user={"client-certificate": _write(d / "user.crt", cert),
                    "client-key": _write(d / "user.key", key)})


def client_cert_data(doc: Doc, sim: SimCluster, d: Path) -> None:
    cert, key = sim.issue_client_cert("data-user", ["devs"])
    _set(doc, user={"client-certificate-data": base64.b64encode(cert).decode(),
                    "client-key-data": base64.b64encode(key).decode()})


def token(doc: Doc, sim: SimCluster, d: Path) -> None:
    _set(doc, user={"token": sim.add_token("token-user", ["devs"])})


def token_file(doc: Doc, sim: SimCluster, d: Path) -> None:
    _set(doc, user={"tokenFile": _write(d / "token", sim.add_token("file-token-user",
                                                                    ["devs"]) + "\n")})


def plugin_script(d: Path) -> Path:
    """An exec plugin handing out a token (``token USER``) or a client certificate signed
    by the cluster's CA (``cert USER SECONDS``), logging each run to ``runs``."""
    script = d / "plugin.py"
    script.write_text(textwrap.dedent("""
        import datetime, json, pathlib, sys
        from kubefwd.sim.tls import Credentials
        here = pathlib.Path(__file__).parent
        with open(here / "runs", "a") as log:
            log.write(" ".join(sys.argv[1:]) + "\\n")
        now = datetime.datetime.now(datetime.timezone.utc)
        if sys.argv[1] == "token":
            status = {"token": (here / "plugin-token").read_text().strip()}
            expires = now + datetime.timedelta(hours=1)
        else:
            ca = Credentials(ca_pem=(here / "ca.pem").read_bytes(), cert_pem=b"",
                             key_pem=b"", ca_key_pem=(here / "ca.key").read_bytes())
            seconds = float(sys.argv[3])
            cert, key = ca.issue_client(sys.argv[2], ("devs",), expires_in=seconds)
            status = {"clientCertificateData": cert.decode(), "clientKeyData": key.decode()}
            expires = now + datetime.timedelta(seconds=seconds)
        status["expirationTimestamp"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1",
                          "kind": "ExecCredential", "status": status}))
    """))
    return script


def exec_user(sim: SimCluster, d: Path, *args: str) -> Doc:
    script = plugin_script(d)
    assert sim.credentials is not None
    (d / "ca.pem").write_bytes(sim.credentials.ca_pem)
    (d / "ca.key").write_bytes(sim.credentials.ca_key_pem)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                     "command": sys.executable, "args": [str(script), *args],
                     "env": [{"name": "PYTHONPATH", "value": str(REPO)}],
                     "interactiveMode": "Never"}}


def exec_token(doc: Doc, sim: SimCluster, d: Path) -> None:
    (d / "plugin-token").write_text(sim.add_token("exec-token-user", ["devs"]))
    _set(doc, user=exec_user(sim, d, "token"))


def exec_cert(doc: Doc, sim: SimCluster, d: Path) -> None:
    _set(doc, user=exec_user(sim, d, "cert", "exec-cert-user", "3600"))


def impersonate(doc: Doc, sim: SimCluster, d: Path) -> None:
    doc["users"][0]["user"]["as"] = "jane"
    doc["users"][0]["user"]["as-groups"] = ["qa", "eu"]


def path_prefix(doc: Doc, sim: SimCluster, d: Path) -> None:
    assert _cluster(doc)["server"].endswith("/k8s/clusters/c-1")  # the sim's own URL


CASES = [
    Case("certificate-authority", ca_file),
    Case("certificate-authority-data", ca_data),
    Case("insecure-skip-tls-verify", insecure, warning="insecure-skip-tls-verify is set"),
    Case("tls-server-name", tls_server_name, sim={"tls_hosts": (SERVER_NAME,)}),
    Case("client-certificate", client_cert_files, user="file-user", groups=("devs",)),
    Case("client-certificate-data", client_cert_data, user="data-user", groups=("devs",)),
    Case("token", token, user="token-user", groups=("devs", "system:authenticated")),
    Case("tokenFile", token_file, user="file-token-user",
         groups=("devs", "system:authenticated")),
    Case("exec-token", exec_token, user="exec-token-user",
         groups=("devs", "system:authenticated")),
    Case("exec-client-certificate", exec_cert, user="exec-cert-user", groups=("devs",)),
    Case("as-and-as-groups", impersonate, user="jane",
         groups=("qa", "eu", "system:authenticated"), impersonator="sim-user"),
    Case("server-path-prefix", path_prefix, sim={"path_prefix": "/k8s/clusters/c-1"}),
]


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[SimCluster]:
    """The e2e cluster, made with the options of this test's case."""
    callspec = getattr(request.node, "callspec", None)
    case = callspec.params.get("case") if callspec is not None else None
    options = case.sim if isinstance(case, Case) else {}
    with SimCluster(manifests=MANIFESTS, contexts=("one",), pod_ip_range=POD_RANGE,
                    **options) as c:
        c.wait_ready(timeout=15)
        yield c


def edited_kubeconfig(cluster: SimCluster, tmp_path: Path, case: Case) -> Path:
    directory = tmp_path / "kube"
    directory.mkdir(exist_ok=True)
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    case.edit(doc, cluster, directory)
    path = directory / "config"
    path.write_text(yaml.safe_dump(doc))
    return path


def identities(cluster: SimCluster) -> set[tuple[str, tuple[str, ...], str]]:
    return set(cluster.identities)


def expected_identity(case: Case) -> tuple[str, tuple[str, ...], str]:
    groups = case.groups or ("system:authenticated",)
    return case.user, groups, case.impersonator


@needs_kubectl
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_connection_setting(run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path,
                            tmp_path: Path, case: Case) -> None:
    config = edited_kubeconfig(cluster, tmp_path, case)
    cluster.reset_request_counts()
    fwd = run("-c", str(config), "-n", "shop")
    entries = hosts_entries(hosts)
    assert http_text(entries["web"], 80).startswith("web-")  # through a tunnel
    # Lists, watches and the tunnel all acted as the setting's identity, and only as it.
    assert identities(cluster) == {expected_identity(case)}, cluster.identities
    assert cluster.request_count("create", "pods/portforward") + \
        cluster.request_count("get", "pods/portforward") >= 1, cluster.requests
    if case.warning:
        warnings = [x for x in fwd.lines if case.warning in x]
        assert len(warnings) == 1, fwd.output
    fwd.stop_cleanly()
    # The judge: kubectl with the same kubeconfig gets the pods, as the same identity.
    cluster.reset_request_counts()
    out = kubectl(config, "get", "pods", "-n", "shop", "-o", "name").stdout
    assert "pod/web-" in out
    assert expected_identity(case) in identities(cluster), cluster.identities


TLS_SERVER_NAME = next(c for c in CASES if c.id == "tls-server-name")


@needs_kubectl
@pytest.mark.parametrize("case", [TLS_SERVER_NAME], ids=[TLS_SERVER_NAME.id])
def test_without_tls_server_name_the_certificate_does_not_match(
    cluster: SimCluster, hosts: Path, tmp_path: Path, case: Case
) -> None:
    """The counter-proof of the tls-server-name case: the same server without the setting
    is refused by both kubectl and kubefwd (one line, exit 4)."""
    result = _run_to_end(["-c", str(cluster.kubeconfig_path), "-n", "shop",
                          "--hosts-path", str(hosts)], tmp_path)
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "certificate" in result.stderr.lower()
    assert hosts.read_bytes() == ORIGINAL_HOSTS
    assert kubectl(cluster.kubeconfig_path, "get", "pods", "-n", "shop", check=False).returncode


def test_refused_impersonation_is_one_line_exit_4(cluster: SimCluster, hosts: Path,
                                                 tmp_path: Path) -> None:
    cluster.refuse_impersonation(user="jane")
    config = edited_kubeconfig(cluster, tmp_path, next(c for c in CASES
                                                       if c.id == "as-and-as-groups"))
    result = _run_to_end(["-c", str(config), "-n", "shop", "--hosts-path", str(hosts)],
                         tmp_path)
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 'cannot impersonate resource "users"' in result.stderr
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_token_file_is_read_again_when_it_changes(run: Callable[..., Kubefwd],
                                                  cluster: SimCluster, hosts: Path,
                                                  tmp_path: Path) -> None:
    config = edited_kubeconfig(cluster, tmp_path, next(c for c in CASES if c.id == "tokenFile"))
    fwd = run("-c", str(config), "-n", "shop")
    entries = hosts_entries(hosts)
    assert http_text(entries["web"], 80).startswith("web-")
    token_path = config.parent / "token"
    time.sleep(0.05)  # a distinct modification time
    token_path.write_text(cluster.add_token("rotated-user") + "\n")
    cluster.reset_request_counts()
    # A new tunnel (another service's pod) dials with the new token.
    assert http_text(entries["cart"], 8080).startswith("cart-")
    assert cluster.users_seen() == {"rotated-user"}, cluster.identities
    fwd.stop_cleanly()


# -- an exec plugin handing out client certificates that expire in 20 s -----------------------

EXEC_CERT = next(c for c in CASES if c.id == "exec-client-certificate")


@pytest.mark.parametrize("case", [EXEC_CERT], ids=["rotating"])
@pytest.mark.parametrize("transport", ["ws", "auto"])
def test_rotating_exec_client_certificate(run: Callable[..., Kubefwd], cluster: SimCluster,
                                          hosts: Path, tmp_path: Path, case: Case,
                                          transport: str) -> None:
    """New connections keep working across the rotation and open ones are not dropped. With
    ``ws`` every connection is a TLS connection of its own; with ``auto`` new tunnels are
    forced by deleting the pod each time."""
    directory = tmp_path / "kube"
    directory.mkdir()
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    _set(doc, user=exec_user(cluster, directory, "cert", "rotating-user", "20"))
    config = directory / "config"
    config.write_text(yaml.safe_dump(doc))
    fwd = run("-c", str(config), "-n", "shop", "--transport", transport)
    entries = hosts_entries(hosts)
    with socket.create_connection((entries["db-0.db"], 5432), timeout=10) as held:
        held.sendall(b"before")
        assert held.recv(64) == b"before"
        start = time.monotonic()
        served = 0
        while time.monotonic() - start < 24:  # past the first certificate's expiry
            assert http_text(entries["web"], 80, timeout=10).startswith("web-")
            served += 1
            time.sleep(1.0)
        if transport == "auto":
            # The tunnel opened with the first certificate carries every connection: a
            # new pod needs a new tunnel, dialed now with the second certificate.
            old = {p["metadata"]["name"] for p in cluster.pods("shop")}
            cluster.delete_pod("shop", next(n for n in old if n.startswith("web-")))
            wait_for(lambda: _pod_of(try_http(entries["web"], 80)) not in old | {""}, 20,
                     "web served by its new pod")
        # The connection opened with the first certificate is still carried.
        held.sendall(b"after")
        assert held.recv(64) == b"after"
    runs = (directory / "runs").read_text().splitlines()
    assert len(runs) >= 2, runs  # fetched again before it expired
    assert served >= 10
    assert cluster.users_seen() == {"rotating-user"}
    assert "refreshing credentials failed" not in fwd.output
    assert "certificate" not in fwd.output, fwd.output  # no dial met an expired one
    fwd.stop_cleanly()


def _pod_of(answer: str | None) -> str:
    """The pod that served an answer of the sim's HTTP server (its first word), or ""."""
    words = (answer or "").split()
    return words[0].rstrip(":,") if words else ""
