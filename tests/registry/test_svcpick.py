"""``--service``/``--exclude`` patterns: parsing, matching, and what matched nothing."""

from __future__ import annotations

import pytest

from kubefwd.errors import UsageError
from kubefwd.registry.svcpick import NamePattern, ServicePicker, parse_patterns


def test_patterns_are_names_globs_or_namespace_qualified() -> None:
    assert parse_patterns(["web", "shop/api-*", "*/cache", "web", "db-[0-9]"], "--service") == [
        NamePattern("", "web"), NamePattern("shop", "api-*"), NamePattern("*", "cache"),
        NamePattern("", "db-[0-9]")]
    assert str(NamePattern("shop", "api-*")) == "shop/api-*"


@pytest.mark.parametrize("raw", ["", "/web", "shop/", "Web", "a b", "a/b/c", "web:80"])
def test_bad_patterns_name_the_flag(raw: str) -> None:
    with pytest.raises(UsageError, match=f"--exclude '{raw}'"):
        parse_patterns([raw], "--exclude")


def test_include_and_exclude_combine_and_unmatched_patterns_are_remembered() -> None:
    picker = ServicePicker(parse_patterns(["web*", "payments/api", "ghost"], "--service"),
                           parse_patterns(["web-canary", "*/nothing"], "--exclude"))
    assert picker.active
    assert picker.wanted("shop", "web")
    assert picker.wanted("payments", "web-2")  # unqualified: every namespace
    assert not picker.wanted("shop", "web-canary")  # excluded wins
    assert picker.wanted("payments", "api")
    assert not picker.wanted("shop", "api")  # qualified: that namespace only
    assert not picker.wanted("shop", "cart")  # not named
    include, exclude = picker.unmatched()
    assert [str(p) for p in include] == ["ghost"]
    assert [str(p) for p in exclude] == ["*/nothing"]
    assert picker.wanted("shop", "ghost")  # appears later: matched and no longer unmatched
    assert picker.unmatched()[0] == []


def test_exclude_alone_keeps_everything_else() -> None:
    picker = ServicePicker(exclude=parse_patterns(["db*"], "--exclude"))
    assert picker.wanted("shop", "web") and not picker.wanted("shop", "db-main")
    assert not ServicePicker().active and ServicePicker().wanted("x", "y")


def test_a_bad_pattern_is_one_whole_line() -> None:
    advice = ("(use NAME or NAMESPACE/NAME, lowercase letters, digits, '-', '.', and the globs "
              "* ? [...]; e.g. web, shop/api-*)")
    for raw, what in (("shop/", "empty"), ("Web", "'Web' is not a name or a glob"),
                      ("a b/web", "'a b' is not a name or a glob")):
        with pytest.raises(UsageError) as info:
            parse_patterns([raw], "--service")
        assert str(info.value) == f"--service '{raw}': {what} {advice}"
