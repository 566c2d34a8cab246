"""The host names written for a forwarded service or pod.

Naming mirrors what code inside the cluster can use: the bare ``svc`` (and ``svc.<domain>``)
only for the first namespace of the first context, where it is unambiguous; ``svc.ns``,
``svc.ns.svc`` and ``svc.ns.svc.cluster.local`` for every namespace; and context-qualified
``svc.ns.<ctx>`` / ``svc.ns.svc.<ctx>`` when several contexts are forwarded. Headless
services add the same set for each pod, prefixed with the pod name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9-]+")


def context_label(context: str) -> str:
    """Turn a kubeconfig context name into one DNS label (contexts may hold ':', '/', '@')."""
    label = _NOT_LABEL_CHARS.sub("-", context.lower()).strip("-")
    return label[:63].rstrip("-") or "context"


def _unique(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _names(
    prefix: str,
    namespace: str,
    context: str,
    *,
    domain: str,
    primary: bool,
    multi_context: bool,
    first_context: bool,
) -> list[str]:
    names: list[str] = []
    if primary:
        names.append(prefix)
        if domain:
            names.append(f"{prefix}.{domain}")
    # With several contexts, the same svc.ns may exist in each; the unqualified forms belong
    # to the first context so that no name ever points at two IPs.
    if first_context or not multi_context:
        names += [
            f"{prefix}.{namespace}",
            f"{prefix}.{namespace}.svc",
            f"{prefix}.{namespace}.svc.cluster.local",
        ]
    if multi_context:
        ctx = context_label(context)
        names += [f"{prefix}.{namespace}.{ctx}", f"{prefix}.{namespace}.svc.{ctx}"]
    return _unique(names)


def service_hostnames(
    service: str,
    namespace: str,
    context: str,
    *,
    domain: str = "",
    primary: bool,
    multi_context: bool,
    first_context: bool = True,
) -> list[str]:
    """Names for a service, most specific last; stable order, no duplicates.

    ``primary``: first namespace of the first context (gets the bare name).
    ``first_context``: False for the 2nd+ context when ``multi_context`` — those get only the
    context-qualified names.
    """
    return _names(
        service.lower(),
        namespace.lower(),
        context,
        domain=domain,
        primary=primary,
        multi_context=multi_context,
        first_context=first_context,
    )


def pod_hostnames(
    pod: str,
    service: str,
    namespace: str,
    context: str,
    *,
    domain: str = "",
    primary: bool,
    multi_context: bool,
    first_context: bool = True,
) -> list[str]:
    """Names for one pod of a headless service: ``pod.svc`` (where the bare svc is written),
    ``pod.svc.ns``, ``pod.svc.ns.svc``, ``pod.svc.ns.svc.cluster.local`` and, with several
    contexts, ``pod.svc.ns.<ctx>``, ``pod.svc.ns.svc.<ctx>``."""
    return _names(
        f"{pod.lower()}.{service.lower()}",
        namespace.lower(),
        context,
        domain=domain,
        primary=primary,
        multi_context=multi_context,
        first_context=first_context,
    )
