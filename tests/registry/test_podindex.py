"""The label index finds exactly the pods a selector matches, through any changes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kubefwd.registry.podindex import LabelIndex
from kubefwd.registry.podselect import selector_matches

KEYS = st.sampled_from(["app", "tier", "version"])
VALUES = st.sampled_from(["a", "b", "c"])
LABELS = st.one_of(st.none(), st.dictionaries(KEYS, VALUES, max_size=3))
NAMES = st.sampled_from(["p0", "p1", "p2", "p3", "p4"])
WHERE = st.sampled_from([("c1", "ns1"), ("c1", "ns2"), ("c2", "ns1")])


def pod(labels: dict[str, str] | None) -> dict[str, Any]:
    return {"metadata": {"labels": labels}} if labels is not None else {"metadata": {}}


def brute(pods: dict[str, dict[str, Any]], selector: dict[str, str]) -> set[str]:
    return {n for n, p in pods.items() if selector_matches(selector, p["metadata"].get("labels"))}


@settings(max_examples=200, deadline=None)
@given(
    start=st.dictionaries(WHERE, st.dictionaries(NAMES, LABELS, max_size=5), max_size=3),
    changes=st.lists(st.tuples(WHERE, NAMES, st.one_of(st.none(), LABELS)), max_size=25),
    selectors=st.lists(st.dictionaries(KEYS, VALUES, min_size=1, max_size=3), min_size=1,
                       max_size=6),
)
def test_matching_equals_a_look_at_every_pod(
    start: dict[tuple[str, str], dict[str, dict[str, str] | None]],
    changes: list[tuple[tuple[str, str], str, dict[str, str] | None]],
    selectors: list[dict[str, str]],
) -> None:
    index = LabelIndex()
    stores: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for where, pods in start.items():
        stores[where] = {name: pod(labels) for name, labels in pods.items()}
        index.replace(where, stores[where])
    for where, name, labels in changes:  # labels None: the pod is deleted
        store = stores.setdefault(where, {})
        old = store.get(name)
        if labels is None:
            store.pop(name, None)
        else:
            store[name] = pod(labels)
        index.update(where, name, old, store.get(name))
    for where in [("c1", "ns1"), ("c1", "ns2"), ("c2", "ns1")]:
        for selector in selectors:
            assert index.matching(where, selector) == brute(stores.get(where, {}), selector)


def test_replace_forgets_the_pods_that_were_there() -> None:
    index = LabelIndex()
    index.replace(("c", "ns"), {"old": pod({"app": "web"})})
    index.replace(("c", "ns"), {"new": pod({"app": "web", "tier": "x"})})
    assert index.matching(("c", "ns"), {"app": "web"}) == {"new"}
    index.replace(("c", "ns"), {})
    assert index.matching(("c", "ns"), {"app": "web"}) == set()


def test_an_empty_selector_or_a_label_that_is_not_text_matches_nothing() -> None:
    index = LabelIndex()
    index.replace(("c", "ns"), {"p": pod({"app": "web"}), "q": {"metadata": {"labels": {
        "app": 1}}}})
    assert index.matching(("c", "ns"), {}) == set()
    assert index.matching(("c", "ns"), {"app": "web"}) == {"p"}
    assert index.matching(("c", "other"), {"app": "web"}) == set()
