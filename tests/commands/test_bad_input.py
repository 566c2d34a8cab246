"""Every flag's invalid values, through the real ``kubefwd svc`` process: exit 2, exactly one
line on stderr, nothing on stdout, the hosts file byte-identical and nothing created beside it.

Each case is its own test and its own process (the cost is starting Python and parsing the
flags, ~0.4 s); pytest-xdist spreads them over its workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubefwd.errors import ExitCode

HOSTS = b"127.0.0.1\tlocalhost\r\n# the user's comment\n::1 ip6-localhost\n10.0.0.5 build  # x"

# (id, arguments after `svc`, what the one line must say). "{in}" is a folder of input files
# made by ``_inputs``; every run also gets `-c <missing kubeconfig> --hosts-path <temp file>`
# before these arguments, so a case's own --hosts-path wins.
CASES: list[tuple[str, list[str], str]] = [
    # ports and mappings
    ("map-no-colon", ["-m", "80"], "-m/--mapping '80': expected servicePort:localPort"),
    ("map-local-0", ["-m", "80:0"], "local port 0 is outside 1-65535"),
    ("map-service-0", ["-m", "0:80"], "service port 0 is outside 1-65535"),
    ("map-too-big", ["-m", "80:65536"], "local port 65536 is outside 1-65535"),
    ("map-name", ["-m", "http:80"], "service port 'http' is not a number"),
    ("map-empty", ["-m", ":"], "service port '' is not a number"),
    ("map-twice", ["-m", "80:8080,80:8081"], "service port 80 is mapped twice"),
    # reservations
    ("reserve-no-ip", ["-r", "web"], "expected name:ip"),
    ("reserve-empty-ip", ["-r", "web:"], "expected name:ip"),
    ("reserve-no-name", ["-r", ":127.1.27.5"], "expected name:ip"),
    ("reserve-not-loopback", ["-r", "web:10.0.0.1"], "outside the loopback range 127.0.0.0/8"),
    ("reserve-ipv6", ["-r", "web:::1"], "is not an IPv4 address"),
    ("reserve-not-ip", ["-r", "web:not-an-ip"], "is not an IPv4 address"),
    ("reserve-space-name", ["-r", "we b:127.1.27.5"], "'we b' is not a service or host name"),
    ("reserve-bad-name", ["-r", "web_1:127.1.27.5"], "is not a service or host name"),
    ("reserve-network", ["-r", "web:127.1.27.0"], "network address of 127.1.27.0/24"),
    ("reserve-broadcast", ["-r", "web:127.1.27.255"], "broadcast address of 127.1.27.0/24"),
    ("reserve-one-ip-twice", ["-r", "a:127.1.27.9", "-r", "b:127.1.27.9"], "one IP per service"),
    ("reserve-name-twice", ["-r", "a:127.1.27.9", "-r", "a:127.1.27.8"], "already reserved"),
    # selectors
    ("label-garbage", ["-l", "==="], "-l/--selector '===': cannot parse"),
    ("label-stray-comma", ["-l", "app=web,,tier=db"], "empty requirement"),
    ("label-empty-set", ["-l", "app in ()"], "a set needs values"),
    ("label-bad-key", ["-l", "-app=web"], "not a valid label key"),
    ("label-bad-value", ["-l", "app=bad value"], "-l/--selector 'app=bad value'"),
    ("label-bad-prefix", ["-l", "Example.com/app=web"], "not a valid label key prefix"),
    ("label-gt-word", ["-l", "n>x"], "> needs a whole number"),
    ("field-unknown", ["-f", "foo=bar"], "services cannot be selected by 'foo'"),
    ("field-no-value", ["-f", "metadata.name"], "-f/--field-selector 'metadata.name'"),
    ("field-stray-comma", ["-f", "metadata.name=web,"], "empty requirement"),
    # durations
    ("timeout-nan", ["-t", "nan"], "-t/--timeout: 'nan' is not a finite duration"),
    ("timeout-inf", ["-t", "inf"], "-t/--timeout: 'inf' is not a finite duration"),
    ("timeout-1e309", ["-t", "1e309"], "-t/--timeout: '1e309' is not a finite duration"),
    ("timeout-zero", ["-t", "0"], "-t/--timeout: '0' must be longer than zero"),
    ("timeout-negative", ["-t", "-1"], "-t/--timeout: '-1' must be longer than zero"),
    ("timeout-word", ["-t", "soon"], "-t/--timeout: 'soon' is not a duration"),
    ("timeout-too-short", ["-t", "10ms"], "-t/--timeout: '10ms' is outside 100ms to 168h"),
    ("timeout-too-long", ["-t", "200h"], "-t/--timeout: '200h' is outside 100ms to 168h"),
    ("retry-1e400", ["--retry-interval", "1e400"], "--retry-interval: '1e400' is not a finite"),
    ("retry-zero", ["--retry-interval", "0"], "--retry-interval: '0' must be longer than zero"),
    ("retry-too-long", ["--retry-interval", "25h"], "'25h' is outside 100ms to 24h"),
    ("resync-word", ["--resync-interval", "5x"], "--resync-interval: '5x' is not a duration"),
    ("resync-nan", ["--resync-interval", "NaN"], "--resync-interval: 'NaN' is not a finite"),
    ("resync-too-short", ["--resync-interval", "100ms"], "'100ms' is outside 1s to 168h"),
    # namespaces, domain, kubeconfig, transport
    ("namespace-upper", ["-n", "Bad_Namespace"], "not a valid namespace name"),
    ("namespace-space", ["-n", "a b"], "'a b' is not a valid namespace name"),
    ("all-and-namespace", ["-A", "-n", "shop"], "-A/--all-namespaces and -n/--namespace"),
    ("domain-dot", ["-d", "."], "-d/--domain: '.' is empty"),
    ("domain-empty", ["-d", ""], "-d/--domain: '' is empty"),
    ("domain-double-dot", ["-d", "bad..domain"], "not a valid DNS domain"),
    ("domain-space", ["-d", "a b"], "'a b' is not a valid DNS domain"),
    ("kubeconfig-empty", ["-c", ""], "-c/--kubeconfig: empty file name"),
    ("transport-unknown", ["--transport", "carrier-pigeon"], "--transport: 'carrier-pigeon'"),
    ("transport-case", ["--transport", "SPDY"], "--transport: 'SPDY' is not one of"),
    # hosts path
    ("hosts-missing-dir", ["--hosts-path", "{in}/nowhere/hosts"], "directory {in}/nowhere does"),
    ("hosts-directory", ["--hosts-path", "{in}"], "is a directory, not a regular file"),
    ("hosts-fifo", ["--hosts-path", "{in}/fifo"], "is a FIFO, not a regular file"),
    # -z files
    ("fwd-conf-missing", ["-z", "{in}/missing.yaml"], "missing.yaml: cannot read it"),
    ("fwd-conf-directory", ["-z", "{in}"], "not a regular file"),
    ("fwd-conf-fifo", ["-z", "{in}/fifo"], "fifo: not a regular file"),
    ("fwd-conf-unclosed", ["-z", "{in}/unclosed.yaml"], "unclosed.yaml:2:"),
    ("fwd-conf-tab", ["-z", "{in}/tab.yaml"], "tab.yaml:2:"),
    ("fwd-conf-list", ["-z", "{in}/list.yaml"], "list.yaml:1: expected a mapping at the top"),
    ("fwd-conf-unknown-key", ["-z", "{in}/key.yaml"], "key.yaml:1: unknown key 'baseIP'"),
    ("fwd-conf-bad-ip", ["-z", "{in}/ip.yaml"], "ip.yaml:2: ip: 8.8.8.8 is outside the loop"),
    ("fwd-conf-network", ["-z", "{in}/net.yaml"], "net.yaml:2: ip: 127.1.9.0 is the network"),
    ("fwd-conf-bad-name", ["-z", "{in}/name.yaml"], "name.yaml:2: name: 'we b' is not a"),
    ("fwd-conf-base", ["-z", "{in}/base.yaml"], "base.yaml:1: baseUnreservedIP 127.1.1.255"),
    ("fwd-conf-deep-lists", ["-z", "{in}/deep1.yaml"], "deep1.yaml: nested too deeply"),
    ("fwd-conf-deep-maps", ["-z", "{in}/deep2.yaml"], "deep2.yaml: nested too deeply"),
    ("fwd-conf-huge", ["-z", "{in}/huge.yaml"], "huge.yaml: 8000000 bytes is too big"),
    ("fwd-conf-binary", ["-z", "{in}/binary.yaml"], "binary.yaml: not a UTF-8 text file"),
    ("fwd-conf-and-flag", ["-z", "{in}/good.yaml", "-r", "db:127.1.9.7"], "one IP per service"),
]

_FILES: dict[str, bytes] = {
    "unclosed.yaml": b"serviceConfigurations: [ {name: web\n",
    "tab.yaml": b"serviceConfigurations:\n\t- {name: web, ip: 127.1.9.1}\n",
    "list.yaml": b"- 127.1.9.1\n",
    "key.yaml": b"baseIP: 127.1.9.1\n",
    "ip.yaml": b"serviceConfigurations:\n  - {name: web, ip: 8.8.8.8}\n",
    "net.yaml": b"serviceConfigurations:\n  - {name: web, ip: 127.1.9.0}\n",
    "name.yaml": b"serviceConfigurations:\n  - {name: we b, ip: 127.1.9.1}\n",
    "base.yaml": b"baseUnreservedIP: 127.1.1.255\n",
    "deep1.yaml": b"[" * 20000 + b"]" * 20000,
    "deep2.yaml": b"{a: " * 20000 + b"1" + b"}" * 20000,
    "huge.yaml": b"# padding\n" * 800_000,
    "binary.yaml": b"\xff\xfe\x00baseUnreservedIP",
    "good.yaml": b"serviceConfigurations:\n  - {name: web, ip: 127.1.9.7}\n",
}


@dataclass
class Outcome:
    inputs: str
    args: list[str]
    code: int  # -1: still running after 20 s
    stdout: str
    stderr: str
    hosts_after: bytes
    beside_before: list[str]
    beside_after: list[str]
    seconds: float


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    for name, data in _FILES.items():
        (folder / name).write_bytes(data)
    os.mkfifo(folder / "fifo")
    return folder


def _run_case(root: Path, inputs: Path, case_id: str, args: list[str]) -> Outcome:
    home = root / case_id
    home.mkdir()
    hosts = home / "hosts"
    hosts.write_bytes(HOSTS)
    before = sorted(p.name for p in home.iterdir())
    argv = [a.replace("{in}", str(inputs)) for a in args]
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "SUDO_USER")}
    env["HOME"] = str(home)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kubefwd", "svc", "-c", str(home / "no-kubeconfig"),
             "--hosts-path", str(hosts), *argv],
            capture_output=True, text=True, timeout=20, env=env, stdin=subprocess.DEVNULL,
        )
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:  # a case that blocks fails alone, as a hang
        code, stdout, stderr = -1, str(e.stdout or ""), f"timed out after {e.timeout}s"
    return Outcome(str(inputs), argv, code, stdout, stderr, hosts.read_bytes(),
                   before, sorted(p.name for p in home.iterdir()),
                   time.monotonic() - started)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("bad-input")
    folder = _inputs(root / "in")
    yield folder
    (folder / "fifo").unlink()


def test_case_ids_are_unique() -> None:
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("case_id", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_exit_2_one_line_and_touches_nothing(
    inputs: Path, tmp_path: Path, case_id: str, args: list[str], message: str
) -> None:
    # One process per case: pytest-xdist spreads them over the workers.
    got = _run_case(tmp_path, inputs, case_id, args)
    expected = message.replace("{in}", got.inputs)
    lines = got.stderr.splitlines()
    assert got.code == ExitCode.USAGE, (got.args, got.code, got.stderr)
    assert len(lines) == 1, got.stderr
    assert lines[0].startswith("kubefwd: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert got.stdout == ""
    assert got.hosts_after == HOSTS
    assert got.beside_after == got.beside_before == ["hosts"]
