"""The controllers' quick service-selector check says what the label-selector machinery says."""

from __future__ import annotations

import itertools

from kubefwd.sim.controllers import _selects
from kubefwd.sim.objects import labels_match, selector_from_match_labels


def test_selects_agrees_with_labels_match_on_every_small_case() -> None:
    values = ["", "a", "b"]
    keys = ["app", "tier"]
    dicts: list[dict[str, str]] = []
    for size in range(len(keys) + 1):
        for chosen in itertools.combinations(keys, size):
            for picked in itertools.product(values, repeat=size):
                dicts.append(dict(zip(chosen, picked, strict=True)))
    checked = 0
    for selector in dicts:
        for labels in [*dicts, None]:
            expected = labels_match(selector_from_match_labels(selector), labels)
            assert _selects(selector, labels) == expected, (selector, labels)
            checked += 1
    assert checked > 200
