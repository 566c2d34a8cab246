"""The pod runtime of the simulated cluster: pod IPs, lifecycle, built-in servers, processes.

Each pod gets its own loopback IP from ``127.1.0.0/20`` (kubefwd allocates from ``127.1.27.0``
up, so the two never meet). A container without a command gets a built-in server on each
``containerPort`` (see ``podservers``); a container with one runs as a local process in its
own process group. Status changes go to ``on_status`` as full pod ``.status`` dicts, in
order, from the kubelet's one scheduler thread and never while a kubelet lock is held.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import heapq
import ipaddress
import itertools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubefwd.sim.podservers import AcceptHub, PodServers, server_kind
from kubefwd.threads import StoppableThread

log = logging.getLogger(__name__)

StatusCallback = Callable[[str, str, dict[str, Any]], None]

# Like a kubelet's first crash-loop back-off step, kept short so tests and demos move on.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
# A container that ran this long before dying starts its back-off from the beginning again.
BACKOFF_RESET_AFTER = 10.0
# SIGTERM first, SIGKILL after terminationGracePeriodSeconds, but never more than this: the
# sim's pods are stopped on the API server's thread and in test teardown.
STOP_GRACE = 2.0
# Readiness of a command container: its declared ports are probed until they accept.
PROBE_FIRST = 0.01
PROBE_MAX_INTERVAL = 0.25
PROBE_DEADLINE = 120.0
PROCESS_POLL = 0.1
HOST_IP = "127.0.0.1"


def timestamp() -> str:
    """Now, in the RFC 3339 form Kubernetes uses for times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class IpPool:
    """Pod IPs from a range, handed out round-robin so a freed IP is not reused at once.

    Several simulated clusters may run on one machine (parallel tests, a demo next to a test
    run), each with its own pool over the same range: every pool starts at a random place and
    skips addresses where one of the pod's ports is already taken.
    """

    def __init__(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr)
        # Skip the .0 and .255 of every /24 to keep the addresses plain.
        self._addresses = [str(a) for a in net if a.packed[-1] not in (0, 255)]
        self._used: set[str] = set()
        self._next = random.randrange(len(self._addresses)) if self._addresses else 0

    def allocate(self, ports: Iterable[int] = ()) -> str:
        ports = list(ports)
        for _ in range(len(self._addresses)):
            ip = self._addresses[self._next]
            self._next = (self._next + 1) % len(self._addresses)
            if ip not in self._used and _bindable(ip, ports):
                self._used.add(ip)
                return ip
        raise RuntimeError("the pod IP range is exhausted")

    def release(self, ip: str) -> None:
        self._used.discard(ip)

    @property
    def in_use(self) -> int:
        return len(self._used)


def _bindable(ip: str, ports: list[int]) -> bool:
    """Whether nothing else on this machine listens on ``ip`` at any of ``ports``."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return False
    return True


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown references stay as they are, ``$$`` is ``$``."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end >= 0:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(ch)
        i += 1
    return "".join(out)


def field_value(pod: Mapping[str, Any], ip: str, path: str) -> str:
    """The value of a ``valueFrom.fieldRef.fieldPath`` for a pod with IP ``ip``."""
    meta = pod.get("metadata") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "status.podIP": ip,
        "status.podIPs": ip,
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", "") or "",
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "") or "",
    }
    if path in simple:
        return str(simple[path])
    for prefix, key in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(key) or {}).get(path[len(prefix) + 2:-2], ""))
    return ""


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], ip: str) -> dict[str, str]:
    """The variables ``$(VAR)`` expands from: POD_IP/POD_NAME/POD_NAMESPACE, then ``env``."""
    meta = pod.get("metadata") or {}
    env = {"POD_IP": ip, "POD_NAME": meta.get("name", ""),
           "POD_NAMESPACE": meta.get("namespace", "")}
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            continue
        if "value" in item:
            env[name] = expand(str(item.get("value") or ""), env)
        else:
            ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
            env[name] = field_value(pod, ip, ref)
    return env


def _tcp_ports(container: Mapping[str, Any]) -> list[int]:
    ports = []
    for p in container.get("ports") or []:
        if (p.get("protocol") or "TCP") == "TCP" and isinstance(p.get("containerPort"), int):
            ports.append(p["containerPort"])
    return ports


@dataclass(eq=False)
class _Container:
    name: str
    image: str
    spec: dict[str, Any]
    ports: list[int]
    command: list[str] | None
    state: str = "waiting"          # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str = ""
    finished_at: str = ""
    exit_code: int = 0
    ready: bool = False
    ever_started: bool = False
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = None
    servers: PodServers | None = None
    proc: subprocess.Popen[bytes] | None = None
    listening: set[int] = field(default_factory=set)
    generation: int = 0             # bumped on every start and end; stale tasks check it
    crashes: int = 0                # consecutive short runs, for the back-off
    run_since: float = 0.0


@dataclass(eq=False)
class _Pod:
    namespace: str
    name: str
    uid: str
    obj: dict[str, Any]
    ip: str
    restart_policy: str
    containers: list[_Container]
    scheduled_at: str
    grace: float = 2.0
    start_time: str = ""
    forced_unready: bool = False
    stopped: bool = False
    report_pending: bool = False
    last_reported: dict[str, Any] | None = None
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    op_lock: threading.Lock = field(default_factory=threading.Lock)
    tracked: weakref.WeakSet[socket.socket] = field(default_factory=weakref.WeakSet)


class _Scheduler(StoppableThread):
    """Runs callables at given times, one at a time, in order."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify()

    def run_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self.stopping.is_set():
                        return
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            fn = heapq.heappop(self._heap)[2]
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
            try:
                fn()
            except Exception:
                log.exception("kubelet task failed")


class Kubelet:
    """Runs the pods of the simulated cluster on this machine."""

    def __init__(self, *, on_status: StatusCallback, start_delay: float = 0.0,
                 ip_range: str = "127.1.0.0/20") -> None:
        self._on_status = on_status
        self._start_delay = start_delay
        self._lock = threading.Lock()
        self._ips = IpPool(ip_range)
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._closed = False
        self._proc_watch = False
        self._logdir: Path | None = None
        self._hub = AcceptHub("sim-pod-accept")
        self._sched = _Scheduler("sim-kubelet")
        self._hub.start()
        self._sched.start()

    # -- the contract -------------------------------------------------------------------

    def start_pod(self, pod: dict[str, Any]) -> None:
        """Give the pod an IP, report it Pending, then start its containers."""
        meta = pod.get("metadata") or {}
        ns, name = meta.get("namespace") or "default", meta["name"]
        uid = meta.get("uid", "")
        with self._lock:
            old = self._pods.get((ns, name))
        if old is not None:
            if old.uid == uid:
                return
            self.stop_pod(ns, name)
        spec = pod.get("spec") or {}
        grace = spec.get("terminationGracePeriodSeconds")
        grace = min(float(grace), STOP_GRACE) if isinstance(grace, (int, float)) else STOP_GRACE
        containers = []
        for c in spec.get("containers") or []:
            command = [str(x) for x in c.get("command") or []]
            if command:
                command += [str(x) for x in c.get("args") or []]
            containers.append(_Container(name=c.get("name", ""), image=c.get("image", ""),
                                         spec=c, ports=_tcp_ports(c), command=command or None))
        with self._lock:
            if self._closed:
                raise RuntimeError("the kubelet is closed")
            record = _Pod(namespace=ns, name=name, uid=uid, obj=copy.deepcopy(pod),
                          ip=self._ips.allocate(p for c in containers for p in c.ports),
                          restart_policy=spec.get("restartPolicy") or "Always",
                          containers=containers, scheduled_at=timestamp(), grace=grace)
            self._pods[(ns, name)] = record
            self._want_report(record)
        self._sched.call_later(self._start_delay, functools.partial(self._start_all, record))

    def stop_pod(self, namespace: str, name: str) -> None:
        """The pod is deleted: close its connections, stop its containers, free its IP."""
        with self._lock:
            pod = self._pods.pop((namespace, name), None)
            if pod is None:
                return
            pod.stopped = True
            tracked = list(pod.tracked)
        for sock in tracked:
            _shutdown(sock)
        with pod.op_lock:
            servers, procs = self._detach(pod, terminated=False)
            for s in servers:
                s.stop()
            _terminate(procs, pod.grace)
        with self._lock:
            self._ips.release(pod.ip)

    def kill_pod(self, namespace: str, name: str) -> None:
        """The containers die: connections close, the pod turns not-Ready and restarts."""
        pod = self._get(namespace, name)
        if pod is None:
            return
        with pod.op_lock:
            with self._lock:
                if pod.stopped:
                    return
                tracked = list(pod.tracked)
            servers, procs = self._detach(pod, terminated=True)
            for s in servers:
                s.stop()
            for proc in procs:
                _reap(proc)
            for sock in tracked:
                _shutdown(sock)
            with self._lock:
                restarts = [(c, c.generation) for c in pod.containers if c.state == "terminated"]
                self._want_report(pod)
        for c, gen in restarts:
            # A kill is fault injection: restart after the first back-off step, every time.
            self._sched.call_later(RESTART_DELAY, functools.partial(self._restart, pod, c, gen))

    def set_ready(self, namespace: str, name: str, ready: bool) -> None:
        """Flip the pod's readiness (as a failing or passing readiness probe would)."""
        with self._lock:
            pod = self._pods.get((namespace, name))
            if pod is None:
                return
            pod.forced_unready = not ready
            self._want_report(pod)

    def pod_ip(self, namespace: str, name: str) -> str | None:
        with self._lock:
            pod = self._pods.get((namespace, name))
            return pod.ip if pod else None

    def listening_ports(self, namespace: str, name: str) -> set[int]:
        """The ports of the pod known to accept connections right now."""
        with self._lock:
            pod = self._pods.get((namespace, name))
            if pod is None:
                return set()
            return {p for c in pod.containers if c.state == "running" for p in c.listening}

    @contextlib.contextmanager
    def track(self, namespace: str, name: str, sock: socket.socket) -> Iterator[None]:
        """Register a connection to the pod so that deleting or killing the pod ends it."""
        with self._lock:
            pod = self._pods.get((namespace, name))
            alive = pod is not None and not pod.stopped
            if pod is not None and alive:
                pod.tracked.add(sock)
        if not alive:
            _shutdown(sock)
        try:
            yield
        finally:
            if pod is not None:
                with self._lock:
                    pod.tracked.discard(sock)

    def connect(self, namespace: str, name: str, port: int,
                timeout: float = 5.0) -> socket.socket:
        """Open a TCP connection to the pod's port, tracked until it is closed.

        Raises ConnectionRefusedError when the pod is unknown or nothing listens there.
        """
        ip = self.pod_ip(namespace, name)
        if ip is None:
            raise ConnectionRefusedError(f"pod {namespace}/{name} is not running")
        sock = socket.create_connection((ip, port), timeout=timeout)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            pod = self._pods.get((namespace, name))
            alive = pod is not None and not pod.stopped and pod.ip == ip
            if pod is not None and alive:
                pod.tracked.add(sock)  # weak: forgotten once the socket is gone
        if not alive:
            sock.close()
            raise ConnectionRefusedError(f"pod {namespace}/{name} went away")
        return sock

    def close(self) -> None:
        """Stop every pod, join every thread, close every listener."""
        with self._lock:
            self._closed = True
            keys = list(self._pods)
        for ns, name in keys:
            self.stop_pod(ns, name)
        self._sched.stop_and_join()
        self._hub.stop_and_join()
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- extras for the sim and tests ------------------------------------------------------

    def pods(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._pods)

    def log_path(self, namespace: str, name: str, container: str | None = None) -> Path | None:
        """Where a command container's output goes (None for built-in servers)."""
        with self._lock:
            pod = self._pods.get((namespace, name))
            if pod is None or self._logdir is None:
                return None
            for c in pod.containers:
                if c.command and (container is None or c.name == container):
                    return self._logdir / f"{namespace}_{name}_{c.name}.log"
        return None

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        path = self.log_path(namespace, name, container)
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    # -- lifecycle --------------------------------------------------------------------------

    def _get(self, namespace: str, name: str) -> _Pod | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def _start_all(self, pod: _Pod) -> None:
        for c in pod.containers:
            with self._lock:
                gen = c.generation
            self._start_container(pod, c, gen)

    def _start_container(self, pod: _Pod, c: _Container, gen: int) -> None:
        with pod.op_lock:
            with self._lock:
                if pod.stopped or c.generation != gen or c.state == "running":
                    return
                c.generation += 1
                gen = c.generation
            if c.command is None:
                self._start_servers(pod, c)
            else:
                self._start_process(pod, c, gen)
            with self._lock:
                if not pod.start_time:
                    pod.start_time = timestamp()
                self._want_report(pod)
                failed_gen = c.generation if c.state == "terminated" else None
        if failed_gen is not None:
            self._maybe_restart(pod, c, failed_gen)

    def _start_servers(self, pod: _Pod, c: _Container) -> None:
        servers = PodServers(self._hub, kind=server_kind(c.image), ip=pod.ip, ports=c.ports,
                             pod_name=pod.name, label=f"{pod.namespace}/{pod.name}")
        try:
            servers.start()
        except OSError as e:
            log.warning("pod %s/%s: cannot listen: %s", pod.namespace, pod.name, e)
            with self._lock:
                self._set_terminated(c, 1, "Error", str(e))
            return
        with self._lock:
            self._set_running(c)
            c.servers = servers
            c.listening = set(servers.ports)
            c.ready = True

    def _start_process(self, pod: _Pod, c: _Container, gen: int) -> None:
        assert c.command is not None
        env = container_env(pod.obj, c.spec, pod.ip)
        argv = [expand(arg, env) for arg in c.command]
        logdir = self._ensure_logdir()
        workdir = c.spec.get("workingDir")
        cwd = workdir if workdir and os.path.isdir(workdir) else str(logdir)
        proc_env = {**os.environ, **env, "HOSTNAME": pod.name}
        try:
            with open(logdir / f"{pod.namespace}_{pod.name}_{c.name}.log", "ab") as out:
                proc = subprocess.Popen(argv, env=proc_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        except OSError as e:
            log.warning("pod %s/%s: cannot run %s: %s", pod.namespace, pod.name, argv[0], e)
            with self._lock:
                self._set_terminated(c, 128, "StartError", str(e))
            return
        with self._lock:
            self._set_running(c)
            c.proc = proc
            c.ready = not c.ports
            if not self._proc_watch:
                self._proc_watch = True
                self._sched.call_later(PROCESS_POLL, self._watch_processes)
        if c.ports:
            deadline = time.monotonic() + PROBE_DEADLINE
            self._sched.call_later(PROBE_FIRST, functools.partial(
                self._probe, pod, c, gen, deadline, PROBE_FIRST))

    def _probe(self, pod: _Pod, c: _Container, gen: int, deadline: float,
               interval: float) -> None:
        with self._lock:
            if pod.stopped or c.generation != gen or c.state != "running":
                return
            pending = [p for p in c.ports if p not in c.listening]
        opened = set()
        for port in pending:
            try:
                socket.create_connection((pod.ip, port), timeout=0.5).close()
                opened.add(port)
            except OSError:
                pass
        with self._lock:
            if pod.stopped or c.generation != gen or c.state != "running":
                return
            c.listening |= opened
            if c.listening >= set(c.ports):
                c.ready = True
                self._want_report(pod)
                return
        if time.monotonic() > deadline:
            log.warning("pod %s/%s: container %s never listened on %s", pod.namespace,
                        pod.name, c.name, sorted(set(c.ports) - c.listening))
            return
        nxt = min(interval * 2, PROBE_MAX_INTERVAL)
        self._sched.call_later(interval, functools.partial(
            self._probe, pod, c, gen, deadline, nxt))

    def _watch_processes(self) -> None:
        with self._lock:
            running = [(pod, c, c.proc, c.generation) for pod in self._pods.values()
                       for c in pod.containers if c.proc is not None and not pod.stopped]
            if not running:
                self._proc_watch = False
        for pod, c, proc, gen in running:
            assert proc is not None
            if _exited(proc):
                self._on_exit(pod, c, gen)
        if running:
            self._sched.call_later(PROCESS_POLL, self._watch_processes)

    def _on_exit(self, pod: _Pod, c: _Container, gen: int) -> None:
        with pod.op_lock:
            with self._lock:
                if pod.stopped or c.generation != gen or c.proc is None:
                    return
                proc, c.proc = c.proc, None
            code = _reap(proc)
            with self._lock:
                self._set_terminated(c, code, "Completed" if code == 0 else "Error", "")
                gen = c.generation
                self._want_report(pod)
        log.info("pod %s/%s: container %s exited with %s", pod.namespace, pod.name, c.name, code)
        self._maybe_restart(pod, c, gen)

    def _maybe_restart(self, pod: _Pod, c: _Container, gen: int) -> None:
        with self._lock:
            policy = pod.restart_policy
            if policy == "Never" or (policy == "OnFailure" and c.exit_code == 0):
                return
            ran = time.monotonic() - c.run_since
            c.crashes = 0 if ran > BACKOFF_RESET_AFTER else c.crashes + 1
            delay = min(RESTART_DELAY * 2 ** max(c.crashes - 1, 0), MAX_RESTART_DELAY)
        self._sched.call_later(delay, functools.partial(self._restart, pod, c, gen))

    def _restart(self, pod: _Pod, c: _Container, gen: int) -> None:
        with self._lock:
            if pod.stopped or c.generation != gen or c.state != "terminated":
                return
            c.restart_count += 1
        self._start_container(pod, c, gen)

    def _detach(self, pod: _Pod, *, terminated: bool) -> tuple[list[PodServers],
                                                               list[subprocess.Popen[bytes]]]:
        """Take the running servers and processes out of the pod (caller holds op_lock)."""
        servers, procs = [], []
        with self._lock:
            for c in pod.containers:
                if c.servers is not None:
                    servers.append(c.servers)
                if c.proc is not None:
                    procs.append(c.proc)
                was_running = c.state == "running"
                c.servers, c.proc = None, None
                if was_running:
                    c.generation += 1
                    if terminated:
                        self._set_terminated(c, 137, "Error", "")
        return servers, procs

    def _set_running(self, c: _Container) -> None:
        if c.state == "terminated" and c.ever_started:
            c.last_terminated = self._terminated_state(c)
        c.state, c.reason, c.message = "running", "", ""
        c.started_at = timestamp()
        c.ever_started = True
        c.run_since = time.monotonic()
        c.listening = set()
        c.ready = False

    def _set_terminated(self, c: _Container, code: int, reason: str, message: str) -> None:
        c.state, c.exit_code, c.reason, c.message = "terminated", code, reason, message
        c.finished_at = timestamp()
        c.ready = False
        c.listening = set()
        c.generation += 1

    # -- status -----------------------------------------------------------------------------

    def _want_report(self, pod: _Pod) -> None:
        """Schedule one status report for the pod (caller holds ``_lock``)."""
        if not pod.report_pending:
            pod.report_pending = True
            self._sched.call_later(0, functools.partial(self._report, pod))

    def _report(self, pod: _Pod) -> None:
        with self._lock:
            pod.report_pending = False
            if pod.stopped:
                return
            status = self._status(pod)
            if status == pod.last_reported:
                return
            pod.last_reported = status
            out = copy.deepcopy(status)
        try:
            self._on_status(pod.namespace, pod.name, out)
        except Exception:
            log.exception("status report for pod %s/%s failed", pod.namespace, pod.name)

    def _terminated_state(self, c: _Container) -> dict[str, Any]:
        term: dict[str, Any] = {"exitCode": c.exit_code, "reason": c.reason,
                                "startedAt": c.started_at or None,
                                "finishedAt": c.finished_at}
        if c.message:
            term["message"] = c.message
        return {"terminated": term}

    def _status(self, pod: _Pod) -> dict[str, Any]:
        containers_ready = (bool(pod.containers) and not pod.forced_unready
                            and all(c.ready for c in pod.containers))
        done = pod.restart_policy != "Always" and pod.containers and all(
            c.state == "terminated" and (pod.restart_policy == "Never" or c.exit_code == 0)
            for c in pod.containers)
        if done:
            phase = "Succeeded" if all(c.exit_code == 0 for c in pod.containers) else "Failed"
            containers_ready = False
        elif any(c.ever_started for c in pod.containers):
            phase = "Running"
        else:
            phase = "Pending"
        now = timestamp()
        wanted = [("PodReadyToStartContainers", True), ("Initialized", True),
                  ("Ready", containers_ready), ("ContainersReady", containers_ready),
                  ("PodScheduled", True)]
        conditions = []
        for ctype, ok in wanted:
            value = "True" if ok else "False"
            previous = pod.conditions.get(ctype)
            if previous is None or previous[0] != value:
                pod.conditions[ctype] = (value, now if previous else pod.scheduled_at)
            cond: dict[str, Any] = {"type": ctype, "status": value, "lastProbeTime": None,
                                    "lastTransitionTime": pod.conditions[ctype][1]}
            if not ok:
                cond["reason"] = "ContainersNotReady"
            conditions.append(cond)
        statuses = []
        for c in pod.containers:
            if c.state == "running":
                state: dict[str, Any] = {"running": {"startedAt": c.started_at}}
            elif c.state == "terminated":
                state = self._terminated_state(c)
            else:
                state = {"waiting": {"reason": c.reason or "ContainerCreating"}}
            entry: dict[str, Any] = {
                "name": c.name, "image": c.image, "imageID": f"sim://{c.image}",
                "ready": c.ready and not pod.forced_unready, "started": c.state == "running",
                "restartCount": c.restart_count, "state": state,
                "lastState": c.last_terminated or {}}
            if c.ever_started:
                entry["containerID"] = f"sim://{pod.uid or pod.name}/{c.name}/{c.restart_count}"
            statuses.append(entry)
        status: dict[str, Any] = {
            "phase": phase, "conditions": conditions, "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}], "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
            "containerStatuses": statuses, "qosClass": "BestEffort"}
        if pod.start_time:
            status["startTime"] = pod.start_time
        return status

    def _ensure_logdir(self) -> Path:
        with self._lock:
            if self._logdir is None:
                self._logdir = Path(tempfile.mkdtemp(prefix="kubefwd-sim-pods-"))
            return self._logdir


def _shutdown(sock: socket.socket) -> None:
    """End a connection now, even if another thread is blocked on it.

    Only shut down, not closed: the thread that owns the socket closes it, so its descriptor
    number cannot be reused under that thread's feet.
    """
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the container's process group (its leader is alive or an unreaped zombie)."""
    if proc.returncode is not None:
        return  # reaped: the group id may belong to someone else by now
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once the process has exited; it stays unreaped so its group id stays ours."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Kill whatever is left in the process group, then reap the leader; its exit code."""
    _killpg(proc, signal.SIGKILL)
    return proc.wait()


def _terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM the process groups, SIGKILL what is left after ``grace``, reap them all."""
    for proc in procs:
        _killpg(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pause = 0.001
    while not all(_exited(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(pause)  # a poll with a deadline: there is no event for a child's exit
        pause = min(pause * 2, 0.05)
    for proc in procs:
        _reap(proc)
