"""Kubeconfig loading and the list/watch client, against crafted kubeconfigs and the sim."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import stat
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import manifests, namespace, unused_port, workload
from helpers import service as service_yaml

from kubefwd.cluster import kubeconfig as kube
from kubefwd.cluster.client import (
    KubeClient,
    WatchExpired,
    watch_callables,
)
from kubefwd.cluster.informer import SYNC, Backoff, Informer, InformerEvent
from kubefwd.cluster.kubeconfig import load_contexts
from kubefwd.errors import ApiError, ConfigError, ExitCode
from kubefwd.registry.ipalloc import IpAllocator
from kubefwd.registry.model import ForwardKey
from kubefwd.registry.registry import Registry
from kubefwd.sim import SimCluster
from kubefwd.sim import tls as simtls


def kubeconfig(
    server: str = "https://127.0.0.1:6443",
    user: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    contexts: tuple[str, ...] = ("dev",),
    current: str | None = "dev",
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user if user is not None else {"token": "abc"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u",
                                             **({"namespace": "shop"} if n == "dev" else {})}}
                     for n in contexts],
    }
    if current:
        doc["current-context"] = current
    return doc


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# -- kubeconfig -----------------------------------------------------------------------------


def test_no_kubeconfig_is_a_clear_config_error(no_env: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_contexts(None, [])
    message = str(info.value)
    assert message.startswith("no kubeconfig found (looked in ")
    assert str(no_env / "home" / ".kube" / "config") in message
    assert "pass --kubeconfig or set KUBECONFIG" in message
    assert info.value.exit_code == ExitCode.CONFIG


def test_malformed_kubeconfig_is_one_line_naming_file_and_line(no_env: Path) -> None:
    path = no_env / "kc"
    path.write_text("apiVersion: v1\nclusters:\n  - name: c\n   cluster: {server: x}\n")
    with pytest.raises(ConfigError) as info:
        load_contexts(str(path), [])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid kubeconfig {path}: line 4: expected <block end>")
    assert info.value.exit_code == ExitCode.CONFIG


def test_under_sudo_the_invoking_users_kubeconfig_is_used(
    no_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pwd

    me = pwd.getpwuid(os.getuid())
    monkeypatch.setenv("SUDO_USER", me.pw_name)
    user_config = Path(me.pw_dir) / ".kube" / "config"
    paths = kube.kubeconfig_paths(None)
    assert paths == [str(no_env / "home" / ".kube" / "config"), str(user_config)]
    monkeypatch.setenv("KUBECONFIG", str(no_env / "kc"))  # an explicit choice wins
    assert kube.kubeconfig_paths(None) == [str(no_env / "kc")]


def test_default_context_is_the_current_one_and_namespace_defaults(no_env: Path) -> None:
    path = write(no_env / "kc", kubeconfig(contexts=("dev", "qa")))
    [ctx] = load_contexts(path, [])
    assert (ctx.name, ctx.index, ctx.namespace) == ("dev", 0, "shop")
    assert (ctx.target.host, ctx.target.port, ctx.target.scheme) == ("127.0.0.1", 6443, "https")
    assert ctx.target.auth_headers() == {"Authorization": "Bearer abc"}
    qa, dev = load_contexts(path, ["qa", "dev"])
    assert (qa.name, qa.index, qa.namespace, dev.index) == ("qa", 0, "default", 1)


def test_unknown_context_lists_the_available_ones(no_env: Path) -> None:
    path = write(no_env / "kc", kubeconfig(contexts=("dev", "qa")))
    with pytest.raises(ConfigError, match=r"context 'prod' not found .*available: dev, qa"):
        load_contexts(path, ["prod"])


def test_no_current_context_asks_for_one(no_env: Path) -> None:
    path = write(no_env / "kc", kubeconfig(current=None))
    with pytest.raises(ConfigError, match=r"no current-context; pass --context .*dev"):
        load_contexts(path, [])
    assert load_contexts(path, ["dev"])[0].name == "dev"


def test_kubeconfig_env_list_is_merged(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write(no_env / "a", kubeconfig(contexts=("dev",)))
    other = kubeconfig(server="http://127.0.0.1:8080", contexts=("qa",), current="qa")
    other["clusters"][0]["name"] = "c2"
    other["users"][0]["name"] = "u2"
    other["contexts"][0]["context"].update(cluster="c2", user="u2")
    second = write(no_env / "b", other)
    monkeypatch.setenv("KUBECONFIG", f"{first}:{no_env / 'missing'}:{second}")
    dev, qa = load_contexts(None, ["dev", "qa"])
    assert dev.target.scheme == "https" and qa.target.scheme == "http"
    assert qa.target.port == 8080 and qa.target.ssl_context is None
    assert load_contexts(None, [])[0].name == "dev"  # the first file's current-context wins


def test_client_certificate_data_goes_to_a_private_temp_dir(
    no_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(kube, "_private_dir", None)
    creds = simtls.generate()
    kube_dir = no_env / "home" / ".kube"
    kube_dir.mkdir(parents=True)
    user = {
        "client-certificate-data": base64.b64encode(creds.cert_pem).decode(),
        "client-key-data": base64.b64encode(creds.key_pem).decode(),
    }
    cluster = {"certificate-authority-data": base64.b64encode(creds.ca_pem).decode()}
    path = write(kube_dir / "config", kubeconfig(user=user, cluster=cluster))
    [ctx] = load_contexts(None, [])
    assert path and sorted(os.listdir(kube_dir)) == ["config"]  # nothing written next to it
    # Loaded into the SSL context, then removed, the directory too: a process killed later
    # (kill -9) leaves nothing in the temp folder.
    assert os.listdir(temp) == []
    private = kube._credentials_dir()  # the next need makes another, private one
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700 and Path(private).parent == temp
    sslctx = ctx.target.ssl_context
    assert isinstance(sslctx, ssl.SSLContext) and sslctx.verify_mode == ssl.CERT_REQUIRED
    assert any(c.get("subject") for c in sslctx.get_ca_certs())
    assert ctx.target.auth_headers() == {}


def test_insecure_skip_tls_verify(no_env: Path) -> None:
    path = write(no_env / "kc", kubeconfig(cluster={"insecure-skip-tls-verify": True}))
    sslctx = load_contexts(path, [])[0].target.ssl_context
    assert sslctx is not None and sslctx.verify_mode == ssl.CERT_NONE
    assert not sslctx.check_hostname


def test_token_file_is_read_again_when_it_changes(no_env: Path) -> None:
    token = no_env / "token"
    token.write_text("one\n")
    path = write(no_env / "kc", kubeconfig(user={"tokenFile": "token"}))
    auth = load_contexts(path, [])[0].target.auth_headers
    assert auth() == {"Authorization": "Bearer one"}
    token.write_text("two\n")
    os.utime(token, (time.time() + 5, time.time() + 5))
    assert auth() == {"Authorization": "Bearer two"}


def test_exec_plugin_token_is_reused_then_refreshed_before_it_expires(no_env: Path) -> None:
    counter = no_env / "count"
    plugin = no_env / "plugin.py"
    plugin.write_text(textwrap.dedent(f"""
        import datetime, json, pathlib
        p = pathlib.Path({str(counter)!r})
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)
        expiry = exp.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1",
                          "kind": "ExecCredential",
                          "status": {{"token": f"tok{{n}}", "expirationTimestamp": expiry}}}}))
    """))
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(plugin)], "interactiveMode": "Never"}}
    path = write(no_env / "kc", kubeconfig(user=user))
    auth = load_contexts(path, [])[0].target.auth_headers
    # Valid for 2-3 s: reused by new connections (the plugin ran once, at load) ...
    first, second = auth()["Authorization"], auth()["Authorization"]
    assert first == second == "Bearer tok1"
    assert counter.read_text() == "1"
    # ... and fetched again in the last quarter of its life, before it expires.
    time.sleep(2.2)
    assert auth()["Authorization"] == "Bearer tok2"


def test_a_failing_exec_plugin_is_a_config_error_naming_it(no_env: Path) -> None:
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                     "command": str(no_env / "no-such-plugin"), "interactiveMode": "Never"}}
    path = write(no_env / "kc", kubeconfig(user=user))
    with pytest.raises(ConfigError, match=r"context 'dev': cannot get credentials: .*no-such"):
        load_contexts(path, [])


def test_bad_server_url_is_a_config_error(no_env: Path) -> None:
    path = write(no_env / "kc", kubeconfig(server="ftp://example"))
    with pytest.raises(ConfigError, match="invalid server URL"):
        load_contexts(path, [])


# -- against the simulated cluster -----------------------------------------------------------

MANIFESTS = manifests(
    namespace("shop"),
    workload("web", "shop", replicas=2),
    service_yaml("web", "shop", labels="{tier: front}"),
    service_yaml("db", "shop", ports="[{port: 5432}]"),
)


def service(name: str, ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    # A pod range of our own: other suites may run simulated pods at the same time.
    with SimCluster(manifests=MANIFESTS, contexts=("sim", "sim2"),
                    pod_ip_range="127.1.112.0/20") as c:
        yield c


@pytest.fixture
def client(cluster: SimCluster) -> Iterator[KubeClient]:
    [ctx] = load_contexts(str(cluster.kubeconfig_path), ["sim"])
    k = KubeClient(ctx)
    yield k
    k.close()


def test_load_contexts_from_the_sim_kubeconfig(cluster: SimCluster) -> None:
    sim, sim2 = load_contexts(str(cluster.kubeconfig_path), ["sim", "sim2"])
    assert sim.server == cluster.url and sim.target.port == cluster.port
    assert (sim.index, sim2.index, sim.namespace) == (0, 1, "default")
    with pytest.raises(ConfigError, match="available: sim, sim2"):
        load_contexts(str(cluster.kubeconfig_path), ["nope"])


def test_list_with_selectors_and_namespaces(client: KubeClient) -> None:
    items, rv = client.list("services", "shop")
    assert sorted(i["metadata"]["name"] for i in items) == ["db", "web"] and rv
    front, _ = client.list("services", "shop", label_selector="tier=front")
    assert [i["metadata"]["name"] for i in front] == ["web"]
    named, _ = client.list("services", "shop", field_selector="metadata.name=db")
    assert [i["metadata"]["name"] for i in named] == ["db"]
    assert client.namespace_status("shop") == "exists"
    assert client.namespace_status("nope") == "missing"
    assert "shop" in client.list_namespaces()
    slices, _ = client.list("endpointslices", "shop")
    assert isinstance(slices, list)


def test_watch_streams_events_and_raises_watch_expired(
    cluster: SimCluster, client: KubeClient
) -> None:
    _, rv = client.list("services", "shop")
    stop = threading.Event()
    events = client.watch("services", "shop", rv, stop=stop, timeout_seconds=10)
    cluster.apply(service("cache"))
    first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "cache")
    cluster.expire_watch_history()
    with pytest.raises(WatchExpired):
        next(events)
    with pytest.raises(WatchExpired):  # too old from the start: HTTP 200 + ERROR event
        next(client.watch("services", "shop", rv, stop=stop, timeout_seconds=10))


def test_a_watch_on_a_kept_connection_stops_at_once(
    cluster: SimCluster, client: KubeClient
) -> None:
    """The list leaves its connection to the watch that follows (keep-alive); stopping the
    informer must cut that watch at once, not leave it to the server's timeout."""
    stop = threading.Event()
    _, rv = client.list("services", "shop", stop=stop)
    assert client._idle  # the list's connection is kept for the watch
    ended = threading.Event()

    def watch() -> None:
        try:
            for _ in client.watch("services", "shop", rv, stop=stop, timeout_seconds=60):
                pass
        except ApiError:  # cut before the answer's head: the informer ends as well
            assert stop.is_set()
        ended.set()

    thread = threading.Thread(target=watch, name="kept-watch")
    thread.start()
    assert _eventually(lambda: client._active and not client._idle)  # the watch took it
    began = time.monotonic()
    stop.set()
    client.interrupt(stop)  # as an informer's stop does
    thread.join(5)
    assert ended.is_set() and time.monotonic() - began < 1.0


def _eventually(check: Callable[[], object], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_forbidden_names_the_verb_and_resource(cluster: SimCluster, client: KubeClient) -> None:
    cluster.forbid("services", "list")
    with pytest.raises(ApiError) as info:
        client.list("services", "shop")
    assert str(info.value).startswith("forbidden: cannot list services in namespace shop (403): ")
    assert info.value.status == 403 and info.value.exit_code == ExitCode.API
    cluster.forbid("namespaces", "get")
    assert client.namespace_status("shop") == "forbidden"  # cannot tell either way
    cluster.forbid("pods", "watch")
    stop = threading.Event()
    with pytest.raises(ApiError, match=r"forbidden: cannot watch pods in namespace shop \(403\)"):
        next(client.watch("pods", "shop", "", stop=stop))


def test_namespace_status_tells_exists_missing_and_forbidden(
    cluster: SimCluster, client: KubeClient
) -> None:
    assert client.namespace_status("shop") == "exists"
    assert client.namespace_status("nope") == "missing"
    cluster.forbid("namespaces")
    assert client.namespace_status("shop") == "forbidden"
    assert client.namespace_status("nope") == "forbidden"  # a 403 tells nothing either way
    cluster.allow("namespaces")
    assert client.namespace_status("nope") == "missing"


def test_other_refusals_have_no_doubled_error_word(client: KubeClient) -> None:
    # The CLI prints "kubefwd: error: <message>": the message must not say "error:" again.
    with pytest.raises(ApiError) as info:
        client.list("services", "shop", field_selector="no.such.field=x")
    assert str(info.value).startswith("cannot list services in namespace shop (400): ")
    assert info.value.status == 400 and info.value.exit_code == ExitCode.API


def test_wrong_token_is_unauthorized(cluster: SimCluster, tmp_path: Path) -> None:
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    doc["users"][0]["user"]["token"] = "wrong"
    [ctx] = load_contexts(write(tmp_path / "kc", doc), [])
    with pytest.raises(ApiError, match=r"unauthorized: cannot list pods in namespace shop \(401\)"):
        KubeClient(ctx).list("pods", "shop")


def test_unreachable_server_names_the_url(tmp_path: Path) -> None:
    port = unused_port()
    path = write(tmp_path / "kc", kubeconfig(server=f"http://127.0.0.1:{port}"))
    [ctx] = load_contexts(path, [])
    with pytest.raises(ApiError, match=rf"cannot reach the API server at http://127.0.0.1:{port}"):
        KubeClient(ctx, timeout=5).list("services", "shop")


def test_untrusted_server_certificate_is_a_tls_error(cluster: SimCluster, tmp_path: Path) -> None:
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    other_ca = simtls.generate().ca_pem
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        other_ca).decode()
    [ctx] = load_contexts(write(tmp_path / "kc", doc), ["sim"])
    with pytest.raises(ApiError, match=r"TLS error .*certificate verify failed"):
        KubeClient(ctx).list("services", "shop")


def start_informer(
    client: KubeClient,
    resource: str,
    namespace: str,
    callback: Callable[[InformerEvent], None],
    **kw: Any,
) -> Informer:
    informer = build_informer(client, resource, namespace, callback, **kw)
    informer.start()
    return informer


def build_informer(
    client: KubeClient,
    resource: str,
    namespace: str,
    callback: Callable[[InformerEvent], None],
    *,
    label_selector: str = "",
    on_error: Callable[[Informer, Exception, float], None] | None = None,
) -> Informer:
    """An Informer wired to ``client`` the way kubefwd wires its own (not started)."""
    stop = threading.Event()
    list_fn, watch_fn = watch_callables(client, resource, namespace,
                                        label_selector=label_selector, timeout_seconds=30,
                                        stop=stop)
    return Informer(context=client.context.name, namespace=namespace, resource=resource,
                    list_fn=list_fn, watch_fn=watch_fn, callback=callback,
                    interrupt=client.interrupt, backoff=Backoff(initial=0.05, cap=0.2),
                    on_error=on_error, stop=stop)


def names_of(event: InformerEvent) -> list[str]:
    return sorted(o["metadata"]["name"] for o in event.objects)


def test_informer_follows_changes_recovers_from_410_and_restarts(
    cluster: SimCluster, client: KubeClient
) -> None:
    got: list[InformerEvent] = []
    informer = start_informer(client, "services", "shop", got.append)
    try:
        assert informer.wait_synced(5)
        assert names_of(got[0]) == ["db", "web"]
        cluster.apply(service("cache"))
        cluster.wait_for(lambda: any(e.type == "ADDED" for e in got), 5)
        # history expires and a service goes away meanwhile: the relist drops it
        cluster.expire_watch_history()
        cluster.delete("Service", "shop", "db")
        cluster.wait_for(lambda: [e for e in got if e.type == SYNC
                                  and names_of(e) == ["cache", "web"]]
                         or [e for e in got if e.type == "DELETED"], 5)
        # the API server drops every connection: the informer comes back by itself
        cluster.restart_apiserver()
        cluster.apply(service("late"))
        cluster.wait_for(lambda: any(o["metadata"]["name"] == "late"
                                     for e in got for o in (e.obj, *e.objects) if o), 5)
    finally:
        t0 = time.monotonic()
        assert informer.stop_and_join(3)
        assert time.monotonic() - t0 < 1.0  # the blocked watch was woken, not waited out


def test_informer_reports_403_then_recovers(cluster: SimCluster, client: KubeClient) -> None:
    cluster.forbid("pods", "list")
    errors: list[Exception] = []
    got: list[InformerEvent] = []
    informer = start_informer(client, "pods", "shop", got.append,
                              on_error=lambda inf, exc, delay: errors.append(exc))
    try:
        cluster.wait_for(lambda: errors, 5)
        assert "forbidden: cannot list pods in namespace shop (403)" in str(errors[0])
        assert informer.last_error is not None and not informer.synced.is_set()
        cluster.allow("pods", "list")
        assert informer.wait_synced(5)
        assert informer.last_error is None
    finally:
        assert informer.stop_and_join(3)


def test_registry_fed_by_real_informers_picks_a_ready_pod(
    cluster: SimCluster, client: KubeClient
) -> None:
    cluster.wait_ready("shop")
    registry = Registry(allocator=IpAllocator(), contexts=["sim"], namespaces=["shop"])
    informers = [
        build_informer(client, resource, "shop", registry.callback("sim", "shop", resource),
                       label_selector="tier=front" if resource == "services" else "")
        for resource in ("services", "pods", "endpointslices")
    ]
    assert [i.name for i in informers] == [
        "informer/sim/shop/services", "informer/sim/shop/pods", "informer/sim/shop/endpointslices"
    ]
    for informer in informers:
        informer.start()
    key = ForwardKey("sim", "shop", "web")
    try:
        first = cluster.wait_for(lambda: registry.pick_pod(key, 80), 5)
        assert first.target_port(80) == 8080
        fwd = registry.get(key)
        assert fwd is not None and "web.shop" in fwd.names and len(fwd.pods) == 2
        # the chosen pod is deleted: the registry moves on to the other one at once
        cluster.delete_pod("shop", first.name)
        cluster.wait_for(lambda: (p := registry.pick_pod(key, 80)) and p.name != first.name, 5)
        # db is not labelled tier=front: not forwarded at all
        assert [str(f.key) for f in registry.snapshot().forwards] == ["sim/shop/web"]
    finally:
        for inf in informers:
            assert inf.stop_and_join(3)


def test_a_hanging_list_is_cut_short_by_interrupt(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        [ctx] = load_contexts(write(tmp_path / "kc", kubeconfig(server=f"http://127.0.0.1:{port}")),
                              [])
        client = KubeClient(ctx, timeout=30)
        stop = threading.Event()
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                client.list("services", "shop", stop=stop)
            except ApiError as e:
                outcome.append(e)

        thread = threading.Thread(target=run, name="hanging-list")
        thread.start()
        conn, _ = server.accept()  # the server never answers
        with conn:
            t0 = time.monotonic()
            stop.set()
            client.interrupt(stop)
            thread.join(5)
        assert not thread.is_alive() and time.monotonic() - t0 < 2
        assert outcome and isinstance(outcome[0], ApiError)


def test_lists_are_paged_and_the_sim_counts_the_pages(
    cluster: SimCluster, client: KubeClient
) -> None:
    all_items, rv = client.list("namespaces", "")
    assert len(all_items) >= 5
    cluster.reset_request_counts()
    client.page_size = 2
    items, paged_rv = client.list("namespaces", "")
    assert [i["metadata"]["name"] for i in items] == [i["metadata"]["name"] for i in all_items]
    assert paged_rv == rv
    assert cluster.request_count("list", "namespaces") == -(-len(all_items) // 2)


def test_throttled_list_waits_out_retry_after(cluster: SimCluster, client: KubeClient) -> None:
    cluster.reset_request_counts()
    cluster.throttle(status=429, retry_after=1, requests=2)
    started = time.monotonic()
    items, _ = client.list("services", "shop")
    took = time.monotonic() - started
    assert items
    assert cluster.request_count("list", "services", refused=True) == 2
    assert cluster.request_count("list", "services") == 3
    assert 2.0 <= took < 4.0  # two Retry-After: 1 waits, a little jitter
    assert client.throttle.bursts == 1 and client.throttle.refusals == 2


def test_503_with_retry_after_is_waited_out_too(cluster: SimCluster, client: KubeClient) -> None:
    cluster.throttle(status=503, retry_after=0, requests=1)
    assert client.list("services", "shop")[0]
    assert cluster.request_count("list", "services", refused=True) == 1


def test_impersonation_settings_become_headers_and_groups_need_a_user(no_env: Path) -> None:
    path = write(no_env / "kc", kubeconfig(user={"token": "t", "as": "jane",
                                                  "as-groups": ["qa", "eu"]}))
    target = load_contexts(path, [])[0].target
    assert target.extra_headers == (("Impersonate-User", "jane"), ("Impersonate-Group", "qa"),
                                    ("Impersonate-Group", "eu"))
    path = write(no_env / "kc2", kubeconfig(user={"token": "t", "as-groups": ["qa"]}))
    with pytest.raises(ConfigError, match="as-groups is set without as"):
        load_contexts(path, [])


def test_insecure_skip_tls_verify_warns_once(no_env: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = write(no_env / "kc", kubeconfig(user={"token": "t"},
                                           cluster={"insecure-skip-tls-verify": True}))
    ctx = load_contexts(path, [])[0]
    tls = ctx.target.tls_context()
    assert tls.verify_mode == ssl.CERT_NONE and not tls.check_hostname
    warnings = [r for r in caplog.records if "insecure-skip-tls-verify" in r.getMessage()]
    assert len(warnings) == 1


class _CountingServer:
    """A plain-HTTP API server that answers every GET with an empty list, counts the
    connections it accepted and, with ``close_after``, closes each connection after that
    many answers without saying so (as a server whose idle timeout ran out)."""

    def __init__(self, close_after: int = 0) -> None:
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="counting-server")
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), name="counting-conn")
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf, answered = b"", 0
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                _, buf = buf.split(b"\r\n\r\n", 1)
                self.requests += 1
                body = b'{"kind":"List","metadata":{"resourceVersion":"7"},"items":[]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                answered += 1
                if self.close_after and answered >= self.close_after:
                    return

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._accepter.join(5)
        for t in self._threads:
            t.join(5)


def test_requests_one_after_another_share_one_connection(tmp_path: Path) -> None:
    server = _CountingServer()
    try:
        [ctx] = load_contexts(write(tmp_path / "kc", kubeconfig(
            server=f"http://127.0.0.1:{server.port}")), [])
        client = KubeClient(ctx)
        for ns in ("a", "b", "c"):
            assert client.list("services", ns) == ([], "7")
            assert client.namespace_status(ns) == "exists"
        client.close()
        assert (server.requests, server.connections) == (6, 1)
    finally:
        server.close()


def test_a_kept_connection_the_server_closed_is_replaced_unseen(tmp_path: Path) -> None:
    server = _CountingServer(close_after=1)
    try:
        [ctx] = load_contexts(write(tmp_path / "kc", kubeconfig(
            server=f"http://127.0.0.1:{server.port}")), [])
        client = KubeClient(ctx)
        for ns in ("a", "b", "c"):
            assert client.list("pods", ns) == ([], "7")
            time.sleep(0.05)  # the server's close reaches us before the next request
        client.close()
        assert (server.requests, server.connections) == (3, 3)
    finally:
        server.close()
