"""Shell completion of ``--context`` and ``--namespace`` from the kubeconfig.

Contexts come from the kubeconfig files only (no network). Namespaces are the chosen
context's own namespace plus, when its API server answers within ``NAMESPACE_WAIT``
seconds, the namespaces it lists: the list runs on a daemon thread that is abandoned
after the wait, so a server that never answers (or a slow exec credential plugin) costs a
second of the shell's time, never more.
"""

from __future__ import annotations

import threading
from typing import Any

NAMESPACE_WAIT = 1.0


def context_names(kubeconfig: str | None) -> list[str]:
    """The contexts of the kubeconfig (merged as kubectl does), the current one first."""
    from kubefwd.cluster.kubeconfig import _list_contexts, _read_kubeconfigs, kubeconfig_paths

    try:
        contexts, current = _list_contexts(_read_kubeconfigs(kubeconfig_paths(kubeconfig)))
    except Exception:  # completion must never print a traceback into the shell
        return []
    names = [str(c["name"]) for c in contexts]
    return sorted(names, key=lambda n: (n != current, n))


def namespace_names(kubeconfig: str | None, context: str | None,
                    wait: float = NAMESPACE_WAIT) -> list[str]:
    """The context's namespace, then those its API server lists within ``wait`` seconds."""
    from kubefwd.cluster.kubeconfig import load_contexts

    try:
        (ctx,) = load_contexts(kubeconfig, [context] if context else [])
    except Exception:
        return []
    found: list[str] = []

    def list_them() -> None:
        try:
            from kubefwd.cluster.client import KubeClient

            client = KubeClient(ctx, timeout=wait)
            try:
                found.extend(client.list_namespaces())
            finally:
                client.close()
        except Exception:  # unreachable, refused, slow plugin: the context's own is enough
            return

    thread = threading.Thread(target=list_them, name="completion-namespaces", daemon=True)
    thread.start()
    thread.join(wait)
    listed = list(found) if not thread.is_alive() else []
    return [ctx.namespace, *[n for n in sorted(listed) if n != ctx.namespace]]


def complete_context(ctx: Any, incomplete: str) -> list[str]:
    """click/typer completion callback for ``-x/--context``."""
    kubeconfig = (ctx.params or {}).get("kubeconfig")
    last = incomplete.rsplit(",", 1)
    head = last[0] + "," if len(last) == 2 else ""
    word = last[-1]
    return [head + n for n in context_names(kubeconfig) if n.startswith(word)]


def complete_namespace(ctx: Any, incomplete: str) -> list[str]:
    """click/typer completion callback for ``-n/--namespace``."""
    params = ctx.params or {}
    contexts = params.get("context") or []
    context = str(contexts[0]).split(",")[0] if contexts else None
    last = incomplete.rsplit(",", 1)
    head = last[0] + "," if len(last) == 2 else ""
    word = last[-1]
    return [head + n for n in namespace_names(params.get("kubeconfig"), context)
            if n.startswith(word)]
