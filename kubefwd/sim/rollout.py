"""A Deployment's rollout, one reconciliation at a time: pure arithmetic, no store.

When a Deployment's pod template changes (``kubectl apply`` of a new template, or ``kubectl
rollout restart``, which patches the template annotation ``kubectl.kubernetes.io/restartedAt``)
its pods are replaced as the deployment controller does it:

- ``RollingUpdate`` (the default): at most ``replicas + maxSurge`` pods exist at once and at
  least ``replicas - maxUnavailable`` are Ready; an old pod is deleted only once enough new
  ones are Ready. Percentages (both default to 25%) are taken of ``replicas``, maxSurge rounded
  up and maxUnavailable rounded down; when both come to 0, maxUnavailable is 1 so a rollout can
  still move.
- ``Recreate``: every old pod goes first; new ones are created once none is left.

``step`` is called on every change of the Deployment or one of its pods and says what to do
now; each pod created, deleted or turning Ready calls it again, so the rollout advances one
pod at a time as readiness allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

DEFAULT_SURGE = "25%"
DEFAULT_UNAVAILABLE = "25%"


def scaled(value: Any, replicas: int, *, round_up: bool) -> int:
    """An int-or-percent field (``1``, ``"1"``, ``"25%"``) as a number of pods."""
    text = str(value).strip()
    if text.endswith("%"):
        exact = float(text[:-1] or 0) * replicas / 100.0
        return int(math.ceil(exact) if round_up else math.floor(exact))
    return int(text or 0)


def limits(spec: Obj) -> tuple[int, int] | None:
    """(maxSurge, maxUnavailable) of a RollingUpdate Deployment; None for Recreate."""
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return None
    replicas = int(spec.get("replicas", 1))
    rolling = strategy.get("rollingUpdate") or {}
    surge = scaled(rolling.get("maxSurge", DEFAULT_SURGE), replicas, round_up=True)
    unavailable = scaled(rolling.get("maxUnavailable", DEFAULT_UNAVAILABLE), replicas,
                         round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


@dataclass
class Step:
    """What one reconciliation does: create ``create`` new pods, delete ``delete``."""

    create: int = 0
    delete: list[Obj] = field(default_factory=list)


def _age(pod: Obj) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def step(spec: Obj, new: list[Obj], old: list[Obj], ready: Callable[[Obj], bool]) -> Step:
    """The next move for a Deployment whose live pods are ``new`` (current template) and
    ``old`` (any earlier one); terminating pods are in neither."""
    replicas = int(spec.get("replicas", 1))
    out = Step()
    if len(new) > replicas:  # scaled down: the newest go
        out.delete = sorted(new, key=_age)[replicas:]
        new = sorted(new, key=_age)[:replicas]
    bounds = limits(spec)
    if bounds is None:  # Recreate
        if old:
            out.delete += old
        else:
            out.create = max(0, replicas - len(new))
        return out
    surge, unavailable = bounds
    total = len(new) + len(old)
    out.create = max(0, min(replicas - len(new), replicas + surge - total))
    if not old:
        return out
    min_available = replicas - unavailable
    new_ready = sum(1 for p in new if ready(p))
    # As the deployment controller: never go below min_available, counting new pods that are
    # not Ready yet as the unavailable ones they are.
    budget = total - min_available - (len(new) - new_ready)
    if budget <= 0:
        return out
    unhealthy = sorted((p for p in old if not ready(p)), key=_age)[:budget]
    out.delete += unhealthy
    budget -= len(unhealthy)
    healthy = sorted((p for p in old if ready(p)), key=_age)
    available = new_ready + len(healthy)
    count = min(budget, available - min_available, len(healthy))
    if count > 0:
        out.delete += healthy[:count]
    return out
