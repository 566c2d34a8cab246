"""Diagnostics in words: what is wrong with the forwards and what to do about it.

Pure functions over the state store's snapshot and rings; the API's ``/status`` and
``/analyze`` and the MCP tools answer with them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kubefwd.events.store import ErrorRecord, ForwardState, Reconnection

# Reconnections within this many seconds count as flapping.
FLAP_WINDOW = 300.0
FLAP_COUNT = 3


def _advice(message: str) -> str:
    text = message.lower()
    if "no ready pod" in text or "no pod" in text:
        return ("no pod of the service is ready: check its Deployment (kubectl get pods, "
                "kubectl describe pod) and its readiness probe")
    if "refused" in text or ("connect" in text and "pod" in text):
        return ("the pod does not listen on the target port: check the service's targetPort "
                "against the container's ports")
    if "401" in text or "403" in text or "forbidden" in text or "unauthorized" in text:
        return ("the API server refused the credentials: refresh them (kubectl auth "
                "can-i create pods/portforward)")
    if "address" in text and ("use" in text or "left" in text):
        return ("the loopback address is taken: stop the other listener or reserve another "
                "address with -r NAME:IP")
    if "timed out" in text or "unreachable" in text or "timeout" in text:
        return "the API server did not answer in time: check the network or VPN to the cluster"
    return "reconnect the service; if it fails again, look at the pod's logs and events"


def analyze(states: Sequence[ForwardState], errors: Sequence[ErrorRecord],
            reconnections: Sequence[Reconnection], *,
            now: float | None = None) -> list[dict[str, Any]]:
    """Problems, worst first: each with ``severity``, ``key``, ``problem`` and ``action``."""
    now = time.time() if now is None else now
    found: list[dict[str, Any]] = []
    for s in sorted(states, key=lambda s: s.key):
        if s.status == "error":
            found.append({"severity": "error", "key": s.key,
                          "problem": f"{s.key} is failing: {s.last_error or 'unknown error'}",
                          "action": _advice(s.last_error or "")})
        elif s.status in ("pending", "reconnecting"):
            found.append({"severity": "warning", "key": s.key,
                          "problem": f"{s.key} has no ready pod ({s.status})",
                          "action": _advice("no ready pod")})
    recent: dict[str, int] = {}
    for r in reconnections:
        if now - r.time <= FLAP_WINDOW:
            recent[r.key] = recent.get(r.key, 0) + 1
    for key, count in sorted(recent.items()):
        if count >= FLAP_COUNT:
            found.append({"severity": "warning", "key": key,
                          "problem": f"{key} moved to another pod {count} times in "
                                     f"{FLAP_WINDOW / 60:g} minutes",
                          "action": "its pods restart often: look at their logs and events "
                                    "(kubectl describe pod)"})
    seen = {f["key"] for f in found}
    for e in errors:
        if e.key is None and now - e.time <= FLAP_WINDOW and e.message not in seen:
            seen.add(e.message)
            found.append({"severity": "warning", "key": None, "problem": e.message,
                          "action": _advice(e.message)})
    return found


def summary(states: Sequence[ForwardState], problems: Sequence[dict[str, Any]]) -> str:
    """One sentence for people."""
    total = len(states)
    if total == 0:
        return ("nothing is forwarded: add a namespace (POST /api/v1/namespaces) or a "
                "service (POST /api/v1/services)")
    active = sum(1 for s in states if s.status == "active")
    failing = sum(1 for p in problems if p["severity"] == "error")
    if failing:
        return f"{failing} of {total} forwards are failing; {active} active"
    if active == total:
        return f"all {total} forwards are active"
    return f"{active} of {total} forwards are active; the others wait for a pod or a tunnel"
