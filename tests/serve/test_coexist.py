"""Other instances' lines in the hosts file: read when they can have changed, not every
second while the file holds only ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubefwd.hosts.format import Marker
from kubefwd.hosts.writer import foreign_entries, update_hosts
from kubefwd.serve import coexist
from kubefwd.serve.coexist import OtherInstances


def test_an_unchanged_file_with_only_our_lines_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    ours = {f"127.1.27.{n}": [f"svc{n}", f"svc{n}.ns"] for n in range(1, 200)}
    assert update_hosts(hosts, Marker(os.getpid()), ours)
    reads: list[Path] = []

    def counting(path: Path, **kwargs: object) -> dict[str, list[str]]:
        reads.append(path)
        return foreign_entries(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(coexist, "foreign_entries", counting)
    others = OtherInstances(hosts, max_age=0.0)
    assert not others.refresh()
    for _ in range(5):
        assert not others.refresh()
    assert len(reads) == 1

    # Another live instance (our parent process stands in for it) writes its line: seen.
    with hosts.open("ab") as f:
        f.write(b"127.1.99.1 other.ns " + Marker(os.getppid()).render() + b"\n")
    assert others.refresh()
    assert len(reads) == 2
    # With another instance present, the file is read every time (it may die any moment).
    assert others.ip_taken("127.1.99.1")
    assert len(reads) == 3
