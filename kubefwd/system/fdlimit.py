"""The open-file limit: raised at start-up as far as the hard limit allows, and checked
against what the forwards need.

Every forward costs file descriptors for as long as it runs: its listeners (one per TCP
port), its loop (an epoll descriptor and a wake-up socket pair) and the API connection of
its tunnel; every connection it carries costs one more (two over the WebSocket ``v4``
transport). With the usual soft limit of 1024, a few hundred services exhaust it, and what
fails then is an ``accept`` or a dial, far from the cause: so the soft limit is raised to the
hard one, and when even that leaves too little room the user is told once, with the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    import resource
except ImportError:  # not on Windows: nothing to raise there
    resource = None  # type: ignore[assignment]

# Descriptors the process needs whatever it forwards: the interpreter, informer watches,
# the hosts file and its locks, the TLS and exec machinery.
BASE = 64
# Per forward besides its listeners: the loop's epoll and wake-up pair, its tunnel.
PER_FORWARD = 4
# Room kept for connections (each a local socket, or two with the v4 transport).
CONNECTION_ROOM = 512


@dataclass(frozen=True)
class Limit:
    soft: int  # the soft limit in force (after raising it); -1: unlimited or unknown
    hard: int
    raised_from: int  # the soft limit before, when it was raised; else 0


def raise_nofile() -> Limit:
    """Raise the soft RLIMIT_NOFILE to the hard limit; what is in force afterwards."""
    if resource is None:
        return Limit(-1, -1, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return Limit(-1, -1, 0)
    if hard == resource.RLIM_INFINITY or hard > soft:
        # An infinite hard limit is not a valid soft one on every system: cap it.
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return Limit(target, hard, soft)
        except (ValueError, OSError):
            pass
    return Limit(soft, hard, 0)


def needed(forwards: int, listeners: int) -> int:
    """Descriptors ``forwards`` forwards with ``listeners`` listeners in all need, with room
    for connections."""
    return BASE + forwards * PER_FORWARD + listeners + CONNECTION_ROOM


def shortfall(limit: Limit, forwards: int, listeners: int) -> str | None:
    """A sentence for the user when the services cannot fit in the limit, else None."""
    if limit.soft < 0:
        return None
    want = needed(forwards, listeners)
    if want <= limit.soft:
        return None
    hard = "unlimited" if resource is not None and limit.hard == resource.RLIM_INFINITY \
        else str(limit.hard)
    return (f"the open-file limit ({limit.soft}, hard limit {hard}) is too low for "
            f"{forwards} forwards with {listeners} listeners: they need about {want} file "
            f"descriptors with room for {CONNECTION_ROOM} connections, so some listeners or "
            "connections will fail; raise the hard limit (ulimit -Hn, or LimitNOFILE for a "
            "service) or forward fewer services")
