"""What the kubelet knows about each pod and container, and the ``.status`` it reports.

The records are plain state guarded by the kubelet's lock; the functions here only read and
update them (the caller holds that lock). Kept apart from the kubelet so the status a real
kubelet would report (phase, conditions and their transition times, container states,
restart counts) can be read in one place, without the threads that drive it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubefwd.sim.podlogs import LogBook
from kubefwd.sim.podservers import PodServers
from kubefwd.sim.processes import HOST_IP


def timestamp() -> str:
    """Now, in the RFC 3339 form Kubernetes uses for times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def tcp_ports(container: Mapping[str, Any]) -> list[int]:
    """The container's declared TCP ports."""
    ports = []
    for p in container.get("ports") or []:
        if (p.get("protocol") or "TCP") == "TCP" and isinstance(p.get("containerPort"), int):
            ports.append(p["containerPort"])
    return ports


@dataclass(eq=False)
class ContainerRecord:
    """One container of a pod: its spec, its current state and what runs it."""

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
    # What a built-in server logged (a line per request or connection), across restarts.
    book: LogBook = field(default_factory=LogBook)
    run_since: float = 0.0


@dataclass(eq=False)
class PodRecord:
    """One pod on this node: its IP, containers, conditions and tracked connections."""

    namespace: str
    name: str
    uid: str
    obj: dict[str, Any]
    ip: str
    restart_policy: str
    containers: list[ContainerRecord]
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


def set_running(c: ContainerRecord) -> None:
    """The container has just started (caller holds the kubelet's lock)."""
    if c.state == "terminated" and c.ever_started:
        c.last_terminated = terminated_state(c)
    c.state, c.reason, c.message = "running", "", ""
    c.started_at = timestamp()
    c.ever_started = True
    c.run_since = time.monotonic()
    c.listening = set()
    c.ready = False


def set_terminated(c: ContainerRecord, code: int, reason: str, message: str) -> None:
    """The container has ended (caller holds the kubelet's lock)."""
    c.state, c.exit_code, c.reason, c.message = "terminated", code, reason, message
    c.finished_at = timestamp()
    c.ready = False
    c.listening = set()
    c.generation += 1


def terminated_state(c: ContainerRecord) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": c.exit_code, "reason": c.reason,
                            "startedAt": c.started_at or None,
                            "finishedAt": c.finished_at}
    if c.message:
        term["message"] = c.message
    return {"terminated": term}


def pod_status(pod: PodRecord) -> dict[str, Any]:
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
            state = terminated_state(c)
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
