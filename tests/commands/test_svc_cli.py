"""``kubefwd svc`` command line: flags, aliases, and bad values rejected before anything runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import hosts_file, needs_root

from kubefwd.commands.svc import (
    SERVICE_FIELDS,
    _file_kind,
    build_options,
    check_domain,
    check_field_selector,
    check_hosts_path,
    check_label_selector,
    check_namespace,
    hosts_path_problem,
    parse_duration,
    parse_mappings,
    split_list,
)
from kubefwd.errors import ExitCode, UsageError

HOSTS = b"127.0.0.1 localhost\r\n# keep me\n::1 ip6-localhost"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefwd", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    return hosts_file(tmp_path, HOSTS)


def test_lists_are_repeatable_and_comma_separated() -> None:
    assert split_list(["a,b", "c", "b", " d , "]) == ["a", "b", "c", "d"]
    assert split_list(None) == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("300s", 300), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("500ms", 0.5),
     ("2.5", 2.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m", "-1", "0", "5m3", "1h 2m", "nan", "inf",
                                  "-inf", "1e309", "Infinity", "NaN"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text, "--x")


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [("-t/--timeout", "nan", "'nan' is not a finite duration"),
     ("-t/--timeout", "1e309", "'1e309' is not a finite duration"),
     ("-t/--timeout", "169h", "outside 100ms to 168h"),
     ("-t/--timeout", "10ms", "outside 100ms to 168h"),
     ("--retry-interval", "1e400", "not a finite duration"),
     ("--retry-interval", "25h", "outside 100ms to 24h"),
     ("--resync-interval", "500ms", "outside 1s to 168h"),
     ("--resync-interval", "1e9", "outside 1s to 168h")],
)
def test_durations_out_of_the_flags_range(flag: str, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_duration(text, flag)
    assert str(info.value).startswith(f"{flag}: ")


@pytest.mark.parametrize(("flag", "text"), [("-t/--timeout", "168h"),
                                             ("-t/--timeout", "100ms"),
                                             ("--resync-interval", "1s"),
                                             ("--retry-interval", "24h")])
def test_durations_at_the_ends_of_the_range(flag: str, text: str) -> None:
    assert parse_duration(text, flag) > 0


@pytest.mark.parametrize("domain, clean", [("Example.ORG.", "example.org"), ("lan", "lan")])
def test_valid_domains(domain: str, clean: str) -> None:
    assert check_domain(domain) == clean


@pytest.mark.parametrize(
    "domain", ["a..b", "-a.b", "a-.b", "a_b.c", "x" * 64 + ".com", "a b", "é.com", ".", "",
               " ", "..", ("a" * 60 + ".") * 5 + "com"]
)
def test_invalid_domains(domain: str) -> None:
    with pytest.raises(UsageError, match="--domain"):
        check_domain(domain)


def test_mappings() -> None:
    assert parse_mappings(["80:8080", "443:8443,9090:9091"]) == {80: 8080, 443: 8443, 9090: 9091}


@pytest.mark.parametrize("value", ["nan", "0", "2h", "soon"])
def test_bad_hosts_write_timeout_in_the_environment(
    value: str, hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEFWD_HOSTS_WRITE_TIMEOUT", value)
    with pytest.raises(UsageError, match=f"KUBEFWD_HOSTS_WRITE_TIMEOUT: '{value}'"):
        build_options(hosts_path=hosts)


def test_hosts_write_timeout_from_the_environment(
    hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build_options(hosts_path=hosts).hosts_write_timeout == 30
    monkeypatch.setenv("KUBEFWD_HOSTS_WRITE_TIMEOUT", "3")
    assert build_options(hosts_path=hosts).hosts_write_timeout == 3


def test_defaults(hosts: Path) -> None:
    o = build_options(hosts_path=hosts)
    assert (o.timeout, o.resync_interval, o.retry_interval) == (300, 300, 10)
    assert o.transport == "auto" and o.namespaces == []
    # No -n and no -A: idle mode, with the API and auto-reconnect on.
    assert o.idle and o.api and o.auto_reconnect and o.api_addr is None
    chosen = build_options(hosts_path=hosts, namespace=["shop"])
    assert not chosen.idle and not chosen.api and not chosen.auto_reconnect
    assert build_options(hosts_path=hosts, all_namespaces=True).idle is False


def test_api_addr_is_loopback_only(hosts: Path) -> None:
    o = build_options(hosts_path=hosts, namespace=["shop"], api_addr="127.0.0.1:0")
    assert o.api and o.api_addr == ("127.0.0.1", 0)
    assert build_options(hosts_path=hosts, namespace=["shop"],
                         api_addr="[::1]:8080").api_addr == ("::1", 8080)
    for bad, says in (("0.0.0.0:80", "loopback"), ("10.0.0.1:80", "loopback"),
                      ("localhost:80", "not an IP"), ("127.0.0.1", "HOST:PORT"),
                      ("127.0.0.1:99999", "not a port")):
        with pytest.raises(UsageError, match=says):
            build_options(hosts_path=hosts, namespace=["shop"], api_addr=bad)


def test_fwd_conf_adds_reservations_and_base(tmp_path: Path, hosts: Path) -> None:
    conf = tmp_path / "fwd.yaml"
    conf.write_text(
        "baseUnreservedIP: 127.1.30.1\n"
        "serviceConfigurations:\n  - name: web\n    ip: 127.1.27.50\n"
    )
    o = build_options(hosts_path=hosts, fwd_conf=conf, reserve=["db:127.1.27.51"])
    assert o.reservations == {"db": "127.1.27.51", "web": "127.1.27.50"}
    assert o.base_ip == "127.1.30.1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-A", "-n", "shop"], "-A/--all-namespaces and -n/--namespace"),
        (["-m", "80"], "expected servicePort:localPort"),
        (["-m", "80:70000"], "outside 1-65535"),
        (["-m", "http:80"], "is not a number"),
        (["-r", "web:10.0.0.1"], "outside the loopback range 127.0.0.0/8"),
        (["-r", "web:not-an-ip"], "not an IPv4 address"),
        (["-r", "web"], "expected name:ip"),
        (["-r", "a:127.1.27.9", "-r", "b:127.1.27.9"], "one IP per service"),
        (["-t", "soon"], "-t/--timeout"),
        (["--resync-interval", "5x"], "--resync-interval"),
        (["--retry-interval", "0"], "--retry-interval"),
        (["--transport", "carrier-pigeon"], "--transport"),
        (["-z", "/nonexistent/fwd.yaml"], "cannot read it"),
        (["-n", "Bad_Namespace"], "not a valid namespace name"),
        (["-d", "bad..domain"], "not a valid DNS domain"),
        (["-d", "."], "-d/--domain: '.' is empty"),
        (["-d", ""], "-d/--domain: '' is empty"),
        (["-t", "nan"], "-t/--timeout: 'nan' is not a finite duration"),
        (["-t", "inf"], "-t/--timeout: 'inf' is not a finite duration"),
        (["-t", "1e309"], "-t/--timeout: '1e309' is not a finite duration"),
        (["--retry-interval", "1e400"], "--retry-interval: '1e400' is not a finite duration"),
        (["-r", "we b:127.1.27.5"], "'we b' is not a service or host name"),
        (["-r", "web:127.1.27.0"], "network address of 127.1.27.0/24"),
        (["-r", "web:127.1.27.255"], "broadcast address of 127.1.27.0/24"),
        (["-l", "==="], "-l/--selector '===': cannot parse"),
        (["-l", "app=web,,tier=db"], "-l/--selector"),
        (["-l", "app in ()"], "a set needs values"),
        (["-l", "-app=web"], "not a valid label key"),
        (["-l", "app=bad value"], "-l/--selector"),
        (["-l", "Example.com/app=web"], "not a valid label key prefix"),
        (["-f", "foo=bar"], "-f/--field-selector 'foo=bar': services cannot be selected by"),
        (["-f", "metadata.name"], "-f/--field-selector"),
        (["-f", "metadata.name=web,"], "empty requirement"),
        (["--service", "Web"], "--service 'Web': 'Web' is not a name or a glob"),
        (["--service", "shop/"], "--service 'shop/': empty"),
        (["--exclude", "a/b/c"], "--exclude 'a/b/c': 'a/b' is not a name or a glob"),
        (["--exclude", "web;rm"], "--exclude 'web;rm'"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_bad_values_are_usage_errors(args: list[str], message: str, hosts: Path) -> None:
    with pytest.raises(UsageError, match=None) as info:
        build_options(**_as_kwargs(args), hosts_path=hosts)
    assert message in str(info.value)
    assert hosts.read_bytes() == HOSTS


def _as_kwargs(args: list[str]) -> dict[str, object]:
    names = {
        "-A": ("all_namespaces", None), "-n": ("namespace", list), "-m": ("mapping", list),
        "-r": ("reserve", list), "-t": ("timeout", str), "--resync-interval":
        ("resync_interval", str), "--retry-interval": ("retry_interval", str),
        "--transport": ("transport", str), "-z": ("fwd_conf", Path), "-d": ("domain", str),
        "-l": ("selector", str), "-f": ("field_selector", str),
        "--service": ("service", list), "--exclude": ("exclude", list),
    }
    out: dict[str, object] = {}
    i = 0
    while i < len(args):
        name, kind = names[args[i]]
        if kind is None:
            out[name] = True
            i += 1
            continue
        value = args[i + 1]
        if kind is list:
            out.setdefault(name, [])
            out[name].append(value)  # type: ignore[attr-defined]
        else:
            out[name] = kind(value)  # type: ignore[operator]
        i += 2
    return out


@pytest.mark.parametrize(
    "selector",
    ["app=web", "app==web,tier!=db", "env in (dev, qa),tier notin (db)", "app", "!legacy",
     "example.com/team=a", "app=", " app = web "],
)
def test_label_selectors_kubernetes_accepts(selector: str, hosts: Path) -> None:
    assert build_options(hosts_path=hosts, selector=selector).label_selector == selector.strip()


@pytest.mark.parametrize(
    "selector", ["metadata.name=web", "metadata.name==web,metadata.namespace!=x",
                 "spec.type=ClusterIP", r"metadata.name=a\,b"],
)
def test_field_selectors_for_services(selector: str, hosts: Path) -> None:
    assert build_options(hosts_path=hosts, field_selector=selector).field_selector == selector


def test_bad_fwd_conf_yaml(tmp_path: Path, hosts: Path) -> None:
    conf = tmp_path / "fwd.yaml"
    conf.write_text("serviceConfigurations: [ {name: web, ip: 8.8.8.8} ]\n")
    with pytest.raises(UsageError, match=r"outside the loopback range"):
        build_options(hosts_path=hosts, fwd_conf=conf)
    conf.write_text("serviceConfigurations: [ {name: web\n")
    with pytest.raises(UsageError, match=r"fwd\.yaml:\d"):
        build_options(hosts_path=hosts, fwd_conf=conf)


@pytest.mark.parametrize("command", ["svc", "services", "svcs", None])
def test_usage_error_is_one_line_exit_2_and_touches_nothing(
    command: str | None, hosts: Path
) -> None:
    args = [command] if command else []
    result = run(*args, "-n", "shop", "-m", "80:0", "--hosts-path", str(hosts))
    assert result.returncode == ExitCode.USAGE
    lines = result.stderr.strip().splitlines()
    assert lines == ["kubefwd: error: -m/--mapping '80:0': local port 0 is outside 1-65535"]
    assert result.stdout == ""
    assert hosts.read_bytes() == HOSTS


@pytest.mark.parametrize(
    ("args", "line"),
    [(["-l", "==="], "-l/--selector '===': cannot parse '==='"),
     (["-f", "foo=bar"], "-f/--field-selector 'foo=bar': services cannot be selected by 'foo'"),
     (["--service", "web,Cart"], "--service 'Cart': 'Cart' is not a name or a glob")],
)
def test_bad_selector_is_one_line_exit_2_before_anything(
    args: list[str], line: str, hosts: Path, tmp_path: Path
) -> None:
    result = run("svc", *args, "--hosts-path", str(hosts), "-c", str(tmp_path / "no-kubeconfig"))
    assert result.returncode == ExitCode.USAGE, result.stderr
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(f"kubefwd: error: {line}")
    assert result.stdout == "" and hosts.read_bytes() == HOSTS


def test_help_shows_every_flag_and_hides_the_aliases() -> None:
    result = run("svc", "--help")
    assert result.returncode == 0
    for flag in ["--kubeconfig", "--context", "--namespace", "--all-namespaces", "--selector",
                 "--field-selector", "--domain", "--mapping", "--reserve", "--fwd-conf",
                 "--timeout", "--hosts-path", "--refresh-backup", "--purge-stale-ips",
                 "--resync-interval", "--retry-interval", "--auto-reconnect", "--verbose",
                 "--transport", "--service", "--exclude", "--allow-shadowing", "Examples"]:
        assert flag in result.stdout, flag
    commands = [line.split()[1] for line in run("--help").stdout.splitlines()
                if line.startswith("│ ") and len(line.split()) > 2]
    assert "svc" in commands and "services" not in commands and "svcs" not in commands


def test_help_shows_value_names_not_python_types() -> None:
    env_columns = {"COLUMNS": "160"}
    svc_help = subprocess.run(
        [sys.executable, "-m", "kubefwd", "svc", "--help"], capture_output=True, text=True,
        timeout=60, env={**os.environ, **env_columns},
    ).stdout
    assert "<bool>" not in svc_help and "<" not in svc_help.split("Examples")[0]
    lines = {line.split()[1]: line for line in svc_help.splitlines()
             if line.startswith("│ --")}
    assert lines["--all-namespaces"].split()[2:4] == ["-A", "Forward"]
    assert lines["--kubeconfig"].split()[3] == "FILE"
    assert lines["--timeout"].split()[3] == "SECONDS"
    sim_help = subprocess.run(
        [sys.executable, "-m", "kubefwd", "sim", "--help"], capture_output=True, text=True,
        timeout=60, env={**os.environ, **env_columns},
    ).stdout
    for python_type in ("<list[Path]>", "<list[str]>", "<int range>", "<float range>", "<file>"):
        assert python_type not in sim_help
    option_lines = [line for line in sim_help.splitlines() if " --" in line]
    assert any("--port" in line and " PORT " in line for line in option_lines)
    assert any("--filename" in line and " FILE " in line for line in option_lines)
    assert any("--plain-http" in line and "<bool>" not in line for line in option_lines)


def _special_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a listening Unix socket's path and a directory, made in a private folder."""
    import socket as socket_module

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket_module.socket(socket_module.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"a FIFO": fifo, "a socket": sock_path, "a directory": folder}


@pytest.mark.parametrize("kind", ["a FIFO", "a socket", "a directory"])
def test_hosts_path_that_is_not_a_regular_file_is_refused_untouched(
    kind: str, tmp_path: Path
) -> None:
    path = _special_files(tmp_path)[kind]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run("svc", "-n", "shop", "--hosts-path", str(path),
                 "-c", str(tmp_path / "no-kubeconfig"), timeout=20)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"kubefwd: error: --hosts-path: {path} is {kind}, not a regular file"]
    # Nothing beside it: no lock or start-up sidecar, no temp file, the node unchanged.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_hosts_path_symlink_to_a_regular_file_is_accepted(tmp_path: Path) -> None:
    target = hosts_file(tmp_path, HOSTS)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert check_hosts_path(link) == link


@pytest.mark.parametrize("path", ["/proc/kc", "/proc/self/environ", "/sys/kernel/x",
                                  "/dev/null", "/dev/shm/hosts"])
def test_hosts_path_in_kernel_trees_is_refused(path: str) -> None:
    # Only looked at (a stat), never opened.
    problem = hosts_path_problem(Path(path))
    assert problem is not None and "holds no hosts file" in problem


def test_hosts_path_symlink_into_dev_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "hosts"
    link.symlink_to("/dev/zero")
    with pytest.raises(UsageError, match="under /dev"):
        check_hosts_path(link)


@pytest.mark.root
@needs_root("mknod")
def test_device_node_outside_dev_stays_a_device(tmp_path: Path) -> None:
    """A character device named as the hosts file (a null device made in a private folder)
    is refused with exit 2 and is still the same device afterwards."""
    node = tmp_path / "nulldev"
    subprocess.run(["mknod", str(node), "c", "1", "3"], check=True)
    result = run("svc", "-n", "shop", "--hosts-path", str(node),
                 "-c", str(tmp_path / "no-kubeconfig"), timeout=20)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "is a device, not a regular file" in result.stderr
    st = os.stat(node)
    import stat as stat_module

    assert stat_module.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nulldev"]


@pytest.mark.root
@needs_root("unshare", "mount", "mknod")
def test_dev_null_as_hosts_path_in_a_private_dev(tmp_path: Path) -> None:
    """The case that once replaced the system's /dev/null: replayed inside a private mount
    namespace whose /dev is a fresh tmpfs holding its own null device."""
    script = (
        "mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && "
        f"{sys.executable} -m kubefwd svc -n shop --hosts-path /dev/null "
        f"-c {tmp_path}/no-kubeconfig 2>{tmp_path}/err; echo code=$?; "
        "stat -c %F /dev/null; ls -A /dev"
    )
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)
    if "unshare failed" in done.stderr:
        pytest.skip("unshare not permitted here")
    lines = done.stdout.split()
    assert "code=2" in lines, done.stdout + done.stderr
    assert "character special file" in done.stdout
    assert done.stdout.strip().endswith("null")  # nothing else was created in /dev
    assert "holds no hosts file" in (tmp_path / "err").read_text()


# -- each check's whole error line -----------------------------------------------------------


def usage_error(fn: Any, *args: Any) -> str:
    with pytest.raises(UsageError) as info:
        fn(*args)
    return str(info.value)


def test_mapping_ports_are_1_to_65535_and_each_service_port_maps_once() -> None:
    assert parse_mappings(["1:65535", "65535:1", "80:8080", "080:8080"]) == {
        1: 65535, 65535: 1, 80: 8080}
    assert usage_error(parse_mappings, ["0:80"]) == \
        "-m/--mapping '0:80': service port 0 is outside 1-65535"
    assert usage_error(parse_mappings, ["80:65536"]) == \
        "-m/--mapping '80:65536': local port 65536 is outside 1-65535"
    assert usage_error(parse_mappings, ["80:90:100"]) == \
        "-m/--mapping '80:90:100': local port '90:100' is not a number"
    assert usage_error(parse_mappings, ["x:90"]) == \
        "-m/--mapping 'x:90': service port 'x' is not a number"
    assert usage_error(parse_mappings, ["80:8080", "80:9090"]) == \
        "-m/--mapping: service port 80 is mapped twice"


def test_namespace_names_are_dns_labels() -> None:
    assert check_namespace("shop-1") == "shop-1"
    assert usage_error(check_namespace, "Shop") == (
        "-n/--namespace: 'Shop' is not a valid namespace name "
        "(lowercase letters, digits and '-', at most 63)")


def test_label_selector_checks_name_the_problem() -> None:
    rule = ("at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
            "or digit)")
    long_prefix = ".".join(["a" * 63] * 4)[:253]
    assert check_label_selector("  ") == ""
    assert check_label_selector(f"{long_prefix}/app=web") == f"{long_prefix}/app=web"
    assert check_label_selector("replicas>3,gen<1,tier") == "replicas>3,gen<1,tier"
    cases = {
        f"{long_prefix}x/app=web": f"'{long_prefix}x' is not a valid label key prefix "
                                   "(a lowercase DNS subdomain)",
        "app=web,,x": "empty requirement (stray comma?)",
        "env in (dev,-qa)": f"'-qa' is not a valid label value ({rule}",
        "-env in (dev)": f"'-env' is not a valid label key ({rule}",
        "app=-web": f"'-web' is not a valid label value ({rule}",
        "replicas>abc": "'replicas>abc': > needs a whole number",
        "!-app": f"'-app' is not a valid label key ({rule}",
        "a b c": "cannot parse 'a b c' (use key=value, key!=value, key in (a,b), "
                 "key notin (a,b), key or !key)",
    }
    for text, problem in cases.items():
        assert usage_error(check_label_selector, text) == \
            f"-l/--selector '{text}': {problem}", text


def test_field_selector_checks_name_the_problem() -> None:
    assert check_field_selector(" ") == ""
    assert check_field_selector("metadata.name=a\nb") == "metadata.name=a\nb"
    assert check_field_selector("metadata.name=a\\,b,spec.type=x") == \
        "metadata.name=a\\,b,spec.type=x"
    assert usage_error(check_field_selector, ",metadata.name=a") == \
        "-f/--field-selector ',metadata.name=a': empty requirement (stray comma?)"
    assert usage_error(check_field_selector, "metadata.name=a\\,b,bogus=c") == (
        "-f/--field-selector 'metadata.name=a\\,b,bogus=c': services cannot be selected "
        f"by 'bogus' (use {', '.join(SERVICE_FIELDS)})")


def test_a_domain_is_trimmed_of_dots_then_lowercased() -> None:
    assert check_domain(" .Example.X. ") == "example.x"


def test_what_a_hosts_path_is_when_it_is_not_a_file(tmp_path: Path) -> None:
    assert hosts_path_problem(tmp_path / "new") is None
    assert hosts_path_problem(tmp_path / "no" / "new") == \
        f"cannot be created: directory {tmp_path / 'no'} does not exist"
    assert hosts_path_problem(tmp_path) == "is a directory, not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert hosts_path_problem(fifo) == "is a FIFO, not a regular file"
    assert [_file_kind(kind) for kind in (stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK,
                                          stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFLNK)] == [
        "a directory", "a device", "a device", "a FIFO", "a socket", "a special file"]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--tui"], True),
    (["--tui", "--no-auto-reconnect"], False),
    (["--tui", "-a"], True),
    ([], False),
    (["-a"], True),
    (["--auto-reconnect"], True),
    (["--no-auto-reconnect"], False),
])
def test_auto_reconnect_is_on_with_the_tui_unless_turned_off(
    flags: list[str], expected: bool, hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kubefwd.commands.svc as svc_module
    from kubefwd.app import program
    from kubefwd.commands.cli import main

    seen: list[Any] = []

    def capture(options: Any, *_args: Any, **_kwargs: Any) -> int:
        seen.append(options)
        return 0

    # The parsed options are what is checked: nothing is started.
    monkeypatch.setattr(svc_module, "has_terminal", lambda: True)
    monkeypatch.setattr(svc_module, "run_with_tui", capture)
    class Program:
        def __init__(self, options: Any, **_kw: Any) -> None:
            seen.append(options)
            self.metrics = SimpleNamespace(snapshot=dict)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(program, "Kubefwd", Program)
    try:
        main(["svc", "-n", "shop", "--hosts-path", str(hosts), *flags])
    except SystemExit as exc:
        assert not exc.code
    assert [o.auto_reconnect for o in seen] == [expected]
