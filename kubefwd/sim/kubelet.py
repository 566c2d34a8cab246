"""The pod runtime of the simulated cluster: pod IPs, lifecycle, built-in servers, processes.

Each pod gets its own loopback IP from ``127.1.0.0/20`` (kubefwd allocates from ``127.1.27.0``
up, so the two never meet). A container without a command gets a built-in server on each
``containerPort`` (see ``podservers``); a container with one runs as a local process in its
own process group. Status changes go to ``on_status`` as full pod ``.status`` dicts, in
order, from the kubelet's one scheduler thread and never while a kubelet lock is held.

This module owns the lifecycle (start, kill, restart with back-off, stop) and its threads;
the IP choice is in ``podips``, the records and the status they make in ``podstatus``, and
how a command runs as a process group in ``processes``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import heapq
import itertools
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubefwd.sim.podips import IpPool
from kubefwd.sim.podlogs import FileLog, LogBook
from kubefwd.sim.podservers import AcceptHub, PodServers, server_kind
from kubefwd.sim.podstatus import (
    ContainerRecord,
    PodRecord,
    pod_status,
    set_running,
    set_terminated,
    tcp_ports,
    timestamp,
)
from kubefwd.sim.processes import container_env, exited, expand, reap, terminate
from kubefwd.support.sockets import hard_shutdown
from kubefwd.support.threads import StoppableThread

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
        self._pods: dict[tuple[str, str], PodRecord] = {}
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
            containers.append(ContainerRecord(name=c.get("name", ""), image=c.get("image", ""),
                                         spec=c, ports=tcp_ports(c), command=command or None))
        with self._lock:
            if self._closed:
                raise RuntimeError("the kubelet is closed")
            record = PodRecord(namespace=ns, name=name, uid=uid, obj=copy.deepcopy(pod),
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
            hard_shutdown(sock)
        with pod.op_lock:
            servers, procs = self._detach(pod, terminated=False)
            for s in servers:
                s.stop()
            terminate(procs, pod.grace)
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
                reap(proc)
            for sock in tracked:
                hard_shutdown(sock)
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
            hard_shutdown(sock)
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

    def log_source(self, namespace: str, name: str,
                   container: str | None = None) -> LogBook | FileLog | None:
        """Where a container's log is read from (None: no such pod or container): the
        output file of a command container, the log book of a built-in server."""
        with self._lock:
            pod = self._pods.get((namespace, name))
            if pod is None:
                return None
            chosen = [c for c in pod.containers if container is None or c.name == container]
            if not chosen:
                return None
            c = chosen[0]
            if c.command is None:
                return c.book
        return FileLog(self.log_path(namespace, name, c.name))

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        source = self.log_source(namespace, name, container)
        if source is None:
            return ""
        lines, _ = source.read()
        return "".join(f"{line}\n" for line in lines)

    # -- lifecycle --------------------------------------------------------------------------

    def _get(self, namespace: str, name: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def _start_all(self, pod: PodRecord) -> None:
        for c in pod.containers:
            with self._lock:
                gen = c.generation
            self._start_container(pod, c, gen)

    def _start_container(self, pod: PodRecord, c: ContainerRecord, gen: int) -> None:
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

    def _start_servers(self, pod: PodRecord, c: ContainerRecord) -> None:
        servers = PodServers(self._hub, kind=server_kind(c.image), ip=pod.ip, ports=c.ports,
                             pod_name=pod.name, label=f"{pod.namespace}/{pod.name}",
                             log_line=c.book.write)
        try:
            servers.start()
        except OSError as e:
            log.warning("pod %s/%s: cannot listen: %s", pod.namespace, pod.name, e)
            with self._lock:
                set_terminated(c, 1, "Error", str(e))
            return
        with self._lock:
            set_running(c)
            c.servers = servers
            c.listening = set(servers.ports)
            c.ready = True

    def _start_process(self, pod: PodRecord, c: ContainerRecord, gen: int) -> None:
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
                set_terminated(c, 128, "StartError", str(e))
            return
        with self._lock:
            set_running(c)
            c.proc = proc
            c.ready = not c.ports
            if not self._proc_watch:
                self._proc_watch = True
                self._sched.call_later(PROCESS_POLL, self._watch_processes)
        if c.ports:
            deadline = time.monotonic() + PROBE_DEADLINE
            self._sched.call_later(PROBE_FIRST, functools.partial(
                self._probe, pod, c, gen, deadline, PROBE_FIRST))

    def _probe(self, pod: PodRecord, c: ContainerRecord, gen: int, deadline: float,
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
            if exited(proc):
                self._on_exit(pod, c, gen)
        if running:
            self._sched.call_later(PROCESS_POLL, self._watch_processes)

    def _on_exit(self, pod: PodRecord, c: ContainerRecord, gen: int) -> None:
        with pod.op_lock:
            with self._lock:
                if pod.stopped or c.generation != gen or c.proc is None:
                    return
                proc, c.proc = c.proc, None
            code = reap(proc)
            with self._lock:
                set_terminated(c, code, "Completed" if code == 0 else "Error", "")
                gen = c.generation
                self._want_report(pod)
        log.info("pod %s/%s: container %s exited with %s", pod.namespace, pod.name, c.name, code)
        self._maybe_restart(pod, c, gen)

    def _maybe_restart(self, pod: PodRecord, c: ContainerRecord, gen: int) -> None:
        with self._lock:
            policy = pod.restart_policy
            if policy == "Never" or (policy == "OnFailure" and c.exit_code == 0):
                return
            ran = time.monotonic() - c.run_since
            c.crashes = 0 if ran > BACKOFF_RESET_AFTER else c.crashes + 1
            delay = min(RESTART_DELAY * 2 ** max(c.crashes - 1, 0), MAX_RESTART_DELAY)
        self._sched.call_later(delay, functools.partial(self._restart, pod, c, gen))

    def _restart(self, pod: PodRecord, c: ContainerRecord, gen: int) -> None:
        with self._lock:
            if pod.stopped or c.generation != gen or c.state != "terminated":
                return
            c.restart_count += 1
        self._start_container(pod, c, gen)

    def _detach(self, pod: PodRecord, *, terminated: bool) -> tuple[list[PodServers],
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
                        set_terminated(c, 137, "Error", "")
        return servers, procs

    # -- status -----------------------------------------------------------------------------

    def _want_report(self, pod: PodRecord) -> None:
        """Schedule one status report for the pod (caller holds ``_lock``)."""
        if not pod.report_pending:
            pod.report_pending = True
            self._sched.call_later(0, functools.partial(self._report, pod))

    def _report(self, pod: PodRecord) -> None:
        with self._lock:
            pod.report_pending = False
            if pod.stopped:
                return
            status = pod_status(pod)
            if status == pod.last_reported:
                return
            pod.last_reported = status
            out = copy.deepcopy(status)
        try:
            self._on_status(pod.namespace, pod.name, out)
        except Exception:
            log.exception("status report for pod %s/%s failed", pod.namespace, pod.name)

    def _ensure_logdir(self) -> Path:
        with self._lock:
            if self._logdir is None:
                self._logdir = Path(tempfile.mkdtemp(prefix="kubefwd-sim-pods-"))
            return self._logdir
