"""Kubeconfig loading: the chosen contexts, their TLS material and their credentials.

Part of the Kubernetes adapter (with ``client``, its list/watch client): the product modules
that import ``kubernetes``. It merges the files as kubectl does and uses the official
loader for the cluster and user settings (certificate authorities, insecure-skip-tls-verify,
tls-server-name, client certificates, tokens, auth providers), but runs the exec plugin
itself (``credentials``), so that a token or client certificate it hands out is fetched again
before it expires. Each chosen context becomes a ``ClusterContext`` holding the
``ApiTarget`` the tunnels and the client connect to. Kept apart from the HTTP client because
it changes for different reasons: kubeconfig quirks (merging, sudo, token refresh) rather
than API semantics.
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.exec_provider import ExecProvider
from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

from kubefwd.cluster.credentials import Credentials, ExecRunner, TlsSettings
from kubefwd.cluster.proxy import Proxy, parse_proxy_url, proxy_from_environment
from kubefwd.cluster.target import ApiTarget
from kubefwd.cluster.throttle import ApiThrottle
from kubefwd.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_KUBECONFIG = "~/.kube/config"


@dataclass
class ClusterContext:
    """One kubeconfig context chosen on the command line, in command-line order."""

    name: str
    index: int  # position among the chosen contexts: picks 127.[1+index].x.y
    namespace: str  # the context's default namespace ("default" when unset)
    target: ApiTarget
    server: str = ""  # the server URL, for messages


_private_dir_lock = threading.Lock()
_private_dir: str | None = None


def _credentials_dir() -> str:
    """A 0700 directory for certificate/key data from the kubeconfig, removed at exit.

    ``ssl`` can only load client certificates from files; they go here, never next to the
    user's kubeconfig (which, under sudo, would leave root-owned files in ``~/.kube``).
    """
    global _private_dir
    with _private_dir_lock:
        if _private_dir is None or not os.path.isdir(_private_dir):
            _private_dir = tempfile.mkdtemp(prefix="kubefwd-creds-")  # mode 0700
            atexit.register(shutil.rmtree, _private_dir, True)
        return _private_dir


def _wipe_credentials_dir() -> None:
    """The SSL context holds the material now: don't leave key files lying around, nor the
    directory (a process killed later would leave it behind; the next need makes another)."""
    global _private_dir
    with _private_dir_lock:
        if _private_dir is None:
            return
        for name in os.listdir(_private_dir):
            try:
                os.unlink(os.path.join(_private_dir, name))
            except OSError:
                pass
        try:
            os.rmdir(_private_dir)
        except OSError:
            return
        _private_dir = None


def kubeconfig_paths(kubeconfig: str | None) -> list[str]:
    """The files a kubeconfig setting names: ``-c`` wins, then KUBECONFIG, then the default.

    Under sudo, HOME is often root's: when root has no ``~/.kube/config``, the invoking
    user's (``SUDO_USER``) is used, as that is the one the user meant.
    """
    if kubeconfig:
        return [os.path.expanduser(kubeconfig)]
    raw = os.environ.get("KUBECONFIG")
    if raw:
        return [os.path.expanduser(p) for p in raw.split(os.pathsep) if p]
    default = os.path.expanduser(DEFAULT_KUBECONFIG)
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and not os.path.isfile(default):
        try:
            home = pwd.getpwnam(sudo_user).pw_dir
        except KeyError:
            return [default]
        return [default, os.path.join(home, ".kube", "config")]
    return [default]


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line N: what is wrong`` (PyYAML's text spans lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    text = " ".join(str(problem or exc).split())
    return f"line {mark.line + 1}: {text}" if mark is not None else text


def _read_kubeconfigs(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read kubeconfig {path}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"invalid kubeconfig {path}: not a UTF-8 text file") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid kubeconfig {path}: {_yaml_problem(e)}") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"invalid kubeconfig {path}: not a mapping")
        docs.append((path, doc))
    return docs


def _list_contexts(
    docs: list[tuple[str, dict[str, Any]]],
) -> tuple[list[dict[str, Any]], str | None]:
    """Contexts merged as kubectl does (first file wins per name) and the current context
    (the first file that sets one)."""
    contexts: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for _, doc in docs:
        for entry in doc.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") is not None:
                contexts.setdefault(str(entry["name"]), entry)
        if current is None and doc.get("current-context"):
            current = str(doc["current-context"])
    return list(contexts.values()), current


def _existing_kubeconfigs(kubeconfig: str | None) -> list[str]:
    """The kubeconfig files to read, as kubectl picks them; ConfigError when there is none."""
    paths = kubeconfig_paths(kubeconfig)
    existing = [p for p in paths if os.path.isfile(p)]
    if existing and not kubeconfig and not os.environ.get("KUBECONFIG"):
        existing = existing[:1]  # the default file, or the sudo user's, not a merge
    if not existing:
        raise ConfigError(
            f"no kubeconfig found (looked in {', '.join(paths)}); "
            "pass --kubeconfig or set KUBECONFIG"
        )
    return existing


def available_contexts(kubeconfig: str | None) -> list[str]:
    """Every context of the kubeconfig, in file order (read again on each call, so contexts
    added to it while kubefwd runs are seen); ConfigError as ``load_contexts``."""
    available, _ = _list_contexts(_read_kubeconfigs(_existing_kubeconfigs(kubeconfig)))
    return [str(c.get("name")) for c in available]


def load_contexts(kubeconfig: str | None, contexts: Sequence[str]) -> list[ClusterContext]:
    """Resolve the chosen contexts (default: the current one) into API targets.

    Raises ConfigError for a missing kubeconfig, an unknown context, or credentials that
    cannot be loaded.
    """
    existing = _existing_kubeconfigs(kubeconfig)
    docs = _read_kubeconfigs(existing)
    available, current = _list_contexts(docs)
    names = [str(c.get("name")) for c in available]
    chosen = list(dict.fromkeys(contexts)) if contexts else []
    if not chosen:
        if not current:
            raise ConfigError(
                "the kubeconfig has no current-context; pass --context "
                f"(available: {', '.join(names) or 'none'})"
            )
        chosen = [current]
    result = []
    for index, name in enumerate(chosen):
        if name not in names:
            raise ConfigError(
                f"context {name!r} not found in {os.pathsep.join(existing)} "
                f"(available: {', '.join(names) or 'none'})"
            )
        entry = next(c for c in available if c.get("name") == name)
        namespace = (entry.get("context") or {}).get("namespace") or "default"
        target, server = _load_target(existing, docs, name)
        result.append(ClusterContext(name, index, namespace, target, server))
    return result


class _LoaderErrors(logging.Filter):
    """Collects what the kubeconfig loader reports through the root logger (an exec plugin
    that failed is only logged there) so it becomes part of one clear error instead."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "kubernetes" in record.pathname and record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())
            return False
        return True


def _load_target(
    paths: list[str], docs: list[tuple[str, dict[str, Any]]], context: str
) -> tuple[ApiTarget, str]:
    configuration = k8s_client.Configuration()
    errors = _LoaderErrors()
    root = logging.getLogger()
    root.addFilter(errors)
    exec_runner: ExecRunner | None = None
    try:
        merged = KubeConfigMerger(os.pathsep.join(paths))
        if merged.config is None:
            raise ConfigException("no configuration found")
        # The exec plugin is ours to run (and run again before its credential expires):
        # the official loader would run it once and never refresh a client certificate.
        exec_runner = _take_exec_plugin(merged.config, context)
        loader = KubeConfigLoader(config_dict=merged.config, active_context=context,
                                  config_base_path=None, temp_file_path=_credentials_dir())
        loader.load_and_set(configuration)
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot load context {context!r} from the kubeconfig: {e}") from e
    finally:
        root.removeFilter(errors)
    has_credentials = configuration.api_key.get("BearerToken") or configuration.cert_file
    if errors.messages and not has_credentials:
        raise ConfigError(
            f"context {context!r}: cannot get credentials: {'; '.join(errors.messages)}"
        )
    for message in errors.messages:
        log.warning("context %s: %s", context, message)
    server = str(configuration.host or "")
    url = urllib.parse.urlsplit(server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"context {context!r}: invalid server URL {server!r}")
    scheme = url.scheme
    port = url.port or (443 if scheme == "https" else 80)
    user = _user_entry(docs, context)
    tls = None
    if scheme == "https":
        try:
            tls = TlsSettings.from_files(configuration.ssl_ca_cert or None,
                                         bool(configuration.verify_ssl),
                                         configuration.cert_file or None,
                                         configuration.key_file or None)
        except OSError as e:
            raise ConfigError(f"context {context!r}: cannot load TLS material: "
                              f"{e.strerror or e}: {e.filename}") from e
        if not tls.verify:
            log.warning("context %s: insecure-skip-tls-verify is set: the API server's "
                        "certificate is not checked", context)
    credentials = Credentials(
        context,
        token=_token_source(configuration),
        token_file=_token_file(docs, context),
        exec_runner=exec_runner,
        impersonate_user=str(user.get("as") or ""),
        impersonate_groups=tuple(str(g) for g in user.get("as-groups") or ()),
        tls=tls,
        key_dir=_credentials_dir,
    )
    if user.get("as-groups") and not user.get("as"):
        raise ConfigError(f"context {context!r}: as-groups is set without as (impersonating "
                          "groups needs a user to impersonate)")
    try:
        credentials.fetch()
    except (ConfigException, OSError, ValueError) as e:
        raise ConfigError(f"context {context!r}: cannot get credentials: {e}") from e
    # Bad TLS material fails now, not at the first connection.
    ssl_context = credentials.ssl_context()
    _wipe_credentials_dir()
    proxy = _proxy(docs, context, scheme, url.hostname, port)
    target = ApiTarget(
        proxy=proxy,
        throttle=ApiThrottle(f"context {context}"),
        host=url.hostname,
        port=port,
        scheme=scheme,
        base_path=url.path.rstrip("/"),
        ssl_context=ssl_context,
        server_hostname=getattr(configuration, "tls_server_name", None) or None,
        auth_headers=credentials.headers,
        extra_headers=credentials.impersonation,
        tls=credentials.ssl_context if scheme == "https" else None,
    )
    return target, server


def _token_source(configuration: Any) -> str | Callable[[], str]:
    """The kubeconfig's token, or what refreshes it (an auth-provider such as oidc, whose
    token the official loader refreshes when it expires)."""
    hook = configuration.refresh_api_key_hook

    if hook is None:
        return str(configuration.api_key.get("BearerToken") or "")

    def refreshed() -> str:
        hook(configuration)
        return str(configuration.api_key.get("BearerToken") or "")

    return refreshed


def _take_exec_plugin(config: Any, context: str) -> ExecRunner | None:
    """Remove the context's user's ``exec`` from the merged kubeconfig and return what runs
    it (None when the user has no exec plugin, or an earlier method wins, as in kubectl)."""
    ctx = config["contexts"].get_with_name(context)["context"]
    user_name = ctx.safe_get("user")
    if not user_name:
        return None
    user_node = config["users"].get_with_name(user_name, safe=True)
    if user_node is None or "user" not in user_node:
        return None
    user = user_node["user"]
    if "exec" not in user or user.safe_get("token") or user.safe_get("tokenFile") \
            or user.safe_get("auth-provider"):
        return None
    exec_node = user["exec"]
    cluster_node = config["clusters"].get_with_name(ctx["cluster"], safe=True)
    cluster = cluster_node["cluster"] if cluster_node is not None else None
    base = os.path.dirname(os.path.abspath(user.path)) if user.path else ""
    provider = ExecProvider(exec_node, base, cluster)
    del user.value["exec"]

    def run() -> dict[str, Any]:
        status: dict[str, Any] = provider.run()
        return status

    return run


def _user_entry(docs: list[tuple[str, dict[str, Any]]], context: str) -> dict[str, Any]:
    """The ``user`` mapping the context names ({} when none), first file winning."""
    user_name = None
    for _, doc in docs:
        for c in doc.get("contexts") or []:
            if isinstance(c, dict) and c.get("name") == context:
                user_name = (c.get("context") or {}).get("user")
                break
        if user_name is not None:
            break
    for _, doc in docs:
        for u in doc.get("users") or []:
            if isinstance(u, dict) and u.get("name") == user_name:
                return dict(u.get("user") or {})
    return {}


def _cluster_proxy_url(docs: list[tuple[str, dict[str, Any]]], context: str) -> str:
    """The ``proxy-url`` of the context's cluster ("" when unset). Read from the files, not
    from the official client's Configuration, which also fills it from the environment
    without kubectl's rules."""
    cluster_name = None
    for _, doc in docs:
        for c in doc.get("contexts") or []:
            if isinstance(c, dict) and c.get("name") == context:
                cluster_name = (c.get("context") or {}).get("cluster")
                break
        if cluster_name is not None:
            break
    for _, doc in docs:
        for entry in doc.get("clusters") or []:
            if isinstance(entry, dict) and entry.get("name") == cluster_name:
                return str((entry.get("cluster") or {}).get("proxy-url") or "")
    return ""


def _proxy(docs: list[tuple[str, dict[str, Any]]], context: str, scheme: str, host: str,
           port: int) -> Proxy | None:
    """The cluster's ``proxy-url``, else the environment's proxy for the server (as kubectl
    picks it); None for a direct connection."""
    raw = _cluster_proxy_url(docs, context)
    source = "proxy-url"
    if not raw:
        raw = proxy_from_environment(scheme, host, port, os.environ) or ""
        source = "HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY"
    if not raw:
        return None
    try:
        proxy = parse_proxy_url(str(raw))
    except ValueError as e:
        raise ConfigError(f"context {context!r}: {source}: {e}") from None
    log.debug("context %s: API server through the proxy %s (%s)", context, proxy.display, source)
    return proxy


def _token_file(docs: list[tuple[str, dict[str, Any]]], context: str) -> str | None:
    """The user's ``tokenFile`` when no inline token is set: re-read on change, like kubectl."""
    user_name = None
    for _, doc in docs:
        for c in doc.get("contexts") or []:
            if c.get("name") == context:
                user_name = (c.get("context") or {}).get("user")
                break
        if user_name is not None:
            break
    for path, doc in docs:
        for u in doc.get("users") or []:
            if u.get("name") == user_name:
                user = u.get("user") or {}
                if user.get("token") or not user.get("tokenFile"):
                    return None
                return os.path.join(os.path.dirname(os.path.abspath(path)), user["tokenFile"])
    return None
