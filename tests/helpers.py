"""Helpers the test modules share: waiting, raw HTTP and echo clients, kubectl, privileged
runs, temp hosts files and manifest builders.

pytest puts this directory on ``sys.path`` (rootdir-less ``tests/`` with a conftest, default
import mode), so test modules import it as ``helpers``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


# -- waiting ---------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "",
             interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; AssertionError
    naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        pause.wait(interval)


# -- raw clients -----------------------------------------------------------------------------


def http_get(host: str, port: int, path: str = "/", *, timeout: float = 5.0,
             version: str = "1.0") -> tuple[str, bytes]:
    """One ``GET path`` on a new connection the server closes after answering (HTTP/1.0, or
    HTTP/1.1 with ``Connection: close``); returns (status line, body)."""
    close = "Connection: close\r\n" if version != "1.0" else ""
    request = f"GET {path} HTTP/{version}\r\nHost: x\r\n{close}\r\n".encode()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        raw = bytearray()
        while chunk := sock.recv(1 << 20):
            raw.extend(chunk)
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def http_text(host: str, port: int, path: str = "/", timeout: float = 5.0) -> str:
    """Body of ``GET path`` as text; the answer must be HTTP."""
    status, body = http_get(host, port, path, timeout=timeout)
    assert status.startswith("HTTP/1."), status[:80]
    return body.decode()


def try_http(host: str, port: int) -> str | None:
    """``http_text`` with a short timeout, or None when nothing (HTTP) answers."""
    try:
        return http_text(host, port, timeout=2.0)
    except (OSError, AssertionError):
        return None


def unused_port() -> int:
    """A port of 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def echo_roundtrip(host: str, port: int, data: bytes, timeout: float = 20.0) -> bytes:
    """Send ``data``, half-close, and read everything the echo server sends back."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        received = bytearray()

        def reader() -> None:
            while chunk := sock.recv(1 << 20):
                received.extend(chunk)

        thread = threading.Thread(target=reader, name="test-echo-reader")
        thread.start()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        thread.join(30)
        return bytes(received)


# -- kubectl ---------------------------------------------------------------------------------

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def _kubectl_minor() -> int:
    """The client's minor version (Debian's kubernetes-client is 1.20; newer ones are 1.27+)."""
    if KUBECTL is None:
        return 0
    out = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True,
                         text=True, timeout=60).stdout
    try:
        minor = json.loads(out)["clientVersion"]["minor"]
    except (ValueError, KeyError):
        return 0
    return int("".join(ch for ch in minor if ch.isdigit()) or 0)


KUBECTL_MINOR = _kubectl_minor()


def needs_kubectl_at_least(minor: int, feature: str) -> pytest.MarkDecorator:
    """Skip where the installed kubectl predates ``feature`` (e.g. Debian's 1.20 client)."""
    return pytest.mark.skipif(minor > KUBECTL_MINOR,
                              reason=f"kubectl 1.{KUBECTL_MINOR} predates {feature}")


class HasKubeconfig(Protocol):
    @property
    def kubeconfig_path(self) -> Path: ...


def kubectl_argv(config: HasKubeconfig | Path, *args: str,
                 context: str | None = None) -> list[str]:
    """kubectl's argv for a kubeconfig file (or a cluster's)."""
    path = config if isinstance(config, Path) else config.kubeconfig_path
    cmd = [str(KUBECTL), "--kubeconfig", str(path)]
    if context:
        cmd += ["--context", context]
    return [*cmd, *args]


def kubectl(config: HasKubeconfig | Path, *args: str, check: bool = True,
            context: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run kubectl to the end; with ``check`` it must succeed."""
    result = subprocess.run(kubectl_argv(config, *args, context=context), capture_output=True,
                            text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@contextmanager
def kubectl_port_forward(config: HasKubeconfig | Path, target: str, remote: int, *,
                         namespace: str | None = None, websockets: bool | None = None
                         ) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """``kubectl port-forward`` from a free port of 127.0.0.1; yields (local port, process).

    ``websockets`` picks kubectl's transport (None: its default)."""
    env = dict(os.environ)
    if websockets is not None:
        env["KUBECTL_PORT_FORWARD_WEBSOCKETS"] = "true" if websockets else "false"
    args = ["-n", namespace] if namespace else []
    proc = subprocess.Popen(
        kubectl_argv(config, "port-forward", *args, "--address", "127.0.0.1", target,
                     f":{remote}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
        assert match, f"kubectl said {line!r}, stderr: {proc.stderr.read() if proc.stderr else ''}"
        yield int(match.group(1)), proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()


# -- privileged runs -------------------------------------------------------------------------


def needs_root(*tools: str) -> pytest.MarkDecorator:
    """Skip unless running as root with every one of ``tools`` on the PATH."""
    missing = os.geteuid() != 0 or not all(shutil.which(t) for t in tools)
    return pytest.mark.skipif(missing, reason=" and ".join(["needs root", *tools]))


def python_in_unshare(flags: list[str], script: str, *args: str, timeout: float = 60) -> Any:
    """Run a Python ``script`` in new namespaces (``unshare`` ``flags``) and decode the JSON it
    prints; skips the test where unshare is not permitted."""
    out = subprocess.run(["unshare", *flags, sys.executable, "-c", script, *args],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0 and "unshare failed" in out.stderr:
        pytest.skip("unshare not permitted here")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def run_as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as the unprivileged user nobody (no capabilities), from /."""
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=30, cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


# -- addresses -------------------------------------------------------------------------------

LOCK_DIR = Path(tempfile.gettempdir()) / "kubefwd-test-blocks"


@contextmanager
def locked_block(kind: str, candidates: Iterable[int]) -> Iterator[int]:
    """The first of ``candidates`` (say, third octets) that no other test run on this machine
    holds; it stays held, by a lock file, until the block ends."""
    if not LOCK_DIR.exists():
        LOCK_DIR.mkdir(exist_ok=True)
        os.chmod(LOCK_DIR, 0o1777)
    for n in candidates:
        with open(LOCK_DIR / f"{kind}-{n}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            yield n
            return
    pytest.fail(f"every {kind} block of test addresses is held by another run")


# -- files -----------------------------------------------------------------------------------


def hosts_file(directory: Path, content: bytes, name: str = "hosts") -> Path:
    """A hosts file holding exactly ``content``."""
    path = directory / name
    path.write_bytes(content)
    return path


# -- manifests (YAML text, one document each; join with ``"---"``) ---------------------------


def manifests(*docs: str) -> str:
    return "---".join(docs)


def namespace(name: str) -> str:
    return f"\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"


def workload(name: str, ns: str, *, kind: str = "Deployment", replicas: int = 1,
             image: str = "sim/http", ports: str = "[{name: http, containerPort: 8080}]",
             container: str | None = None) -> str:
    """A Deployment (or StatefulSet, governed by the service of its name) whose pods carry
    ``app: <name>`` and run one container."""
    governing = f"  serviceName: {name}\n" if kind == "StatefulSet" else ""
    return (
        f"\napiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\n"
        f"spec:\n{governing}  replicas: {replicas}\n"
        f"  selector: {{matchLabels: {{app: {name}}}}}\n"
        f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
        f"      containers: [{{name: {container or name}, image: {image}, ports: {ports}}}]\n"
    )


def service(name: str, ns: str, *, ports: str = "[{name: http, port: 80, targetPort: http}]",
            selector: bool = True, headless: bool = False, labels: str = "") -> str:
    """A Service selecting ``app: <name>`` (unless ``selector`` is false)."""
    meta = f"{{name: {name}, namespace: {ns}" + (f", labels: {labels}" if labels else "") + "}"
    spec = "  clusterIP: None\n" if headless else ""
    spec += f"  selector: {{app: {name}}}\n" if selector else ""
    return (f"\napiVersion: v1\nkind: Service\nmetadata: {meta}\nspec:\n{spec}"
            f"  ports: {ports}\n")


def web_and_headless_db(ns: str, *, web: str = "web", web_replicas: int = 1, db: str = "db",
                        db_port: int = 5432) -> str:
    """A namespace with an HTTP Deployment behind a Service and a two-pod echo StatefulSet
    behind a headless Service."""
    return manifests(
        namespace(ns),
        workload(web, ns, replicas=web_replicas),
        service(web, ns),
        workload(db, ns, kind="StatefulSet", replicas=2, image="sim/echo",
                 ports=f"[{{containerPort: {db_port}}}]"),
        service(db, ns, ports=f"[{{port: {db_port}}}]", headless=True),
    )
