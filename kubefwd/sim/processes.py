"""Command containers as local processes: their environment and their process groups.

A container with a command runs on this machine in its own process group. This module owns
what that takes apart from scheduling: Kubernetes ``$(VAR)`` expansion, the variables a pod
exposes (``fieldRef``), and signalling, polling and reaping a process group without ever
signalling a group id that may have been reused. The kubelet decides when; this decides how.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

# The simulated node's address, as status.hostIP and the fieldRef that reads it.
HOST_IP = "127.0.0.1"


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


def killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the container's process group (its leader is alive or an unreaped zombie)."""
    if proc.returncode is not None:
        return  # reaped: the group id may belong to someone else by now
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once the process has exited; it stays unreaped so its group id stays ours."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def reap(proc: subprocess.Popen[bytes]) -> int:
    """Kill whatever is left in the process group, then reap the leader; its exit code."""
    killpg(proc, signal.SIGKILL)
    return proc.wait()


def terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM the process groups, SIGKILL what is left after ``grace``, reap them all."""
    for proc in procs:
        killpg(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pause = 0.001
    while not all(exited(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(pause)  # a poll with a deadline: there is no event for a child's exit
        pause = min(pause * 2, 0.05)
    for proc in procs:
        reap(proc)
