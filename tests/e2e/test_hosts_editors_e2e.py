"""Two ``kubefwd svc`` processes and a third program editing the same hosts file at once.

The third program edits the file the way an editor or another tool does, without kubefwd's
lock: it reads the file, adds or removes one of its own lines, and writes the result back,
by rename (a new file moved over the old) or in place (the same file truncated and
rewritten). Like a careful editor it writes only when the file is still the one it read
(vim's "changed since reading it" check); kubefwd must then never drop one of its lines,
never write a name twice or on two addresses, and leave exactly its final text behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import hosts_file, wait_for
from test_svc_e2e import (  # noqa: F401
    NEW_SERVICE,
    ORIGINAL_HOSTS,
    Kubefwd,
    block,
    cluster,
    hosts,
    hosts_entries,
    hosts_owners,
    run,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e

# The user's file (with a final newline, so an appended line starts a line of its own).
BASE = ORIGINAL_HOSTS + b"\n"

# The editor: edits until ``stop`` exists, then prints what it did as JSON. ``missing``
# counts the times one of its lines was not in the file it read.
EDITOR = textwrap.dedent(
    """
    import json, os, random, sys, time
    path, stop, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    mine, serial = [], 0
    stats = {"edits": 0, "rename": 0, "in-place": 0, "changed-under-us": 0, "missing": []}

    def stamp():
        st = os.stat(path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    while not os.path.exists(stop):
        time.sleep(rng.uniform(0.005, 0.03))
        before = stamp()
        with open(path, "rb") as fh:
            data = fh.read()
        if stamp() != before:
            continue
        lines = data.splitlines(keepends=True)
        stats["missing"] += [line.decode() for line in mine
                             if line not in lines and line.decode() not in stats["missing"]]
        if len(mine) < 3 or (len(mine) < 12 and rng.random() < 0.6):
            serial += 1
            line = f"10.77.{serial // 250}.{serial % 250 + 1} editor-{serial}\\n".encode()
            new, after = data + line, mine + [line]
        else:
            line = rng.choice(mine)
            new, after = data.replace(line, b"", 1), [m for m in mine if m != line]
        how = rng.choice(["rename", "in-place"])
        if how == "rename":
            tmp = path + ".editor-tmp"
            with open(tmp, "wb") as fh:
                fh.write(new)
        if stamp() != before:  # changed since we read it: read again, as vim would warn
            stats["changed-under-us"] += 1
            continue
        if how == "rename":
            os.replace(tmp, path)
        else:
            with open(path, "wb") as fh:
                fh.write(new)
        stats[how] += 1
        stats["edits"] += 1
        mine = after
    stats["lines"] = [line.decode() for line in mine]
    print(json.dumps(stats))
    """
)


def assert_consistent(path: Path) -> None:
    """No line twice, no name on two addresses, no address in two runs."""
    data = path.read_bytes()
    lines = Counter(line for line in data.splitlines() if line.strip())
    assert {line: n for line, n in lines.items() if n > 1} == {}, data
    ips, owners = hosts_owners(path)
    assert {n: i for n, i in ips.items() if len(i) > 1} == {}, data
    assert {i: o for i, o in owners.items() if len(o) > 1} == {}, data


def test_two_instances_and_an_editor_lose_nothing(
    run: Callable[..., Kubefwd], cluster: SimCluster, tmp_path: Path  # noqa: F811
) -> None:
    shared = hosts_file(tmp_path, BASE, name="shared-hosts")
    stop = tmp_path / "editor.stop"
    editor = subprocess.Popen([sys.executable, "-c", EDITOR, str(shared), str(stop), "7"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the editor is at work before either instance starts
        shop = run("-n", "shop", hosts_path=shared, ready=False)
        both = run("-n", "shop,payments", hosts_path=shared, ready=False)
        shop.wait_ready(30)
        both.wait_ready(30)
        assert_consistent(shared)
        cluster.apply(NEW_SERVICE)
        wait_for(lambda: hosts_entries(shared).get("search.shop"), 15, "search.shop written")
        assert_consistent(shared)
        time.sleep(0.5)
        assert shop.stop() == 0, shop.output
        assert_consistent(shared)
        assert both.stop() == 0, both.output
        time.sleep(0.3)  # the editor goes on a moment on the file kubefwd left
    finally:
        stop.touch()
        out, err = editor.communicate(timeout=20)
    assert editor.returncode == 0, err
    stats = json.loads(out)
    print("editor:", {k: v for k, v in stats.items() if k != "lines"})
    assert stats["missing"] == []  # every line of the editor's was there whenever it looked
    assert stats["rename"] >= 5 and stats["in-place"] >= 5, stats
    final = shared.read_bytes()
    assert final == BASE + "".join(stats["lines"]).encode()
    assert not list(tmp_path.glob("*.kubefwd-tmp")), "a temp file left behind"
