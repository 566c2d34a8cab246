"""``kubefwd demo``: the simulated cluster with a small app, forwarded, for a first look.

It starts the simulated cluster in this process (a web frontend and an API over HTTP, a real
Redis when ``redis-server`` is installed, an echo service otherwise, and a headless
StatefulSet of three), forwards its namespace with the TUI when a terminal is attached (the
plain log otherwise), writes the names to a temporary hosts file unless ``--hosts-path`` is
given (no root needed), sends a little traffic so the rates move, and with ``--churn`` (the
default) deletes a pod every so often so a reconnect can be watched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from kubefwd.errors import UsageError

NAMESPACE = "demo"
CHURN_EVERY = 20.0
TRAFFIC_EVERY = 1.0
LOW_PORTS = (80,)  # the demo's service ports below 1024
HIGH_PORT_OFFSET = 8000


def low_port_mappings() -> list[str]:
    """``-m`` mappings for the demo's ports this user may not bind (80 → 8080 without root),
    so the demo needs no root; none for root or where low ports are free to bind."""
    from kubefwd.system.privileges import has_net_bind_capability, unprivileged_port_start

    if os.geteuid() == 0 or has_net_bind_capability():
        return []
    start = unprivileged_port_start()
    return [f"{port}:{port + HIGH_PORT_OFFSET}" for port in LOW_PORTS if port < start]


def demo_manifests(redis: bool) -> str:
    def deploy(name: str, image: str, port: int, replicas: int = 1, extra: str = "") -> str:
        return f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {name}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: {name}
          image: {image}
{extra}          ports: [{{name: main, containerPort: {port}}}]
"""

    def svc(name: str, port: int, headless: bool = False) -> str:
        cluster_ip = "\n  clusterIP: None" if headless else ""
        return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:{cluster_ip}
  selector: {{app: {name}}}
  ports: [{{port: {port}, targetPort: main}}]
"""

    cache_extra = ('          command: [redis-server]\n'
                   '          args: [--bind, $(POD_IP), --port, "6379", --save, "", '
                   '--appendonly, "no"]\n'
                   '          env: [{name: POD_IP, valueFrom: {fieldRef: '
                   '{fieldPath: status.podIP}}}]\n') if redis else ""
    parts = [
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n",
        deploy("frontend", "sim/http", 8080, replicas=2), svc("frontend", 80),
        deploy("api", "sim/http", 8080), svc("api", 8080),
        deploy("cache", "redis:7" if redis else "sim/echo", 6379, extra=cache_extra),
        svc("cache", 6379),
        f"""---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {NAMESPACE}, labels: {{app: db}}}}
spec:
  serviceName: db
  replicas: 3
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
        - name: db
          image: sim/echo
          ports: [{{name: main, containerPort: 5432}}]
""", svc("db", 5432, headless=True),
    ]
    return "".join(parts)


class _Background(threading.Thread):
    """Traffic to the forwards, and pod deletions with --churn."""

    def __init__(self, app: Any, cluster: Any, churn: bool) -> None:
        super().__init__(name="kubefwd/demo", daemon=True)
        self.app, self.cluster, self.churn = app, cluster, churn
        self.stopping = threading.Event()

    def run(self) -> None:
        ticks = 0
        paths = ["/", "/healthz", "/bytes/20000", "/missing", "/"]
        while not self.stopping.wait(TRAFFIC_EVERY):
            ticks += 1
            for f in self.app.store.snapshot():
                if f.service in ("frontend", "api") and f.ip and f.ports:
                    url = f"http://{f.ip}:{f.ports[0]}{paths[ticks % len(paths)]}"
                    with contextlib.suppress(Exception):
                        urllib.request.urlopen(url, timeout=2).read()
            if self.churn and ticks % int(CHURN_EVERY / TRAFFIC_EVERY) == 0:
                pods = sorted(p["metadata"]["name"] for p in
                              self.cluster.store.list("Pod", NAMESPACE)[0]
                              if p["metadata"]["name"].startswith("api-"))
                if pods:
                    with contextlib.suppress(Exception):
                        self.cluster.delete_object("Pod", NAMESPACE, pods[0])


def demo_command(
    hosts_path: Annotated[Path | None, typer.Option(
        "--hosts-path", metavar="FILE",
        help="Hosts file to write (default: a temporary one, so no root is needed).")] = None,
    churn: Annotated[bool, typer.Option(
        "--churn/--no-churn", help="Delete a pod every 20 s to show a reconnect.")] = True,
    tui: Annotated[bool, typer.Option(
        "--tui/--plain", help="The live view (default when a terminal is attached).")] = True,
    theme: Annotated[str | None, typer.Option("--theme", metavar="auto|dark|light",
                                              help="Colours of the view.")] = None,
) -> int:
    """Forward a simulated cluster with a small app: see what kubefwd does, without a
    cluster and without root."""
    from kubefwd.commands.svc import build_options, has_terminal
    from kubefwd.ui.themes import theme_name

    try:
        theme_choice = theme_name(theme)
    except ValueError as exc:
        raise UsageError(f"--theme: {exc}") from None
    use_tui = tui and has_terminal()
    from kubefwd.sim.cluster import SimCluster

    workdir = Path(tempfile.mkdtemp(prefix="kubefwd-demo-"))
    own_hosts = hosts_path is None
    hosts = hosts_path or workdir / "hosts"
    if own_hosts:
        hosts.write_text("127.0.0.1 localhost\n")
    redis = shutil.which("redis-server") is not None
    out = sys.stdout
    try:
        with SimCluster(manifests=demo_manifests(redis), contexts=("demo",),
                        kubeconfig_path=workdir / "kubeconfig") as cluster:
            cluster.wait_ready(NAMESPACE, timeout=30)
            mappings = low_port_mappings()
            options = build_options(kubeconfig=str(workdir / "kubeconfig"),
                                    namespace=[NAMESPACE], hosts_path=hosts,
                                    auto_reconnect=True, mapping=mappings)
            options.make_backup = False
            out.write(
                f"kubefwd demo: a simulated cluster (namespace {NAMESPACE}: frontend, api, "
                f"cache ({'redis' if redis else 'echo'}), db: 3 pods, headless)\n"
                f"names go to {hosts}"
                + (" (a temporary file: the system resolver does not read it, so use the "
                   "addresses or curl --resolve)\n" if own_hosts else "\n")
                + "".join(f"port {m.replace(':', ' is forwarded on ')}: lower ports need "
                          "root\n" for m in mappings))
            out.flush()
            return _run(options, cluster, churn, use_tui, theme_choice, hosts, own_hosts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _hints(app: Any, own_hosts: bool) -> list[str]:
    lines = ["try:"]
    for f in app.store.snapshot():
        if f.service == "frontend" and f.ip and f.ports:
            port = f.ports[0]
            if own_hosts:
                lines.append(f"  curl --resolve frontend:{port}:{f.ip} http://frontend:{port}/")
            lines.append(f"  curl http://{f.ip}:{port}/              # frontend by address")
        if f.service == "cache" and f.ip:
            lines.append(f"  redis-cli -h {f.ip} -p 6379 PING     # or: nc {f.ip} 6379")
    lines.append("every 20 s a pod of api is deleted (--no-churn to stop it): watch it "
                 "reconnect; Ctrl-C (or q in the view) stops and cleans up")
    return lines


def _run(options: Any, cluster: Any, churn: bool, use_tui: bool, theme: str, hosts: Path,
         own_hosts: bool) -> int:
    from kubefwd.app.program import Kubefwd
    from kubefwd.events.bus import EventBus
    from kubefwd.events.types import LogLine
    from kubefwd.ui.text import TextLog

    bus = EventBus()
    app = Kubefwd(options, bus=bus)
    background = _Background(app, cluster, churn)
    logs = [TextLog(bus, sys.stdout, verbose=False)]
    view: Any = None
    if use_tui:
        from kubefwd.ui.tui.app import Tui

        view = Tui(app, theme=theme, freeze_gc=True)

    def front() -> None:
        for line in _hints(app, own_hosts):
            bus.publish(LogLine(level="info", message=line))
        background.start()
        if view is None:
            app._stop_signals.wait_for_stop()
            return
        logs[0].finish()
        try:
            view.run()
        finally:
            after = TextLog(bus, sys.stdout, verbose=False)
            after.start()
            logs.append(after)

    logs[0].start()
    try:
        return app.run(front)
    finally:
        background.stopping.set()
        if background.ident is not None:
            background.join(5)
        if view is not None:
            view.view.close()
        for log in logs:
            log.finish()
        bus.close()
