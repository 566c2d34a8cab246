"""``kill -9`` at random points of hosts-file writes: the file is always either the old or the
new content, never truncated or mixed, and the next run cleans up after the dead writer."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, hosts_file

from kubefwd.hosts.fileio import TEMP_SUFFIX
from kubefwd.hosts.format import Marker, format_entries
from kubefwd.hosts.writer import process_start, update_hosts

TRIALS = int(os.environ.get("KUBEFWD_CRASH_TRIALS", "15"))
FOREIGN = b"127.0.0.1\tlocalhost\r\n# mine\n::1 ip6-localhost\n10.0.0.5 build-server  # x"

# Writes in a loop, alternating a short and a long set of lines (the long one past 64 KiB, so
# a write takes several system calls), and says "go" once the first one is on disk.
WRITER = """
import sys
from pathlib import Path
from kubefwd.hosts.format import Marker
from kubefwd.hosts.writer import process_start, update_hosts
import os
path = Path(sys.argv[1])
me = Marker(os.getpid(), process_start(os.getpid()))
small = {"127.1.27.1": ["web", "web.shop"]}
big = {f"127.1.{27 + i // 250}.{1 + i % 250}": [f"svc{i}", f"svc{i}.shop.svc.cluster.local"]
       for i in range(1500)}
update_hosts(path, me, small)
print("go", flush=True)
while True:
    update_hosts(path, me, big)
    update_hosts(path, me, small)
"""


def contents_of(pid: int, start: int | None) -> set[bytes]:
    """Every content the writer may leave: the foreign text with its small or big lines."""
    owner = Marker(pid, start)
    small = {"127.1.27.1": ["web", "web.shop"]}
    big = {f"127.1.{27 + i // 250}.{1 + i % 250}": [f"svc{i}", f"svc{i}.shop.svc.cluster.local"]
           for i in range(1500)}
    out = set()
    for entries in (small, big):
        lines = format_entries(entries, owner)
        first = lines[0] + b" sep=crlf"
        out.add(FOREIGN + b"\r\n" + b"\r\n".join([first, *lines[1:]]) + b"\r\n")
    return out


def test_kill_9_mid_write_leaves_old_or_new_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("KUBEFWD_CRASH_SEED", "7"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for trial in range(TRIALS):
        hosts = hosts_file(tmp_path, FOREIGN, name=f"hosts{trial}")
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(hosts)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "go\n"
            start = process_start(child.pid)
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
        data = hosts.read_bytes()
        assert data in contents_of(child.pid, start), f"trial {trial}: torn file, {len(data)} B"
        # The next run purges the dead writer's lines and any temp file it left.
        update_hosts(hosts, Marker(os.getpid(), process_start(os.getpid())), None)
        assert hosts.read_bytes() == FOREIGN
        assert not [p for p in os.listdir(tmp_path) if p.endswith(TEMP_SUFFIX)]
