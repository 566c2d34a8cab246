"""Property-based: arbitrary hosts files, arbitrary runs of the hosts writer over them.

Whatever the file holds (CRLF, no final newline, comments, tabs, IPv6, very long lines, bytes
that are not UTF-8, kubefwd lines of a live instance and of dead ones) and whatever sequence
of adds, removals, crashes (a temp file left behind, or an in-place write cut before its
truncate: our padding line at the end) and restarts follows, every line
that is not kubefwd's is still there byte for byte, no name points at two addresses, and dead
owners' lines are gone after the next write. ``KUBEFWD_HYPOTHESIS_EXAMPLES`` runs more cases.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubefwd.hosts.fileio import TEMP_SUFFIX
from kubefwd.hosts.format import Marker, format_entries, padding, parse_marker
from kubefwd.hosts.writer import process_start, update_hosts

EXAMPLES = int(os.environ.get("KUBEFWD_HYPOTHESIS_EXAMPLES", "60"))

# Our own incarnations use pids that are not running: a crashed one then reads as dead.
_pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path(
    "/proc/sys/kernel/pid_max").exists() else 99999
DEAD_PIDS = [p for p in range(_pid_max - 1, _pid_max - 400, -1) if not psutil.pid_exists(p)]
LIVE_OTHER = Marker(os.getppid(), process_start(os.getppid()))  # alive throughout the test
NAMES = ["web", "api", "db", "cache", "o1", "o2", "web.shop", "api.pay"]

_text = st.binary(min_size=0, max_size=60).map(
    lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))
_foreign_line = st.one_of(
    st.just(b"127.0.0.1\tlocalhost"),
    st.just(b"::1 ip6-localhost ip6-loopback"),
    st.just(b"fe80::1%lo0\tlink-local"),
    st.builds(lambda t: b"# " + t, _text),  # comments, any bytes
    st.builds(lambda t: b"10.0.0.5 \t build-server  # " + t, _text),
    st.builds(lambda n: b"192.168.1.2 " + b"x" * n, st.integers(200, 3000)),  # very long
    st.just(b"\xff\xfe not utf-8 \xc3\x28"),
    st.just(b""),
    st.just(b"  \t  "),
    st.just(b"# kubefwd pid=12 but only a comment"),
    _text,
)


@st.composite
def hosts_files(draw: st.DrawFn) -> bytes:
    lines: list[bytes] = []
    live_names: set[str] = set()
    for kind in draw(st.lists(st.sampled_from(["foreign", "foreign", "live", "dead"]),
                              max_size=12)):
        if kind == "foreign":
            lines.append(draw(_foreign_line))
        else:
            owner = LIVE_OTHER if kind == "live" else Marker(
                draw(st.sampled_from(DEAD_PIDS[:20])), draw(st.integers(1, 2**31)))
            ip = f"127.1.{draw(st.integers(27, 29))}.{draw(st.integers(1, 254))}"
            names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
            if kind == "live":  # one live instance never has a name on two lines
                names = [n for n in names if n not in live_names] or [f"only{len(lines)}"]
                live_names.update(names)
            lines += format_entries({ip: names}, owner)
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
    data = b"".join(line + end for line, end in zip(lines, endings, strict=True))
    if lines and draw(st.booleans()):
        data = data[: -len(endings[-1])]  # no final newline
    return data


_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.dictionaries(
        st.builds(lambda n: f"127.1.27.{n}", st.integers(1, 254)),
        st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True),
        min_size=1, max_size=4)),
    st.tuples(st.just("remove"), st.none()),
    st.tuples(st.just("crash"), st.none()),
    st.tuples(st.just("cut"), st.integers(1, 300)),
    st.tuples(st.just("restart"), st.none()),
), min_size=1, max_size=10)


def foreign_lines(data: bytes) -> list[bytes]:
    """Every line that is not kubefwd's, with its ending, in order."""
    out = []
    for raw in data.splitlines(keepends=True):
        body = raw.rstrip(b"\n").removesuffix(b"\r") if raw.endswith(b"\n") else raw
        if parse_marker(body) is None:
            out.append(raw)
    return out


def owners(data: bytes) -> tuple[dict[str, set[str]], set[int]]:
    """name → addresses on kubefwd's lines, and the pids owning lines."""
    names: dict[str, set[str]] = {}
    pids: set[int] = set()
    for raw in data.splitlines():
        marker = parse_marker(raw.removesuffix(b"\r"))
        if marker is None:
            continue
        pids.add(marker.pid)
        fields = raw.split(b"#", 1)[0].split()
        for name in fields[1:]:
            names.setdefault(name.decode(), set()).add(fields[0].decode())
    return names, pids


def check(path: Path, original: bytes) -> None:
    data = path.read_bytes()
    now, before = foreign_lines(data), foreign_lines(original)
    # Byte for byte, in order; the last foreign line may have gained the newline kubefwd
    # adds before its own lines when the file had no final one.
    if now != before:
        assert now[:-1] == before[:-1] and before and not before[-1].endswith(b"\n")
        assert now[-1] in (before[-1] + b"\n", before[-1] + b"\r\n")
        assert owners(data)[1], "a newline was added with no kubefwd line after it"
    names, _ = owners(data)
    assert {n: ips for n, ips in names.items() if len(ips) > 1} == {}


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(original=hosts_files(), ops=_ops)
def test_any_run_keeps_foreign_lines_and_never_doubles_a_name(
    original: bytes, ops: list[tuple[str, dict[str, list[str]] | None]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hosts"
        path.write_bytes(original)
        pids = iter(DEAD_PIDS[20:])
        me = Marker(next(pids), 1)
        entries: dict[str, list[str]] | None = None
        for op, arg in ops:
            if op == "add":
                entries = {**(entries or {}), **(arg or {})}
            elif op == "remove":
                entries = None
            elif op == "crash":  # killed mid-write: its temp file stays, its lines too
                (Path(tmp) / f".hosts.crash{len(ops) % 1000:03d}{TEMP_SUFFIX}").write_bytes(
                    b"half a file")
                me = Marker(next(pids), 1)  # the next run is another process
                entries = None
                continue
            elif op == "cut":  # killed between an in-place write and its truncate
                data = path.read_bytes()
                assert isinstance(arg, int)
                path.write_bytes(data + padding(data, len(data) + arg))
                me = Marker(next(pids), 1)
                entries = None
                continue
            elif op == "restart":
                update_hosts(path, me, None)  # a clean stop, then a new process
                me = Marker(next(pids), 1)
                continue
            update_hosts(path, me, entries)
            check(path, original)
            data = path.read_bytes()
            _, live = owners(data)
            # After our write only we and the live instance own lines: the dead are purged,
            # and so are crashed runs' temp files.
            assert live <= {me.pid, LIVE_OTHER.pid}
            assert not [p for p in os.listdir(tmp) if p.endswith(TEMP_SUFFIX)]
            if entries is None:
                assert me.pid not in live
        update_hosts(path, me, None)
        check(path, original)
        if LIVE_OTHER.pid not in owners(original)[1]:
            # Nothing of ours left and no live instance's lines: exactly the foreign text,
            # without the newline kubefwd may have added for its lines.
            assert path.read_bytes() == b"".join(foreign_lines(original))
