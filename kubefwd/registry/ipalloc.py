"""Loopback IP allocation: one stable ``127.[1+cluster].[27+namespace].[n]`` address per service.

The allocator is pure bookkeeping (no I/O) and deterministic: a new service gets the lowest
free ``n`` (1..254, never .0 or .255) of its (cluster, namespace) range, unless one of its
names has a reservation. A service keeps its address until it is released, so pod restarts
never move it. Reserved addresses are never handed to anyone else.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import overload

from kubefwd.errors import ExitCode, KubefwdError, UsageError

log = logging.getLogger(__name__)

DEFAULT_BASE = "127.1.27.0"
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_FIRST_HOST = 1
_LAST_HOST = 254  # .255 would look like a broadcast address to some tools


class AddressesExhausted(KubefwdError):
    """Every address of a namespace's range is taken; names the namespace."""

    exit_code = ExitCode.NETWORK


def parse_loopback_ip(value: str, *, what: str) -> ipaddress.IPv4Address:
    """Parse ``value`` as an address in 127.0.0.0/8 or raise a one-line UsageError."""
    try:
        ip = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise UsageError(f"{what}: {value!r} is not an IPv4 address") from None
    if ip not in _LOOPBACK:
        raise UsageError(f"{what}: {value} is outside the loopback range 127.0.0.0/8")
    if ip in (_LOOPBACK.network_address, _LOOPBACK.broadcast_address):
        raise UsageError(f"{what}: {value} is not a usable host address")
    return ip


def parse_reserved_ip(value: str, *, what: str) -> ipaddress.IPv4Address:
    """A reservation's address: in 127.0.0.0/8 and one kubefwd could hand out itself, so
    never the network (.0) or broadcast (.255) address of its /24."""
    ip = parse_loopback_ip(value, what=what)
    last = ip.packed[3]
    if not _FIRST_HOST <= last <= _LAST_HOST:
        kind = "network" if last == 0 else "broadcast"
        raise UsageError(
            f"{what}: {ip} is the {kind} address of {ipaddress.IPv4Network(f'{ip}/24', False)}"
            f" (use .{_FIRST_HOST} to .{_LAST_HOST})"
        )
    return ip


def validate_reservations(reservations: Mapping[str, str]) -> dict[str, str]:
    """Check name → IP reservations: 127/8 only, names non-empty, no IP given to two names."""
    owners: dict[str, str] = {}
    result: dict[str, str] = {}
    for name, value in reservations.items():
        clean = name.strip().lower()  # host names are case-insensitive
        if not clean:
            raise UsageError(f"reservation with an empty service name for IP {value!r}")
        ip = str(parse_reserved_ip(value, what=f"reservation {clean}"))
        if ip in owners and owners[ip] != clean:
            raise UsageError(
                f"reservation {clean}:{ip} duplicates {owners[ip]}:{ip}; one IP per service"
            )
        if result.get(clean, ip) != ip:
            raise UsageError(f"reservation {clean} is given twice: {result[clean]} and {ip}")
        owners[ip] = clean
        result[clean] = ip
    return result


class IpAllocator:
    """Thread-safe allocator; one instance per kubefwd run.

    ``base`` is the first address of cluster 0 / namespace 0 (``baseUnreservedIP`` of a
    ``-z`` file); its second and third octets are shifted by the cluster and namespace index,
    its last octet is where ``n`` starts (at least 1).
    """

    def __init__(
        self,
        *,
        reservations: Mapping[str, str] | None = None,
        base: str = DEFAULT_BASE,
        taken: Callable[[str], bool] | None = None,
    ) -> None:
        self._reservations = validate_reservations(reservations or {})
        # ``taken(ip)``: is the address held outside this allocator (another kubefwd's lines
        # in the hosts file)? Such addresses are skipped, reserved ones included.
        self._taken = taken or (lambda ip: False)
        self._blocked: set[str] = set()  # found in use at bind time: never handed out again
        self._reserved_ips = frozenset(self._reservations.values())
        b = parse_loopback_ip(base, what="base IP").packed
        self._base = (b[1], b[2], max(b[3], _FIRST_HOST))
        self._lock = threading.Lock()  # guards the two maps below; held only briefly
        self._ns_locks: dict[tuple[int, int], threading.Lock] = {}
        self._by_key: dict[Hashable, str] = {}
        self._by_ip: dict[str, Hashable] = {}
        # Per range (second, third octet): every host number below ``_low`` is ours, reserved
        # or blocked, so a scan starts there instead of at the first address (otherwise N
        # services of one namespace cost N²/2 probes); ``_releases`` counts the releases in
        # the range, so a scan does not move ``_low`` past an address freed meanwhile.
        self._low: dict[tuple[int, int], int] = {}
        self._releases: dict[tuple[int, int], int] = {}

    @property
    def reservations(self) -> Mapping[str, str]:
        return dict(self._reservations)

    @overload
    def allocate(
        self,
        key: Hashable,
        cluster_index: int,
        namespace_index: int,
        names: Sequence[str],
        /,
        *,
        namespace: str = "",
    ) -> str: ...

    @overload
    def allocate(
        self,
        cluster_index: int,
        namespace_index: int,
        names: Sequence[str],
        /,
        *,
        namespace: str = "",
    ) -> str: ...

    def allocate(self, *args: object, namespace: str = "") -> str:
        """Return the service's IP: ``allocate(key, cluster, namespace_index, names)``.

        The same ``key`` gets the same IP until ``release(key)``. The short form
        ``allocate(cluster, namespace_index, names)`` uses the names as the key.
        Raises AddressesExhausted when the namespace's range is full.
        """
        key: Hashable | None = None
        if len(args) == 3:
            cluster_index, namespace_index, names = args
        elif len(args) == 4:
            key, cluster_index, namespace_index, names = args
        else:
            raise TypeError("allocate(key, cluster_index, namespace_index, names)")
        if not (isinstance(cluster_index, int) and isinstance(namespace_index, int)):
            raise TypeError("cluster_index and namespace_index must be int")
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError("names must be a sequence of names")
        name_list = [str(n) for n in names]
        if key is None:
            key = ("names", cluster_index, namespace_index, *name_list)
        return self._allocate(key, cluster_index, namespace_index, name_list, namespace)

    def _allocate(
        self, key: Hashable, cluster: int, ns: int, names: list[str], namespace: str
    ) -> str:
        with self._lock:
            held = self._by_key.get(key)
            if held is not None:
                return held
            for name in names:
                ip = self._reservations.get(name.lower())
                if ip is None:
                    continue
                owner = self._by_ip.get(ip)
                if owner is None and ip not in self._blocked and not self._taken(ip):
                    self._claim(key, ip)
                    return ip
                log.warning(
                    "reserved IP %s for %s is already used by another %s; allocating a new one",
                    ip, name, "service" if owner is not None else "kubefwd",
                )
            ns_lock = self._ns_locks.setdefault((cluster, ns), threading.Lock())
        second, third = self._base[0] + cluster, self._base[1] + ns
        label = namespace or f"#{ns}"
        if second > 255 or third > 255:
            raise AddressesExhausted(
                f"no loopback range left for namespace {label} (cluster {cluster}): "
                f"127.{second}.{third}.x does not exist"
            )
        with ns_lock:
            ip = self._scan(key, second, third, label)
        return ip

    def _scan(self, key: Hashable, second: int, third: int, label: str) -> str:
        """Claim the lowest free address of 127.second.third.x for ``key`` (ns lock held)."""
        first_n = self._base[2]
        rng = (second, third)
        with self._lock:
            start = max(first_n, self._low.get(rng, first_n))
            releases = self._releases.get(rng, 0)
        low: int | None = None  # the first address skipped for a reason that may pass
        for n in range(start, _LAST_HOST + 1):
            ip = f"127.{second}.{third}.{n}"
            with self._lock:
                if key in self._by_key:  # a concurrent call for the same key won
                    return self._by_key[key]
                if ip in self._by_ip or ip in self._reserved_ips or ip in self._blocked:
                    continue
            # Asked outside our lock: it may read a file.
            if self._taken(ip):
                low = n if low is None else low
                continue
            with self._lock:
                if key in self._by_key:
                    return self._by_key[key]
                if ip in self._by_ip:
                    continue
                self._claim(key, ip)
                if self._releases.get(rng, 0) == releases:
                    self._low[rng] = n + 1 if low is None else low
                return ip
        raise AddressesExhausted(
            f"no free loopback address left for namespace {label}: "
            f"127.{second}.{third}.{first_n}-{_LAST_HOST} are all in use"
        )

    def move(self, key: Hashable, *, namespace: str = "") -> str:
        """The address of ``key`` turned out to be in use (a bind failed): block it for good
        and give ``key`` the next free one of the same range. Raises AddressesExhausted, and
        ``key`` then keeps its old address (still blocked for everyone else)."""
        with self._lock:
            old = self._by_key.get(key)
            if old is None:
                raise KeyError(key)
            self._blocked.add(old)
            del self._by_key[key]
            self._by_ip.pop(old, None)
            octets = [int(x) for x in old.split(".")]
            range_key = (octets[1] - self._base[0], octets[2] - self._base[1])
            ns_lock = self._ns_locks.setdefault(range_key, threading.Lock())
        label = namespace or f"127.{octets[1]}.{octets[2]}.x"
        with ns_lock:
            try:
                return self._scan(key, octets[1], octets[2], label)
            except AddressesExhausted:
                # Nowhere to go: ``key`` keeps its (blocked) address, so that address is
                # never handed to another service while this one may still come back to it,
                # and a later ``move`` can try again once addresses free up.
                with self._lock:
                    if key not in self._by_key and old not in self._by_ip:
                        self._claim(key, old)
                raise

    def block(self, ip: str) -> None:
        """Never hand out ``ip`` again in this run."""
        with self._lock:
            self._blocked.add(ip)

    def is_reserved(self, ip: str) -> bool:
        return ip in self._reserved_ips

    def _claim(self, key: Hashable, ip: str) -> None:
        self._by_key[key] = ip
        self._by_ip[ip] = key

    def release(self, key_or_ip: Hashable) -> None:
        """Give the address back; accepts the allocation key or the IP itself."""
        with self._lock:
            ip = self._by_key.pop(key_or_ip, None)
            if ip is not None:
                self._by_ip.pop(ip, None)
                self._freed(ip)
                return
            if isinstance(key_or_ip, str):
                key = self._by_ip.pop(key_or_ip, None)
                if key is not None:
                    self._by_key.pop(key, None)
                    self._freed(key_or_ip)

    def _freed(self, ip: str) -> None:
        """``ip`` is free again: scans of its range start at it at the latest (lock held)."""
        octets = [int(x) for x in ip.split(".")]
        rng = (octets[1], octets[2])
        self._releases[rng] = self._releases.get(rng, 0) + 1
        if rng in self._low:
            self._low[rng] = min(self._low[rng], octets[3])

    def ip_of(self, key: Hashable) -> str | None:
        with self._lock:
            return self._by_key.get(key)

    def in_use(self) -> dict[str, Hashable]:
        """Snapshot IP → key of every held address."""
        with self._lock:
            return dict(self._by_ip)
