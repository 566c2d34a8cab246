"""Splitting a selector into its requirements: commas separate them, except inside a set."""

from __future__ import annotations

from kubefwd.support.selectorsyntax import split_requirements


def test_requirements_are_split_on_commas_and_stripped() -> None:
    assert split_requirements(" app=web , track!=canary,tier") == \
        ["app=web", "track!=canary", "tier"]


def test_commas_inside_a_set_belong_to_the_set() -> None:
    assert split_requirements("env in (dev, qa),app=web,tier notin (a,b)") == \
        ["env in (dev, qa)", "app=web", "tier notin (a,b)"]


def test_a_closed_set_gives_commas_back_to_the_selector() -> None:
    assert split_requirements("a in (x),b in (y,z),c") == ["a in (x)", "b in (y,z)", "c"]
    # Parentheses nest: a comma belongs to the selector only outside all of them (the
    # command line then rejects such a term as a whole).
    assert split_requirements("a in (x,(y,z)),b") == ["a in (x,(y,z))", "b"]


def test_stray_commas_give_empty_requirements() -> None:
    assert split_requirements("app=web,,") == ["app=web", "", ""]
    assert split_requirements("") == [""]
    assert split_requirements(",a") == ["", "a"]
