"""The simulated cluster's object store: resourceVersions, watch history, listeners.

Objects are plain JSON-like dicts exactly as the API returns them. Every change takes the next
value of one global counter as its resourceVersion and is appended to a bounded history, from
which watches resume; a watch from a version older than the history answers 410 Expired.
Listeners (the controllers) get every change in order on one dispatcher thread, never while
the store lock is held.
"""

from __future__ import annotations

import bisect
import copy
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kubefwd.sim.objects import (
    BY_KIND,
    RESOURCES,
    Filter,
    Obj,
    ResourceInfo,
    StatusError,
    bad_request,
    check_metadata,
    check_shape,
    invalid,
    labels_match,
    name_problem,
    not_found,
    now_rfc3339,
    parse_field_selector,
    parse_label_selector,
    random_suffix,
    selector_from_match_labels,
)

# Re-exported: the store is where the rest of the sim (and tests) get the vocabulary from.
__all__ = [
    "BY_KIND", "RESOURCES", "Change", "Filter", "Obj", "ResourceInfo",
    "StatusError", "Store", "Watch", "bad_request", "invalid", "labels_match", "name_problem",
    "not_found", "now_rfc3339", "parse_field_selector", "parse_label_selector",
    "random_suffix", "selector_from_match_labels",
]

log = logging.getLogger(__name__)

Listener = Callable[[str, Obj], None]
Admission = Callable[[Obj, "Obj | None"], None]
ObjList = list[Obj]
Events = list[tuple[str, Obj]]


# ---------------------------------------------------------------------------------------------
# Store

@dataclass
class Change:
    """One entry of the watch history."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    kind: str
    obj: Obj
    old: Obj | None = None


@dataclass
class _Dispatch:
    queue: deque[tuple[str, Obj]] = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stopping: bool = False
    busy: bool = False


class Store:
    """Thread-safe object store with one global resourceVersion counter."""

    def __init__(self, *, history: int = 20000, admit: Admission | None = None) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {r.kind: {} for r in RESOURCES}
        # The same objects by kind and namespace, so namespaced lists do not scan everything.
        self._by_ns: dict[str, dict[str, dict[str, Obj]]] = {r.kind: {} for r in RESOURCES}
        self._rv = 0
        self._history: list[Change] = []
        self._history_rvs: list[int] = []
        self._history_cap = history
        self._min_rv = 0  # the oldest resourceVersion a watch may resume from
        self._generation = 0  # bumped to end every open watch (forced expiry, shutdown)
        self._closed = False
        self.admit = admit
        self._listeners: list[Listener] = []
        self._dispatch = _Dispatch()
        # Started with the first listener, so a store without listeners has no thread.
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="sim-store-dispatch", daemon=True
        )

    # -- reads ------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def get(self, kind: str, namespace: str, name: str, *, copy_: bool = True) -> Obj | None:
        """The object, or None. ``copy_=False`` shares the stored dict: read it, never change it.
        """
        with self._lock:
            obj = self._objects[kind].get((namespace or "", name))
            if obj is None or not copy_:
                return obj
            return copy.deepcopy(obj)

    def list(self, kind: str, namespace: str | None = None, *, label_selector: str = "",
             field_selector: str = "") -> tuple[ObjList, str]:
        flt = Filter.parse(kind, namespace, label_selector, field_selector)
        return self.list_filtered(flt)

    def list_filtered(self, flt: Filter, *, copy_: bool = True) -> tuple[ObjList, str]:
        """Matching objects sorted by namespace and name, and the current resourceVersion.

        ``copy_=False`` shares the stored dicts (they are replaced, never changed, on update):
        read them, never change them.
        """
        with self._lock:
            if flt.namespace is not None:
                space = self._by_ns[flt.kind].get(flt.namespace, {})
                found = [space[name] for name in sorted(space)]
            else:
                found = [o for _, o in sorted(self._objects[flt.kind].items())]
            items = [o for o in found if flt.matches(o)]
            if copy_:
                items = [copy.deepcopy(o) for o in items]
            return items, str(self._rv)

    def view(self, kind: str, namespace: str | None = None, label_selector: str = "") -> ObjList:
        """Read-only shared objects (no copies) for controllers; never change them."""
        return self.list_filtered(Filter.parse(kind, namespace, label_selector), copy_=False)[0]

    # -- writes -----------------------------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        kind = obj.get("kind", "")
        info = BY_KIND.get(kind)
        if info is None:
            raise StatusError(404, "NotFound", f"no kind {kind!r} is served here")
        obj["apiVersion"] = info.api_version
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        namespace = meta.get("namespace") or "" if info.namespaced else ""
        if info.namespaced and not namespace:
            namespace = "default"
        if info.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self._lock:
            name = meta.get("name") or ""
            if not name and meta.get("generateName"):
                name = self._generate_name(kind, namespace, meta["generateName"])
                meta["name"] = name
            if not name:
                raise invalid(kind, "", "metadata.name", "", "name or generateName is required")
            problem = name_problem(kind, name)
            if problem:
                raise invalid(kind, name, "metadata.name", name, problem)
            check_metadata(kind, meta)
            check_shape(obj)
            if info.namespaced and ("", namespace) not in self._objects["Namespace"]:
                raise StatusError(
                    404, "NotFound", f'namespaces "{namespace}" not found',
                    details={"name": namespace, "kind": "namespaces"},
                )
            if (namespace, name) in self._objects[kind]:
                raise StatusError(
                    409, "AlreadyExists", f'{info.qualified} "{name}" already exists',
                    details={"name": name, "group": info.group, "kind": info.plural},
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta.pop("deletionTimestamp", None)
            if kind in ("Deployment", "StatefulSet"):
                meta["generation"] = 1
            if self.admit is not None:
                self.admit(obj, None)
            self._commit("ADDED", kind, namespace, name, obj, None)
            return copy.deepcopy(obj)

    def _generate_name(self, kind: str, namespace: str, prefix: str) -> str:
        for _ in range(100):
            name = prefix + random_suffix(5)
            if (namespace, name) not in self._objects[kind]:
                return name
        raise StatusError(500, "InternalError", "could not generate a unique name")

    def replace(self, obj: Obj, *, keep_status: bool = True) -> Obj:
        """Full update of an existing object (a PUT); a stale resourceVersion is a 409."""
        obj = copy.deepcopy(obj)
        kind = obj.get("kind", "")
        info = BY_KIND[kind]
        meta = obj.setdefault("metadata", {})
        namespace = (meta.get("namespace") or "default") if info.namespaced else ""
        name = meta.get("name", "")
        with self._lock:
            old = self._objects[kind].get((namespace, name))
            if old is None:
                raise not_found(info, name)
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise StatusError(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on {info.qualified} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try "
                    "again",
                    details={"name": name, "group": info.group, "kind": info.plural},
                )
            old_meta = old["metadata"]
            check_metadata(kind, meta)
            check_shape(obj)
            obj["apiVersion"] = info.api_version
            if info.namespaced:
                meta["namespace"] = namespace
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if key in old_meta:
                    meta[key] = old_meta[key]
            if keep_status and "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
            if "generation" in old_meta and obj.get("spec") != old.get("spec"):
                meta["generation"] = old_meta["generation"] + 1
            if self.admit is not None:
                self.admit(obj, old)
            if _same(obj, old):
                return copy.deepcopy(old)
            self._commit("MODIFIED", kind, namespace, name, obj, old)
            return copy.deepcopy(obj)

    def update(self, kind: str, namespace: str, name: str,
               mutate: Callable[[Obj], None]) -> Obj | None:
        """Read-modify-write under the lock; returns the new object or None if it is gone."""
        with self._lock:
            obj = self.get(kind, namespace, name)
            if obj is None:
                return None
            obj["metadata"].pop("resourceVersion", None)
            mutate(obj)
            return self.replace(obj, keep_status=False)

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj | None:
        with self._lock:
            old = self._objects[kind].get((namespace or "", name))
            if old is None:
                return None
            if old.get("status") == status:
                return copy.deepcopy(old)
            obj = copy.deepcopy(old)
            obj["status"] = copy.deepcopy(status)
            self._commit("MODIFIED", kind, namespace or "", name, obj, old)
            return copy.deepcopy(obj)

    def delete(self, kind: str, namespace: str, name: str) -> Obj:
        info = BY_KIND[kind]
        namespace = namespace or "" if info.namespaced else ""
        with self._lock:
            old = self._objects[kind].get((namespace, name))
            if old is None:
                raise not_found(info, name)
            obj = copy.deepcopy(old)
            self._commit("DELETED", kind, namespace, name, obj, old)
            return copy.deepcopy(obj)

    def _commit(self, kind_of_change: str, kind: str, namespace: str, name: str, obj: Obj,
                old: Obj | None) -> None:
        # Called with the lock held.
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        space = self._by_ns[kind].setdefault(namespace, {})
        if kind_of_change == "DELETED":
            del self._objects[kind][(namespace, name)]
            del space[name]
        else:
            self._objects[kind][(namespace, name)] = obj
            space[name] = obj
        self._history.append(Change(self._rv, kind_of_change, kind, obj, old))
        self._history_rvs.append(self._rv)
        if len(self._history) > 2 * self._history_cap:
            drop = len(self._history) - self._history_cap
            self._min_rv = self._history_rvs[drop - 1]
            del self._history[:drop]
            del self._history_rvs[:drop]
        self._cond.notify_all()
        if self._listeners:
            # Stored objects are never changed in place, so listeners can share them.
            with self._dispatch.cond:
                self._dispatch.queue.append((kind_of_change, obj))
                self._dispatch.cond.notify_all()

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        with self._lock:
            self._listeners.append(fn)
            if not self._dispatcher.is_alive() and not self._closed:
                self._dispatcher.start()

    def _dispatch_loop(self) -> None:
        d = self._dispatch
        while True:
            with d.cond:
                while not d.queue and not d.stopping:
                    d.busy = False
                    d.cond.notify_all()
                    d.cond.wait()
                if d.stopping:
                    d.busy = False
                    d.cond.notify_all()
                    return
                event_type, obj = d.queue.popleft()
                d.busy = True
            for fn in list(self._listeners):
                try:
                    fn(event_type, obj)
                except Exception:
                    log.exception("store listener failed on %s %s", event_type, obj.get("kind"))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every queued change has been handed to the listeners."""
        d = self._dispatch
        with d.cond:
            return d.cond.wait_for(lambda: d.stopping or (not d.queue and not d.busy), timeout)

    # -- watch ------------------------------------------------------------------------------

    def watch(self, flt: Filter, resource_version: str = "") -> Watch:
        """Open a watch; raises StatusError 410 when ``resource_version`` is too old."""
        with self._lock:
            initial: Events = []
            if resource_version in ("", "0"):
                items, rv = self.list_filtered(flt, copy_=False)
                initial = [("ADDED", o) for o in items]
                start = int(rv)
            else:
                try:
                    start = int(resource_version)
                except ValueError as exc:
                    raise bad_request(
                        f'invalid resource version "{resource_version}"'
                    ) from exc
                if start < self._min_rv:
                    raise self._too_old(start)
            return Watch(self, flt, start, initial, self._generation)

    def _too_old(self, rv: int) -> StatusError:
        return StatusError(410, "Expired", f"too old resource version: {rv} ({self._min_rv})")

    def expire_watch_history(self) -> None:
        """Forget the history: every open watch and every resume from a known version gets 410."""
        with self._lock:
            self._rv += 1
            self._min_rv = self._rv
            self._history.clear()
            self._history_rvs.clear()
            self._generation += 1
            self._cond.notify_all()

    def wake_watches(self) -> None:
        """Wake every waiting watch so it can notice its connection is gone."""
        with self._lock:
            self._cond.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        with self._dispatch.cond:
            self._dispatch.stopping = True
            self._dispatch.cond.notify_all()
        if self._dispatcher.is_alive() and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(5.0)


class Watch:
    """One open watch: yields the changes after its start version that match its filter.

    The objects it yields are the stored ones, shared: serialize them, never change them.
    """

    def __init__(self, store: Store, flt: Filter, start: int, initial: list[tuple[str, Obj]],
                 generation: int) -> None:
        self._store = store
        self.filter = flt
        self.position = start
        self._pending = initial
        self._generation = generation

    def next_events(self, timeout: float,
                    cancelled: Callable[[], bool] = lambda: False) -> list[tuple[str, Obj]]:
        """Changes since the last call (waiting up to ``timeout``); StatusError 410 if expired.

        Returns an empty list on timeout, on cancel and when the store closes.
        """
        if self._pending:
            pending, self._pending = self._pending, []
            return pending
        store = self._store
        with store._cond:
            deadline = time.monotonic() + timeout
            while True:
                if store._generation != self._generation or self.position < store._min_rv:
                    raise store._too_old(self.position)
                if store._closed or cancelled():
                    return []
                if store._rv > self.position:
                    i = bisect.bisect_right(store._history_rvs, self.position)
                    changes = store._history[i:]
                    self.position = store._rv
                    out = [e for e in (self._translate(c) for c in changes) if e is not None]
                    if out:
                        return out
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                store._cond.wait(remaining)

    def _translate(self, change: Change) -> tuple[str, Obj] | None:
        if change.kind != self.filter.kind:
            return None
        now = self.filter.matches(change.obj)
        if change.type == "MODIFIED" and change.old is not None:
            before = self.filter.matches(change.old)
            if now and not before:
                return "ADDED", change.obj
            if before and not now:
                return "DELETED", change.obj
        if not now:
            return None
        return change.type, change.obj


def _same(a: Obj, b: Obj) -> bool:
    def strip(o: Obj) -> Obj:
        o = dict(o)
        meta = dict(o.get("metadata") or {})
        meta.pop("resourceVersion", None)
        o["metadata"] = meta
        return o

    return strip(a) == strip(b)
