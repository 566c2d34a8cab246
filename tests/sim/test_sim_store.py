"""The simulated cluster's store: resourceVersions, selectors, watch history and listeners."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kubefwd.sim.store import (
    Filter,
    Obj,
    StatusError,
    Store,
    parse_field_selector,
    parse_label_selector,
)


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store()
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    yield s
    s.close()


def pod(name: str, ns: str = "default", phase: str = "Running", **labels: str) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": phase},
    }


def names(items: list[Obj]) -> list[str]:
    return [o["metadata"]["name"] for o in items]


def test_resource_versions_increase_and_lists_carry_the_latest(store: Store) -> None:
    a = store.create(pod("a"))
    b = store.create(pod("b"))
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    items, rv = store.list("Pod", "default")
    assert names(items) == ["a", "b"]
    assert rv == b["metadata"]["resourceVersion"]
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"]
    deleted = store.delete("Pod", "default", "a")
    assert int(deleted["metadata"]["resourceVersion"]) > int(rv)
    assert store.get("Pod", "default", "a") is None


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", ["a", "b", "c", "d"]),
        ("app=web", ["a", "b"]),
        ("app==web", ["a", "b"]),
        ("app!=web", ["c", "d"]),
        ("app in (web,db)", ["a", "b", "c"]),
        ("app notin (web)", ["c", "d"]),
        ("tier", ["b"]),
        ("!tier", ["a", "c", "d"]),
        ("app=web,tier=front", ["b"]),
        ("app in (web, db),!tier", ["a", "c"]),
    ],
)
def test_label_selectors(store: Store, selector: str, expected: list[str]) -> None:
    store.create(pod("a", app="web"))
    store.create(pod("b", app="web", tier="front"))
    store.create(pod("c", app="db"))
    store.create(pod("d"))
    assert names(store.list("Pod", "default", label_selector=selector)[0]) == expected


def test_field_selectors(store: Store) -> None:
    store.create(pod("a"))
    store.create(pod("b", phase="Pending"))
    store.create(pod("c", ns="shop"))
    assert names(store.list("Pod", None, field_selector="metadata.name=b")[0]) == ["b"]
    assert names(store.list("Pod", None, field_selector="metadata.namespace==shop")[0]) == ["c"]
    assert names(store.list("Pod", None, field_selector="status.phase!=Running")[0]) == ["b"]
    assert names(store.list("Pod", "default",
                            field_selector="status.phase=Running,metadata.name!=a")[0]) == []


def test_bad_selectors_are_400() -> None:
    for bad in ("a in (", "=x", "a b"):
        with pytest.raises(StatusError) as err:
            parse_label_selector(bad)
        assert err.value.code == 400
    with pytest.raises(StatusError) as err:
        parse_field_selector("Service", "status.phase=Running")
    assert err.value.code == 400


def test_create_errors(store: Store) -> None:
    store.create(pod("a"))
    with pytest.raises(StatusError) as err:
        store.create(pod("a"))
    assert (err.value.code, err.value.reason) == (409, "AlreadyExists")
    with pytest.raises(StatusError) as err:
        store.create(pod("Not_Valid"))
    assert (err.value.code, err.value.reason) == (422, "Invalid")
    assert err.value.to_status()["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(StatusError) as err:
        store.create(pod("a", ns="nowhere"))
    assert err.value.code == 404
    status = err.value.to_status()
    assert status["kind"] == "Status" and status["status"] == "Failure"
    assert status["message"] == 'namespaces "nowhere" not found'


def test_replace_with_stale_version_conflicts(store: Store) -> None:
    created = store.create(pod("a"))
    updated = store.update("Pod", "default", "a", lambda o: o["metadata"]["labels"].update(x="1"))
    assert updated is not None and updated["metadata"]["labels"] == {"x": "1"}
    with pytest.raises(StatusError) as err:
        store.replace(created)
    assert (err.value.code, err.value.reason) == (409, "Conflict")


def test_watch_from_version_sees_only_later_changes(store: Store) -> None:
    store.create(pod("a", app="web"))
    _, rv = store.list("Pod", "default")
    watch = store.watch(Filter.parse("Pod", "default", "app=web"), rv)
    store.create(pod("b", app="web"))
    store.create(pod("c", app="db"))
    store.patch_status("Pod", "default", "b", {"phase": "Failed"})
    store.delete("Pod", "default", "b")
    events = []
    while len(events) < 3:
        batch = watch.next_events(2.0)
        assert batch, "watch timed out"
        events += batch
    assert [(t, o["metadata"]["name"]) for t, o in events] == [
        ("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "b")
    ]


def test_watch_without_version_starts_with_synthetic_adds(store: Store) -> None:
    store.create(pod("a"))
    watch = store.watch(Filter.parse("Pod", "default"), "0")
    assert [(t, o["metadata"]["name"]) for t, o in watch.next_events(0.1)] == [("ADDED", "a")]
    assert watch.next_events(0.05) == []


def test_label_change_moves_objects_in_and_out_of_a_filtered_watch(store: Store) -> None:
    store.create(pod("a", app="db"))
    watch = store.watch(Filter.parse("Pod", "default", "app=web"), store.resource_version)

    def relabel(app: str) -> None:
        store.update("Pod", "default", "a", lambda o: o["metadata"]["labels"].update(app=app))

    relabel("web")
    relabel("db")
    events = watch.next_events(1.0)
    events += watch.next_events(0.2) if len(events) < 2 else []
    assert [t for t, _ in events] == ["ADDED", "DELETED"]


def test_expired_history_answers_410(store: Store) -> None:
    store.create(pod("a"))
    _, old_rv = store.list("Pod", "default")
    open_watch = store.watch(Filter.parse("Pod", "default"), old_rv)
    store.expire_watch_history()
    with pytest.raises(StatusError) as err:
        open_watch.next_events(1.0)
    assert (err.value.code, err.value.reason) == (410, "Expired")
    assert err.value.message.startswith(f"too old resource version: {old_rv} (")
    with pytest.raises(StatusError):
        store.watch(Filter.parse("Pod", "default"), old_rv)
    _, new_rv = store.list("Pod", "default")
    fresh = store.watch(Filter.parse("Pod", "default"), new_rv)
    store.create(pod("b"))
    assert [o["metadata"]["name"] for _, o in fresh.next_events(1.0)] == ["b"]


def test_bounded_history_expires_old_versions() -> None:
    s = Store(history=5)
    try:
        s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        first = s.resource_version
        for i in range(20):
            s.create(pod(f"p{i}"))
        with pytest.raises(StatusError) as err:
            s.watch(Filter.parse("Pod", "default"), first)
        assert err.value.code == 410
        s.watch(Filter.parse("Pod", "default"), s.resource_version)
    finally:
        s.close()


def test_listeners_get_every_change_in_order_off_the_lock(store: Store) -> None:
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def listener(event_type: str, obj: Obj) -> None:
        # Calling back into the store must not deadlock: the lock is not held here.
        store.list("Pod")
        seen.append((event_type, obj["metadata"]["name"]))
        if event_type == "DELETED":
            done.set()

    store.add_listener(listener)
    store.create(pod("a"))
    store.patch_status("Pod", "default", "a", {"phase": "Succeeded"})
    store.delete("Pod", "default", "a")
    assert done.wait(5.0)
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_generate_name_and_default_namespace(store: Store) -> None:
    obj = pod("")
    obj["metadata"]["generateName"] = "web-"
    del obj["metadata"]["namespace"]
    created = store.create(obj)
    assert created["metadata"]["name"].startswith("web-")
    assert len(created["metadata"]["name"]) == len("web-") + 5
    assert created["metadata"]["namespace"] == "default"
