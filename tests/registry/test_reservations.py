"""-r/--reserve and -z/--fwd-conf: validated reservations, one-line errors with file:line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubefwd.errors import UsageError
from kubefwd.registry.reservations import build_reservations, load_fwd_conf, parse_reserve


def test_reserve_names_are_host_names_any_case() -> None:
    assert parse_reserve(["Web.Shop:127.1.28.1", "db-0.db:127.1.28.254"]) == {
        "web.shop": "127.1.28.1",
        "db-0.db": "127.1.28.254",
    }


def test_reserve_flags() -> None:
    assert parse_reserve(["db:127.1.28.1", " web : 127.1.28.2 "]) == {
        "db": "127.1.28.1",
        "web": "127.1.28.2",
    }
    assert parse_reserve(["db:127.1.28.1", "db:127.1.28.1"]) == {"db": "127.1.28.1"}


@pytest.mark.parametrize(
    "values, message",
    [
        (["db"], "expected name:ip"),
        ([":127.1.1.1"], "expected name:ip"),
        (["db:"], "expected name:ip"),
        (["db:10.0.0.1"], "outside the loopback range"),
        (["db:127.1.300.1"], "not an IPv4 address"),
        (["db:127.1.28.1", "db:127.1.28.2"], "already reserved as 127.1.28.1"),
        (["db:127.1.28.1", "web:127.1.28.1"], "duplicates"),
        (["we b:127.1.27.5"], "'we b' is not a service or host name"),
        (["web_1:127.1.27.5"], "is not a service or host name"),
        (["web..shop:127.1.27.5"], "is not a service or host name"),
        (["-web:127.1.27.5"], "is not a service or host name"),
        (["x" * 64 + ":127.1.27.5"], "is not a service or host name"),
        (["web:127.1.27.0"], r"127.1.27.0 is the network address of 127.1.27.0/24"),
        (["web:127.1.27.255"], r"127.1.27.255 is the broadcast address of 127.1.27.0/24"),
        (["web:128.0.0.1"], "outside the loopback range"),
    ],
)
def test_bad_reserve_flags(values: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_reserve(values)


def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fwd.yaml"
    path.write_text(text)
    return path


def test_fwd_conf_file(tmp_path: Path) -> None:
    path = _conf(
        tmp_path,
        "baseUnreservedIP: 127.1.28.1\n"
        "serviceConfigurations:\n"
        "  - name: db\n    ip: 127.1.29.1\n"
        "  - {name: cache.shop, ip: 127.1.29.2}\n",
    )
    conf = load_fwd_conf(path)
    assert conf.base == "127.1.28.1"
    assert conf.reservations == {"db": "127.1.29.1", "cache.shop": "127.1.29.2"}


def test_empty_and_partial_files(tmp_path: Path) -> None:
    assert load_fwd_conf(_conf(tmp_path, "")).reservations == {}
    assert load_fwd_conf(_conf(tmp_path, "serviceConfigurations:\n")).base == "127.1.27.0"


@pytest.mark.parametrize(
    "text, message",
    [
        ("baseUnreservedIP: 10.1.1.1\n", r"fwd.yaml:1: baseUnreservedIP: 10.1.1.1 is outside"),
        ("[1, 2]\n", "fwd.yaml:1: expected a mapping"),
        ("baseUnreservedIp: 127.1.1.1\n", "fwd.yaml:1: unknown key 'baseUnreservedIp'"),
        ("serviceConfigurations: db\n", "fwd.yaml:1: serviceConfigurations must be a list"),
        ("serviceConfigurations:\n  - db\n", "fwd.yaml:2: each service configuration"),
        ("serviceConfigurations:\n  - name: db\n", "fwd.yaml:2: service configuration without ip"),
        (
            "serviceConfigurations:\n  - name: db\n    ipp: 127.1.1.1\n",
            "fwd.yaml:3: unknown key 'ipp'",
        ),
        (
            "serviceConfigurations:\n  - name: db\n    ip: nope\n",
            "fwd.yaml:2: ip: 'nope' is not an IPv4 address",
        ),
        (
            "serviceConfigurations:\n  - {name: a, ip: 127.1.1.1}\n  - {name: b, ip: 127.1.1.1}\n",
            "fwd.yaml:3: b:127.1.1.1 duplicates a:127.1.1.1 from line 2",
        ),
        (
            "serviceConfigurations:\n  - {name: a, ip: 127.1.1.1}\n  - {name: a, ip: 127.1.1.2}\n",
            "fwd.yaml:3: a is already reserved as 127.1.1.1 on line 2",
        ),
        ("serviceConfigurations:\n  - {name: '', ip: 127.1.1.1}\n", "fwd.yaml:2: name must be"),
        ("a: [\n", r"fwd.yaml:2: "),
        ("serviceConfigurations:\n  - {name: we b, ip: 127.1.1.1}\n",
         "fwd.yaml:2: name: 'we b' is not a service or host name"),
        ("serviceConfigurations:\n  - {name: web, ip: 127.1.1.0}\n",
         "fwd.yaml:2: ip: 127.1.1.0 is the network address"),
        ("serviceConfigurations:\n  - {name: web, ip: 127.1.1.255}\n",
         "fwd.yaml:2: ip: 127.1.1.255 is the broadcast address"),
        ("serviceConfigurations:\n  - {name: web, ip: 192.168.1.5}\n",
         "fwd.yaml:2: ip: 192.168.1.5 is outside the loopback range"),
        ("baseUnreservedIP: 127.1.27.255\n", "fwd.yaml:1: baseUnreservedIP 127.1.27.255 leaves"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        load_fwd_conf(_conf(tmp_path, text))
    assert "\n" not in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--fwd-conf .*missing\.yaml: cannot read it"):
        load_fwd_conf(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="not a UTF-8"):
        load_fwd_conf(tmp_path / "bin.yaml")


@pytest.mark.parametrize(
    "text", ["[" * 20000 + "]" * 20000, "{a: " * 20000 + "1" + "}" * 20000,
             "a:\n" + "".join(" " * i + "- \n" for i in range(1, 1200))],
    ids=["lists", "mappings", "block-sequences"],
)
def test_deeply_nested_file_is_one_line_naming_it(tmp_path: Path, text: str) -> None:
    path = _conf(tmp_path, text)
    with pytest.raises(UsageError, match=r"--fwd-conf .*fwd\.yaml: nested too deeply"):
        load_fwd_conf(path)


def test_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = _conf(tmp_path, "# padding\n" * 400_000)
    with pytest.raises(UsageError, match=r"fwd\.yaml: 4000000 bytes is too big"):
        load_fwd_conf(path)


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match=r"fifo\.yaml: not a regular file"):
        load_fwd_conf(fifo)
    with pytest.raises(UsageError, match="folder: not a regular file"):
        (tmp_path / "folder").mkdir()
        load_fwd_conf(tmp_path / "folder")


def test_flags_override_the_file_and_duplicates_across_them_fail(tmp_path: Path) -> None:
    path = _conf(tmp_path, "serviceConfigurations:\n  - {name: db, ip: 127.1.29.1}\n")
    reservations, base = build_reservations(["db:127.1.29.9", "web:127.1.29.2"], path)
    assert reservations == {"db": "127.1.29.9", "web": "127.1.29.2"} and base == "127.1.27.0"
    with pytest.raises(UsageError, match="duplicates"):
        build_reservations(["web:127.1.29.1"], path)
    assert build_reservations([], None) == ({}, "127.1.27.0")


def _message(path: Path) -> str:
    with pytest.raises(UsageError) as info:
        load_fwd_conf(path)
    return str(info.value)


def test_the_whole_error_line_of_a_bad_file(tmp_path: Path) -> None:
    """The user sees file:line and what is wrong, and nothing else."""
    cases = {
        "a: [\n": "fwd.yaml:2: expected the node content, but found '<stream end>'",
        "a: \x07\n": "fwd.yaml: invalid YAML",  # a reader error: no line, no problem text
        "nope: 1\n": "fwd.yaml:1: unknown key 'nope' "
                     "(expected baseUnreservedIP, serviceConfigurations)",
        "baseUnreservedIP: ''\n": "fwd.yaml:1: baseUnreservedIP must be a non-empty string",
        "serviceConfigurations:\n  - {}\n": "fwd.yaml:2: service configuration without ip, name",
        "serviceConfigurations:\n  - {name: a, ip: 127.1.1.1}\n  - {name: b, ip: 127.1.1.1}\n":
            "fwd.yaml:3: b:127.1.1.1 duplicates a:127.1.1.1 from line 2; one IP per service",
    }
    for text, expected in cases.items():
        path = _conf(tmp_path, text)
        assert _message(path) == expected.replace("fwd.yaml", str(path), 1), text


def test_empty_service_configurations_and_a_base_alone(tmp_path: Path) -> None:
    for empty in ("~", "null", "''"):
        conf = load_fwd_conf(_conf(tmp_path, f"serviceConfigurations: {empty}\n"))
        assert conf.reservations == {}, empty
    conf = load_fwd_conf(_conf(tmp_path, "baseUnreservedIP: 127.1.30.1\n"))
    assert conf.reservations == {} and conf.base == "127.1.30.1"


def test_the_whole_error_line_of_a_bad_reserve_flag() -> None:
    with pytest.raises(UsageError) as info:
        parse_reserve(["db:nope:x"])
    assert str(info.value) == "--reserve 'db:nope:x': 'nope:x' is not an IPv4 address"
