"""Names the cluster may not write: names of this machine, and names foreign lines define."""

from __future__ import annotations

import logging

import pytest

from kubefwd.hosts.format import Marker, parse_hosts
from kubefwd.hosts.shadowing import NameGuard, foreign_names, is_local_name
from kubefwd.hosts.writer import rewrite_lines

FOREIGN = (b"127.0.0.1\tlocalhost\r\n# 1.2.3.4 commented.example\n"
           b"140.82.112.3 GitHub.com  api.github.com # pinned\n::1 ip6-localhost")


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "localhost.localdomain",
                                  "ip6-localhost", "ip6-loopback", "broadcasthost",
                                  "web.localhost", "a.b.localhost", "localhost."])
def test_names_of_this_machine(name: str) -> None:
    assert is_local_name(name)


@pytest.mark.parametrize("name", ["web", "localhost.shop", "mylocalhost", "localhost-svc",
                                  "localhost.shop.svc.cluster.local"])
def test_names_that_are_not_this_machines(name: str) -> None:
    assert not is_local_name(name)


def test_foreign_names_skip_addresses_and_comments() -> None:
    assert foreign_names(FOREIGN) == {"localhost", "github.com", "api.github.com",
                                      "ip6-localhost"}


def test_guard_holds_back_local_and_foreign_names_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = NameGuard()
    entries = {"127.1.27.1": ["localhost", "localhost.shop"],
               "127.1.28.1": ["github", "github.com", "github.com.svc"],
               "127.1.28.2": ["web.localhost"]}
    with caplog.at_level(logging.WARNING, logger="kubefwd.hosts.shadowing"):
        for _ in range(3):
            kept = guard.filter(entries, FOREIGN)
    assert kept == {"127.1.27.1": ["localhost.shop"],
                    "127.1.28.1": ["github", "github.com.svc"]}
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "not writing localhost to the hosts file: it names this machine",
        "not writing github.com to the hosts file: a line kubefwd does not own already "
        "defines it (--allow-shadowing writes it anyway)",
        "not writing web.localhost to the hosts file: it names this machine",
    ]


def test_allow_shadowing_writes_foreign_names_but_never_local_ones() -> None:
    guard = NameGuard(allow_shadowing=True)
    kept = guard.filter({"127.1.28.1": ["github.com", "localhost", "ip6-localhost"]}, FOREIGN)
    assert kept == {"127.1.28.1": ["github.com"]}


def test_rewrite_never_writes_a_foreign_name_and_keeps_the_foreign_bytes() -> None:
    doc = parse_hosts(FOREIGN)
    new = rewrite_lines(doc, Marker(4242), {"127.1.28.1": ["github.com", "github.com.svc"],
                                            "127.1.27.1": ["localhost"]})
    assert new.startswith(FOREIGN + b"\r\n")
    ours = new[len(FOREIGN):]
    assert b"github.com.svc" in ours and b"\tgithub.com " not in ours
    assert b"localhost" not in ours and b"127.1.27.1" not in ours
